package p2pradio

import (
	"cmp"
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/p2pradio/p2pradio/control"
)

const (
	tick           = 100 * time.Millisecond
	registerEvery  = 2 * time.Second
	dialTimeout    = 2 * time.Second
	answerTimeout  = time.Second
	maxCandidates  = 3 // dialed at once when looking for a parent
	maxKnownPeers  = 64
	backupInterval = time.Second     // between attempts to find a backup
	backupAfter    = 2 * time.Second // settle before looking for a backup
)

// acceptLoop takes incoming links: rendezvous sessions (at a broadcaster
// with the embedded tracker) and peers.
func (n *Node) acceptLoop(ctx context.Context) {
	for {
		c, err := n.tr.Accept(ctx)
		if err != nil {
			return
		}
		n.goFunc(func() { n.serveIncoming(ctx, c) })
	}
}

// serveIncoming reads an incoming link's first message to tell what it is.
func (n *Node) serveIncoming(ctx context.Context, c control.Conn) {
	fctx, cancel := context.WithTimeout(ctx, answerTimeout*3)
	b, err := c.Receive(fctx)
	cancel()
	if err != nil {
		c.Close(codeBadMessage, "no first message")
		return
	}
	m, err := control.ParseMessage(b)
	if err != nil {
		c.Close(codeBadMessage, err.Error())
		return
	}
	switch m := m.(type) {
	case *control.Register:
		if n.tracker == nil {
			c.Close(codeBadMessage, "no rendezvous here")
			return
		}
		n.tracker.Serve(ctx, c, m)
	case *control.Hello:
		p := n.newPeer(c)
		if !n.startPeer(ctx, p) {
			return
		}
		if err := n.handle(ctx, p, m); err != nil {
			n.kick(p, codeBadMessage, err)
		}
	default:
		c.Close(codeBadMessage, "unexpected first message")
	}
}

// statusLoop tells every neighbour this node's depth and free slots once a
// second, so that children learn their depth and backups stay warm.
func (n *Node) statusLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n.broadcastStatus(ctx)

	}
}

// broadcastStatus sends every neighbour our Status, and those that keep
// us as a backup (they dialed us and are not our children) our buffer map,
// so that they know what to pull from us.
func (n *Node) broadcastStatus(ctx context.Context) {
	st := control.AppendMessage(nil, n.status())
	var have []byte // built for the first peer that keeps us as a backup
	n.mu.Lock()
	peers := make([]*peer, 0, len(n.peers))
	for p := range n.peers {
		peers = append(peers, p)
	}
	n.mu.Unlock()
	for _, p := range peers {
		sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		p.conn.Send(sctx, st)
		if !p.dialed && !p.child.Load() {
			if have == nil {
				if h := n.have(); h != nil {
					have = control.AppendMessage(nil, h)
				}
			}
			if have != nil {
				p.conn.Send(sctx, have)
			}
		}
		cancel()
	}
}

// haveSpan is how many chunks, up to the newest, a buffer map covers.
const haveSpan = 64

// have is this node's buffer map (nil before its first chunk).
func (n *Node) have() *control.Have {
	newest := n.newest.Load()
	if newest < 0 {
		return nil
	}
	first := max(newest-haveSpan+1, n.firstSeq.Load(), 0)
	bm := make([]byte, (newest-first+8)/8)
	for s := first; s <= newest; s++ {
		if n.window.Get(uint64(s)) != nil {
			i := s - first
			bm[i/8] |= 0x80 >> (i % 8)
		}
	}
	return &control.Have{First: uint64(first), Bitmap: bm}
}

// maintain keeps a listener joined: a pushing parent, warm backups, fresh
// rendezvous registration; it replaces a dead or stalled parent.
func (n *Node) maintain(ctx context.Context) {
	rv := &rendezvous{n: n}
	defer rv.close()
	t := time.NewTicker(tick)
	defer t.Stop()
	var lastBackupTry, parentAt, lastClimb time.Time
	var lostParent control.NodeID        // the parent we last lost
	asked := make(map[uint64]*repairTry) // repair requests in flight
	searched := make(chan bool, 1)       // a search ended (true: we climbed)
	searching := false
	bridged := make(chan struct{}, 1) // the bridge ended
	bridging := false
	orphaned := false // no parent since the last tick
	for {
		n.mu.Lock()
		parent, backups := n.parent, slices.Clone(n.backups)
		n.mu.Unlock()
		now := time.Now()
		// A backup silent this long is dead: its Status and Have come
		// every second.
		backupSilence := 3 * n.cfg.StallTimeout / 2
		if parent != nil && n.stalled(ctx, parent, backups, now) {
			if now.Sub(time.Unix(0, parent.lastData.Load())) >= n.cfg.StallTimeout {
				// The backups were asked for chunks every tick for half the
				// stall timeout: a live one has answered by now, and a
				// subscription to a dead one would only wait for it.
				backupSilence = n.cfg.StallTimeout / 2
			}
			lostParent = parent.id
			n.log.Info("parent stalled", "addr", parent.conn.RemoteAddr())
			parent.conn.Close(codeGoodbye, "stalled")
			n.dropPeer(parent)
			parent = nil
		}
		if parent == nil {
			if !orphaned {
				// The recovery is the gap from the last chunk before this
				// to the first after, whoever sends it.
				orphaned = true
				n.parentSince.Store(now.UnixNano())
			}
			if !bridging && len(backups) > 0 && n.newest.Load() >= 0 {
				// Until a parent pushes again, pull from the backups.
				bridging = true
				n.goFunc(func() {
					n.bridge(ctx)
					bridged <- struct{}{}
				})
			}
			for _, b := range backups {
				switch {
				case now.Sub(time.Unix(0, b.lastHeard.Load())) > backupSilence:
					n.markFailed(b.id)
					b.conn.Close(codeGoodbye, "silent")
				case n.dependsOn(b, lostParent):
					// Fed through the parent we lost: it is cut off with us.
					b.conn.Close(codeGoodbye, "cut off")
				default:
					continue
				}
				n.log.Debug("backup dropped with the parent", "addr", b.conn.RemoteAddr())
				n.dropPeer(b)
			}
			n.mu.Lock()
			backups = slices.Clone(n.backups)
			n.mu.Unlock()
			for _, b := range backups {
				if n.promote(ctx, b) {
					parent = b
					break
				}
			}
			if parent == nil {
				parent = n.join(ctx, rv)
			}
			n.mu.Lock()
			backups = slices.Clone(n.backups)
			n.mu.Unlock()
		}
		if parent != nil {
			n.repair(ctx, parent, backups, now, asked)
		}
		if parent != nil {
			ancestors := n.ancestors()
			for _, b := range backups {
				if n.fedThrough(b, ancestors) {
					// The backup moved under one of our ancestors: find another.
					n.log.Debug("backup no longer independent", "addr", b.conn.RemoteAddr())
					b.conn.Close(codeGoodbye, "no longer independent")
					n.dropPeer(b)
				}
			}
		}
		orphaned = parent == nil
		if parent == nil {
			parentAt = time.Time{}
		} else if parentAt.IsZero() {
			parentAt = now
		}
		// Searches (a rendezvous round trip, dials, a subscription) run
		// beside this loop, one at a time, so that they never delay the
		// detection of a dead parent.
		select {
		case <-bridged:
			bridging = false
		default:
		}
		select {
		case climbed := <-searched:
			searching = false
			if climbed {
				parentAt = now
			}
		default:
		}
		if parent != nil && !searching && n.needBackups() > 0 && now.Sub(lastBackupTry) > backupInterval && now.Sub(parentAt) > backupAfter {
			lastBackupTry, searching = now, true
			n.goFunc(func() {
				n.findBackups(ctx, rv)
				searched <- false
			})
		}
		if parent != nil && !searching && now.Sub(lastClimb) > climbInterval && now.Sub(parentAt) > climbInterval {
			lastClimb, searching = now, true
			n.goFunc(func() { searched <- n.climb(ctx, rv, parent) })
		}
		rv.maybeRegister(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// bridge pulls the chunks after our newest from the backups, one after
// another each tick, while the node has no parent (it is rejoining, which
// can take longer than the buffer lasts when many nodes join at once), so
// that playback goes on.
func (n *Node) bridge(ctx context.Context) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for i := 0; ; i++ {
		n.mu.Lock()
		parent, backups := n.parent, slices.Clone(n.backups)
		n.mu.Unlock()
		if parent != nil || len(backups) == 0 {
			return
		}
		req := &control.Request{Seqs: seqsFrom(n.newest.Load()+1, bridgeAhead)}
		n.send(ctx, backups[i%len(backups)], req)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// bridgeAhead is how many chunks past the newest a bridge asks for.
const bridgeAhead = 5

// seqsFrom lists count sequence numbers from first on, leaving out
// negative ones (before the first chunk, newest is -1).
func seqsFrom(first int64, count int) []uint64 {
	var out []uint64
	for s := max(first, 0); s < first+int64(count); s++ {
		out = append(out, uint64(s))
	}
	return out
}

// needBackups is how many more backups the node wants.
func (n *Node) needBackups() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return max(n.cfg.Backups-len(n.backups), 0)
}

// addBackup keeps p as a backup if one is wanted and reports whether it did.
func (n *Node) addBackup(p *peer) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.backups) >= max(n.cfg.Backups, 0) || slices.Contains(n.backups, p) || n.parent == p {
		return false
	}
	n.backups = append(n.backups, p)
	n.log.Debug("backup added", "addr", p.conn.RemoteAddr(), "backups", len(n.backups))
	return true
}

// stalled tells a dead or stalled parent from a stream that is late at the
// source. When the parent has been silent for half the stall timeout, the
// backups are asked for the chunks after our newest; the parent is stalled
// once it has been silent for the stall timeout and a backup had audio it
// did not (or it has been silent for half as long again: rejoin).
func (n *Node) stalled(ctx context.Context, parent *peer, backups []*peer, now time.Time) bool {
	last := time.Unix(0, parent.lastData.Load())
	silent := now.Sub(last)
	if silent < n.cfg.StallTimeout/2 {
		return false
	}
	select {
	case <-parent.conn.Done():
		return true
	default:
	}
	if len(backups) == 0 {
		return silent > n.cfg.StallTimeout
	}
	// Ask the backups for what follows our newest chunk, and for the newest
	// itself, which any live backup holds: its answer proves it alive even
	// when the source is late and nobody has anything newer.
	req := &control.Request{Seqs: seqsFrom(n.newest.Load(), 5)}
	for _, b := range backups {
		n.send(ctx, b, req)
	}
	if silent < n.cfg.StallTimeout {
		return false
	}
	// A backup had audio the parent did not send, or every backup is gone
	// too (none has answered for half the stall timeout, though asked every
	// tick since), or this lasted half as long again (the backups may be cut
	// off as well; a source late by that much is rarer): the parent is the
	// problem, not the source.
	allSilent := true
	for _, b := range backups {
		if b.lastNew.Load() > last.UnixNano() {
			return true
		}
		if now.Sub(time.Unix(0, b.lastHeard.Load())) <= n.cfg.StallTimeout/2 {
			allSilent = false
		}
	}
	return allSilent || silent > 3*n.cfg.StallTimeout/2
}

// repairLag is how long a chunk may be missing behind the newest before it
// is requested from a neighbour; repairAgain is how long before asking the
// next one.
const (
	repairLag   = 200 * time.Millisecond
	repairAgain = 200 * time.Millisecond
	repairSpan  = 30 // chunks behind the newest that are checked
)

// repairTry is a missing chunk's requests so far.
type repairTry struct {
	at    time.Time // the last request
	tries int
}

// repair pulls the chunks missing behind the newest one received, well
// before their playout deadline: a chunk lost on the way or dropped by a
// busy parent is requested from a neighbour whose buffer map shows it (the
// backups first, then the parent), and if it has not come after
// repairAgain, from the next one, and so on, until it comes or its turn to
// play passes (then the player conceals it).
func (n *Node) repair(ctx context.Context, parent *peer, backups []*peer, now time.Time, asked map[uint64]*repairTry) {
	newest := n.newest.Load()
	if newest < 1 {
		return
	}
	from := max(newest-repairSpan, 0)
	sources := append(slices.Clone(backups), parent)
	reqs := make(map[*peer]*control.Request)
	for seq := from; seq < newest; seq++ {
		if n.window.Get(uint64(seq)) != nil {
			delete(asked, uint64(seq))
			continue
		}
		// Skip what came before we joined (the window starts at our first).
		if seq < n.firstSeq.Load() {
			continue
		}
		try := asked[uint64(seq)]
		if try != nil && now.Sub(try.at) < repairAgain {
			continue
		}
		// A chunk is missing only once a later one is here for repairLag.
		if try == nil && now.Sub(time.Unix(0, n.seenAt(uint64(seq+1)))) < repairLag {
			continue
		}
		if try == nil {
			try = &repairTry{}
			asked[uint64(seq)] = try
		}
		to := pickSource(sources, uint64(seq), try.tries)
		try.at = now
		try.tries++
		req := reqs[to]
		if req == nil {
			req = &control.Request{}
			reqs[to] = req
		}
		if len(req.Seqs) < control.MaxRequest {
			req.Seqs = append(req.Seqs, uint64(seq))
		}
	}
	for seq := range asked {
		if int64(seq) < from {
			delete(asked, seq)
		}
	}
	for to, req := range reqs {
		n.repairs.Add(int64(len(req.Seqs)))
		n.send(ctx, to, req)
	}
}

// pickSource chooses whom to ask for seq on its try-th request: the
// neighbours that hold it by their buffer maps, best evidence first, in
// turn; when none seems to, every neighbour in turn.
func pickSource(sources []*peer, seq uint64, try int) *peer {
	var best, maybe []*peer // the best evidence; any evidence
	bestRank := 0
	for _, p := range sources {
		r := p.holds(seq)
		if r > 0 {
			maybe = append(maybe, p)
		}
		switch {
		case r > bestRank:
			best, bestRank = []*peer{p}, r
		case r == bestRank && r > 0:
			best = append(best, p)
		}
	}
	switch {
	case try > 0 && len(maybe) > 1:
		best = maybe // past the first try, everyone who may hold it in turn
	case len(best) == 0:
		best = sources
	}
	return best[try%len(best)]
}

// registerLoop keeps a broadcaster that uses an external rendezvous
// registered there, as the root of the tree.
func (n *Node) registerLoop(ctx context.Context) {
	rv := &rendezvous{n: n}
	defer rv.close()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		rv.maybeRegister(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ancestors are the nodes between the broadcaster and us, parent included:
// a backup must be fed by none of them, so that it keeps playing whichever
// of them dies.
func (n *Node) ancestors() []control.NodeID {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []control.NodeID
	if len(n.path) > 1 {
		out = append(out, n.path[1:]...)
	}
	if n.parent != nil {
		out = append(out, n.parent.id)
	}
	return out
}

// fedThrough reports whether p is one of ids or is fed through one.
func (n *Node) fedThrough(p *peer, ids []control.NodeID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.ContainsFunc(ids, func(id control.NodeID) bool { return id == p.id || slices.Contains(p.path, id) })
}

// dependsOn reports whether p is id, or is fed through id, or through us.
func (n *Node) dependsOn(p *peer, id control.NodeID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.id == id || (!id.IsZero() && slices.Contains(p.path, id)) || slices.Contains(p.path, n.id())
}

// climbInterval is how often a node looks for a shallower parent.
const climbInterval = 5 * time.Second

// climb keeps the tree shallow under churn: a node at depth d that learns
// of a parent with a free slot at depth d-3 or less (never one of its
// descendants) moves there without a gap: it subscribes to the new parent
// from its next chunk before it leaves the old one, which stays as backup
// when it can. A node that can relay also takes the place of a leaf at
// depth d-1 or less (capable uploaders move up, with their subtrees).
func (n *Node) climb(ctx context.Context, rv *rendezvous, parent *peer) bool {
	n.mu.Lock()
	depth := n.depth
	n.mu.Unlock()
	if depth < 2 {
		return false
	}
	var better []control.PeerInfo
	for _, c := range rv.candidates(ctx) {
		if c.Depth >= 0 && c.Depth <= depth-3 && c.FreeSlots > 0 {
			better = append(better, c)
		}
	}
	needSlot, most := true, depth-3
	if len(better) == 0 && n.slots() > 0 {
		// No free slot high enough: take a leaf's place one level up or
		// more (the parent moves the leaf away). It cannot swing back: a
		// leaf never displaces.
		for _, c := range rv.displaceable() {
			if c.Depth >= 0 && c.Depth <= depth-2 {
				better = append(better, c)
			}
		}
		needSlot, most = false, depth-2
	}
	if len(better) == 0 {
		return false
	}
	found := n.probe(ctx, better, needSlot, 2, nil)
	for i, r := range found {
		if i > 0 || r.depth > most || !n.subscribeTo(ctx, r.p, uint64(n.newest.Load()+1)) {
			r.p.conn.Close(codeGoodbye, "")
			continue
		}
		n.mu.Lock()
		if n.parent != parent {
			n.mu.Unlock()
			r.p.conn.Close(codeGoodbye, "")
			return false
		}
		// The old parent becomes the first backup (it is fed by none of
		// our new ancestors: it is deeper than the new parent); the last
		// backup goes when there are too many.
		n.parent = r.p
		n.backups = slices.DeleteFunc(n.backups, func(b *peer) bool { return b == r.p })
		var old *peer
		if n.cfg.Backups > 0 {
			n.backups = slices.Insert(n.backups, 0, parent)
		} else {
			old = parent
		}
		if len(n.backups) > max(n.cfg.Backups, 0) {
			old = n.backups[len(n.backups)-1]
			n.backups = n.backups[:len(n.backups)-1]
		}
		n.mu.Unlock()
		if old != nil {
			old.conn.Close(codeGoodbye, "replaced")
		}
		n.send(ctx, parent, &control.Unsubscribe{})
		n.adoptPath(r.p)
		n.log.Info("climbed", "from", depth, "to", r.depth+1, "parent", r.p.conn.RemoteAddr())
		return true
	}
	return false
}

// promote makes the backup our pushing parent.
func (n *Node) promote(ctx context.Context, b *peer) bool {
	from := uint64(max(n.newest.Load()+1, 0))
	if !n.subscribeTo(ctx, b, from) {
		if time.Since(time.Unix(0, b.lastHeard.Load())) > answerTimeout {
			n.log.Debug("backup silent", "addr", b.conn.RemoteAddr())
			b.conn.Close(codeGoodbye, "silent")
		}
		// A backup that refused (no free slot) stays: it is still a
		// source to pull from.
		return false
	}
	n.mu.Lock()
	n.backups = slices.DeleteFunc(n.backups, func(p *peer) bool { return p == b })
	n.parent = b
	n.mu.Unlock()
	n.adoptPath(b)
	n.log.Info("backup promoted", "addr", b.conn.RemoteAddr())
	return true
}

// subscribeTo asks p to push to us and waits for its answer.
func (n *Node) subscribeTo(ctx context.Context, p *peer, from uint64) bool {
	select {
	case <-p.welcome:
	default:
	}
	if n.send(ctx, p, &control.Subscribe{From: from}) != nil {
		return false
	}
	t := time.NewTimer(answerTimeout)
	defer t.Stop()
	select {
	case ok := <-p.welcome:
		if ok {
			p.lastData.Store(time.Now().UnixNano())
		}
		return ok
	case <-t.C:
	case <-ctx.Done():
	case <-p.conn.Done():
	}
	return false
}

// adoptPath takes depth and path from our parent and tells our children.
func (n *Node) adoptPath(parent *peer) {
	parent.mu.Lock()
	depth, ppath := parent.depth, slices.Clone(parent.path)
	parent.mu.Unlock()
	if depth < 0 {
		return
	}
	self := n.id()
	if slices.Contains(ppath, self) {
		n.log.Warn("loop detected: dropping parent", "addr", parent.conn.RemoteAddr())
		parent.conn.Close(codeGoodbye, "loop")
		return
	}
	n.mu.Lock()
	if n.parent != parent {
		n.mu.Unlock()
		return
	}
	changed := n.depth != depth+1 || len(n.path) != len(ppath)+1
	n.depth = depth + 1
	n.path = append(ppath, parent.id)
	n.mu.Unlock()
	if changed {
		n.goFunc(func() { n.broadcastStatus(context.Background()) })
	}
}

// dialPeer connects to a candidate and exchanges Hellos.
func (n *Node) dialPeer(runCtx context.Context, info control.PeerInfo) (*peer, time.Duration) {
	ctx, cancel := context.WithTimeout(runCtx, dialTimeout)
	defer cancel()
	start := time.Now()
	c, err := n.tr.Dial(ctx, info.Addr, info.ID.Key())
	if err != nil {
		return nil, 0
	}
	p := n.newPeer(c)
	p.dialed = true
	if !n.startPeer(runCtx, p) {
		return nil, 0
	}
	if n.send(ctx, p, n.hello()) != nil {
		c.Close(codeGoodbye, "")
		return nil, 0
	}
	select {
	case <-p.helloed:
	case <-ctx.Done():
		c.Close(codeGoodbye, "no hello")
		return nil, 0
	}
	rtt := c.RTT()
	if rtt <= 0 {
		rtt = time.Since(start) / 2
	}
	return p, rtt
}

type ranked struct {
	p      *peer
	rtt    time.Duration
	depth  int   // p.depth when probed (p.mu guards p.depth)
	free   int   // its free slots then
	newest int64 // its newest chunk then
}

// probeGrace is how long probe waits for more answers after the first;
// probeStagger is how long it waits for a first answer before it dials
// more candidates.
const (
	probeGrace   = 50 * time.Millisecond
	probeStagger = 300 * time.Millisecond
)

// probe dials up to maxCandidates candidates at once and returns those that
// answered and could serve us, best first: not behind us (a node cut off
// with us would only make us wait), with a free slot, shallow, near. It
// returns soon after the first answer: a dead candidate (the rendezvous may
// not know yet) must not hold up the living.
func (n *Node) probe(ctx context.Context, cands []control.PeerInfo, needSlot bool, most int, avoid []control.NodeID) []ranked {
	self := n.id()
	n.mu.Lock()
	for _, p := range append([]*peer{n.parent}, n.backups...) {
		if p != nil {
			cands = slices.DeleteFunc(cands, func(c control.PeerInfo) bool { return c.ID == p.id })
		}
	}
	n.mu.Unlock()
	cands = slices.DeleteFunc(cands, func(c control.PeerInfo) bool {
		return c.ID == self || (needSlot && c.FreeSlots <= 0)
	})
	rand.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	slices.SortStableFunc(cands, func(a, b control.PeerInfo) int {
		return cmp.Or(cmp.Compare(min(b.FreeSlots, 1), min(a.FreeSlots, 1)), cmp.Compare(a.Depth, b.Depth))
	})
	// Each candidate once, the recently failed ones not at all.
	seen := make(map[control.NodeID]bool)
	cands = slices.DeleteFunc(cands, func(c control.PeerInfo) bool {
		dup := seen[c.ID]
		seen[c.ID] = true
		return dup || n.failedRecently(c.ID)
	})
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
	dial := func(c control.PeerInfo) {
		n.goFunc(func() {
			defer func() { results <- struct{}{} }()
			p, rtt := n.dialPeer(ctx, c)
			if p == nil {
				n.markFailed(c.ID)
				return
			}
			p.mu.Lock()
			r := ranked{p: p, rtt: rtt, depth: p.depth, free: p.freeSlots, newest: p.newest}
			// A backup fed through our own parent (a sibling) would be cut
			// off with us when that parent dies.
			ok := p.depth >= 0 && (!needSlot || p.freeSlots > 0) && !slices.Contains(p.path, self) &&
				!slices.ContainsFunc(avoid, func(id control.NodeID) bool { return id == p.id || slices.Contains(p.path, id) })
			p.mu.Unlock()
			mu.Lock()
			if !ok || closed {
				mu.Unlock()
				p.conn.Close(codeGoodbye, "")
				return
			}
			out = append(out, r)
			mu.Unlock()
		})
	}
	// The best `most` are dialed at once; while none has answered, the
	// next ones follow every probeStagger (a candidate the rendezvous
	// still lists may be dead and only time out).
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
	ours := n.newest.Load()
	behind := func(r ranked) int {
		if r.newest+2 < ours {
			return 1
		}
		return 0
	}
	slices.SortFunc(res, func(a, b ranked) int {
		return cmp.Or(
			cmp.Compare(behind(a), behind(b)),
			cmp.Compare(min(b.free, 1), min(a.free, 1)),
			cmp.Compare(a.depth, b.depth),
			cmp.Compare(a.rtt, b.rtt))
	})
	return res
}

// join finds a parent through the rendezvous and subscribes to it; the
// runners-up become backups. A node that can relay and finds no free slot
// takes a leaf's place.
func (n *Node) join(ctx context.Context, rv *rendezvous) *peer {
	n.mu.Lock()
	hint := n.hint
	n.hint = nil
	n.mu.Unlock()
	var found []ranked
	if hint != nil {
		found = n.probe(ctx, []control.PeerInfo{*hint}, true, 1, nil)
	}
	if len(found) == 0 {
		found = n.probe(ctx, rv.candidates(ctx), true, maxCandidates, nil)
	}
	if len(found) == 0 && n.slots() > 0 {
		found = n.probe(ctx, rv.displaceable(), false, 2, nil)
	}
	var parent *peer
	for _, r := range found {
		switch {
		case parent == nil && n.subscribeTo(ctx, r.p, 0):
			parent = r.p
			n.mu.Lock()
			n.parent = parent
			n.mu.Unlock()
			n.adoptPath(parent)
			n.log.Info("joined", "parent", parent.conn.RemoteAddr(), "depth", r.depth+1)
		case parent != nil && !n.dependsOn(r.p, parent.id) && n.addBackup(r.p):
		default:
			r.p.conn.Close(codeGoodbye, "")
		}
	}
	if parent == nil {
		rv.refresh()
	}
	return parent
}

// findBackups connects to more candidates, kept warm for repair and a
// fast switch: none fed by our ancestors, nor by another backup (so that
// one death costs at most one of them).
func (n *Node) findBackups(ctx context.Context, rv *rendezvous) {
	cands := rv.candidates(ctx)
	avoid := n.ancestors()
	n.mu.Lock()
	for _, b := range n.backups {
		avoid = append(avoid, b.id)
	}
	n.mu.Unlock()
	found := n.probe(ctx, cands, false, 2, avoid)
	for _, r := range found {
		if !n.addBackup(r.p) {
			r.p.conn.Close(codeGoodbye, "")
		}
	}
}

// failedFor is how long a peer that died or did not answer is not dialed
// again (the rendezvous and neighbours may still list it).
const failedFor = 10 * time.Second

func (n *Node) markFailed(id control.NodeID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := time.Now()
	n.failed[id] = now
	if len(n.failed) > maxKnownPeers {
		for k, at := range n.failed {
			if now.Sub(at) > failedFor {
				delete(n.failed, k)
			}
		}
	}
}

func (n *Node) failedRecently(id control.NodeID) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	at, ok := n.failed[id]
	return ok && time.Since(at) < failedFor
}

// learn adds peers heard of from neighbours to the candidates.
func (n *Node) learn(peers []control.PeerInfo) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.heard = append(n.heard, peers...)
	if len(n.heard) > maxKnownPeers {
		n.heard = n.heard[len(n.heard)-maxKnownPeers:]
	}
}

// rendezvous is a listener's session with the station's tracker.
type rendezvous struct {
	n        *Node
	dialMu   sync.Mutex
	mu       sync.Mutex
	conn     control.Conn
	cands    []control.PeerInfo
	displace []control.PeerInfo // full parents whose leaf child we may replace
	got      chan struct{}
	lastReg  time.Time
	regDepth int // the depth last registered
	regFree  int // the free slots last registered
}

func (r *rendezvous) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn != nil {
		r.conn.Close(codeGoodbye, "")
	}
}

// connect dials the tracker if not connected.
func (r *rendezvous) connect(ctx context.Context) control.Conn {
	r.dialMu.Lock() // one dial at a time
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
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	c, err := r.n.tr.Dial(dctx, r.n.addr.Rendezvous, nil)
	if err != nil {
		r.n.log.Debug("rendezvous unreachable", "addr", r.n.addr.Rendezvous, "err", err)
		return nil
	}
	r.mu.Lock()
	r.conn = c
	r.got = make(chan struct{}, 1)
	got := r.got
	r.mu.Unlock()
	r.n.goFunc(func() {
		for {
			b, err := c.Receive(ctx)
			if err != nil {
				return
			}
			m, err := control.ParseMessage(b)
			if err != nil {
				c.Close(codeBadMessage, err.Error())
				return
			}
			if cs, ok := m.(*control.Candidates); ok {
				r.mu.Lock()
				r.cands, r.displace = cs.Peers, cs.Displace
				r.mu.Unlock()
				select {
				case got <- struct{}{}:
				default:
				}
			}
		}
	})
	return c
}

func (r *rendezvous) register(ctx context.Context, want bool) chan struct{} {
	c := r.connect(ctx)
	if c == nil {
		return nil
	}
	n := r.n
	n.mu.Lock()
	reg := &control.Register{
		ListenAddr: n.tr.Addr(),
		UploadKbps: n.cfg.UploadKbps,
		Depth:      n.depth,
		FreeSlots:  n.freeSlots(),
		Want:       want,
		Leaf:       n.slots() == 0,
	}
	if n.parent != nil {
		reg.Parent = n.parent.id
	}
	n.mu.Unlock()
	r.mu.Lock()
	got := r.got
	r.lastReg = time.Now()
	r.regDepth, r.regFree = reg.Depth, reg.FreeSlots
	r.mu.Unlock()
	sctx, cancel := context.WithTimeout(ctx, answerTimeout)
	defer cancel()
	if c.Send(sctx, control.AppendMessage(nil, reg)) != nil {
		return nil
	}
	return got
}

func (r *rendezvous) maybeRegister(ctx context.Context) {
	r.n.mu.Lock()
	depth := r.n.depth
	r.n.mu.Unlock()
	free := r.n.freeSlots()
	r.mu.Lock()
	due := time.Since(r.lastReg) > registerEvery || depth != r.regDepth || (free == 0) != (r.regFree == 0)
	r.mu.Unlock()
	if due {
		r.register(ctx, false)
	}
}

// candidates registers and waits briefly for a fresh candidate list.
func (r *rendezvous) candidates(ctx context.Context) []control.PeerInfo {
	if got := r.register(ctx, true); got != nil {
		t := time.NewTimer(answerTimeout)
		select {
		case <-got:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	return r.known()
}

// known is the last candidate list plus peers heard of from neighbours.
func (r *rendezvous) known() []control.PeerInfo {
	r.mu.Lock()
	out := slices.Clone(r.cands)
	r.mu.Unlock()
	r.n.mu.Lock()
	out = append(out, r.n.heard...)
	r.n.mu.Unlock()
	return out
}

// displaceable is the last list of full parents with a leaf child.
func (r *rendezvous) displaceable() []control.PeerInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.displace)
}

// refresh forces the next maintain tick to register again.
func (r *rendezvous) refresh() {
	r.mu.Lock()
	r.lastReg = time.Time{}
	r.mu.Unlock()
}
