package control

import (
	"context"
	"slices"
	"sync"
	"time"
)

// How often a node registers with the rendezvous when nothing calls for it
// at once (see maybeRegister). Each registration costs the station, whose
// rendezvous hears from every node of the swarm.
const (
	// registerEvery is the interval while the node is settling: its
	// registration changed within registerSettle.
	registerEvery  = 2 * time.Second
	registerSettle = 10 * time.Second
	// registerQuiet is the interval once settled for a node that takes
	// children: the rendezvous offers a node only while it registered
	// within the last 5 s (offerFor).
	registerQuiet = 3 * time.Second
	// registerLeafQuiet is the interval once settled for a leaf, which is
	// never offered as a parent; the rendezvous forgets a node silent for
	// its Expiry (10 s by default).
	registerLeafQuiet = 6 * time.Second
)

// rendezvous is a node's session with the station's tracker: the client
// side of the protocol that Tracker serves.
type rendezvous struct {
	o        *Overlay
	dialMu   sync.Mutex // one dial at a time
	mu       sync.Mutex
	conn     Conn
	cands    []PeerInfo
	displace []PeerInfo // full parents whose leaf child we may replace
	punch    []PeerInfo // parents behind port-preserving NATs
	echoing  bool       // a NAT check ran
	got      chan struct{}
	lastReg  time.Time
	regLast  regKey    // what the last registration said
	regMoved time.Time // when a registration last differed from the one before
}

func newRendezvous(o *Overlay) *rendezvous { return &rendezvous{o: o} }

func (r *rendezvous) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn != nil {
		r.conn.Close(CodeGoodbye, "")
	}
}

// connect dials the tracker if not connected.
func (r *rendezvous) connect(ctx context.Context) Conn {
	r.dialMu.Lock()
	defer r.dialMu.Unlock()
	r.mu.Lock()
	c := r.conn
	r.mu.Unlock()
	if c != nil {
		select {
		case <-c.Done():
		default:
			return c
		}
	}
	o := r.o
	dctx, cancel := o.patience(ctx, dialTimeout)
	defer cancel()
	c, err := o.cfg.Transport.Dial(dctx, o.cfg.Rendezvous, nil)
	if err != nil {
		o.log.Debug("rendezvous unreachable", "addr", o.cfg.Rendezvous, "err", err)
		return nil
	}
	got := make(chan struct{}, 1)
	r.mu.Lock()
	r.conn, r.got = c, got
	r.mu.Unlock()
	o.goFunc(func() { r.read(ctx, c, got) })
	return c
}

// read takes the tracker's answers until the session ends.
func (r *rendezvous) read(ctx context.Context, c Conn, got chan struct{}) {
	for {
		b, err := c.Receive(ctx)
		if err != nil {
			return
		}
		m, err := ParseMessage(b)
		if err != nil {
			c.Close(CodeBadMessage, err.Error())
			return
		}
		if p, ok := m.(*Punch); ok {
			r.o.goFunc(func() { r.o.punch(ctx, p) })
			continue
		}
		cs, ok := m.(*Candidates)
		if !ok {
			c.Close(CodeBadMessage, "rendezvous sends only Candidates and Punch")
			return
		}
		r.o.setObserved(cs.Observed)
		if cs.Echo != "" {
			r.mu.Lock()
			check := !r.echoing
			r.echoing = true
			r.mu.Unlock()
			if check {
				r.o.goFunc(func() {
					r.o.checkNAT(ctx, cs.Echo, cs.Observed)
					r.refresh() // tell the rendezvous at once
				})
			}
		}
		r.o.reach.Store(uint32(cs.Reach))
		if cs.Live > r.o.live.Load() {
			r.o.live.Store(cs.Live)
		}
		r.mu.Lock()
		r.cands, r.displace, r.punch = cs.Peers, cs.Displace, cs.Punch
		r.mu.Unlock()
		select {
		case got <- struct{}{}:
		default:
		}
	}
}

// register tells the tracker about us; want asks for candidates, which
// arrive on the returned channel (nil when the tracker is unreachable).
func (r *rendezvous) register(ctx context.Context, want bool) chan struct{} {
	c := r.connect(ctx)
	if c == nil {
		return nil
	}
	o := r.o
	reg := &Register{
		ListenAddr: o.cfg.Transport.Addr(),
		UploadKbps: o.uploadClaim(),
		Want:       want,
		Leaf:       o.maxChildren() == 0,
		Failed:     o.takeFailed(),
		NAT:        NATBehaviour(o.nat.Load()),
		Mapped:     o.mappedAddr(),
	}
	o.mu.Lock()
	reg.Depth, reg.FreeSlots = o.depth, o.freeSlots()
	if o.parent != nil {
		reg.Parent = o.parent.id
	}
	o.mu.Unlock()
	r.mu.Lock()
	got := r.got
	r.lastReg = time.Now()
	if k := keyOf(reg); k != r.regLast {
		r.regLast, r.regMoved = k, r.lastReg
	}
	r.mu.Unlock()
	sctx, cancel := context.WithTimeout(ctx, answerTimeout)
	defer cancel()
	if c.Send(sctx, AppendMessage(nil, reg)) != nil {
		return nil
	}
	return got
}

// regKey is what a registration says of the node (not what it asks).
type regKey struct {
	listen, mapped string
	upload, depth  int
	free           int
	parent         NodeID
	leaf           bool
	nat            NATBehaviour
}

func keyOf(r *Register) regKey {
	return regKey{listen: r.ListenAddr, mapped: r.Mapped, upload: r.UploadKbps, depth: r.Depth, free: r.FreeSlots, parent: r.Parent, leaf: r.Leaf, nat: r.NAT}
}

// maybeRegister registers when due: at once when the depth changed, the
// free slots ran out or came back, or the port mapping changed; else after
// registerInterval.
func (r *rendezvous) maybeRegister(ctx context.Context) {
	o := r.o
	o.mu.Lock()
	depth, free := o.depth, o.freeSlots()
	o.mu.Unlock()
	now := time.Now()
	r.mu.Lock()
	every := registerInterval(now.Sub(r.regMoved), o.maxChildren() == 0)
	due := now.Sub(r.lastReg) > every || depth != r.regLast.depth || (free == 0) != (r.regLast.free == 0) || o.mappedAddr() != r.regLast.mapped
	r.mu.Unlock()
	if due {
		r.register(ctx, false)
	}
}

// registerInterval is how long a node waits between registrations when
// nothing calls for one at once: registerEvery while its registration
// changed within registerSettle (settled is how long ago it last did),
// then registerQuiet, or registerLeafQuiet for a leaf.
func registerInterval(settled time.Duration, leaf bool) time.Duration {
	switch {
	case settled < registerSettle:
		return registerEvery
	case leaf:
		return registerLeafQuiet
	}
	return registerQuiet
}

// candidates registers and waits briefly for a fresh candidate list; it
// returns it with the peers heard of from neighbours.
func (r *rendezvous) candidates(ctx context.Context) []PeerInfo {
	if got := r.register(ctx, true); got != nil {
		t := time.NewTimer(answerTimeout)
		select {
		case <-got:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	r.mu.Lock()
	out := slices.Clone(r.cands)
	r.mu.Unlock()
	r.o.mu.Lock()
	out = append(out, r.o.heard...)
	r.o.mu.Unlock()
	return out
}

// offered is the rendezvous's last list of candidates, without the peers
// heard of from neighbours (whose free slots may be long gone).
func (r *rendezvous) offered() []PeerInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.cands)
}

// punchable is the last list of parents behind port-preserving NATs.
func (r *rendezvous) punchable() []PeerInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.punch)
}

// send sends m on the session, if there is one.
func (r *rendezvous) send(ctx context.Context, m Message) bool {
	r.mu.Lock()
	c := r.conn
	r.mu.Unlock()
	if c == nil {
		return false
	}
	sctx, cancel := context.WithTimeout(ctx, answerTimeout)
	defer cancel()
	return c.Send(sctx, AppendMessage(nil, m)) == nil
}

// rtt is the round trip to the rendezvous (0 unknown).
func (r *rendezvous) rtt() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn == nil {
		return 0
	}
	return r.conn.RTT()
}

// displaceable is the last list of full parents with a leaf child.
func (r *rendezvous) displaceable() []PeerInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.displace)
}

// refresh makes the next maybeRegister register.
func (r *rendezvous) refresh() {
	r.mu.Lock()
	r.lastReg = time.Time{}
	r.mu.Unlock()
}
