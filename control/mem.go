package control

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MemConfig configures a MemNetwork. A zero field means its default.
type MemConfig struct {
	// Link is every link's behaviour, in each direction, unless SetLink
	// says otherwise. Link.Seed seeds the network's random numbers.
	Link LinkConfig
	// IdleTimeout is how long after a node is killed (MemTransport.Kill)
	// its peers' connections die with ErrTimeout; default 2 s, as QUIC.
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

// newPair makes the two ends of a connection from a to b.
func (n *MemNetwork) newPair(a, b *MemTransport, link LinkConfig) (ca, cb *MemConn) {
	n.mu.Lock()
	id := n.lastPipe
	n.lastPipe += 2
	n.mu.Unlock()
	ca = newMemConn(a, b)
	cb = newMemConn(b, a)
	ab := &memPipe{net: n, to: cb, link: link, id: id, space: make(chan struct{}, 1)}
	ba := &memPipe{net: n, to: ca, link: link, id: id + 1, space: make(chan struct{}, 1)}
	ca.out, ca.in = ab, ba
	cb.out, cb.in = ba, ab
	return ca, cb
}

// Kinds of memMsg.
const (
	memControl = iota
	memData
	memClose // the connection's end: err is the receiver's reason
)

type memMsg struct {
	kind int
	b    []byte
	err  error
}

// memPipe is one direction of a connection: the messages in flight to one
// end, released by a timer when due.
type memPipe struct {
	net *MemNetwork
	to  *MemConn
	id  uint64

	mu        sync.Mutex
	link      LinkConfig
	rng       *mrand.Rand // made on first use
	flight    delayHeap[memMsg]
	timer     *time.Timer
	timerAt   time.Time // when the timer is armed for; zero if not
	lastCtrl  time.Time // control messages leave in order
	busyUntil time.Time // the link is sending until then
	departs   []time.Time
	ctrlOut   int // control messages sent and not yet received
	space     chan struct{}
	closed    bool // nothing more is delivered
}

func (p *memPipe) random() *mrand.Rand {
	if p.rng == nil {
		p.rng = mrand.New(mrand.NewPCG(p.net.cfg.Link.Seed, p.id))
	}
	return p.rng
}

// sendLocked puts m on the link (p.mu held).
func (p *memPipe) sendLocked(m memMsg) {
	l := p.link
	if l.Delay <= 0 && l.Jitter <= 0 && l.Loss <= 0 && (l.Bandwidth <= 0 || m.kind != memData) && p.flight.Len() == 0 {
		p.deliverLocked(m)
		return
	}
	now := time.Now()
	at := now
	if m.kind == memData && l.Bandwidth > 0 {
		if p.busyUntil.After(at) {
			at = p.busyUntil
		}
		at = at.Add(l.serialization(len(m.b)))
		p.busyUntil = at
		p.departs = append(p.departs, at)
	}
	lost := m.kind != memClose && l.Loss > 0 && p.random().Float64() < l.Loss
	if l.Jitter > 0 || lost {
		at = at.Add(l.extraDelay(p.random(), lost))
	}
	at = at.Add(l.Delay)
	if m.kind != memData {
		if at.Before(p.lastCtrl) {
			at = p.lastCtrl
		}
		p.lastCtrl = at
	}
	p.pushLocked(at, m)
}

// pushLocked queues m for at and arms the timer.
func (p *memPipe) pushLocked(at time.Time, m memMsg) {
	p.flight.push(at, m, nil)
	p.armLocked(at)
}

// armLocked makes sure the timer fires by at.
func (p *memPipe) armLocked(at time.Time) {
	if p.timerAt.IsZero() || at.Before(p.timerAt) {
		p.timerAt = at
		if p.timer == nil {
			p.timer = time.AfterFunc(time.Until(at), p.fire)
		} else {
			p.timer.Reset(time.Until(at))
		}
	}
}

// fire delivers what is due and rearms the timer for the rest. A spurious
// call delivers nothing.
func (p *memPipe) fire() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.timerAt = time.Time{}
	now := time.Now()
	for p.flight.Len() > 0 && !p.flight.items[0].at.After(now) {
		p.deliverLocked(p.flight.pop().v)
	}
	if p.flight.Len() > 0 {
		p.armLocked(p.flight.items[0].at)
	}
}

func (p *memPipe) deliverLocked(m memMsg) {
	if p.closed {
		return
	}
	switch m.kind {
	case memControl:
		p.to.push(m.b, false)
	case memData:
		p.to.push(m.b, true)
	case memClose:
		p.shutdownLocked()
		p.to.closeWith(m.err)
	}
}

// shutdownLocked stops all delivery on the pipe and wakes blocked senders,
// which then find it closed.
func (p *memPipe) shutdownLocked() {
	p.closed = true
	p.flight = delayHeap[memMsg]{}
	p.departs = nil
	if p.timer != nil {
		p.timer.Stop()
		p.timerAt = time.Time{}
	}
	signal(p.space)
}

func (p *memPipe) shutdown() {
	p.mu.Lock()
	p.shutdownLocked()
	p.mu.Unlock()
}

// ctrlReceived returns a control slot to the sender.
func (p *memPipe) ctrlReceived() {
	p.mu.Lock()
	p.ctrlOut--
	p.mu.Unlock()
	signal(p.space)
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// msgQueue is a FIFO of messages that reuses its array once drained.
type msgQueue struct {
	buf  [][]byte
	head int
}

func (q *msgQueue) len() int      { return len(q.buf) - q.head }
func (q *msgQueue) push(b []byte) { q.buf = append(q.buf, b) }

func (q *msgQueue) pop() []byte {
	b := q.buf[q.head]
	q.buf[q.head] = nil
	q.head++
	if q.head == len(q.buf) {
		q.buf, q.head = q.buf[:0], 0
	}
	return b
}

// MemConn is a connection of a MemTransport.
type MemConn struct {
	t          *MemTransport
	in, out    *memPipe
	remoteAddr string // as this end observes it
	peerAddr   string // the peer's own Addr, which names the link
	remoteKey  ed25519.PublicKey
	flow       *memFlow // the NAT flow this end keeps open, or nil

	mu      sync.Mutex
	ctrl    msgQueue
	data    msgQueue
	ctrlSig chan struct{} // cap 1: a control message arrived
	dataSig chan struct{}
	done    chan struct{}
	err     error
	stats   connCounters
}

var _ Conn = (*MemConn)(nil)

func newMemConn(local, remote *MemTransport) *MemConn {
	return &MemConn{
		t:          local,
		remoteAddr: remote.addr,
		peerAddr:   remote.addr,
		remoteKey:  remote.pub,
		ctrlSig:    make(chan struct{}, 1),
		dataSig:    make(chan struct{}, 1),
		done:       make(chan struct{}),
	}
}

// push queues an arrived message; a data message finding the receive queue
// full is dropped and counted.
func (c *MemConn) push(b []byte, data bool) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	if !data {
		c.ctrl.push(b)
		c.mu.Unlock()
		signal(c.ctrlSig)
		return
	}
	if c.data.len() >= c.t.net.cfg.ReceiveQueue {
		c.mu.Unlock()
		c.stats.receiveDropped.Add(1)
		return
	}
	c.data.push(b)
	c.stats.dataReceived.Add(1)
	c.mu.Unlock()
	signal(c.dataSig)
}

// closeWith ends the connection locally with err, unless it already ended.
func (c *MemConn) closeWith(err error) bool {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return false
	}
	c.err = err
	close(c.done)
	f := c.flow
	c.flow = nil
	c.mu.Unlock()
	if f != nil {
		f.nat.unpin(f)
	}
	c.t.forget(c)
	return true
}

// pin keeps f open while the connection lives (its keep-alives would).
func (c *MemConn) pin(f *memFlow) {
	if f == nil {
		return
	}
	f.nat.pin(f)
	c.mu.Lock()
	if c.err == nil {
		c.flow = f
		f = nil
	}
	c.mu.Unlock()
	if f != nil {
		f.nat.unpin(f)
	}
}

// Send queues one control message; see Conn. It blocks while ControlQueue
// messages are on their way or unread at the peer.
func (c *MemConn) Send(ctx context.Context, msg []byte) error {
	if len(msg) > MaxMessageSize {
		return fmt.Errorf("%w: %d bytes", ErrMessageTooLarge, len(msg))
	}
	b := append(make([]byte, 0, len(msg)), msg...)
	p := c.out
	limit := c.t.net.cfg.ControlQueue
	for {
		if err := c.Err(); err != nil {
			return err
		}
		p.mu.Lock()
		if p.closed {
			// The peer vanished; its end of the connection will tell.
			p.mu.Unlock()
			return nil
		}
		if p.ctrlOut < limit {
			p.ctrlOut++
			more := p.ctrlOut < limit
			p.sendLocked(memMsg{kind: memControl, b: b})
			p.mu.Unlock()
			if more {
				signal(p.space) // pass the wake-up on to another sender
			}
			return nil
		}
		p.mu.Unlock()
		select {
		case <-p.space:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.done:
			return c.Err()
		}
	}
}

// Receive waits for the next control message; see Conn. Messages that
// arrived before the connection closed are returned before its error.
func (c *MemConn) Receive(ctx context.Context) ([]byte, error) {
	return c.receive(ctx, false)
}

// SendData queues one data message, or drops it and returns ErrQueueFull
// when SendQueue messages are waiting for the link's bandwidth.
func (c *MemConn) SendData(msg []byte) error {
	if len(msg) > MaxMessageSize {
		return fmt.Errorf("%w: %d bytes", ErrMessageTooLarge, len(msg))
	}
	if err := c.Err(); err != nil {
		return err
	}
	p := c.out
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	if len(p.departs) > 0 {
		now := time.Now()
		i := 0
		for i < len(p.departs) && !p.departs[i].After(now) {
			i++
		}
		p.departs = p.departs[i:]
		if len(p.departs) >= c.t.net.cfg.SendQueue {
			c.stats.sendDropped.Add(1)
			return ErrQueueFull
		}
		if len(p.departs) == 0 {
			p.departs = nil
		}
	}
	p.sendLocked(memMsg{kind: memData, b: append(make([]byte, 0, len(msg)), msg...)})
	c.stats.dataSent.Add(1)
	return nil
}

// ReceiveData waits for the next data message; see Conn.
func (c *MemConn) ReceiveData(ctx context.Context) ([]byte, error) {
	return c.receive(ctx, true)
}

func (c *MemConn) receive(ctx context.Context, data bool) ([]byte, error) {
	q, sig := &c.ctrl, c.ctrlSig
	if data {
		q, sig = &c.data, c.dataSig
	}
	for {
		c.mu.Lock()
		if q.len() > 0 {
			m := q.pop()
			more := q.len() > 0
			c.mu.Unlock()
			if more {
				signal(sig)
			}
			if !data {
				c.in.ctrlReceived()
			}
			return m, nil
		}
		err := c.err
		c.mu.Unlock()
		if err != nil {
			return nil, err
		}
		select {
		case <-sig:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.done:
		}
	}
}

// RemoteAddr returns the peer's address as this end observes it: at the
// dialer the address it dialed, at the acceptor the dialer's address after
// the dialer's NAT (its mapping, "mem:R:P"), or its Addr when it is public
// or on the acceptor's LAN.
func (c *MemConn) RemoteAddr() string { return c.remoteAddr }

// RemoteKey returns the peer's identity key.
func (c *MemConn) RemoteKey() ed25519.PublicKey { return c.remoteKey }

// RTT returns the round trip of the link: both delays and their mean
// jitter.
func (c *MemConn) RTT() time.Duration {
	var rtt time.Duration
	for _, p := range [...]*memPipe{c.in, c.out} {
		p.mu.Lock()
		rtt += p.link.Delay + p.link.Jitter/2
		p.mu.Unlock()
	}
	return rtt
}

// Done is closed when the connection has closed.
func (c *MemConn) Done() <-chan struct{} { return c.done }

// Err says why the connection closed, or nil while it is open; see
// QUICConn.Err.
func (c *MemConn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection; the peer sees a *CloseError with code and
// reason (clamped as by QUICConn.Close) one link delay later, after the control messages sent before.
func (c *MemConn) Close(code uint64, reason string) error {
	code, reason = clampClose(code, reason)
	if !c.closeWith(&CloseError{Code: code, Reason: reason}) {
		return nil
	}
	p := c.out
	p.mu.Lock()
	if !p.closed {
		p.sendLocked(memMsg{kind: memClose, err: &CloseError{Code: code, Reason: reason, Remote: true}})
	}
	p.mu.Unlock()
	c.in.shutdown()
	return nil
}

// kill ends the connection without telling the peer, whose end dies of the
// idle timeout.
func (c *MemConn) kill() {
	if !c.closeWith(fmt.Errorf("%w: transport killed", ErrClosed)) {
		return
	}
	p := c.out
	p.mu.Lock()
	if !p.closed {
		p.pushLocked(time.Now().Add(c.t.net.cfg.IdleTimeout), memMsg{kind: memClose, err: timeoutError(nil)})
	}
	p.mu.Unlock()
	c.in.shutdown()
}

// Stats returns the connection's counters.
func (c *MemConn) Stats() ConnStats { return c.stats.snapshot() }

// memResend is when a dial's first packet, dropped, is sent again (QUIC's
// first probe timeout with its initial RTT estimate of 100 ms); each later
// one waits twice as long.
const memResend = 300 * time.Millisecond

// DefaultFlowTimeout is NATConfig.FlowTimeout's default: Linux conntrack's
// timeout for UDP.
const DefaultFlowTimeout = 30 * time.Second

// NATKind is how a MemNAT picks the public port of a new flow.
type NATKind int

const (
	// NATPortPreserving behaves like Linux MASQUERADE: a flow keeps the
	// member's own port as its public port, so a member shows every remote
	// the same address (endpoint-independent mapping) and a third party can
	// predict it, unless that port is taken towards the same remote (by a
	// live flow or by the trace of a packet from that remote that the NAT
	// dropped), in which case the flow gets a random port.
	NATPortPreserving NATKind = iota
	// NATPortRandom behaves like MASQUERADE --random-fully: each new flow
	// (each remote address) gets a random public port, so the address one
	// remote observed says nothing about the next flow's.
	NATPortRandom
)

func (k NATKind) String() string {
	switch k {
	case NATPortPreserving:
		return "port-preserving"
	case NATPortRandom:
		return "port-random"
	}
	return "NATKind(" + strconv.Itoa(int(k)) + ")"
}

// NATConfig configures a MemNAT. A zero field means its default.
type NATConfig struct {
	// Kind is the mapping behaviour; default NATPortPreserving.
	Kind NATKind
	// Hairpin lets members reach one another at their public addresses
	// (the NAT's own address, "mem:R:P"): a member's packet to such an
	// address comes back in from the sender's mapping, past the filter
	// (NAT loopback). Without it such packets are dropped and members
	// reach each other only at their LAN addresses.
	Hairpin bool
	// FlowTimeout is how long a flow (a mapping and the admission it gives
	// its remote) outlives its last packet when no connection keeps it
	// open, and how long the trace of a dropped inbound packet blocks its
	// port for the remote that sent it. Default DefaultFlowTimeout.
	FlowTimeout time.Duration
}

// MemNAT is a home router of a MemNetwork: its members (MemNAT.NewTransport)
// have LAN addresses "mem:R/P" (P is the member's own port), which only
// other members can dial, and reach everyone else through the NAT's public
// address "mem:R".
//
// Each packet a member sends to a remote address outside the LAN travels by
// a flow: a public port P of the NAT (chosen by Kind) for that member and
// that remote. The far side sees the packet come from "mem:R:P"; that is the
// RemoteAddr of the connection it accepts. A packet arriving from outside at
// "mem:R:P" is admitted only if a live flow on port P was opened towards
// exactly the address it comes from (address- and port-dependent
// filtering, as Linux's conntrack does); anything else is dropped, and the
// dropped packet leaves a trace that keeps port P from being given to a new
// flow towards its sender for FlowTimeout (so a member that is dialed before
// it punches cannot then dial back from its usual port). A flow lives while
// a connection uses it and FlowTimeout after its last packet otherwise.
//
// Hops are counted as in the netlab: a packet from a member passes its own
// NAT (hop 1), the internet's router (hop 2) and reaches the far NAT. A
// packet with TTL 1 thus dies in the member's own NAT before any flow is
// made, TTL 2 opens the member's flow but dies before the far NAT (and so
// leaves no trace there), TTL 3 reaches it; from a public node, TTL 1 dies
// in the internet and TTL 2 reaches the far NAT.
//
// A MemNAT holds no goroutines and needs no closing.
type MemNAT struct {
	net  *MemNetwork
	addr string // public address, "mem:R"
	cfg  NATConfig

	mu      sync.Mutex
	members int
	flows   map[natTuple]*memFlow // live and stale flows by public port and remote
	byLocal map[natLocal]*memFlow // the same by member and remote
	traces  map[natTuple]time.Time
	nextGC  int
	rng     *mrand.Rand
}

type natTuple struct {
	port   int
	remote string
}

type natLocal struct {
	member *MemTransport
	remote string
}

// memFlow is a NAT mapping: the member's packets to remote leave from the
// NAT's port, and packets from remote to that port come in.
type memFlow struct {
	nat    *MemNAT
	member *MemTransport
	port   int
	remote string
	last   time.Time // last packet
	pins   int       // connections that keep it open
}

// NewNAT adds a NAT (a home router) at the next free address "mem:R".
func (n *MemNetwork) NewNAT(cfg NATConfig) *MemNAT {
	if cfg.FlowTimeout <= 0 {
		cfg.FlowTimeout = DefaultFlowTimeout
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.lastAddr++
	h := &MemNAT{
		net:     n,
		addr:    fmt.Sprintf("mem:%d", n.lastAddr),
		cfg:     cfg,
		flows:   make(map[natTuple]*memFlow),
		byLocal: make(map[natLocal]*memFlow),
		traces:  make(map[natTuple]time.Time),
		rng:     mrand.New(mrand.NewPCG(n.cfg.Link.Seed, n.lastAddr)),
	}
	n.nats[h.addr] = h
	return h
}

// Addr returns the NAT's public address "mem:R"; its members' public
// addresses are "mem:R:P". Nobody answers at the bare address.
func (h *MemNAT) Addr() string { return h.addr }

// Config returns the NAT's configuration with defaults filled in.
func (h *MemNAT) Config() NATConfig { return h.cfg }

// NewTransport adds a member to the NAT's LAN, with the identity key (nil
// means a new random key), at the next free LAN address "mem:R/P".
func (h *MemNAT) NewTransport(key ed25519.PrivateKey) (*MemTransport, error) {
	return h.net.newTransport(key, h)
}

// Mapping returns the public address that member's packets to remote
// currently leave from, and false if no live flow exists.
func (h *MemNAT) Mapping(member *MemTransport, remote string) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := h.byLocal[natLocal{member, remote}]
	if f == nil || !h.liveLocked(f, time.Now()) {
		return "", false
	}
	return h.public(f.port), true
}

func (h *MemNAT) newMember() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.members++
	return h.members
}

func (h *MemNAT) public(port int) string { return h.addr + ":" + strconv.Itoa(port) }

// onLAN reports whether addr is a member's LAN address.
func (h *MemNAT) onLAN(addr string) bool {
	return strings.HasPrefix(addr, h.addr) && strings.HasPrefix(addr[len(h.addr):], "/")
}

func (h *MemNAT) liveLocked(f *memFlow, now time.Time) bool {
	return f.pins > 0 || now.Sub(f.last) < h.cfg.FlowTimeout
}

// takenLocked reports whether port is in use towards remote.
func (h *MemNAT) takenLocked(port int, remote string, now time.Time) bool {
	k := natTuple{port, remote}
	if f := h.flows[k]; f != nil && h.liveLocked(f, now) {
		return true
	}
	at, ok := h.traces[k]
	return ok && now.Sub(at) < h.cfg.FlowTimeout
}

// outbound is a member's packet to remote leaving the NAT: it returns the
// flow it travels by, made if none is live.
func (h *MemNAT) outbound(member *MemTransport, remote string, now time.Time) *memFlow {
	h.mu.Lock()
	defer h.mu.Unlock()
	if f := h.byLocal[natLocal{member, remote}]; f != nil {
		if h.liveLocked(f, now) {
			f.last = now
			return f
		}
		h.dropLocked(f)
	}
	port := member.port
	if h.cfg.Kind == NATPortRandom || h.takenLocked(port, remote, now) {
		for {
			port = 1024 + h.rng.IntN(65536-1024)
			if !h.takenLocked(port, remote, now) {
				break
			}
		}
	}
	h.gcLocked(now)
	if f := h.flows[natTuple{port, remote}]; f != nil {
		h.dropLocked(f) // stale
	}
	f := &memFlow{nat: h, member: member, port: port, remote: remote, last: now}
	h.flows[natTuple{port, remote}] = f
	h.byLocal[natLocal{member, remote}] = f
	return f
}

// inbound is a packet from src arriving at the NAT's port: it returns the
// flow that admits it, or nil after leaving the dropped packet's trace.
func (h *MemNAT) inbound(src string, port int, now time.Time) *memFlow {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := natTuple{port, src}
	if f := h.flows[k]; f != nil && h.liveLocked(f, now) {
		f.last = now
		return f
	}
	h.gcLocked(now)
	h.traces[k] = now
	return nil
}

// hairpin is a member's packet to the NAT's own port: with Hairpin it is
// admitted by any live flow on that port.
func (h *MemNAT) hairpin(port int, now time.Time) *memFlow {
	if !h.cfg.Hairpin {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, f := range h.flows {
		if k.port == port && h.liveLocked(f, now) {
			return f
		}
	}
	return nil
}

// owner returns the member a packet to port would be for, if admitted.
func (h *MemNAT) owner(port int) *MemTransport {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, f := range h.flows {
		if k.port == port {
			return f.member
		}
	}
	return nil
}

func (h *MemNAT) pin(f *memFlow) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f.pins++
	f.last = time.Now()
	if h.byLocal[natLocal{f.member, f.remote}] == nil && h.flows[natTuple{f.port, f.remote}] == nil {
		// It went stale and was swept while the handshake finished.
		h.flows[natTuple{f.port, f.remote}] = f
		h.byLocal[natLocal{f.member, f.remote}] = f
	}
}

func (h *MemNAT) unpin(f *memFlow) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f.pins--
	f.last = time.Now()
}

func (h *MemNAT) dropLocked(f *memFlow) {
	if h.flows[natTuple{f.port, f.remote}] == f {
		delete(h.flows, natTuple{f.port, f.remote})
	}
	if h.byLocal[natLocal{f.member, f.remote}] == f {
		delete(h.byLocal, natLocal{f.member, f.remote})
	}
}

// gcLocked sweeps stale flows and traces once the tables have doubled.
func (h *MemNAT) gcLocked(now time.Time) {
	if len(h.flows)+len(h.traces) < h.nextGC {
		return
	}
	for _, f := range h.flows {
		if !h.liveLocked(f, now) {
			h.dropLocked(f)
		}
	}
	for k, at := range h.traces {
		if now.Sub(at) >= h.cfg.FlowTimeout {
			delete(h.traces, k)
		}
	}
	h.nextGC = max(64, 2*(len(h.flows)+len(h.traces)))
}

// natSend is a packet from t to addr leaving t's NAT at now: it returns the
// address it comes from as the far side sees it, and the flow it travels by
// (nil when t is public or addr is on its LAN).
func (n *MemNetwork) natSend(t *MemTransport, addr string, now time.Time) (string, *memFlow) {
	if t.nat == nil || t.nat.onLAN(addr) {
		return t.addr, nil
	}
	f := t.nat.outbound(t, addr, now)
	return t.nat.public(f.port), f
}

// resolve says where a packet to addr goes: to a node (public or a LAN
// address), or to a port of a NAT.
func (n *MemNetwork) resolve(addr string) (node *MemTransport, nat *MemNAT, port int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if node = n.nodes[addr]; node != nil {
		return node, nil, 0
	}
	if i := strings.LastIndexByte(addr, ':'); i > 0 {
		if p, err := strconv.Atoi(addr[i+1:]); err == nil {
			return nil, n.nats[addr[:i]], p
		}
	}
	return nil, nil, 0
}

// natArrive is a packet from t, seen as coming from src, arriving at addr at
// now. It returns the node that receives it and the flow of that node's NAT
// that admitted it (nil when the node is public or on t's LAN); a nil node
// means the packet was dropped or nobody is there.
func (n *MemNetwork) natArrive(t *MemTransport, src, addr string, now time.Time) (*MemTransport, *memFlow) {
	node, nat, port := n.resolve(addr)
	switch {
	case node != nil:
		if node.nat != nil && node.nat != t.nat {
			return nil, nil // a LAN address is not routed on the internet
		}
		return node, nil
	case nat == nil:
		return nil, nil
	case nat == t.nat:
		if f := nat.hairpin(port, now); f != nil {
			return f.member, nil
		}
		return nil, nil
	}
	if f := nat.inbound(src, port, now); f != nil {
		return f.member, f
	}
	return nil, nil
}

// linkTowards returns the link a packet from t to addr takes: the one to the
// node it would reach if admitted.
func (n *MemNetwork) linkTowards(t *MemTransport, addr string) LinkConfig {
	node, nat, port := n.resolve(addr)
	if node == nil && nat != nil {
		node = nat.owner(port)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if node != nil {
		if l, ok := n.links[linkKey(t.addr, node.addr)]; ok {
			return l
		}
	}
	return n.cfg.Link
}

// Punch sends punch packets from t to addr (see Puncher) and returns at
// once. In the network they act as one packet: from a member of a NAT, with
// a TTL of 2 or more (0 means 64), it opens or refreshes the flow of t's NAT
// to addr. If it reaches a far NAT (see MemNAT for the hops) it refreshes
// the flow there that admits it, or leaves the trace of a dropped packet,
// one link delay later. Public nodes and LAN members ignore it.
func (t *MemTransport) Punch(ctx context.Context, addr string, ttl int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if ttl <= 0 {
		ttl = 64
	}
	n := t.net
	hops := 1 // to the far NAT, across the internet's router
	if t.nat != nil && !t.nat.onLAN(addr) {
		if ttl < 2 {
			return nil // died in our own NAT
		}
		hops = 2
	}
	src, _ := n.natSend(t, addr, time.Now())
	if ttl <= hops {
		return nil
	}
	arrive := func() { n.natArrive(t, src, addr, time.Now()) }
	if d := n.linkTowards(t, addr).Delay; d > 0 {
		time.AfterFunc(d, arrive)
	} else {
		arrive()
	}
	return nil
}
