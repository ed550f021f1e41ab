package control

import (
	"context"
	"slices"
	"time"
)

const (
	tick            = 100 * time.Millisecond
	backupInterval  = time.Second            // between attempts to find a backup
	backupAfter     = 2 * time.Second        // settle before looking for a backup
	backupAfterNone = 500 * time.Millisecond // the same, with no backup at all
	climbInterval   = 5 * time.Second        // between looks for a shallower parent
	climbSoon       = 300 * time.Millisecond // between looks for climbHurry after the node came to sit deeper
	climbHurry      = 6 * time.Second
)

// maintainer keeps a listener joined: a pushing parent, warm backups and a
// fresh rendezvous registration; it replaces a dead or stalled parent and
// repairs gaps. Its state is its own: only run's goroutine touches it.
type maintainer struct {
	o  *Overlay
	rv *rendezvous

	lostParent NodeID    // the parent we last lost
	nextJoin   time.Time // no join before: a stuck joiner backs off
	joinDelay  time.Duration
	orphaned   bool                  // no parent since the last tick
	parentAt   time.Time             // when the current parent came
	asked      map[uint64]*repairTry // repair requests in flight
	starved    time.Duration         // how late step ran lately, decaying

	// Searches (a rendezvous round trip, dials, a subscription) run beside
	// the loop, one climb and one backup search at a time, so that they
	// never delay the detection of a dead parent; so does the bridge.
	searching bool
	searched  chan bool // a climb ended (true: we climbed)
	// backupSearching: a backup search runs (beside a climb).
	backupSearching bool
	backupsSearched chan struct{}
	// lastBackupTry and lastClimb: when the node last looked for backups
	// and for a shallower parent, or last put the look off (putOff).
	lastBackupTry time.Time
	lastClimb     time.Time
	depth         int       // the depth at the last tick
	deeperAt      time.Time // when the node last came to sit deeper
	bridging      bool
	bridged       chan struct{}

	// Buffers step reuses every tick: the backups, repair's sources and
	// the stall policy's view of the backups, and backupsToDrop's.
	backupBuf, sourceBuf []*peer
	viewBuf              []backupView
	peerViewBuf          []peerView
}

func newMaintainer(o *Overlay) *maintainer {
	return &maintainer{
		o:               o,
		rv:              newRendezvous(o),
		asked:           make(map[uint64]*repairTry),
		searched:        make(chan bool, 1),
		backupsSearched: make(chan struct{}, 1),
		bridged:         make(chan struct{}, 1),
	}
}

func (m *maintainer) run(ctx context.Context) {
	defer m.rv.close()
	t := time.NewTicker(tick)
	defer t.Stop()
	var due, done time.Time // the tick's due time, the last step's end
	for {
		now := time.Now()
		if !due.IsZero() {
			// A tick carries the time it was due (or the step ran
			// past it): any later is time spent waiting for a CPU.
			if done.After(due) {
				due = done
			}
			m.starved = max(now.Sub(due), m.starved*9/10)
		}
		m.step(ctx, now)
		done = time.Now()
		select {
		case <-ctx.Done():
			return
		case due = <-t.C:
		}
	}
}

// step is one tick of the loop.
func (m *maintainer) step(ctx context.Context, now time.Time) {
	o := m.o
	parent, backups := o.appendLinks(m.backupBuf[:0])
	m.backupBuf = backups
	// A backup silent this long is dead: its Status and Have come every
	// second.
	backupSilence := 3 * o.cfg.StallTimeout / 2
	if parent != nil {
		v := judgeStall(m.stallInput(parent, backups, now))
		if v.ask {
			// Ask the backups for what follows our newest chunk, and a
			// backup not heard from lately for the newest itself, which
			// any live backup holds: its answer proves it alive even when
			// the source is late. (Every answer counts against its upload
			// budget: nothing is asked for twice a tick.)
			from := o.askFrom()
			for _, b := range backups {
				req := &Request{Seqs: seqsFrom(from+1, 4)}
				if now.Sub(time.Unix(0, b.lastHeard.Load())) > o.cfg.StallTimeout/4 {
					req.Seqs = seqsFrom(from, 5)
				}
				o.send(ctx, b, req)
			}
		}
		if v.stalled {
			if now.Sub(time.Unix(0, parent.lastFed())) >= o.cfg.StallTimeout {
				// The backups were asked every tick for half the stall
				// timeout: a live one has answered by now.
				backupSilence = o.cfg.StallTimeout / 2
			}
			m.lostParent = parent.id
			o.log.Info("parent stalled", "addr", parent.conn.RemoteAddr(), "backups", len(backups), "silent", now.Sub(time.Unix(0, parent.lastFed())), "starved", m.starvedFor())
			parent.conn.Close(CodeGoodbye, "stalled")
			o.dropPeer(parent)
			parent = nil
		}
	}
	if parent == nil {
		parent = m.orphanStep(ctx, now, backups, backupSilence)
		_, backups = o.links()
	}
	if parent != nil {
		m.repair(ctx, parent, backups, now)
		m.dropDependentBackups(backups)
	}
	m.orphaned = parent == nil
	if parent == nil {
		m.parentAt = time.Time{}
	} else if m.parentAt.IsZero() {
		m.parentAt = now
	}
	m.startSearches(ctx, now, parent)
	m.rv.maybeRegister(ctx)
}

// starvedFor is how long our goroutines waited for a CPU lately, as the
// maintainer's tick and the overlay's load loop saw it (see loadLoop).
func (m *maintainer) starvedFor() time.Duration { return max(m.starved, m.o.starvedFor()) }

// stallInput snapshots what judgeStall needs.
func (m *maintainer) stallInput(parent *peer, backups []*peer, now time.Time) stallInput {
	// Silent means no chunk we did not have: a parent that sends only
	// stale or duplicate chunks feeds us nothing.
	last := parent.lastFed()
	in := stallInput{silent: now.Sub(time.Unix(0, last)), timeout: m.o.cfg.StallTimeout, starved: m.starvedFor(), backups: m.viewBuf[:0]}
	select {
	case <-parent.conn.Done():
		in.gone = true
	default:
	}
	newest := m.o.newest()
	for _, b := range backups {
		mapNewest, at := b.lastHave()
		in.backups = append(in.backups, backupView{
			newSince:     b.lastNew.Load() > last,
			silent:       now.Sub(time.Unix(0, b.lastHeard.Load())),
			nothingNewer: at.UnixNano() > last && mapNewest <= newest,
		})
	}
	m.viewBuf = in.backups
	return in
}

// orphanStep runs while the node has no parent: it bridges from the
// backups, drops those that are dead or were cut off with the parent,
// promotes one, or joins anew. It returns the new parent, if any.
func (m *maintainer) orphanStep(ctx context.Context, now time.Time, backups []*peer, backupSilence time.Duration) *peer {
	o := m.o
	if !m.orphaned {
		// The recovery is the gap from the last chunk before this to the
		// first after, whoever sends it.
		o.parentSince.Store(now.UnixNano())
	}
	if !m.bridging && len(backups) > 0 && o.newest() >= 0 {
		m.bridging = true
		o.goFunc(func() {
			o.bridge(ctx)
			m.bridged <- struct{}{}
		})
	}
	for _, b := range backups {
		switch {
		case now.Sub(time.Unix(0, b.lastHeard.Load())) > backupSilence:
			o.markFailed(b.id)
			b.conn.Close(CodeGoodbye, "silent")
		case b.fedThrough([]NodeID{m.lostParent, o.self}):
			// Fed through the parent we lost (or through us): cut off too.
			b.conn.Close(CodeGoodbye, "cut off")
		default:
			continue
		}
		o.log.Debug("backup dropped with the parent", "addr", b.conn.RemoteAddr())
		o.dropPeer(b)
	}
	if p := o.reclaim(ctx, m.rv); p != nil {
		return p
	}
	_, backups = o.links()
	views := m.views(backups)
	for _, i := range promoteOrder(views) {
		if o.promote(ctx, backups[i]) {
			return backups[i]
		}
	}
	if now.Before(m.nextJoin) {
		return nil
	}
	p := o.join(ctx, m.rv)
	if p != nil {
		m.joinDelay = 0
		return p
	}
	// Nothing found: try again soon, then less and less often (up to
	// every second), so that a stuck joiner does not hammer the rendezvous.
	m.joinDelay = min(max(2*m.joinDelay, tick), time.Second)
	m.nextJoin = time.Now().Add(m.joinDelay)
	return nil
}

// views returns the backups' snapshots in the maintainer's buffer, valid
// until the next call.
func (m *maintainer) views(backups []*peer) []peerView {
	m.peerViewBuf = appendSnapshots(m.peerViewBuf[:0], backups)
	return m.peerViewBuf
}

// dropDependentBackups drops the backups that would be cut off with us
// (see backupsToDrop).
func (m *maintainer) dropDependentBackups(backups []*peer) {
	if len(backups) == 0 {
		return
	}
	o := m.o
	views := m.views(backups)
	for _, i := range backupsToDrop(views, o.self, o.ancestors()) {
		b := backups[i]
		o.log.Debug("backup no longer independent", "addr", b.conn.RemoteAddr())
		b.conn.Close(CodeGoodbye, "no longer independent")
		o.dropPeer(b)
	}
}

// startSearches starts a search for backups or a shallower parent when
// one is due and none runs.
func (m *maintainer) startSearches(ctx context.Context, now time.Time, parent *peer) {
	o := m.o
	select {
	case <-m.bridged:
		m.bridging = false
	default:
	}
	select {
	case climbed := <-m.searched:
		m.searching = false
		if climbed {
			m.parentAt = now
		}
	default:
	}
	select {
	case <-m.backupsSearched:
		m.backupSearching = false
	default:
	}
	if parent == nil {
		return
	}
	o.mu.Lock()
	depth := o.depth
	o.mu.Unlock()
	if depth > m.depth {
		m.deeperAt = now
	}
	m.depth = depth
	_, backups := o.links()
	// Put off (the wait starts again) what a node starved of CPU can do
	// without; nodes do not all look at once when the starvation ends.
	climb, backup := putOff(m.starvedFor(), len(backups))
	if climb {
		m.lastClimb = now
	}
	if backup {
		m.lastBackupTry = now
	}
	if !m.backupSearching && o.needBackups() > 0 && backupSearchDue(now.Sub(m.lastBackupTry), now.Sub(m.parentAt), len(backups)) {
		m.lastBackupTry, m.backupSearching = now, true
		o.goFunc(func() {
			o.findBackups(ctx, m.rv)
			m.backupsSearched <- struct{}{}
		})
	}
	if !m.searching && climbDue(now.Sub(m.lastClimb), now.Sub(m.parentAt), now.Sub(m.deeperAt)) {
		m.lastClimb, m.searching = now, true
		o.goFunc(func() { m.searched <- o.climb(ctx, m.rv, parent) })
	}
}

// backupSearchDue reports whether a node that wants more backups looks
// for one now, sinceTry after its last look and sinceParent after its
// parent came (a join, a climb, a promotion): every backupInterval, once
// settled for backupAfter; a node with no backup at all settles only
// backupAfterNone (its parent's death would cost it the stall timeout and
// a rejoin with nothing to bridge them). A climb runs beside it: climbs
// that dialed unreachable nodes for seconds used to hold the search up.
func backupSearchDue(sinceTry, sinceParent time.Duration, backups int) bool {
	settle := backupAfter
	if backups == 0 {
		settle = backupAfterNone
	}
	return sinceTry > backupInterval && sinceParent > settle
}

// links returns the parent and a copy of the backups.
func (o *Overlay) links() (*peer, []*peer) { return o.appendLinks(nil) }

// appendLinks returns the parent and the backups appended to dst.
func (o *Overlay) appendLinks(dst []*peer) (*peer, []*peer) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.parent, append(dst, o.backups...)
}

// bridgeFor bounds how long a parentless node pulls from its backups: it
// lives on their spare upload meanwhile, which is for repair.
const bridgeFor = 30 * time.Second

// bridge pulls the chunks after our newest from the backups, one after
// another each tick, while the node has no parent (it is rejoining, which
// can take longer than the buffer lasts when many nodes join at once), so
// that playback goes on; for bridgeFor at most.
func (o *Overlay) bridge(ctx context.Context) {
	t := time.NewTicker(tick)
	defer t.Stop()
	for i := 0; i < int(bridgeFor/tick); i++ {
		parent, backups := o.links()
		if parent != nil || len(backups) == 0 {
			return
		}
		req := &Request{Seqs: seqsFrom(o.newest()+1, bridgeAhead)}
		o.send(ctx, backups[i%len(backups)], req)
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

// repairSpan is how many chunks behind the newest repair checks.
const repairSpan = 30

// repairLag is how long a chunk may be missing while a later one is here
// before it is requested from a neighbour: a chunk lost in the parent's
// QUIC connection arrives late, after a later one on another of its lanes,
// once a loss is noticed and the packet resent (about two round trips);
// one sent at all is here by then. repairWait is how long a request is
// given before the next neighbour is asked: its round trip and the time
// the answer takes to be queued and sent. Both are at least a tick, as the
// loop runs no more often. (Fixed at 200 ms each they left too little of
// the buffer with 200 ms chunks, which come half as often and so show a
// gap later: TestRepairAsksAnotherNeighbour.)
func repairLag(parentRTT time.Duration) time.Duration {
	return max(tick, 2*parentRTT+20*time.Millisecond)
}

func repairWait(rtt time.Duration) time.Duration { return max(tick, 2*rtt+50*time.Millisecond) }

// repairTry is a missing chunk's requests so far.
type repairTry struct {
	at    time.Time     // the last request
	wait  time.Duration // before the next one (repairWait of whom it asked)
	tries int
}

// repairAsk is one tick's request to one neighbour.
type repairAsk struct {
	req  Request
	wait time.Duration // repairWait of its round trip
}

// repair pulls the chunks missing behind the newest one received, well
// before their playout deadline: a chunk lost on the way or dropped by a
// busy parent is requested from a neighbour whose buffer map shows it (the
// backups first, then the parent), and if it has not come after
// repairWait, from the next one, and so on, until it comes or its turn to
// play passes (then the player conceals it).
func (m *maintainer) repair(ctx context.Context, parent *peer, backups []*peer, now time.Time) {
	o := m.o
	newest := o.newest()
	if newest < 1 {
		return
	}
	from := max(newest-repairSpan, o.recv.first.Load(), 0)
	m.sourceBuf = append(append(m.sourceBuf[:0], backups...), parent)
	sources := m.sourceBuf
	lag := repairLag(parent.conn.RTT())
	reqs := make(map[*peer]*repairAsk)
	for seq := uint64(from); int64(seq) < newest; seq++ {
		if o.win.Get(seq) != nil {
			delete(m.asked, seq)
			continue
		}
		try := m.asked[seq]
		if try != nil && now.Sub(try.at) < try.wait {
			continue
		}
		// A chunk is missing only once a later one is here for a while.
		if try == nil && now.Sub(o.recv.seenAt(seq+1, newest)) < lag {
			continue
		}
		if try == nil {
			try = &repairTry{}
			m.asked[seq] = try
		}
		to := pickSource(sources, seq, try.tries)
		a := reqs[to]
		if a == nil {
			a = &repairAsk{wait: repairWait(to.conn.RTT())}
			reqs[to] = a
		}
		try.at, try.wait = now, a.wait
		try.tries++
		if len(a.req.Seqs) < MaxRequest {
			a.req.Seqs = append(a.req.Seqs, seq)
		}
	}
	for seq := range m.asked {
		if int64(seq) < from {
			delete(m.asked, seq)
		}
	}
	for to, a := range reqs {
		o.repairs.Add(int64(len(a.req.Seqs)))
		o.send(ctx, to, &a.req)
	}
}

// needBackups is how many more backups the node wants.
func (o *Overlay) needBackups() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return max(o.cfg.Backups-len(o.backups), 0)
}

// addBackup keeps p as a backup if one is wanted and reports whether it did.
func (o *Overlay) addBackup(p *peer) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.backups) >= o.cfg.Backups || slices.Contains(o.backups, p) || o.parent == p {
		return false
	}
	o.backups = append(o.backups, p)
	o.log.Debug("backup added", "addr", p.conn.RemoteAddr(), "backups", len(o.backups))
	return true
}

// ancestors are the nodes between the broadcaster and us, parent included:
// a backup must be fed by none of them, so that it keeps playing whichever
// of them dies. (The broadcaster feeds everyone: it is not among them.)
func (o *Overlay) ancestors() []NodeID {
	o.mu.Lock()
	defer o.mu.Unlock()
	// The path ends with the parent. It is replaced whole, never changed
	// in place: a clipped slice of it is a copy.
	out := slices.Clip(o.path[min(1, len(o.path)):])
	if o.parent != nil && len(o.path) == 0 {
		out = append(out, o.parent.id) // not adopted yet
	}
	return out
}
