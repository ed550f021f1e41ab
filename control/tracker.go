package control

import (
	"context"
	"crypto/ed25519"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
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
	// MaxNodes bounds the registrations held; a session beyond it is
	// closed. Zero means 20,000.
	MaxNodes int
	// MaxPerHost bounds the registrations from one IP address (for IPv4,
	// also from one /24; for IPv6, one /64), loopback excepted. Zero means
	// 64.
	MaxPerHost int
	// Prober, when set, dials each registered node back from an address
	// the node has never sent to (a second socket of the rendezvous's host,
	// say): a node that answers is reachable by anyone (ReachPublic) and
	// is offered as a parent; one that does not (a NAT or a firewall)
	// is not, and counts as a leaf. Nil: no dial-back, every node is
	// offered as it claims (a trusted lab).
	Prober Transport
	// Echo, when set, is a third socket of the rendezvous's host, which
	// answers a dial with the address it came from (ServeEcho): a node
	// behind a NAT compares it with what the rendezvous saw to learn how
	// its NAT maps (Candidates.Echo). It must not be the Prober: a node
	// that dialed the echo has opened its NAT to it.
	Echo Transport
	// Station, when set, is the station's key: a dial-back then also
	// exchanges Hellos, so that only a node that answers as a peer of
	// this station counts as reachable (a socket that completes handshakes
	// and says nothing does not).
	Station NodeID
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
	perHost map[string]int
	// punchable indexes the nodes behind port-preserving NATs with free
	// slots by depth: offered in Candidates.Punch, reached by a punch.
	punchable map[int]map[NodeID]*tracked
	// relayed indexes the full public nodes by depth (the root
	// included): a node that only public ones can feed (restricted) may
	// take the place of a child of theirs that others can feed.
	relayed map[int]map[NodeID]*tracked
	// waiting holds the restricted nodes without a parent, by when they
	// last said so.
	waiting map[NodeID]time.Time
	live    uint64 // one more than the station's newest chunk (SetLive)
	probes  chan struct{}
	// selfFunc describes the broadcaster on demand (SetSelfFunc).
	selfFunc atomic.Pointer[func() (PeerInfo, uint64)]
}

type tracked struct {
	info      PeerInfo
	parent    NodeID
	leaf      bool
	seen      time.Time
	held      int       // slots held for joiners it was offered to
	heldUntil time.Time // until then
	host      string    // its /24 or /64, "" for loopback
	reach     Reach
	probed    time.Time            // when the last dial-back ended
	probing   bool                 // a dial-back runs
	failed    map[NodeID]time.Time // candidates that failed it: not offered again for a while
	blamed    map[NodeID]struct{}  // who reported it failed since its last dial-back
	nat       NATBehaviour         // what it found out about its NAT
	told      Reach                // the Reach it was last told
	admitted  time.Time            // when its session began
	listen    string               // the address it listens on, as it sees it (a LAN address behind a NAT)
	session   Conn                 // its rendezvous session, for Punch
}

// reprobeAfter is how long an unreachable node waits before it is dialed
// back again (a port mapping may have opened since); maxFailedKept bounds
// a node's list of candidates that failed it.
const (
	reprobeAfter  = 30 * time.Second
	maxFailedKept = 64
	maxProbes     = 32 // dial-backs at once
	failedOffer   = 10 * time.Second
	// offerFor is how long after its last registration a node is offered
	// as a parent: nodes register every 2 s, so a node silent this long
	// has probably vanished.
	offerFor  = 5 * time.Second
	echoGrace = 2 * time.Second // for a node to check its NAT before the dial-back
)

// holdFor is how long a slot offered to a joiner is held for it: about a
// probe and a subscription.
const holdFor = 500 * time.Millisecond

// TrackedNode is one node as the tracker sees it.
type TrackedNode struct {
	PeerInfo
	Parent NodeID
	Seen   time.Time
	Reach  Reach
}

// NewTracker returns an empty Tracker.
func NewTracker(cfg TrackerConfig) *Tracker {
	if cfg.MaxCandidates <= 0 {
		cfg.MaxCandidates = 8
	}
	if cfg.Expiry <= 0 {
		cfg.Expiry = 10 * time.Second
	}
	if cfg.MaxNodes <= 0 {
		cfg.MaxNodes = 20000
	}
	if cfg.MaxPerHost <= 0 {
		cfg.MaxPerHost = 64
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Tracker{cfg: cfg, log: log, nodes: make(map[NodeID]*tracked), free: make(map[int]map[NodeID]*tracked),
		leaves: make(map[int]map[NodeID]*tracked), rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		perHost: make(map[string]int), probes: make(chan struct{}, maxProbes),
		punchable: make(map[int]map[NodeID]*tracked), relayed: make(map[int]map[NodeID]*tracked), waiting: make(map[NodeID]time.Time)}
}

// SetSelf records the broadcaster itself (depth 0), the root of the tree.
func (t *Tracker) SetSelf(info PeerInfo) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.self == nil {
		t.self = &tracked{reach: ReachPublic}
		t.nodes[info.ID] = t.self
	}
	t.unindex(t.self)
	t.self.info, t.self.seen = info, time.Now()
	t.index(t.self)
}

// SetSelfFunc makes the tracker ask f for the broadcaster's entry and
// live edge (what SetSelf and SetLive take) whenever it answers a
// registration or lists its nodes, instead of being told them: an
// embedded tracker's station told it ten times a second, a wake-up of an
// idle station each time. f is called without the tracker's lock held.
func (t *Tracker) SetSelfFunc(f func() (self PeerInfo, live uint64)) {
	t.selfFunc.Store(&f)
	t.refreshSelf()
}

// refreshSelf takes the broadcaster's entry from the SetSelfFunc, if any.
func (t *Tracker) refreshSelf() {
	if f := t.selfFunc.Load(); f != nil {
		self, live := (*f)()
		t.SetSelf(self)
		t.SetLive(live)
	}
}

// SetLive records the station's live edge: one more than its newest
// chunk. Joiners learn it with their candidates.
func (t *Tracker) SetLive(next uint64) {
	t.mu.Lock()
	t.live = max(t.live, next)
	t.mu.Unlock()
}

// offered reports whether n may be offered as a parent: not known to be
// unreachable, and checked by a dial-back when there is a Prober.
func (t *Tracker) offered(n *tracked) bool {
	return n.reach == ReachPublic || (t.cfg.Prober == nil && n.reach == ReachUnknown)
}

// index adds n to the free-slot index if it can take a child, or to the
// leaf index if it is a joined leaf (or cannot be reached, which comes to
// the same: it can take no child it has not contacted).
func (t *Tracker) index(n *tracked) {
	d := n.info.Depth
	if d >= 0 && n.info.FreeSlots <= 0 && !n.leaf && t.offered(n) {
		addTo(t.relayed, d, n)
		t.maxDepth = max(t.maxDepth, d)
	}
	switch {
	case d > 0 && (n.leaf || (n.reach == ReachUnreachable && !n.punchable())) && !n.parent.IsZero():
		addTo(t.leaves, d, n)
		t.maxLeaf = max(t.maxLeaf, d)
	case d >= 0 && n.info.FreeSlots > 0 && t.offered(n):
		addTo(t.free, d, n)
		t.maxDepth = max(t.maxDepth, d)
	case d >= 0 && n.info.FreeSlots > 0 && n.punchable():
		addTo(t.punchable, d, n)
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
	if b := t.punchable[n.info.Depth]; b != nil {
		delete(b, n.info.ID)
	}
	if b := t.relayed[n.info.Depth]; b != nil {
		delete(b, n.info.ID)
	}
}

// restrictedWaiting reports whether a restricted node has been looking
// for a parent lately. t.mu is held.
func (t *Tracker) restrictedWaiting(now time.Time) bool {
	for id, at := range t.waiting {
		if now.Sub(at) < offerFor {
			return true
		}
		delete(t.waiting, id)
	}
	return false
}

// restricted reports whether only public nodes can feed n: it is behind a
// NAT that maps each destination apart (no punch opens it), or the
// dial-back failed and its NAT is not known to be punchable.
func (n *tracked) restricted() bool {
	return n.reach != ReachPublic && (n.nat == NATRandomises || (n.reach == ReachUnreachable && n.nat != NATPreserves))
}

// forget removes a node.
func (t *Tracker) forget(id NodeID) {
	if n := t.nodes[id]; n != nil && n != t.self {
		t.unindex(n)
		delete(t.nodes, id)
		delete(t.waiting, id)
		if n.host != "" {
			if t.perHost[n.host]--; t.perHost[n.host] <= 0 {
				delete(t.perHost, n.host)
			}
		}
	}
}

// Serve runs one node's rendezvous session on c, whose first message was
// first, until c closes or ctx is done. Each Register that wants them is
// answered with Candidates; the node is forgotten when the session ends.
func (t *Tracker) Serve(ctx context.Context, c Conn, first *Register) {
	id := IDOf(c.RemoteKey())
	var probes sync.WaitGroup // this session's dial-back
	defer probes.Wait()
	defer func() {
		t.mu.Lock()
		t.forget(id)
		t.mu.Unlock()
		c.Close(CodeNormal, "")
	}()
	if why := t.admit(id, c.RemoteAddr()); why != "" {
		c.Close(CodeRefused, why)
		return
	}
	t.setSession(id, c)
	m := Message(first)
	for {
		switch m := m.(type) {
		case *Connect:
			t.connect(ctx, id, m.Target)
		case *Register:
			if m.Version != WireVersion {
				c.Close(CodeVersion, errWrongVersion(m.Version).Error())
				return
			}
			t.refreshSelf()
			cands := t.register(id, c.RemoteAddr(), m)
			if addr, ok := t.shouldProbe(id); ok {
				probes.Go(func() { t.probe(ctx, id, addr, c.RemoteKey()) })
			}
			if cands != nil {
				// A Register is answered when it wants candidates, or
				// when the node's reachability is news.
				sctx, cancel := context.WithTimeout(ctx, time.Second)
				err := c.Send(sctx, AppendMessage(nil, cands))
				cancel()
				if err != nil {
					return
				}
			}
		default:
			c.Close(CodeBadMessage, "rendezvous expects Register or Connect")
			return
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
	addr := observed
	if mappedHere(r.Mapped, observed) {
		addr = r.Mapped // its router forwards this port to it
	}
	if n.info.Addr != addr {
		n.reach = ReachUnknown // a new address: dial it back again
	}
	n.info = PeerInfo{ID: id, Addr: addr, Depth: t.checkedDepth(r), FreeSlots: min(r.FreeSlots, maxClaimedSlots), UploadKbps: r.UploadKbps}
	n.parent, n.leaf, n.nat, n.listen = r.Parent, r.Leaf, r.NAT, r.ListenAddr
	n.seen = now
	t.index(n)
	if n.restricted() && r.Depth < 0 {
		t.waiting[id] = now
	} else {
		delete(t.waiting, id)
	}
	for _, f := range r.Failed {
		t.blame(n, f)
	}
	if t.regs++; t.regs >= max(len(t.nodes), 64) {
		t.regs = 0
		for nid, x := range t.nodes {
			if x != t.self && now.Sub(x.seen) > t.cfg.Expiry {
				t.forget(nid)
			}
		}
	}
	if !r.Want {
		if n.reach == n.told {
			return nil
		}
		// What the dial-back found is news: told without candidates.
		n.told = n.reach
		return &Candidates{Observed: observed, Reach: n.reach, Live: t.live, Echo: t.echo(n)}
	}
	n.told = n.reach
	c := &Candidates{Observed: observed, Reach: n.reach, Live: t.live, Echo: t.echo(n)}
	t.traversal(n, c, now)
	// Public slots are scarce for restricted nodes, whom nothing else can
	// feed: while one waits for a parent, a node that punched parents can
	// feed is offered those only.
	if !(len(c.Punch) > 0 && !n.restricted() && t.restrictedWaiting(now)) {
		c.Peers = append(t.candidates(id, now, r.Depth < 0), c.Peers...)
	}
	if r.Depth > 0 {
		// A joined node asks for backups too (or to climb), and a backup
		// needs no free slot: nodes on other branches, full or not.
		c.Peers = append(c.Peers, t.independent(n, now)...)
	}
	switch {
	case n.restricted():
		c.Displace = t.publicParents(id, now)
	case !r.Leaf:
		// A restricted leaf's place goes to a public joiner only when
		// nothing else is offered to it (it would move such leaves again
		// and again, and it can reach punchable parents too).
		c.Displace = t.displaceable(id, r.Depth, false)
		if len(c.Displace) == 0 && len(c.Punch) == 0 && n.reach == ReachPublic && r.Depth < 0 {
			c.Displace = t.displaceable(id, r.Depth, true)
		}
	}
	return c
}

// maxClaimedSlots caps the free slots a node is believed to have: a claim
// of thousands would put it first for every joiner.
const maxClaimedSlots = 64

// checkedDepth is a registration's depth as far as the tracker can check
// it: one more than its registered parent's, never 0 (only the station's
// own node, SetSelf, is the root); what a node claims otherwise.
func (t *Tracker) checkedDepth(r *Register) int {
	if p := t.nodes[r.Parent]; p != nil && p.info.Depth >= 0 && r.Depth >= 0 {
		return min(p.info.Depth+1, MaxDepth)
	}
	if r.Depth == 0 {
		return 1
	}
	return r.Depth
}

// admit checks the limits before a session starts: the number of nodes,
// and per host. It returns why not, or "".
func (t *Tracker) admit(id NodeID, addr string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.nodes[id] != nil {
		return ""
	}
	if len(t.nodes) >= t.cfg.MaxNodes {
		return "rendezvous full"
	}
	h := hostKey(addr)
	if h != "" && t.perHost[h] >= t.cfg.MaxPerHost {
		return "too many nodes from " + h
	}
	n := &tracked{host: h, info: PeerInfo{ID: id, Addr: addr, Depth: -1}, seen: time.Now(), admitted: time.Now()}
	t.nodes[id] = n
	if h != "" {
		t.perHost[h]++
	}
	return ""
}

// blame records that reporter could not use candidate f: f is not offered
// to it again, and is dialed back again once two nodes blamed it.
func (t *Tracker) blame(reporter *tracked, f NodeID) {
	if t.self != nil && f == t.self.info.ID {
		return // the station's own node is offered while it runs
	}
	now := time.Now()
	if reporter.failed == nil {
		reporter.failed = make(map[NodeID]time.Time)
	}
	if len(reporter.failed) >= maxFailedKept {
		for k, at := range reporter.failed {
			if now.Sub(at) > failedOffer {
				delete(reporter.failed, k)
			}
		}
	}
	if len(reporter.failed) < maxFailedKept {
		reporter.failed[f] = now
	}
	n := t.nodes[f]
	if n == nil || n == t.self || t.cfg.Prober == nil {
		return
	}
	if n.blamed == nil {
		n.blamed = make(map[NodeID]struct{})
	}
	n.blamed[reporter.info.ID] = struct{}{}
	if len(n.blamed) >= 2 && n.reach == ReachPublic {
		t.unindex(n)
		n.reach, n.blamed = ReachUnknown, nil
		t.index(n)
	}
}

func (t *Tracker) failedFor(asker, cand NodeID) bool {
	a := t.nodes[asker]
	if a == nil {
		return false
	}
	at, ok := a.failed[cand]
	return ok && time.Since(at) < failedOffer
}

// mappedHere reports whether a node's port mapping is on the address it
// registers from: the same IP, another port. (A mapping on a router behind
// another NAT is of no use; and a node must not have the tracker dial
// hosts other than its own.)
func mappedHere(mapped, observed string) bool {
	if mapped == "" {
		return false
	}
	m, err1 := netip.ParseAddrPort(mapped)
	o, err2 := netip.ParseAddrPort(observed)
	return err1 == nil && err2 == nil && m.Port() != 0 && m.Addr().Unmap() == o.Addr().Unmap()
}

// shouldProbe reports whether id is due for a dial-back, and marks it
// probing; it returns the address to dial.
func (t *Tracker) shouldProbe(id NodeID) (string, bool) {
	if t.cfg.Prober == nil {
		return "", false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[id]
	// A node first checks its NAT through the echo (the Prober's socket):
	// a dial-back dropped by its NAT before that would make the NAT map
	// the node's flow to the echo to another port.
	settled := n != nil && (n.nat != NATUnknown || time.Since(n.admitted) > echoGrace)
	due := settled && !n.probing && (n.reach == ReachUnknown || (n.reach == ReachUnreachable && time.Since(n.probed) > reprobeAfter))
	if !due {
		return "", false
	}
	n.probing = true
	return n.info.Addr, true
}

// probeTimeout is how long a dial-back may take.
const probeTimeout = 1500 * time.Millisecond

// probe dials a node back from the Prober and records what it found.
func (t *Tracker) probe(ctx context.Context, id NodeID, addr string, key ed25519.PublicKey) {
	select {
	case t.probes <- struct{}{}:
		defer func() { <-t.probes }()
	case <-ctx.Done():
		return
	}
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	c, err := t.cfg.Prober.Dial(pctx, addr, key)
	if err == nil && !t.cfg.Station.IsZero() {
		err = helloBack(pctx, c, t.cfg.Station)
	}
	cancel()
	if c != nil {
		c.Close(CodeNormal, "dial-back")
	}
	reach := ReachUnreachable
	if err == nil {
		reach = ReachPublic
	}
	t.log.Debug("dial-back", "addr", addr, "reach", reach, "err", err)
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[id]
	if n == nil {
		return
	}
	t.unindex(n)
	n.probing, n.probed = false, time.Now()
	if n.info.Addr == addr { // else it moved meanwhile: dial the new one
		n.reach = reach
	}
	t.index(n)
}

// helloBack says Hello on c as a node not joined and waits for the
// answer: a Hello for station.
func helloBack(ctx context.Context, c Conn, station NodeID) error {
	if err := c.Send(ctx, AppendMessage(nil, &Hello{Station: station, Depth: -1, Observed: c.RemoteAddr()})); err != nil {
		return err
	}
	b, err := c.Receive(ctx)
	if err != nil {
		return err
	}
	m, err := ParseMessage(b)
	if err != nil {
		return err
	}
	h, ok := m.(*Hello)
	switch {
	case !ok || h.Station != station:
		return errors.New("control: dial-back answered with something other than a Hello for the station")
	case h.Depth == 0 && IDOf(c.RemoteKey()) != station:
		return errFalseRoot
	}
	return nil
}

// hostKey is the unit MaxPerHost counts: an IPv4 /24 or an IPv6 /64; ""
// for loopback and for addresses that are not IP (the in-memory network).
func hostKey(addr string) string {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ap.Addr().IsLoopback() {
		return ""
	}
	bits := 64
	if ap.Addr().Unmap().Is4() {
		bits = 24
	}
	p, _ := ap.Addr().Unmap().Prefix(bits)
	return p.String()
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
			if n != t.self && now.Sub(n.seen) > offerFor {
				continue // silent since: perhaps gone (its session may take the idle timeout to end)
			}
			if nid == id || t.isDescendant(n, id) || n.heldFull(now) || t.failedFor(id, nid) {
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
			n.hold(now, holdFor)
		}
	}
	return out
}

// hold holds one more of n's slots for a joiner, for d from now.
func (n *tracked) hold(now time.Time, d time.Duration) {
	if now.After(n.heldUntil) {
		n.held = 0
	}
	n.held++
	if until := now.Add(d); until.After(n.heldUntil) {
		n.heldUntil = until
	}
}

// heldFull reports whether every free slot of n is held for joiners.
func (n *tracked) heldFull(now time.Time) bool {
	return now.Before(n.heldUntil) && n.held >= n.info.FreeSlots
}

// maxDisplace is how many parents of leaves one answer lists.
const maxDisplace = 4

// displaceable lists parents of leaves, the shallowest first, where the
// asker (not a leaf) would sit above its depth (at any level when it has
// none): none of them its descendant. With restricted, only the places of
// restricted leaves: to be given to a public joiner, which can take the
// leaf as a child then (no one else could feed it).
func (t *Tracker) displaceable(id NodeID, depth int, restricted bool) []PeerInfo {
	var out []PeerInfo
	seen := make(map[NodeID]bool)
	for d := 1; d <= t.maxLeaf && len(out) < maxDisplace && (depth < 0 || d < depth); d++ {
		for _, leaf := range t.leaves[d] {
			p := t.nodes[leaf.parent]
			if p == nil || leaf.restricted() != restricted || leaf.info.ID == id || p.info.ID == id || seen[p.info.ID] || p.info.Depth != d-1 || t.isDescendant(p, id) {
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

// maxIndependent is how many nodes on other branches an answer to a
// joined node lists; independentTries bounds the nodes looked at to find
// them.
const (
	maxIndependent   = 4
	independentTries = 64
)

// independent lists public nodes (any it can dial) that are fed through
// none of asker's ancestors and are not below it: backups that go on
// playing whichever of its ancestors dies. Nodes are picked at random.
// t.mu is held.
func (t *Tracker) independent(asker *tracked, now time.Time) []PeerInfo {
	chain := make(map[NodeID]bool)
	for id, i := asker.parent, 0; !id.IsZero() && i < MaxDepth; i++ {
		p := t.nodes[id]
		if p == nil || p == t.self {
			break
		}
		chain[id] = true
		id = p.parent
	}
	if len(chain) == 0 {
		return nil // under the root: every other node is independent, and the candidates do
	}
	var out []PeerInfo
	tries := 0
	for nid, n := range t.nodes { // map order: a random pick
		if tries++; tries > independentTries || len(out) == maxIndependent {
			break
		}
		if n == t.self || n == asker || n.leaf || n.info.Depth < 1 || !t.offered(n) || now.Sub(n.seen) > offerFor || t.failedFor(asker.info.ID, nid) {
			continue
		}
		if t.fedThrough(n, chain) || t.isDescendant(n, asker.info.ID) {
			continue
		}
		out = append(out, n.info)
	}
	return out
}

// fedThrough reports whether n or one of its ancestors is in ids.
func (t *Tracker) fedThrough(n *tracked, ids map[NodeID]bool) bool {
	for i := 0; n != nil && n != t.self && i < MaxDepth; i++ {
		if ids[n.info.ID] {
			return true
		}
		if n.parent.IsZero() {
			return false
		}
		n = t.nodes[n.parent]
	}
	return false
}

// publicParents lists full public nodes, deep first, for a restricted
// asker when no public node has a free slot: such a parent gives it the
// place of a child that takes children but has none yet, whom other nodes
// can feed (see pickChildToDisplace); the deepest are likeliest to have
// one. Public slots are scarce for restricted nodes and not for the
// others, which punched parents can feed too. t.mu is held.
func (t *Tracker) publicParents(id NodeID, now time.Time) []PeerInfo {
	var out []PeerInfo
	for d := t.maxDepth; d >= 0 && len(out) < maxDisplace; d-- {
		for nid, n := range t.relayed[d] {
			if nid == id || (n != t.self && now.Sub(n.seen) > offerFor) || t.isDescendant(n, id) || t.failedFor(id, nid) {
				continue
			}
			out = append(out, n.info)
			if len(out) == maxDisplace {
				break
			}
		}
	}
	return out
}

// Nodes returns a snapshot of every node registered, the root included.
func (t *Tracker) Nodes() []TrackedNode {
	t.refreshSelf()
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]TrackedNode, 0, len(t.nodes))
	for _, n := range t.nodes {
		out = append(out, TrackedNode{PeerInfo: n.info, Parent: n.parent, Seen: n.seen, Reach: n.reach})
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
