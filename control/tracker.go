package control

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// TrackerConfig configures a Tracker. The zero value is usable.
type TrackerConfig struct {
	// MaxCandidates is how many candidate parents one answer lists. Zero
	// means 8.
	MaxCandidates int
	// Expiry forgets a node that has not registered for this long. Zero
	// means 10 s.
	Expiry time.Duration
	// Logger receives structured logs; nil means silent.
	Logger *slog.Logger
}

// Tracker is the rendezvous: listeners register their observed address,
// upload budget, depth, free slots and parent, and get candidate parents
// back. It is embedded in a broadcaster by default and can run alone. It is
// not on the data path. A Tracker is safe for use by many goroutines.
type Tracker struct {
	cfg TrackerConfig
	log *slog.Logger

	mu    sync.Mutex
	nodes map[NodeID]*tracked
	self  *tracked
	rnd   *rand.Rand
	// free indexes the nodes that can take a child by depth, so that a
	// search walks the shallow ones first and stops early: O(answer), not
	// O(swarm), which a rendezvous of 10,000 nodes needs.
	free     map[int]map[NodeID]*tracked
	maxDepth int
	// leaves indexes the joined nodes that take no children by depth: a
	// node that can take children may displace one (capable uploaders
	// move up, leaves stay at the bottom).
	leaves  map[int]map[NodeID]*tracked
	maxLeaf int // the deepest level leaves was ever given
	regs    int // registrations since the last sweep for expired nodes
}

type tracked struct {
	info      PeerInfo
	parent    NodeID
	leaf      bool
	seen      time.Time
	held      int       // slots held for joiners it was offered to
	heldUntil time.Time // until then
}

// holdFor is how long a slot offered to a joiner is held for it: about a
// probe and a subscription.
const holdFor = 500 * time.Millisecond

// TrackedNode is one node as the tracker sees it.
type TrackedNode struct {
	PeerInfo
	Parent NodeID
	Seen   time.Time
}

// NewTracker returns an empty Tracker.
func NewTracker(cfg TrackerConfig) *Tracker {
	if cfg.MaxCandidates <= 0 {
		cfg.MaxCandidates = 8
	}
	if cfg.Expiry <= 0 {
		cfg.Expiry = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Tracker{cfg: cfg, log: log, nodes: make(map[NodeID]*tracked), free: make(map[int]map[NodeID]*tracked),
		leaves: make(map[int]map[NodeID]*tracked), rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
}

// SetSelf records the broadcaster itself (depth 0), the root of the tree.
func (t *Tracker) SetSelf(info PeerInfo) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.self == nil {
		t.self = &tracked{}
		t.nodes[info.ID] = t.self
	}
	t.unindex(t.self)
	t.self.info, t.self.seen = info, time.Now()
	t.index(t.self)
}

// index adds n to the free-slot index if it can take a child, or to the
// leaf index if it is a joined leaf.
func (t *Tracker) index(n *tracked) {
	d := n.info.Depth
	switch {
	case d > 0 && n.leaf && !n.parent.IsZero():
		addTo(t.leaves, d, n)
		t.maxLeaf = max(t.maxLeaf, d)
	case d >= 0 && n.info.FreeSlots > 0:
		addTo(t.free, d, n)
		t.maxDepth = max(t.maxDepth, d)
	}
}

func addTo(idx map[int]map[NodeID]*tracked, d int, n *tracked) {
	b := idx[d]
	if b == nil {
		b = make(map[NodeID]*tracked)
		idx[d] = b
	}
	b[n.info.ID] = n
}

func (t *Tracker) unindex(n *tracked) {
	if b := t.free[n.info.Depth]; b != nil {
		delete(b, n.info.ID)
	}
	if b := t.leaves[n.info.Depth]; b != nil {
		delete(b, n.info.ID)
	}
}

// forget removes a node.
func (t *Tracker) forget(id NodeID) {
	if n := t.nodes[id]; n != nil && n != t.self {
		t.unindex(n)
		delete(t.nodes, id)
	}
}

// Serve runs one node's rendezvous session on c, whose first message was
// first, until c closes or ctx is done. Each Register that wants them is
// answered with Candidates; the node is forgotten when the session ends.
func (t *Tracker) Serve(ctx context.Context, c Conn, first *Register) {
	id := IDOf(c.RemoteKey())
	defer func() {
		t.mu.Lock()
		t.forget(id)
		t.mu.Unlock()
		c.Close(CodeNormal, "")
	}()
	m := Message(first)
	for {
		reg, ok := m.(*Register)
		switch {
		case !ok:
			c.Close(CodeBadMessage, "rendezvous expects Register")
			return
		case reg.Version != WireVersion:
			c.Close(CodeVersion, errWrongVersion(reg.Version).Error())
			return
		}
		cands := t.register(id, c.RemoteAddr(), reg)
		if reg.Want {
			// Only a Register that wants candidates is answered.
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			err := c.Send(sctx, AppendMessage(nil, cands))
			cancel()
			if err != nil {
				return
			}
		}
		b, err := c.Receive(ctx)
		if err != nil {
			return
		}
		if m, err = ParseMessage(b); err != nil {
			c.Close(CodeBadMessage, err.Error())
			return
		}
	}
}

// register records a node and, when it wants them, returns candidate
// parents for it.
func (t *Tracker) register(id NodeID, observed string, r *Register) *Candidates {
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[id]
	if n == nil {
		n = &tracked{}
		t.nodes[id] = n
	} else {
		t.unindex(n)
	}
	n.info = PeerInfo{ID: id, Addr: observed, Depth: r.Depth, FreeSlots: r.FreeSlots, UploadKbps: r.UploadKbps}
	n.parent, n.leaf = r.Parent, r.Leaf
	n.seen = now
	t.index(n)
	if t.regs++; t.regs >= max(len(t.nodes), 64) {
		t.regs = 0
		for nid, x := range t.nodes {
			if x != t.self && now.Sub(x.seen) > t.cfg.Expiry {
				t.forget(nid)
			}
		}
	}
	if !r.Want {
		return nil
	}
	c := &Candidates{Peers: t.candidates(id, now, r.Depth < 0), Observed: observed}
	if !r.Leaf {
		c.Displace = t.displaceable(id, r.Depth)
	}
	return c
}

// isDescendant reports whether node c has id among its ancestors.
func (t *Tracker) isDescendant(c *tracked, id NodeID) bool {
	for range 64 {
		if c.parent == id {
			return true
		}
		p := t.nodes[c.parent]
		if p == nil || p == c {
			return false
		}
		c = p
	}
	return true // implausibly deep: treat as unsafe
}

// candidates lists up to MaxCandidates nodes with a free slot, shallow
// first, none of them id's descendant. For a joiner (reserve), one slot of
// the first is held for holdFor, so that when many join at once they do not
// all race for it. (Nodes that ask only for backups or to climb do not
// hold: they ask every second and would keep a slot hidden.)
func (t *Tracker) candidates(id NodeID, now time.Time, reserve bool) []PeerInfo {
	var out []PeerInfo
	for d := 0; d <= t.maxDepth && len(out) < t.cfg.MaxCandidates; d++ {
		var level []PeerInfo
		for nid, n := range t.free[d] { // map order: a random pick
			if n != t.self && now.Sub(n.seen) > t.cfg.Expiry {
				t.forget(nid)
				continue
			}
			if nid == id || t.isDescendant(n, id) || (now.Before(n.heldUntil) && n.held >= n.info.FreeSlots) {
				continue
			}
			level = append(level, n.info)
			if len(out)+len(level) >= 4*t.cfg.MaxCandidates {
				break
			}
		}
		t.rnd.Shuffle(len(level), func(i, j int) { level[i], level[j] = level[j], level[i] })
		out = append(out, level...)
	}
	out = out[:min(len(out), t.cfg.MaxCandidates)]
	if reserve && len(out) > 0 {
		if n := t.nodes[out[0].ID]; n != nil {
			if now.After(n.heldUntil) {
				n.held = 0
			}
			n.held++
			n.heldUntil = now.Add(holdFor)
		}
	}
	return out
}

// maxDisplace is how many parents of leaves one answer lists.
const maxDisplace = 4

// displaceable lists parents of leaves, the shallowest first, where the
// asker (not a leaf) would sit above its depth (at any level when it has
// none): none of them its descendant.
func (t *Tracker) displaceable(id NodeID, depth int) []PeerInfo {
	var out []PeerInfo
	seen := make(map[NodeID]bool)
	for d := 1; d <= t.maxLeaf && len(out) < maxDisplace && (depth < 0 || d < depth); d++ {
		for _, leaf := range t.leaves[d] {
			p := t.nodes[leaf.parent]
			if p == nil || leaf.info.ID == id || p.info.ID == id || seen[p.info.ID] || p.info.Depth != d-1 || t.isDescendant(p, id) {
				continue
			}
			seen[p.info.ID] = true
			out = append(out, p.info)
			if len(out) == maxDisplace {
				break
			}
		}
	}
	return out
}

// Nodes returns a snapshot of every node registered, the root included.
func (t *Tracker) Nodes() []TrackedNode {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]TrackedNode, 0, len(t.nodes))
	for _, n := range t.nodes {
		out = append(out, TrackedNode{PeerInfo: n.info, Parent: n.parent, Seen: n.seen})
	}
	return out
}

// ServeTracker accepts connections on tr and serves each as a rendezvous
// session until ctx is done. A connection whose first message is not
// Register is closed.
func ServeTracker(ctx context.Context, tr Transport, t *Tracker) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := tr.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Go(func() {
			if reg, ok := readFirst(ctx, c).(*Register); ok {
				t.Serve(ctx, c, reg)
			} else {
				c.Close(CodeBadMessage, "rendezvous expects Register")
			}
		})
	}
}
