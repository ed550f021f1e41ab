package control

import (
	"context"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/p2pradio/p2pradio/internal/testhook"
)

// Overload: a node that cannot keep up sheds children before its own
// playout suffers. Each loadTick the overlay takes a snapshot of what it
// and its host see (loadInput), asks judgeLoad whether the node is
// falling behind, and if so closes the links of a few children
// (pickShed: those that feed no one, newest first) with CodeOverloaded,
// so that they switch to a backup or rejoin elsewhere at once, and lowers
// the free slots it advertises (slotCap), which come back one at a time
// while it stays healthy.
//
// The same loop measures how long it waits for a CPU (how late its timer
// fires, and how long it waits behind the goroutines ready to run after
// yielding): a node starved of CPU judges no overload (see judgeLoad), is
// patient with dials (see patience), its stall policy waits longer
// (judgeStall), and it puts off optional searches (putOff).

// CodeOverloaded is the close code of a child shed by a parent that cannot
// keep up: it moves to another parent.
const CodeOverloaded uint64 = 23

// Load is what the host sees of its own health, for the overload policy
// (OverlayConfig.Load). p2pradio.Node fills it in.
type Load struct {
	// Late is the longest a chunk waited, since the last call, between its
	// arrival and its hand-over to the children (the host resets it).
	Late time.Duration
	// Playing, Buffered and Target describe local playout: the audio
	// received and not yet played, and the buffer the player aims for.
	// All zero without playout.
	Playing          bool
	Buffered, Target time.Duration
}

// Thresholds of the overload policy.
const (
	loadTick = 500 * time.Millisecond
	// lateLimit: a chunk that waits this long between its arrival and its
	// send to the children means the node's own data path is behind.
	lateLimit = 400 * time.Millisecond
	// shedCooldown is how long after shedding the node waits to see the
	// effect before it sheds again.
	shedCooldown = 2 * time.Second
	// schedLimit: the node's timer fired this late lately: it waits for
	// a CPU (on an idle machine a timer is late by well under 5 ms).
	schedLimit = 50 * time.Millisecond
	// queueLimit: a child's round trip this much above the least seen on
	// its link means the packets to it wait in a queue: our uplink
	// carries less than we send.
	queueLimit = 300 * time.Millisecond
	// waitLimit: a data message to a child that has waited this long
	// since it was handed to the link (in the link's send queue, then
	// while it is written) means the link carries less than the stream:
	// with ours saturated, every child's does. A healthy link writes a
	// chunk within milliseconds; a lost packet holds one lane for about
	// a round trip.
	waitLimit = 500 * time.Millisecond
	// A link that lost minDropped packets and at least 1/dropShare of
	// those it sent in one tick meets a full queue (a random loss of a
	// few percent does not).
	minDropped = 3
	dropShare  = 10
	// capRecover is how long the node stays healthy before it advertises
	// one more free slot.
	capRecover = 10 * time.Second
)

// sendWaiter is a Conn that knows how long its data messages wait to go
// out: both transports'.
type sendWaiter interface {
	// SendWait is how long the data message at the head of the link's
	// send queue has waited since SendData; 0 when none waits.
	SendWait() time.Duration
}

var (
	_ sendWaiter = (*QUICConn)(nil)
	_ sendWaiter = (*MemConn)(nil)
)

// packetLoser is a Conn that counts the packets it sent and those the
// network lost: QUIC's loss detection.
type packetLoser interface {
	// Packets returns the packets sent and declared lost so far.
	Packets() (sent, lost uint64)
}

var _ packetLoser = (*QUICConn)(nil)

// childLoad is what the overload loop saw of one child's link this tick.
type childLoad struct {
	lost       uint64        // data messages dropped or abandoned on the way
	rtt, least time.Duration // its round trip now, and the least since the link's first tick
	seen       bool          // the link was a child's at the last tick too (least is known)
	wait       time.Duration // SendWait
	// packets sent on the link this tick, and declared lost (0 on a
	// transport that does not say).
	packets, dropped uint64
}

// behind reports whether our sends to the child fall behind, and says
// how: it lost chunks; a chunk has waited waitLimit to go out (the link
// carries less than the stream: congestion control holds it back); the
// network lost a tenth (1/dropShare) of the packets sent this tick (a full queue
// on the way, ours when it is our uplink: a short queue drops before the
// round trip grows); or the round trip grew by queueLimit over its least
// (packets wait in a long queue on the way). "" when it keeps up. Any
// one child's link may do each of these; judgeLoad blames our uplink
// only when they happen to many children at once.
func (c childLoad) behind() string {
	switch {
	case c.lost > 0:
		return "lost"
	case c.wait >= waitLimit:
		return "waiting"
	case c.dropped >= minDropped && c.dropped*dropShare >= c.packets:
		return "dropped"
	case c.seen && c.rtt > 0 && c.rtt-c.least > queueLimit:
		return "queued"
	}
	return ""
}

// loadInput is one loadTick's snapshot for judgeLoad.
type loadInput struct {
	children int
	// failing is how many children our sends fall behind (see
	// childLoad.behind); failed counts the chunks lost, sent the chunks
	// that went out.
	failing      int
	failed, sent uint64
	late         time.Duration // the longest arrival-to-send wait (Load.Late)
	// sched is how late the overlay's own tick fired lately (decaying):
	// how long its goroutines wait for a CPU.
	sched time.Duration
	// fed: chunks arrived this tick (the parent feeds us), so a draining
	// playout buffer is not the parent's silence.
	fed              bool
	playing          bool
	buffered, target time.Duration
	sinceShed        time.Duration // since the node last shed (large: never)
}

// loadVerdict is judgeLoad's answer.
type loadVerdict struct {
	overloaded bool   // advertise no more free slots than the children left
	shed       int    // children to close now
	why        string // for the log
}

// judgeLoad tells a node that cannot keep up from one whose parent or
// children are slow, or whose machine is merely busy. The node is behind
// when at least half of its children, and two or more (each on its own
// link), fall behind at once (childLoad.behind): it sheds half of the
// failing ones, rounded up (the queue in its uplink must drain, or the
// children it keeps starve meanwhile; those it sheds come back one slot
// at a time). It is behind
// too when a chunk waited lateLimit between its arrival and its hand-over
// to the children while its own playout buffer ran below half its target
// although chunks do arrive: it sheds one, before its playout suffers.
// Either way it advertises no free slot (see slotCap), and sheds again
// only after shedCooldown. One child losing chunks is that child's link,
// even when it is one of two (a child whose own uplink is saturated
// delays its acknowledgements, and its round trip grows): output.Fanout
// cuts it if it lasts. A late hand-over with playout well
// fed is a busy machine that copes; a draining buffer with a prompt
// hand-over is the parent's lateness (the stall policy's business).
//
// While the node waits schedLimit for a CPU (see loadLoop), it judges
// nothing: its goroutines wait for a CPU, which makes every send look late
// and every round trip long. A child costs its parent little CPU (about
// 1.5 ms per second over QUIC), and where many nodes share a starved
// process (a simulation, a test), shedding would only move children from
// one starved node to another, and capping slots would block every
// joiner; the stall policy waits longer for the same reason.
func judgeLoad(in loadInput) loadVerdict {
	var v loadVerdict
	atRisk := in.playing && in.fed && in.target > 0 && in.buffered < in.target/2
	switch {
	case in.sched >= schedLimit:
		return loadVerdict{}
	case in.failing >= 2 && 2*in.failing >= in.children:
		v = loadVerdict{overloaded: true, shed: (in.failing + 1) / 2, why: "sends to children falling behind"}
	case in.children > 0 && in.late >= lateLimit && atRisk:
		v = loadVerdict{overloaded: true, shed: 1, why: "playout draining while chunks are handed on late"}
	default:
		return loadVerdict{}
	}
	if in.sinceShed < shedCooldown {
		v.shed = 0
	}
	v.shed = min(v.shed, in.children)
	return v
}

// slotCap bounds the free slots a node advertises after an overload: at
// the children it kept, then one more for each capRecover it stays
// healthy, until its budget's slots are free again. The zero value
// bounds nothing.
type slotCap struct {
	on    bool
	limit int       // children allowed while on
	since time.Time // the last overload or step up
}

// overloaded caps the children at those kept.
func (c *slotCap) overloaded(now time.Time, kept int) {
	c.on, c.limit, c.since = true, kept, now
}

// healthy lets one more child in after capRecover without an overload;
// slots is what the budget allows.
func (c *slotCap) healthy(now time.Time, slots int) {
	if !c.on || now.Sub(c.since) < capRecover {
		return
	}
	c.limit++
	c.since = now
	if c.limit >= slots {
		c.on = false
	}
}

// apply bounds the slots the budget allows.
func (c *slotCap) apply(slots int) int {
	if !c.on {
		return slots
	}
	return min(slots, c.limit)
}

// shedView is a child as pickShed sees it.
type shedView struct {
	subtree bool      // it feeds children of its own (they would move with it)
	since   time.Time // when it became our child
}

// pickShed returns the indexes of up to n children to shed, newest first
// (the least settled: the others' backups are warm), among those that
// feed no one: a child with children of its own is never shed, since its
// whole subtree would go without audio while it rejoins, which costs more
// playout than its stream saves us (the cap on our slots still stops us
// taking more).
func pickShed(children []shedView, n int) []int {
	var idx []int
	for i, c := range children {
		if !c.subtree {
			idx = append(idx, i)
		}
	}
	slices.SortStableFunc(idx, func(a, b int) int { return children[b].since.Compare(children[a].since) })
	return idx[:min(n, len(idx))]
}

// loadState is the overload loop's memory, guarded by its own lock: the
// cap is read by freeSlots from any goroutine.
type loadState struct {
	mu       sync.Mutex
	cap      slotCap
	lastShed time.Time
	sent     map[*peer][2]uint64 // each child's DataSent and failures at the last tick
	packets  map[*peer][2]uint64 // each child's packets sent and lost at the last tick
	minRTT   map[*peer]time.Duration
	shed     int64 // children shed so far
}

// loadLoop watches the node's load every loadTick and sheds children when
// judgeLoad says so.
func (o *Overlay) loadLoop(ctx context.Context) {
	t := time.NewTicker(loadTick)
	defer t.Stop()
	last := time.Now()
	var sched time.Duration
	for {
		var due time.Time
		select {
		case <-ctx.Done():
			return
		case due = <-t.C:
		}
		// A tick carries the time it was due: how much later this
		// goroutine runs is how long the node waits for a CPU. That
		// undercounts: a goroutine woken by its timer runs next, while
		// one woken by the network (a chunk arriving) waits behind every
		// goroutine ready to run. Yielding puts this one at the back of
		// that queue: how long it waits there is what a chunk waits, at
		// each hop.
		now := time.Now()
		runtime.Gosched()
		sched = max(now.Sub(due), time.Since(now), sched*4/5)
		now = time.Now()
		o.starved.Store(int64(sched))
		fed := o.lastChunk.Load() > last.UnixNano()
		last = now
		o.checkLoad(now, sched, fed)
	}
}

// checkLoad takes the snapshot, judges it and applies the verdict.
func (o *Overlay) checkLoad(now time.Time, sched time.Duration, fed bool) {
	if o.host.Children() == 0 {
		// Nothing to shed (judgeLoad says so without children): the
		// cheap path, which most nodes of a large swarm take.
		ls := &o.load
		ls.mu.Lock()
		ls.cap.healthy(now, o.maxChildren())
		ls.sent, ls.minRTT, ls.packets = nil, nil, nil
		ls.mu.Unlock()
		if o.cfg.Load != nil {
			o.cfg.Load() // resets Late
		}
		return
	}
	in := loadInput{sched: sched, fed: fed}
	if o.cfg.Load != nil {
		l := o.cfg.Load()
		in.late, in.playing, in.buffered, in.target = l.Late, l.Playing, l.Buffered, l.Target
	}
	var children []*peer
	for _, p := range o.peerList() {
		if p.child.Load() && !p.leaving.Load() {
			children = append(children, p)
		}
	}
	in.children = len(children)
	ls := &o.load
	ls.mu.Lock()
	prev, prevRTT, prevPackets := ls.sent, ls.minRTT, ls.packets
	ls.sent = make(map[*peer][2]uint64, len(children))
	ls.packets = make(map[*peer][2]uint64, len(children))
	ls.minRTT = make(map[*peer]time.Duration, len(children))
	var how []string // for the log
	for _, p := range children {
		var c childLoad
		c.rtt = p.conn.RTT()
		c.least, c.seen = prevRTT[p]
		if !c.seen || c.rtt < c.least {
			c.least = c.rtt
		}
		ls.minRTT[p] = c.least
		if s, ok := p.conn.(statser); ok {
			st := s.Stats()
			cur := [2]uint64{st.DataSent, st.SendDropped + st.DataFailed}
			ls.sent[p] = cur
			if was, ok := prev[p]; ok { // its burst and first tick are not the node's load
				in.sent += cur[0] - was[0]
				c.lost = cur[1] - was[1]
			} else {
				c.seen = false
			}
		}
		if w, ok := p.conn.(sendWaiter); ok && c.seen {
			c.wait = w.SendWait()
		}
		if pl, ok := p.conn.(packetLoser); ok {
			var cur [2]uint64
			cur[0], cur[1] = pl.Packets()
			ls.packets[p] = cur
			if was, ok := prevPackets[p]; ok && cur[0] >= was[0] && cur[1] >= was[1] {
				c.packets, c.dropped = cur[0]-was[0], cur[1]-was[1]
			}
		}
		if b := c.behind(); b != "" {
			in.failing++
			in.failed += c.lost
			how = append(how, b)
		}
	}
	in.sinceShed = time.Duration(1<<62 - 1)
	if !ls.lastShed.IsZero() {
		in.sinceShed = now.Sub(ls.lastShed)
	}
	v := judgeLoad(in)
	slots := o.maxChildren()
	if v.overloaded && testhook.NoShed.Load() {
		ls.mu.Unlock()
		o.log.Info("overloaded, shedding disabled by a test", "why", v.why, "children", in.children, "failing", in.failing, "how", how)
		return
	}
	if !v.overloaded {
		ls.cap.healthy(now, slots)
		ls.mu.Unlock()
		return
	}
	was := ls.cap.on
	var victims []*peer
	if v.shed > 0 {
		ls.lastShed = now
		views := make([]shedView, len(children))
		for i, p := range children {
			v := p.snapshot()
			views[i] = shedView{subtree: v.free < slotBudget{v.upload}.slots(o.bitrate()), since: time.Unix(0, p.childSince.Load())}
		}
		for _, i := range pickShed(views, v.shed) {
			victims = append(victims, children[i])
		}
		ls.shed += int64(len(victims))
	}
	ls.cap.overloaded(now, in.children-len(victims))
	ls.mu.Unlock()
	level := slog.LevelDebug
	if !was || len(victims) > 0 {
		level = slog.LevelInfo
	}
	o.log.Log(context.Background(), level, "overloaded", "why", v.why, "children", in.children, "failing", in.failing, "how", how, "lost", in.failed, "late", in.late, "sched", sched,
		"buffered", in.buffered, "shedding", len(victims))
	for _, p := range victims {
		o.host.Detach(p.conn)
		p.child.Store(false)
		p.conn.Close(CodeOverloaded, "overloaded: find another parent")
	}
}

// capSlots bounds slots by the overload cap.
func (o *Overlay) capSlots(slots int) int {
	o.load.mu.Lock()
	defer o.load.mu.Unlock()
	return o.load.cap.apply(slots)
}

// overloaded reports whether the node advertises fewer slots than its
// budget allows because it could not keep up lately.
func (o *Overlay) overloaded() bool {
	o.load.mu.Lock()
	defer o.load.mu.Unlock()
	return o.load.cap.on
}

// starvedFor is how late the node's load loop has run lately.
func (o *Overlay) starvedFor() time.Duration { return time.Duration(o.starved.Load()) }

// patience is context.WithTimeout(ctx, d) for a node that may be starved
// of CPU: when d has passed while the node is starved (see starvedFor), it
// waits on, up to three times d. A handshake or an answer that takes long
// may be the node's own slowness, and one given up wastes the work both
// ends did, which a starved process can least afford, and blames a peer
// that did nothing wrong. (Checked when the time is up, not at the start:
// starvation comes in bursts.) The context's error is then Canceled.
func (o *Overlay) patience(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	limit := time.Now().Add(3 * d)
	var mu sync.Mutex
	var t *time.Timer
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(d, func() {
		if left := time.Until(limit); left > 0 && o.starvedFor() >= schedLimit {
			mu.Lock()
			t.Reset(min(d/4, left))
			mu.Unlock()
			return
		}
		cancel()
	})
	return ctx, func() {
		mu.Lock()
		t.Stop()
		mu.Unlock()
		cancel()
	}
}
