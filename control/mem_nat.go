package control

import (
	"context"
	"crypto/ed25519"
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"
)

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
