package control

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"sync"
	"time"
)

// MemConfig configures a MemNetwork. A zero field means its default.
type MemConfig struct {
	// Link is every link's behaviour, in each direction, unless SetLink
	// says otherwise. Link.Seed seeds the network's random numbers.
	Link LinkConfig
	// IdleTimeout is how long after a node is killed (MemTransport.Kill)
	// its peers' connections die with ErrTimeout; default
	// DefaultIdleTimeout, as QUIC.
	IdleTimeout time.Duration
	// HandshakeTimeout is how long a Dial to an address where no node
	// listens takes to fail with ErrTimeout; default 5 s.
	HandshakeTimeout time.Duration
	// MaxConns bounds each transport's connections; default 256.
	MaxConns int
	// ControlQueue bounds the control messages a connection has sent that
	// the peer has not yet received; Send blocks beyond it. Default 64.
	ControlQueue int
	// SendQueue bounds the data messages waiting for the link's bandwidth;
	// SendData returns ErrQueueFull beyond it. Default 64. With unlimited
	// bandwidth messages leave at once and the queue never fills.
	SendQueue int
	// ReceiveQueue bounds the data messages waiting for ReceiveData; more
	// are dropped and counted. Default 64.
	ReceiveQueue int
	// AcceptBacklog bounds the connections waiting for Accept; default 32.
	AcceptBacklog int
	// ShareData passes data messages by reference: SendData keeps the
	// buffer it is given and the receiver gets that very buffer, so that
	// neither end may modify it afterwards (Conn's contract says the
	// opposite). A node's data messages are its chunks' bytes, which never
	// change once signed: a simulation of many nodes in one process
	// (examples/swarm) saves a copy per chunk per hop and holds each
	// chunk's bytes once.
	ShareData bool
}

func (cfg MemConfig) withDefaults() MemConfig {
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.ControlQueue <= 0 {
		cfg.ControlQueue = DefaultQueueLen
	}
	if cfg.SendQueue <= 0 {
		cfg.SendQueue = DefaultQueueLen
	}
	if cfg.ReceiveQueue <= 0 {
		cfg.ReceiveQueue = DefaultQueueLen
	}
	if cfg.AcceptBacklog <= 0 {
		cfg.AcceptBacklog = DefaultAcceptBacklog
	}
	return cfg
}

// MemNetwork is an in-process network of MemTransports with emulated links.
// It starts no goroutines: messages in flight wait in per-link queues driven
// by time.AfterFunc timers, so a network runs under testing/synctest (create
// it inside the bubble) and holds many thousands of nodes.
//
// Nodes made by NewTransport are public: anyone can dial them at their
// address "mem:N". Nodes made by a MemNAT's NewTransport sit behind that
// NAT; see MemNAT for what they can reach and how they are seen.
//
// Lock order: MemNetwork, MemTransport, link direction, MemConn; a link
// direction may also take a MemTransport's lock (never the reverse). A
// MemNAT's lock is taken last, alone or under any of them.
type MemNetwork struct {
	cfg MemConfig

	mu       sync.Mutex
	nodes    map[string]*MemTransport // public nodes and NAT members
	nats     map[string]*MemNAT       // by public address
	links    map[[2]string]LinkConfig
	lastAddr uint64
	lastPipe uint64
}

// NewMemNetwork returns an empty network.
func NewMemNetwork(cfg MemConfig) *MemNetwork {
	return &MemNetwork{
		cfg:   cfg.withDefaults(),
		nodes: make(map[string]*MemTransport),
		nats:  make(map[string]*MemNAT),
		links: make(map[[2]string]LinkConfig),
	}
}

// NewTransport adds a public node with the identity key (nil means a new
// random key) at the next free address "mem:N".
func (n *MemNetwork) NewTransport(key ed25519.PrivateKey) (*MemTransport, error) {
	return n.newTransport(key, nil)
}

// newTransport adds a node, public when nat is nil.
func (n *MemNetwork) newTransport(key ed25519.PrivateKey, nat *MemNAT) (*MemTransport, error) {
	if key == nil {
		var err error
		if _, key, err = ed25519.GenerateKey(rand.Reader); err != nil {
			return nil, err
		}
	}
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("control: key has %d bytes, want %d", len(key), ed25519.PrivateKeySize)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	t := &MemTransport{
		net:     n,
		nat:     nat,
		pub:     key.Public().(ed25519.PublicKey),
		backlog: make(chan *MemConn, n.cfg.AcceptBacklog),
		done:    make(chan struct{}),
		conns:   make(map[*MemConn]struct{}),
	}
	if nat == nil {
		n.lastAddr++
		t.addr = fmt.Sprintf("mem:%d", n.lastAddr)
	} else {
		t.port = nat.newMember()
		t.addr = fmt.Sprintf("%s/%d", nat.addr, t.port)
	}
	n.nodes[t.addr] = t
	return t, nil
}

func linkKey(a, b string) [2]string {
	if a > b {
		a, b = b, a
	}
	return [2]string{a, b}
}

// SetLink sets the link between the nodes at a and b, in both directions,
// for their current connections (from the next message on) and future ones.
func (n *MemNetwork) SetLink(a, b string, cfg LinkConfig) {
	n.mu.Lock()
	n.links[linkKey(a, b)] = cfg
	var pipes []*memPipe
	if t := n.nodes[a]; t != nil {
		t.mu.Lock()
		for c := range t.conns {
			if c.peerAddr == b {
				pipes = append(pipes, c.in, c.out)
			}
		}
		t.mu.Unlock()
	}
	n.mu.Unlock()
	for _, p := range pipes {
		p.mu.Lock()
		p.link = cfg
		p.mu.Unlock()
	}
}

// Close closes every transport of the network.
func (n *MemNetwork) Close() error {
	n.mu.Lock()
	nodes := make([]*MemTransport, 0, len(n.nodes))
	for _, t := range n.nodes {
		nodes = append(nodes, t)
	}
	n.mu.Unlock()
	for _, t := range nodes {
		t.Close()
	}
	return nil
}

func (n *MemNetwork) remove(t *MemTransport) {
	n.mu.Lock()
	if n.nodes[t.addr] == t {
		delete(n.nodes, t.addr)
	}
	n.mu.Unlock()
}

// MemTransport is a node of a MemNetwork.
type MemTransport struct {
	net     *MemNetwork
	nat     *MemNAT // nil for a public node
	port    int     // behind a NAT: the member's own port
	addr    string
	pub     ed25519.PublicKey
	backlog chan *MemConn
	done    chan struct{} // closed by Close and Kill

	mu      sync.Mutex
	conns   map[*MemConn]struct{}
	pending int
	closed  bool
}

var _ Transport = (*MemTransport)(nil)

// Addr returns the node's address: "mem:N" for a public node, the LAN
// address "mem:R/P" behind a NAT.
func (t *MemTransport) Addr() string { return t.addr }

// NAT returns the NAT the node sits behind, or nil for a public node.
func (t *MemTransport) NAT() *MemNAT { return t.nat }

// Key returns the node's public identity key.
func (t *MemTransport) Key() ed25519.PublicKey { return t.pub }

// sleep waits for d, the context or the transport's end.
func (t *MemTransport) sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.done:
		return ErrClosed
	}
}

// Dial connects to the node at addr. It takes two round trips of the link
// (QUIC's handshake and the transport's own), fails with ErrTimeout after
// HandshakeTimeout when nobody answers at addr (no node, or a NAT that drops
// the dialer's packets), with ErrKeyMismatch when the node's key is not
// wantKey, and with ErrRefused when the node is full.
//
// Through NATs the dial behaves like a QUIC handshake: its first packet
// leaves at once and, while it is dropped, is sent again after 300 ms, then
// after twice as long each time, each reaching the far end one link delay
// after it left. Each packet refreshes the dialer's NAT flow to addr, so a
// dial also opens the dialer's own NAT for addr.
func (t *MemTransport) Dial(ctx context.Context, addr string, wantKey ed25519.PublicKey) (Conn, error) {
	if wantKey != nil && len(wantKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: wanted key has %d bytes", ErrKeyMismatch, len(wantKey))
	}
	n := t.net
	t.mu.Lock()
	switch {
	case t.closed:
		t.mu.Unlock()
		return nil, ErrClosed
	case len(t.conns)+t.pending >= n.cfg.MaxConns:
		t.mu.Unlock()
		return nil, fmt.Errorf("%w: local limit of %d connections", ErrRefused, n.cfg.MaxConns)
	}
	t.pending++
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		t.pending--
		t.mu.Unlock()
	}()

	start := time.Now()
	deadline := start.Add(n.cfg.HandshakeTimeout)
	noAnswer := func() (Conn, error) {
		if err := t.sleep(ctx, time.Until(deadline)); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: no answer from %s", ErrTimeout, addr)
	}
	var (
		target  *MemTransport
		src     string
		out, in *memFlow
		link    LinkConfig
	)
	for resend := memResend; ; resend *= 2 {
		src, out = n.natSend(t, addr, time.Now())
		link = n.linkTowards(t, addr)
		if err := t.sleep(ctx, link.Delay); err != nil {
			return nil, err
		}
		if target, in = n.natArrive(t, src, addr, time.Now()); target != nil {
			break
		}
		next := start.Add(resend)
		if !next.Add(link.Delay).Before(deadline) {
			return noAnswer()
		}
		if err := t.sleep(ctx, time.Until(next)); err != nil {
			return nil, err
		}
	}
	if err := t.sleep(ctx, 3*link.Delay); err != nil {
		return nil, err
	}
	if wantKey != nil && !wantKey.Equal(target.pub) {
		return nil, fmt.Errorf("%w: dial %s", ErrKeyMismatch, addr)
	}
	c, peer := n.newPair(t, target, link)
	c.remoteAddr, peer.remoteAddr = addr, src
	target.mu.Lock()
	switch {
	case target.closed:
		target.mu.Unlock()
		return noAnswer()
	case len(target.conns)+target.pending >= n.cfg.MaxConns || len(target.backlog) >= cap(target.backlog):
		target.mu.Unlock()
		return nil, fmt.Errorf("%w: dial %s", ErrRefused, addr)
	}
	peer.pin(in)
	target.conns[peer] = struct{}{}
	target.backlog <- peer // never blocks: only senders hold target.mu
	target.mu.Unlock()

	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		c.Close(CodeShutdown, "transport closed")
		return nil, ErrClosed
	}
	c.pin(out)
	t.conns[c] = struct{}{}
	t.mu.Unlock()
	return c, nil
}

// Accept waits for the next incoming connection.
func (t *MemTransport) Accept(ctx context.Context) (Conn, error) {
	select {
	case <-t.done:
		return nil, ErrClosed
	default:
	}
	for {
		select {
		case c := <-t.backlog:
			if c.Err() != nil {
				continue
			}
			return c, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.done:
			return nil, ErrClosed
		}
	}
}

// shut marks the transport closed and returns its connections, or nil if it
// already was.
func (t *MemTransport) shut() ([]*MemConn, bool) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, false
	}
	t.closed = true
	conns := make([]*MemConn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	close(t.done)
	t.net.remove(t)
	return conns, true
}

// Close closes every connection (peers see CodeShutdown one link delay
// later) and removes the node from the network.
func (t *MemTransport) Close() error {
	conns, _ := t.shut()
	for _, c := range conns {
		c.Close(CodeShutdown, "transport closed")
	}
	return nil
}

// Kill removes the node as if its process died: its own connections close
// at once, its peers hear nothing and see their connections die with
// ErrTimeout after IdleTimeout. A killed transport is closed.
func (t *MemTransport) Kill() {
	conns, _ := t.shut()
	for _, c := range conns {
		c.kill()
	}
}

func (t *MemTransport) forget(c *MemConn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}
