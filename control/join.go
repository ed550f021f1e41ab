package control

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/p2pradio/p2pradio/output"
)

const (
	dialTimeout   = 2 * time.Second
	answerTimeout = time.Second
	maxCandidates = 3 // dialed at once when looking for a parent
	maxKnownPeers = 64
	// failedFor is how long a peer that died or did not answer is not
	// dialed again (the rendezvous and neighbours may still list it).
	failedFor = 10 * time.Second
	// probeGrace is how long probe waits for more answers after the
	// first; probeStagger is how long it waits for a first answer before
	// it dials more candidates.
	probeGrace   = 50 * time.Millisecond
	probeStagger = 300 * time.Millisecond
)

// join finds a parent through the rendezvous and subscribes to it; the
// runners-up become backups. A node that can relay and finds no free slot
// takes a leaf's place.
func (o *Overlay) join(ctx context.Context, rv *rendezvous) *peer {
	o.mu.Lock()
	hint := o.hint
	o.hint = nil
	o.mu.Unlock()
	var found []ranked
	var cands []PeerInfo
	why := "" // why no parent can be found, when known
	if hint != nil {
		found = o.probe(ctx, []PeerInfo{*hint}, true, 1, nil)
	}
	if len(found) == 0 {
		cands = rv.candidates(ctx)
		punch, displace := rv.punchable(), rv.displaceable()
		if len(cands) == 0 && len(punch) == 0 {
			why = "no reachable parent: every node the rendezvous knows that we can reach is full"
			if Reach(o.reach.Load()) == ReachUnreachable && NATBehaviour(o.nat.Load()) != NATPreserves {
				why += " (behind a NAT that maps each destination apart, we can be fed only by a public relay)"
			}
			o.mu.Lock()
			o.waiting = why
			o.mu.Unlock()
		}
		// The ways are ordered by what the rendezvous offered just now:
		// what neighbours told of their free slots may be seconds old,
		// and dialing those first cost an orphan seconds when they were
		// full.
		for _, way := range joinOrder(rv.offered(), displace, punch) {
			switch way {
			case wayDirect:
				found = o.probe(ctx, cands, true, maxCandidates, nil)
			case wayDisplace:
				// A full parent that gives us a child's place: a leaf's
				// when we can relay, or, when only public nodes can feed
				// us, a relay's (the rendezvous lists what fits us).
				found = o.probe(ctx, displace, false, 2, nil)
			case wayPunch:
				o.log.Debug("join: trying punches", "candidates", len(cands), "punchable", len(punch))
				found = o.joinPunched(ctx, rv, punch)
			}
			if len(found) > 0 {
				break
			}
		}
	}
	var parent *peer
	for _, r := range found {
		switch {
		case parent == nil && o.subscribeTo(ctx, r.p, 0) && o.takeParent(r.p):
			parent = r.p
			o.adoptPath(parent)
			o.log.Info("joined", "parent", parent.conn.RemoteAddr(), "depth", r.depth+1)
		case parent != nil && !r.p.fedThrough([]NodeID{parent.id, o.self}) && o.addBackup(r.p):
		default:
			r.p.conn.Close(CodeGoodbye, "")
		}
	}
	if parent == nil {
		rv.refresh()
		if why != "" {
			// A full parent that refused to give us a child's place
			// does not change why.
			o.mu.Lock()
			o.waiting = why
			o.mu.Unlock()
		}
	}
	return parent
}

// canRelay reports whether the node can take a child at all.
func (o *Overlay) canRelay() bool { return o.maxChildren() > 0 }

// findBackups connects to more candidates, kept warm for repair and a
// fast switch: none fed by our ancestors, nor by another backup (so that
// one death costs at most one of them).
func (o *Overlay) findBackups(ctx context.Context, rv *rendezvous) {
	cands := rv.candidates(ctx)
	avoid := o.ancestors()
	_, backups := o.links()
	for _, b := range backups {
		avoid = append(avoid, b.id)
	}
	found := o.probe(ctx, cands, false, 2, avoid)
	o.log.Debug("backup search", "candidates", len(cands), "found", len(found))
	for _, r := range found {
		if !o.addBackup(r.p) {
			r.p.conn.Close(CodeGoodbye, "")
		}
	}
}

// climb keeps the tree shallow under churn (see planClimb): the node
// subscribes to the new parent from its next chunk before it leaves the
// old one, which stays as backup when it can, so that there is no gap.
func (o *Overlay) climb(ctx context.Context, rv *rendezvous, parent *peer) bool {
	o.mu.Lock()
	depth := o.depth
	o.mu.Unlock()
	if depth < 2 {
		return false
	}
	// A backup with a free slot well above us first: no round trip to the
	// rendezvous, no dial, and climbers spread over their own backups.
	_, backups := o.links()
	views := appendSnapshots(nil, backups)
	if i := backupToClimb(depth, views, o.self); i >= 0 && o.subscribeTo(ctx, backups[i], uint64(o.newest()+1)) {
		return o.climbOnto(ctx, parent, ranked{p: backups[i], peerView: views[i]}, depth)
	}
	// The rendezvous's list as it answers now, without the peers heard of
	// from neighbours: a node that an ancestor took deeper heard of its
	// neighbours before, and their depths and free slots are as stale
	// (most are below that ancestor too): probing them cost the climb
	// half a second, or dial timeouts, to learn they were too deep.
	rv.candidates(ctx)
	plan := planClimb(depth, o.canRelay(), rv.offered(), rv.punchable(), rv.displaceable())
	// A target we hold as a backup already (probe dials only the
	// others): subscribing to it moves us there. One that refuses stays
	// a backup.
	_, backups = o.links()
	for _, b := range backups {
		if !slices.ContainsFunc(plan.targets, func(c PeerInfo) bool { return c.ID == b.id }) {
			continue
		}
		v := b.snapshot()
		if v.depth < 0 || v.depth > plan.most || !canServe(v, o.self, plan.needSlot, nil) {
			continue
		}
		if o.subscribeTo(ctx, b, uint64(o.newest()+1)) {
			return o.climbOnto(ctx, parent, ranked{p: b, peerView: v}, depth)
		}
	}
	found := o.probe(ctx, plan.targets, plan.needSlot, 2, nil)
	if len(found) == 0 && len(plan.punch) > 0 {
		found = o.joinPunched(ctx, rv, plan.punch)
	}
	for i, r := range found {
		if i > 0 || r.depth > plan.most || !o.subscribeTo(ctx, r.p, uint64(o.newest()+1)) {
			r.p.conn.Close(CodeGoodbye, "")
			continue
		}
		return o.climbOnto(ctx, parent, r, depth)
	}
	return false
}

// climbOnto makes r, which has just welcomed our Subscribe, our parent in
// place of parent (which becomes a backup), unless parent died meanwhile
// (r then simply takes its place) or things changed under the climb.
func (o *Overlay) climbOnto(ctx context.Context, parent *peer, r ranked, depth int) bool {
	o.mu.Lock()
	if o.parent == nil && !r.p.unsubscribed.Load() {
		// The old parent died while we climbed: the new one feeds
		// us already (rejoining would cost the bridge seconds).
		o.parent, o.waiting = r.p, ""
		o.backups = slices.DeleteFunc(o.backups, func(b *peer) bool { return b == r.p })
		o.mu.Unlock()
		o.adoptPath(r.p)
		o.log.Info("climbed", "from", depth, "to", r.p.snapshot().depth+1, "parent", r.p.conn.RemoteAddr(), "orphaned", true)
		return true
	}
	if o.parent != parent || r.p.unsubscribed.Load() {
		// We found another parent meanwhile, or the new one
		// displaced us as soon as it welcomed us (the old one feeds
		// us still).
		backup := slices.Contains(o.backups, r.p)
		o.mu.Unlock()
		o.log.Debug("climb undone", "addr", r.p.conn.RemoteAddr(), "displaced", r.p.unsubscribed.Load())
		if backup {
			o.send(ctx, r.p, &Unsubscribe{}) // it stays a backup
		} else {
			r.p.conn.Close(CodeGoodbye, "")
		}
		return false
	}
	// The old parent becomes the first backup (it is fed by none of
	// our new ancestors: it is deeper than the new parent); the last
	// backup goes when there are too many.
	o.parent = r.p
	o.backups = slices.DeleteFunc(o.backups, func(b *peer) bool { return b == r.p })
	var old *peer
	if o.cfg.Backups > 0 {
		o.backups = slices.Insert(o.backups, 0, parent)
	} else {
		old = parent
	}
	if len(o.backups) > o.cfg.Backups {
		old = o.backups[len(o.backups)-1]
		o.backups = o.backups[:len(o.backups)-1]
	}
	o.mu.Unlock()
	if old != nil {
		old.conn.Close(CodeGoodbye, "replaced")
	}
	o.send(ctx, parent, &Unsubscribe{})
	o.adoptPath(r.p)
	o.log.Info("climbed", "from", depth, "to", r.depth+1, "parent", r.p.conn.RemoteAddr())
	return true
}

// promote makes the backup our pushing parent.
func (o *Overlay) promote(ctx context.Context, b *peer) bool {
	from := uint64(max(o.newest()+1, 0))
	if !o.subscribeTo(ctx, b, from) {
		if time.Since(time.Unix(0, b.lastHeard.Load())) > answerTimeout {
			o.log.Debug("backup silent", "addr", b.conn.RemoteAddr())
			b.conn.Close(CodeGoodbye, "silent")
		}
		// A backup that refused (no free slot) stays: it is still a
		// source to pull from.
		return false
	}
	if !o.takeParent(b) {
		if !b.unsubscribed.Load() {
			o.send(ctx, b, &Unsubscribe{}) // it stays a backup
		}
		return false
	}
	o.mu.Lock()
	o.backups = slices.DeleteFunc(o.backups, func(p *peer) bool { return p == b })
	o.mu.Unlock()
	o.adoptPath(b)
	o.log.Info("backup promoted", "addr", b.conn.RemoteAddr())
	return true
}

// takeParent makes p, which welcomed our Subscribe, our parent, unless it
// has displaced us since (its Unsubscribe came before we took it: see
// unsubscribed) or we have another parent already; it reports whether it
// did. A parent that no longer feeds
// us would be judged stalled only after the stall timeout, with no
// backup yet after a join.
func (o *Overlay) takeParent(p *peer) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case p.unsubscribed.Load():
		o.log.Debug("displaced as we subscribed", "addr", p.conn.RemoteAddr())
		return false
	case o.parent != nil && o.parent != p:
		// A climb that started before we lost our parent landed first.
		return false
	}
	o.parent, o.waiting = p, ""
	return true
}

// subscribeTo asks p to push to us and waits for its answer.
func (o *Overlay) subscribeTo(ctx context.Context, p *peer, from uint64) bool {
	select {
	case <-p.welcome:
	default:
	}
	o.mu.Lock()
	p.unsubscribed.Store(false)
	o.mu.Unlock()
	if o.send(ctx, p, &Subscribe{From: from}) != nil {
		return false
	}
	t := time.NewTimer(answerTimeout)
	defer t.Stop()
	select {
	case a := <-p.welcome:
		if a.ok {
			now := time.Now().UnixNano()
			p.lastNew.Store(now)
			return true
		}
		o.mu.Lock()
		o.waiting = a.reason
		o.mu.Unlock()
		o.markRefused(p.id)
		o.log.Debug("subscription refused", "addr", p.conn.RemoteAddr(), "reason", a.reason)
	case <-t.C:
	case <-ctx.Done():
	case <-p.conn.Done():
	}
	return false
}

// adoptPath takes depth and path from our parent and tells our children.
func (o *Overlay) adoptPath(parent *peer) {
	v := parent.snapshot()
	if v.depth < 0 {
		return
	}
	if slices.Contains(v.path, o.self) {
		o.log.Warn("loop detected: dropping parent", "addr", parent.conn.RemoteAddr())
		parent.conn.Close(CodeGoodbye, "loop")
		return
	}
	o.mu.Lock()
	if o.parent != parent {
		o.mu.Unlock()
		return
	}
	changed := o.depth != v.depth+1 || len(o.path) != len(v.path)+1
	newParent := len(o.path) == 0 || o.path[len(o.path)-1] != parent.id
	o.depth = v.depth + 1
	o.path = append(v.path, parent.id)
	o.mu.Unlock()
	if changed {
		o.goFunc(func() { o.broadcastStatus(context.Background()) })
	}
	if newParent {
		// Our children learn where we are fed from: should we die,
		// they try it first (see reclaim).
		o.goFunc(func() { o.tellChildren(context.Background(), &PeerList{Peers: []PeerInfo{parent.info()}}) })
	}
}

// tellChildren sends m to each of our children.
func (o *Overlay) tellChildren(ctx context.Context, m Message) {
	msg := AppendMessage(nil, m)
	for _, p := range o.peerList() {
		if p.child.Load() && !p.leaving.Load() {
			sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			p.conn.Send(sctx, msg)
			cancel()
		}
	}
}

// dialPeer connects to a candidate and exchanges Hellos.
func (o *Overlay) dialPeer(runCtx context.Context, info PeerInfo) (*peer, time.Duration) {
	return o.dialPeerWithin(runCtx, info, dialTimeout)
}

// dialPeerWithin is dialPeer with a time limit other than dialTimeout; the
// link lives on runCtx.
func (o *Overlay) dialPeerWithin(runCtx context.Context, info PeerInfo, limit time.Duration) (*peer, time.Duration) {
	ctx, cancel := o.patience(runCtx, limit)
	defer cancel()
	start := time.Now()
	c, err := o.cfg.Transport.Dial(ctx, info.Addr, info.ID.Key())
	if err != nil {
		o.log.Debug("dial failed", "addr", info.Addr, "after", time.Since(start), "starved", o.starvedFor(), "err", err)
		return nil, 0
	}
	p := newPeer(o, c, true)
	if !o.startPeer(runCtx, p) {
		return nil, 0
	}
	if o.send(ctx, p, o.hello(p)) != nil {
		c.Close(CodeGoodbye, "")
		return nil, 0
	}
	select {
	case <-p.helloed:
	case <-ctx.Done():
		o.log.Debug("no hello", "addr", info.Addr, "after", time.Since(start), "starved", o.starvedFor())
		c.Close(CodeGoodbye, "no hello")
		return nil, 0
	}
	rtt := c.RTT()
	if rtt <= 0 {
		rtt = time.Since(start) / 2
	}
	return p, rtt
}

// probe dials candidates (see orderCandidates), most at once, and returns
// those that answered and could serve us (see canServe), best first (see
// rankProbed). It returns soon after the first answer: a dead candidate
// (the rendezvous may not know yet) must not hold up the living; while
// none has answered, the next ones are dialed every probeStagger.
func (o *Overlay) probe(ctx context.Context, cands []PeerInfo, needSlot bool, most int, avoid []NodeID) []ranked {
	parent, backups := o.links()
	var linked []NodeID
	for _, p := range append(backups, parent) {
		if p != nil {
			linked = append(linked, p.id)
		}
	}
	cands = orderCandidates(cands, o.self, linked, needSlot, o.failedRecently, rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())))
	cands = cands[:min(len(cands), 4*most)]
	if len(cands) == 0 {
		return nil
	}
	var (
		mu      sync.Mutex
		out     []ranked
		closed  bool
		results = make(chan struct{}, len(cands))
	)
	dial := func(c PeerInfo) {
		o.goFunc(func() {
			defer func() { results <- struct{}{} }()
			p, rtt := o.dialPeer(ctx, c)
			if p == nil {
				if o.starvedFor() < schedLimit {
					o.markFailed(c.ID) // else the slow one may be us
				}
				return
			}
			r := ranked{p: p, rtt: rtt, peerView: p.snapshot()}
			ok := canServe(r.peerView, o.self, needSlot, avoid)
			mu.Lock()
			if !ok || closed {
				mu.Unlock()
				p.conn.Close(CodeGoodbye, "")
				return
			}
			out = append(out, r)
			mu.Unlock()
		})
	}
	next, pending := 0, 0
	dialNext := func() {
		end := min(next+most, len(cands))
		for _, c := range cands[next:end] {
			dial(c)
		}
		pending += end - next
		next = end
	}
	dialNext()
	stagger := time.NewTicker(probeStagger)
	defer stagger.Stop()
	var grace <-chan time.Time
wait:
	for pending > 0 || next < len(cands) {
		select {
		case <-results:
			pending--
			mu.Lock()
			got := len(out)
			mu.Unlock()
			if grace == nil && got > 0 {
				grace = time.After(probeGrace)
			}
			if pending == 0 && grace == nil && next < len(cands) {
				stagger.Reset(probeStagger)
				dialNext()
			}
			if pending == 0 && (grace != nil || next == len(cands)) {
				break wait
			}
		case <-stagger.C:
			if grace == nil && next < len(cands) {
				dialNext()
			}
		case <-grace:
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	mu.Lock()
	closed = true
	res := slices.Clone(out)
	mu.Unlock()
	rankProbed(res, o.newest())
	return res
}

// subscribe answers a peer that wants to become our child.
func (o *Overlay) subscribe(ctx context.Context, p *peer, m *Subscribe) error {
	// One subscription at a time, so that two cannot take the last slot.
	o.subMu.Lock()
	defer o.subMu.Unlock()
	if p.child.Load() {
		return nil
	}
	o.mu.Lock()
	depth, inPath := o.depth, slices.Contains(o.path, p.id)
	o.mu.Unlock()
	switch {
	case depth < 0:
		return o.send(ctx, p, &Refuse{Reason: "not joined"})
	case inPath:
		return o.send(ctx, p, &Refuse{Reason: "loop: you are my ancestor"})
	}
	if o.freeSlots() == 0 && o.overloaded() {
		return o.send(ctx, p, &Refuse{Reason: "overloaded"})
	}
	if o.freeSlots() == 0 {
		if c := o.silentChild(time.Now()); c != nil {
			// Most likely dead, and the newcomer one of its orphans
			// (see reclaim): it takes its place.
			o.log.Debug("a silent child's place taken", "silent", c.conn.RemoteAddr(), "by", p.conn.RemoteAddr())
			c.conn.Close(CodeGoodbye, "silent")
			o.dropPeer(c)
		}
	}
	if o.freeSlots() == 0 {
		// Capable uploaders move up: a newcomer that can relay takes the
		// place of a child that cannot, which is moved away once the
		// newcomer has joined (see handOver). Until then we feed one child
		// more than the budget allows.
		victim := o.leafChild(p)
		if victim == nil {
			return o.send(ctx, p, &Refuse{Reason: "no free slot"})
		}
		victim.leaving.Store(true)
		o.goFunc(func() { o.handOver(ctx, victim, p) })
	}
	if err := o.send(ctx, p, &Welcome{}); err != nil {
		return err
	}
	if err := o.send(ctx, p, o.status()); err != nil {
		return err
	}
	// Peer exchange: the newcomer learns our parent, backups and children,
	// candidates for its backups or for a rejoin that need no rendezvous.
	if err := o.send(ctx, p, &PeerList{Peers: o.neighbours(p)}); err != nil {
		return err
	}
	// The burst: recent chunks so the child starts at once, with its bit
	// reservoir; then everything live.
	n := o.host.Attach(p.conn, m.From, o.burst())
	p.childSince.Store(time.Now().UnixNano())
	p.child.Store(true)
	o.log.Debug("new child", "addr", p.conn.RemoteAddr(), "burst", n)
	return nil
}

// handOverMax is how long a displaced child is kept while its
// replacement joins.
const handOverMax = 2 * time.Second

// handOver displaces victim for by once by has joined through us (its
// Status says its depth): the victim's next join then finds by ready to
// take it, with the slot it freed; a node not joined yet refuses
// subscribers. When by leaves first, the victim stays.
func (o *Overlay) handOver(ctx context.Context, victim, by *peer) {
	t := time.NewTicker(tick)
	defer t.Stop()
	deadline := time.Now().Add(handOverMax)
	for by.snapshot().depth < 0 && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-victim.conn.Done():
			return
		case <-by.conn.Done():
			victim.leaving.Store(false)
			return
		case <-t.C:
		}
	}
	o.displace(ctx, victim, by)
}

// silentChild returns the child that has been silent for reclaimAfter
// (see the policy silentChild), or nil. Over QUIC, a child's packets
// since the last look count as life, as in dropIdle; a node whose own
// loop ran late lately waits twice that lateness longer.
func (o *Overlay) silentChild(now time.Time) *peer {
	var children []*peer
	var silences []time.Duration
	for _, q := range o.peerList() {
		if !q.child.Load() || q.leaving.Load() {
			continue
		}
		if pc, ok := q.conn.(packetCounter); ok {
			if n := pc.PacketsReceived(); q.packets.Swap(n) != n {
				q.lastHeard.Store(now.UnixNano())
			}
		}
		children = append(children, q)
		silences = append(silences, now.Sub(time.Unix(0, q.lastHeard.Load())))
	}
	// A child's messages may wait in our socket while we are starved of
	// CPU (see judgeStall).
	if i := silentChild(silences, reclaimAfter+2*o.starvedFor()); i >= 0 {
		return children[i]
	}
	return nil
}

// reclaimWithin bounds an orphan's try at its grandparent, which takes
// the punch's wait (see joinPunched) and about four round trips (the
// handshake, the Hellos, the Subscribe): a dead or unreachable one must
// not hold up the rest of the search (after a mass failure, most
// grandparents are dead too). rtt is the round trip to the rendezvous,
// our best guess of the one to the grandparent.
func reclaimWithin(punchWait, rtt time.Duration) time.Duration {
	return punchWait + 5*max(rtt, 20*time.Millisecond)
}

// reclaim is an orphan's first try when its parent died: its parent's
// parent, which still counts the dead one among its children (until it
// has been silent for silentAfter) but gives its place to a newcomer once
// it has been silent for reclaimAfter. So the orphan keeps its depth, and
// its subtree with it, instead of rejoining wherever a slot is free (often
// at the bottom). It returns the new parent, or nil.
func (o *Overlay) reclaim(runCtx context.Context, rv *rendezvous) *peer {
	o.mu.Lock()
	gp := o.lostGrand
	o.lostGrand = NodeID{}
	var info *PeerInfo
	for i := len(o.heard) - 1; i >= 0 && !gp.IsZero(); i-- {
		if o.heard[i].ID == gp {
			info = &o.heard[i]
			break
		}
	}
	o.mu.Unlock()
	if info == nil || o.failedRecently(gp) {
		return nil
	}
	start := time.Now()
	rtt := rv.rtt()
	punchWait := max(3*rtt, 100*time.Millisecond)
	within := reclaimWithin(punchWait, rtt)
	ctx, cancel := context.WithTimeout(runCtx, within)
	defer cancel()
	if rv.send(ctx, &Connect{Target: gp}) {
		// Behind a NAT, it opens its mapping to us first (see
		// joinPunched); a public one ignores the wait.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(punchWait):
		}
	}
	// The link lives on runCtx; ctx bounds only this try.
	p, _ := o.dialPeerWithin(runCtx, *info, max(within-time.Since(start), tick))
	if p == nil {
		return nil
	}
	if v := p.snapshot(); v.depth < 0 || slices.Contains(v.path, o.self) || !o.subscribeTo(ctx, p, uint64(max(o.newest()+1, 0))) || !o.takeParent(p) {
		p.conn.Close(CodeGoodbye, "")
		return nil
	}
	o.adoptPath(p)
	o.log.Info("took the dead parent's place", "parent", p.conn.RemoteAddr())
	return p
}

// leafChild returns one of our children that can take no children itself
// when p can (nil otherwise).
func (o *Overlay) leafChild(p *peer) *peer {
	if p.page() {
		return nil // the leaf would be sent to a parent it cannot dial
	}
	var children []*peer
	var views []peerView
	for _, q := range o.peerList() {
		if q.child.Load() && !q.leaving.Load() {
			children = append(children, q)
			views = append(views, q.snapshot())
		}
	}
	slots := func(kbps int) int { return slotBudget{kbps}.slots(o.bitrate()) }
	if i := pickChildToDisplace(p.snapshot(), views, slots); i >= 0 {
		return children[i]
	}
	return nil
}

// displace stops pushing to the leaf child victim, so that by takes its
// slot: it is told where by went (a parent with free slots now) and that
// we unsubscribe it; it switches to a backup without a gap.
func (o *Overlay) displace(ctx context.Context, victim, by *peer) {
	o.host.Detach(victim.conn)
	victim.child.Store(false)
	// The victim's next join tries the newcomer first when it can take
	// children (it has free slots now); else no hint.
	hint := &PeerList{}
	if v := by.snapshot(); !v.restricted {
		info := by.info()
		info.FreeSlots = 1
		o.mu.Lock()
		info.Depth = o.depth + 1
		o.mu.Unlock()
		hint.Peers = []PeerInfo{info}
	}
	o.send(ctx, victim, hint)
	o.send(ctx, victim, &Unsubscribe{})
	o.log.Info("child displaced by a relaying node", "leaf", victim.conn.RemoteAddr(), "by", by.conn.RemoteAddr())
}

// neighbours describes up to 8 of our peers that have joined, except p
// and station pages.
func (o *Overlay) neighbours(except *peer) []PeerInfo {
	var out []PeerInfo
	o.mu.Lock()
	parent := o.parent
	o.mu.Unlock()
	ps := o.peerList()
	// Our parent first: a child whose parent (we) dies tries it first
	// (see reclaim).
	if i := slices.Index(ps, parent); i > 0 {
		ps[0], ps[i] = ps[i], ps[0]
	}
	for _, q := range ps {
		info := q.info()
		if q == except || info.Depth < 0 || q.page() {
			continue
		}
		out = append(out, info)
		if len(out) == 8 {
			break
		}
	}
	return out
}

// markFailed notes a peer that died, did not answer or did not feed us:
// it is not dialed again for failedFor, and the rendezvous hears of it.
func (o *Overlay) markFailed(id NodeID) {
	if id == o.id {
		return // the station's node: while it runs, it is the parent of last resort
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	o.failed[id] = now
	if len(o.report) < MaxFailed && !slices.Contains(o.report, id) {
		o.report = append(o.report, id)
	}
	if len(o.failed) > maxKnownPeers {
		for k, at := range o.failed {
			if now.Sub(at) > failedFor {
				delete(o.failed, k)
			}
		}
	}
}

// refusedFor is how long a peer that refused our Subscribe is not dialed
// again to be our parent: the rendezvous may offer it for seconds yet
// (its free slots, or a child's place, as last registered), and one full
// parent offered so was dialed by hundreds of joiners, some of them
// again and again while their buffer ran dry.
const refusedFor = 3 * time.Second

// markRefused notes a peer that refused to feed us; unlike markFailed,
// the rendezvous does not hear of it: it is alive.
func (o *Overlay) markRefused(id NodeID) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	if at, ok := o.failed[id]; ok && now.Sub(at) < failedFor-refusedFor {
		return // failed lately: that lasts longer
	}
	// failedRecently counts failedFor from the time kept.
	o.failed[id] = now.Add(refusedFor - failedFor)
}

// takeFailed returns the failures to report to the rendezvous since the
// last call.
func (o *Overlay) takeFailed() []NodeID {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := o.report
	o.report = nil
	return out
}

func (o *Overlay) failedRecently(id NodeID) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	at, ok := o.failed[id]
	return ok && time.Since(at) < failedFor
}

// learn adds peers heard of from neighbours to the candidates.
func (o *Overlay) learn(peers []PeerInfo) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.heard = append(o.heard, peers...)
	if len(o.heard) > maxKnownPeers {
		o.heard = o.heard[len(o.heard)-maxKnownPeers:]
	}
}

var _ output.Peer = Conn(nil)
