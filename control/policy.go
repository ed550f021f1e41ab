package control

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// The overlay's policies: each a function of a snapshot that a unit test
// can call. The loops in maintain.go and join.go apply them.

// peerView is what a policy needs to know of a peer, read once under its
// lock.
type peerView struct {
	id     NodeID
	depth  int // -1: not joined
	free   int
	path   []NodeID // its ancestors, root first
	newest int64    // its newest chunk, -1 none
	upload int      // kbit/s
	// restricted: it takes no children and its NAT maps each destination
	// apart (the port it listens on is not the one we see it from), so
	// only public nodes can feed it. A claim like the others: a liar
	// gains a slot of ours, as one that claims a large upload does.
	restricted bool
	// apart: the port it reaches us from is not the one it listens on
	// (a NAT that maps each destination apart, or a port taken).
	apart bool
	// public: it reached us from the address it listens on, so no NAT
	// between maps its port (or its router forwards that port to it):
	// anyone can dial it there.
	public bool
}

// fedThrough reports whether v is one of ids or is fed through one.
func (v peerView) fedThrough(ids []NodeID) bool {
	return slices.ContainsFunc(ids, func(id NodeID) bool { return id == v.id || slices.Contains(v.path, id) })
}

// canServe reports whether a probed peer may become our parent (needSlot)
// or backup: it has joined, is not below us (self in its path: it would
// be cut off with us), and is neither one of avoid nor fed through one.
func canServe(v peerView, self NodeID, needSlot bool, avoid []NodeID) bool {
	return v.depth >= 0 && (!needSlot || v.free > 0) && !slices.Contains(v.path, self) && !v.fedThrough(avoid)
}

// orderCandidates returns the candidates worth dialing, best first: each
// once, not self, not excluded, not failed lately, with a free slot when
// one is needed; those with a free slot first, then the shallow ones,
// ties in random order (so that joiners spread).
func orderCandidates(cands []PeerInfo, self NodeID, exclude []NodeID, needSlot bool, failed func(NodeID) bool, rnd *rand.Rand) []PeerInfo {
	cands = slices.Clone(cands)
	seen := make(map[NodeID]bool)
	cands = slices.DeleteFunc(cands, func(c PeerInfo) bool {
		dup := seen[c.ID]
		seen[c.ID] = true
		return dup || c.ID == self || slices.Contains(exclude, c.ID) || (needSlot && c.FreeSlots <= 0) || failed(c.ID)
	})
	rnd.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	slices.SortStableFunc(cands, func(a, b PeerInfo) int {
		return cmp.Or(cmp.Compare(min(b.FreeSlots, 1), min(a.FreeSlots, 1)), cmp.Compare(a.Depth, b.Depth))
	})
	return cands
}

// ranked is a probed peer with what it said when probed.
type ranked struct {
	p   *peer
	rtt time.Duration
	peerView
}

// rankProbed orders the peers that answered a probe, best first: not
// behind us (a node cut off with us would only make us wait), then with a
// free slot, shallow, near.
func rankProbed(res []ranked, ours int64) {
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
}

// stallInput is what the stall policy looks at: how long the parent has
// been silent, and what the backups did since.
type stallInput struct {
	silent  time.Duration // since the parent's last chunk
	gone    bool          // the parent's link has closed
	timeout time.Duration // the stall timeout
	backups []backupView
	// starved is how long our own goroutines waited for a CPU lately
	// (the maintainer's tick, and the load loop's wait behind the
	// goroutines ready to run): a silence we may have caused ourselves,
	// the chunks waiting in our socket while our goroutines wait.
	starved time.Duration
}

// backupView is a backup as the stall policy sees it.
type backupView struct {
	newSince bool          // it sent a chunk we did not have since the parent's last
	silent   time.Duration // since its last message of any kind
	// nothingNewer: its buffer map, sent since the parent's last chunk
	// (a node answers a Request it cannot fill with one), showed nothing
	// newer than our newest.
	nothingNewer bool
}

// stallVerdict is the stall policy's answer.
type stallVerdict struct {
	ask     bool // ask the backups for what follows our newest chunk
	stalled bool // replace the parent
}

// judgeStall tells a dead or stalled parent from a stream that is late at
// the source. A parent whose link has closed is stalled at once. When it
// has been silent for half the stall timeout, the backups are asked for
// the chunks after our newest; it is stalled once it has been silent for
// the timeout and a backup had audio it did not, or every backup is
// silent too (none answered for half the timeout though asked every
// tick), or it has been silent half as long again (the backups may be cut
// off as well). While every backup that answers has said since the
// parent's last chunk that it holds nothing newer, the source is late:
// the parent is kept for hiccupFactor times the timeout, since no other
// parent could feed us sooner, and every node of the tree leaving its
// parent at once would make a storm of rejoins that outlasts the silence.
// Without backups it is stalled after the timeout. (Judging sooner, from
// a quarter of the timeout, made parents switch in join storms on a
// loaded machine, where a relay is held up for a few hundred
// milliseconds: TestEndToEndQUIC.)
// A node whose own loop ran late lately adds twice that lateness to the
// timeout (at most twice the timeout): a starved process that switches
// parents pays handshakes it cannot afford, and so does every orphan it
// makes.
func judgeStall(in stallInput) stallVerdict {
	in.timeout += min(2*in.starved, 2*in.timeout)
	switch {
	case in.gone:
		return stallVerdict{stalled: true}
	case in.silent < in.timeout/2:
		return stallVerdict{}
	case len(in.backups) == 0:
		return stallVerdict{stalled: in.silent > in.timeout}
	case in.silent < in.timeout:
		return stallVerdict{ask: true}
	}
	// nothingNewer: every live backup said since the parent's last chunk
	// that it holds nothing newer than we do.
	allSilent, nothingNewer := true, true
	for _, b := range in.backups {
		if b.newSince {
			return stallVerdict{ask: true, stalled: true}
		}
		if b.silent <= in.timeout/2 {
			allSilent = false
			nothingNewer = nothingNewer && b.nothingNewer
		}
	}
	switch {
	case allSilent:
		return stallVerdict{ask: true, stalled: true}
	case nothingNewer:
		return stallVerdict{ask: true, stalled: in.silent > hiccupFactor*in.timeout}
	}
	return stallVerdict{ask: true, stalled: in.silent > 3*in.timeout/2}
}

// hiccupFactor times the stall timeout is how long a parent is kept while
// every live backup says it holds nothing newer than we do: the source is
// late (see judgeStall). Four: a source late by 3 s costs no node its
// parent with the default timeout of 1 s
// (TestAParentIsKeptWhileTheSourceIsLate).
const hiccupFactor = 4

// haveAnswerEvery bounds how often a node answers a peer's Request it
// cannot fill with its buffer map (the asker polls every tick while its
// parent is silent).
const haveAnswerEvery = 50 * time.Millisecond

// backupsToDrop returns the indices of the backups to drop, given our
// ancestors (the broadcaster's child first, our parent last). A backup
// fed through our parent or through us is cut off with it: dropped. One
// fed through a higher ancestor (it moved under it, or we did: a climb, a
// rejoin) still bridges the loss of every ancestor below that one, our
// parent included: it is kept while no backup is independent, the least
// dependent one only (fed through the highest ancestor). A node left
// without a backup waits the whole stall timeout and a rejoin when its
// parent dies: in the 1,000-node swarm under churn, most recoveries over
// a second came from nodes whose backups had all just been dropped so.
// The backup search looks for independent ones meanwhile (a dependent
// one leaves a place free for it) and, once one is found, the dependent
// one goes.
func backupsToDrop(backups []peerView, self NodeID, ancestors []NodeID) []int {
	// deps[i]: the index of the deepest ancestor backup i is fed through,
	// -1 none; len(ancestors) for one fed through us.
	deps := make([]int, len(backups))
	independent := false
	for i, b := range backups {
		deps[i] = -1
		if b.fedThrough([]NodeID{self}) {
			deps[i] = len(ancestors)
			continue
		}
		for j := len(ancestors) - 1; j >= 0; j-- {
			if b.fedThrough(ancestors[j : j+1]) {
				deps[i] = j
				break
			}
		}
		independent = independent || deps[i] < 0
	}
	keep := -1
	if !independent {
		for i, d := range deps {
			if d < len(ancestors)-1 && (keep < 0 || d < deps[keep]) {
				keep = i
			}
		}
	}
	var drop []int
	for i, d := range deps {
		if d >= 0 && i != keep {
			drop = append(drop, i)
		}
	}
	return drop
}

// promoteOrder is the order in which an orphan asks its backups to feed
// it (the indices of backups): the shallowest first, as a joiner's places
// (our subtree moves with us, and a deep backup made it deeper for
// seconds, until it climbed); one not joined (rejoining itself) last.
func promoteOrder(backups []peerView) []int {
	order := make([]int, len(backups))
	for i := range order {
		order[i] = i
	}
	key := func(v peerView) int {
		if v.depth < 0 {
			return MaxDepth + 1
		}
		return v.depth
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(key(backups[a]), key(backups[b])) })
	return order
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

// joinWay is a way to find a parent: dialing one with a free slot,
// taking a child's place at a full one, or reaching one behind a NAT by a
// punch.
type joinWay int

const (
	wayDirect joinWay = iota
	wayDisplace
	wayPunch
)

// joinOrder is the order in which a joiner tries the ways to a parent:
// the shallowest place first, whichever way leads there (a punch costs a
// round trip through the rendezvous, a level more costs every node below
// for as long as it stays); a child's place never before a free slot we
// can dial, however deep (it moves another node); at equal depth,
// dialing, then a child's place, then a punch, as they cost.
func joinOrder(direct, displace, punch []PeerInfo) []joinWay {
	dd, dx := shallowest(direct, true), shallowest(displace, false)
	if dd <= MaxDepth {
		dx = max(dx, dd)
	}
	key := [...]int{wayDirect: dd, wayDisplace: dx, wayPunch: shallowest(punch, true)}
	ways := []joinWay{wayDirect, wayDisplace, wayPunch}
	slices.SortStableFunc(ways, func(a, b joinWay) int { return cmp.Compare(key[a], key[b]) })
	return ways
}

// shallowest is the depth of the shallowest of ps (with a free slot when
// free), MaxDepth+1 when none.
func shallowest(ps []PeerInfo, free bool) int {
	d := MaxDepth + 1
	for _, p := range ps {
		if p.Depth >= 0 && (!free || p.FreeSlots > 0) {
			d = min(d, p.Depth)
		}
	}
	return d
}

// climbDue reports whether a node looks for a shallower parent now,
// sinceLook after its last look, sinceParent after its parent came and
// sinceDeeper after it last came to sit deeper (it joined or rejoined, or
// an ancestor did): every climbInterval once settled, and every climbSoon
// for climbHurry after it came to sit deeper. Churn leaves whole subtrees
// deep, the free slots higher up show only once the parents there see
// that a child died (seconds), and a deep node's subtree is deep with it
// until it moves. A node that came to sit deeper under the parent it has
// had for a while (an ancestor moved, and took it along) looks at once,
// a tick after: the ancestor often lands at the bottom of the tree with
// a subtree under it, and the deepest of that subtree would otherwise
// wait up to climbSoon for their first look (in the 1,000-node swarm,
// the listeners that died deepest died in that second).
func climbDue(sinceLook, sinceParent, sinceDeeper time.Duration) bool {
	if sinceDeeper < sinceLook && sinceDeeper >= tick && sinceParent > climbSoon {
		return true
	}
	wait := climbInterval
	if sinceDeeper < climbHurry {
		wait = climbSoon
	}
	return sinceLook > wait && sinceParent > wait
}

// putOff reports which optional searches a node that waited starved for
// a CPU lately puts off: a climb (it has a parent), and a search for more
// backups while it has one. Each dials and handshakes, which a starved
// process can least afford: in a starved swarm (starve.sh) handshakes were
// a fifth of the CPU, and the run queue they fed made more parents look
// silent, which meant more joins. A node with no backup still looks for
// one: its parent's death would cost it a rejoin.
func putOff(starved time.Duration, backups int) (climb, backup bool) {
	if starved < schedLimit {
		return false, false
	}
	return true, backups > 0
}

// climbPlan is where a node at depth may move to keep the tree shallow.
type climbPlan struct {
	targets  []PeerInfo
	punch    []PeerInfo // targets reached by a punch, tried after the others
	needSlot bool       // subscribing needs a free slot (false: a leaf's place)
	most     int        // the deepest acceptable parent
}

// planClimb: a node at depth d moves to a parent with a free slot at depth
// d-3 or less, one it can dial or one behind a NAT that a punch opens;
// failing that, a node that can relay takes the place of a leaf under a
// parent at depth d-2 or less (capable uploaders move up, with their
// subtrees; a leaf never displaces, so nothing swings back); failing
// that, a relay takes a free slot at depth d-2 (one level up). Each move
// makes the climber shallower, so climbs end. (Without the last step the
// 1,000-node swarm under churn kept its deepest listeners at 11 and 12
// where slots two levels up were free, and an orphan that lands at the
// bottom with its subtree had that much less room below the limit. It
// comes after the leaf's place, or relays would settle one level up
// below the leaves instead of taking their places.)
func planClimb(depth int, canRelay bool, cands, punch, displace []PeerInfo) climbPlan {
	if depth < 2 {
		return climbPlan{}
	}
	slots := func(most int) climbPlan {
		plan := climbPlan{needSlot: true, most: most}
		fits := func(c PeerInfo) bool { return c.Depth >= 0 && c.Depth <= most && c.FreeSlots > 0 }
		for _, c := range cands {
			if fits(c) {
				plan.targets = append(plan.targets, c)
			}
		}
		for _, c := range punch {
			if fits(c) {
				plan.punch = append(plan.punch, c)
			}
		}
		return plan
	}
	plan := slots(depth - 3)
	if len(plan.targets)+len(plan.punch) > 0 || !canRelay {
		return plan
	}
	plan = climbPlan{most: depth - 2}
	for _, c := range displace {
		if c.Depth >= 0 && c.Depth <= plan.most {
			plan.targets = append(plan.targets, c)
		}
	}
	if len(plan.targets) > 0 {
		return plan
	}
	return slots(depth - 2)
}

// backupToClimb returns the index of the backup that a node at depth
// climbs onto before it asks the rendezvous, or -1: the shallowest one
// with a free slot three levels up or more (planClimb's first choice),
// not fed through us. A node that an ancestor took deeper (an orphan
// with its subtree lands at the bottom of the tree) is fed through that
// ancestor, and its backups are not: their depth and free slots are
// known from their Status, and subscribing is one round trip (a climb
// onto a backup of a node 13 deep or more in the 1,000-node swarm under
// churn: median 40 ms; through the rendezvous and a probe, 0.55-0.8 s
// then, with the whole subtree climbing at once for the same few free
// slots). Its deeper nodes are what the swarm counts when churn kills
// one of them in that moment.
func backupToClimb(depth int, backups []peerView, self NodeID) int {
	best := -1
	for i, b := range backups {
		if b.depth < 0 || b.depth > depth-3 || !canServe(b, self, true, nil) {
			continue
		}
		if best < 0 || b.depth < backups[best].depth {
			best = i
		}
	}
	return best
}

// pickChildToDisplace returns the index of the child that a newcomer may
// replace when we are full, or -1. A newcomer that can take children
// replaces a leaf (capable uploaders move up), a restricted one last and
// only when the newcomer is public (the rendezvous sends only public
// nodes for those, and only a public node can feed it after; one behind
// a NAT that came for a slot that was taken meanwhile would leave it
// looking for another public slot, which takes seconds); a restricted
// newcomer, whom only a public node can feed, replaces a child that could
// take children but has none (no subtree moves), which others can feed,
// never another restricted one.
func pickChildToDisplace(newcomer peerView, children []peerView, slots func(uploadKbps int) int) int {
	other := func(c peerView) bool { return c.id != newcomer.id && !c.restricted }
	switch {
	case slots(newcomer.upload) > 0 && !newcomer.restricted:
		if i := slices.IndexFunc(children, func(c peerView) bool { return other(c) && slots(c.upload) == 0 }); i >= 0 {
			return i
		}
		if !newcomer.public {
			return -1
		}
		return slices.IndexFunc(children, func(c peerView) bool { return c.id != newcomer.id && slots(c.upload) == 0 })
	case newcomer.restricted:
		// Not one that reaches us from another port than it listens on:
		// it may be restricted too and not know it yet (its claim of
		// slots comes before its dial-back fails).
		return slices.IndexFunc(children, func(c peerView) bool {
			return other(c) && !c.apart && slots(c.upload) > 0 && c.free >= slots(c.upload)
		})
	}
	return -1
}

// reclaimAfter is how long a child must have been silent before a
// newcomer may take its place at a full parent (see silentChild). A live
// child is heard from every second or more often: its Status (every
// statusEvery, or on QUIC every parentQuiet with its acknowledgements of
// our chunks between).
const reclaimAfter = 1200 * time.Millisecond

// silentChild returns the index of the child, by how long each has been
// silent, whose place a newcomer may take when we are full: the silentest
// one silent for at least limit, or -1. A child that died is judged gone
// only after silentAfter; until then its slot looks taken, and its own
// children, orphans that ask us (their grandparent) first, would go to
// the bottom of the tree instead of into its place.
func silentChild(silences []time.Duration, limit time.Duration) int {
	best := -1
	for i, s := range silences {
		if s >= limit && (best < 0 || s > silences[best]) {
			best = i
		}
	}
	return best
}

// mappedApart reports whether a peer that says it listens at listen but
// reaches us from remote is behind a NAT that changed its port (the
// in-memory network's LAN addresses end in "/port").
func mappedApart(listen, remote string) bool {
	lp, rp := lastPort(listen), lastPort(remote)
	return lp != "" && rp != "" && lp != rp
}

// lastPort is what follows an address's last ':' or '/' ("" if none).
func lastPort(addr string) string {
	i := strings.LastIndexAny(addr, ":/")
	if i < 0 {
		return ""
	}
	return addr[i+1:]
}

// pullRate is the upload, in bytes per second, left for chunks sent
// outside the fan-out (answers to repair and bridge requests): the budget
// less the children's stream, with the same 5% for overhead as the slots.
// A leaf's budget has nothing to spare.
func pullRate(uploadKbps, children, bitrateKbps int) float64 {
	if uploadKbps <= 0 {
		return 0
	}
	if bitrateKbps <= 0 {
		bitrateKbps = 128
	}
	spare := float64(uploadKbps) - float64(children*bitrateKbps)*1.05
	return max(spare, 0) * 1000 / 8
}

// pullBurst is how much unused pull budget is saved up: at most this
// long at the spare rate.
const pullBurst = 2 * time.Second

// tokenBucket meters bytes: rate per second, up to pullBurst's worth
// saved. The zero value is full at its first use.
type tokenBucket struct {
	tokens float64
	last   time.Time
}

// take spends n bytes if the bucket holds them at now, refilled at rate
// since the last call; it reports whether it did.
func (b *tokenBucket) take(n int, rate float64, now time.Time) bool {
	if b.last.IsZero() {
		b.tokens = rate * pullBurst.Seconds()
	} else {
		b.tokens += rate * now.Sub(b.last).Seconds()
	}
	b.tokens = min(b.tokens, rate*pullBurst.Seconds())
	b.last = now
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}
