package control

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

func TestJudgeLoad(t *testing.T) {
	never := time.Hour
	healthy := loadInput{children: 2, sent: 20, fed: true, playing: true, buffered: time.Second, target: time.Second, sinceShed: never}
	with := func(f func(*loadInput)) loadInput {
		in := healthy
		f(&in)
		return in
	}
	sendsBehind := loadVerdict{overloaded: true, shed: 1, why: "sends to children falling behind"}
	for _, tc := range []struct {
		name string
		in   loadInput
		want loadVerdict
	}{
		{"healthy", healthy, loadVerdict{}},
		{"both children losing chunks", with(func(in *loadInput) { in.failing, in.failed = 2, 3 }), sendsBehind},
		{"one child of two losing chunks is that child's link", with(func(in *loadInput) { in.failing, in.failed = 1, 3 }), loadVerdict{}},
		{"one child of three losing chunks is that child's link", with(func(in *loadInput) { in.children, in.failing, in.failed = 3, 1, 3 }), loadVerdict{}},
		{"every child of four losing chunks: shed two", with(func(in *loadInput) { in.children, in.failing, in.failed = 4, 4, 9 }),
			loadVerdict{overloaded: true, shed: 2, why: sendsBehind.why}},
		{"two of four: shed one", with(func(in *loadInput) { in.children, in.failing, in.failed = 4, 2, 2 }), sendsBehind},
		{"three of three: shed two, so that the queue drains for the one kept", with(func(in *loadInput) { in.children, in.failing = 3, 3 }),
			loadVerdict{overloaded: true, shed: 2, why: sendsBehind.why}},
		{"not again within the cooldown, but still no slots", with(func(in *loadInput) { in.failing, in.sinceShed = 2, time.Second }),
			loadVerdict{overloaded: true, why: sendsBehind.why}},
		{"playout draining while chunks are handed on late", with(func(in *loadInput) { in.buffered, in.late = 300*time.Millisecond, 500*time.Millisecond }),
			loadVerdict{overloaded: true, shed: 1, why: "playout draining while chunks are handed on late"}},
		{"handed on late with playout well fed copes", with(func(in *loadInput) { in.late = 500 * time.Millisecond }), loadVerdict{}},
		{"late without children: nothing to shed", with(func(in *loadInput) { in.children, in.buffered, in.late = 0, 300*time.Millisecond, time.Second }), loadVerdict{}},
		{"a starved process sheds nothing", with(func(in *loadInput) { in.children, in.failing, in.failed, in.sched = 3, 3, 9, 200*time.Millisecond }), loadVerdict{}},
		{"nor when its playout drains", with(func(in *loadInput) {
			in.buffered, in.late, in.sched = 300*time.Millisecond, time.Second, 200*time.Millisecond
		}), loadVerdict{}},
		{"a lagging timer alone copes", with(func(in *loadInput) { in.buffered, in.sched = 300*time.Millisecond, 300*time.Millisecond }), loadVerdict{}},
		{"a draining buffer without chunks is the parent's silence", with(func(in *loadInput) {
			in.buffered, in.late, in.fed = 300*time.Millisecond, time.Second, false
		}), loadVerdict{}},
		{"a draining buffer with a prompt hand-over is the parent's lateness", with(func(in *loadInput) { in.buffered = 300 * time.Millisecond }), loadVerdict{}},
		{"not playing yet", with(func(in *loadInput) { in.playing, in.buffered, in.late = false, 0, time.Second }), loadVerdict{}},
	} {
		t.Run(tc.name, func(t *testing.T) { require.Equal(t, tc.want, judgeLoad(tc.in)) })
	}
}

func TestAChildIsBehindWhenItsChunksAreLostQueuedOrWaiting(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name string
		in   childLoad
		want string
	}{
		{"keeps up", childLoad{rtt: 40 * ms, least: 30 * ms, seen: true, wait: 2 * ms}, ""},
		{"lost chunks", childLoad{lost: 1, rtt: 40 * ms, least: 30 * ms, seen: true}, "lost"},
		{"a chunk waits to go out", childLoad{rtt: 40 * ms, least: 30 * ms, seen: true, wait: waitLimit}, "waiting"},
		{"a short wait is a lost packet's retransmission", childLoad{rtt: 40 * ms, least: 30 * ms, seen: true, wait: waitLimit - ms}, ""},
		{"the round trip grew: packets queue on the way", childLoad{rtt: 30*ms + queueLimit + ms, least: 30 * ms, seen: true}, "queued"},
		{"a round trip that grew by less", childLoad{rtt: 30*ms + queueLimit, least: 30 * ms, seen: true}, ""},
		{"a long round trip from the start is a far child", childLoad{rtt: time.Second, least: time.Second, seen: true}, ""},
		{"no least before its second tick", childLoad{rtt: time.Second, least: 0}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) { require.Equal(t, tc.want, tc.in.behind()) })
	}
}

func TestSlotCapRecoversOneSlotAtATime(t *testing.T) {
	var c slotCap
	t0 := time.Unix(1000, 0)
	require.Equal(t, 3, c.apply(3), "no cap before an overload")
	c.healthy(t0, 3)
	require.Equal(t, 3, c.apply(3))

	c.overloaded(t0, 1)
	require.Equal(t, 1, c.apply(3), "the children kept")
	c.healthy(t0.Add(capRecover-time.Millisecond), 3)
	require.Equal(t, 1, c.apply(3), "not healthy long enough")
	c.healthy(t0.Add(capRecover), 3)
	require.Equal(t, 2, c.apply(3), "one more")
	c.overloaded(t0.Add(capRecover+time.Second), 2)
	c.healthy(t0.Add(2*capRecover), 3)
	require.Equal(t, 2, c.apply(3), "an overload starts the wait again")
	c.healthy(t0.Add(2*capRecover+time.Second), 3)
	require.Equal(t, 3, c.apply(3))
	require.False(t, c.on, "the budget's slots are back: no cap")
	require.Equal(t, 5, c.apply(5))
}

func TestPickShedTakesChildrenWithoutSubtreesNewestFirst(t *testing.T) {
	t0 := time.Unix(1000, 0)
	children := []shedView{
		{subtree: true, since: t0.Add(3 * time.Second)}, // newest, but feeds others
		{since: t0},
		{since: t0.Add(2 * time.Second)},
		{subtree: true, since: t0.Add(time.Second)},
	}
	require.Equal(t, []int{2}, pickShed(children, 1))
	require.Equal(t, []int{2, 1}, pickShed(children, 3), "never one that feeds others")
	require.Empty(t, pickShed(children[3:], 1))
	require.Empty(t, pickShed(nil, 1))
}

// A relay whose sends to its children fall behind (its uplink slowed
// below the stream's rate) sheds them with CodeOverloaded; they move to
// another relay with free slots, and it advertises no free slot until it
// has been healthy a while, then one at a time.
func TestAnOverloadedRelayShedsItsChildren(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSwarm(t, MemConfig{Link: LinkConfig{Delay: 5 * time.Millisecond}, SendQueue: 8}, 300) // 2 slots
		a := s.add(300)                                                                                   // 2 slots
		time.Sleep(time.Second)
		b := s.add(600) // 4 slots
		time.Sleep(2 * time.Second)
		require.Equal(t, 1, a.ov.Stats().Depth)
		require.Equal(t, 1, b.ov.Stats().Depth)

		// Two leaves join under a (b is farther).
		var kids []*testNode
		for range 2 {
			tr, err := s.net.NewTransport(nil)
			require.NoError(t, err)
			s.net.SetLink(tr.Addr(), b.tr.Addr(), LinkConfig{Delay: 60 * time.Millisecond})
			kids = append(kids, s.start(tr, 0))
		}
		time.Sleep(3 * time.Second)
		for i, k := range kids {
			require.Same(t, a, s.parentOf(k), "child %d joined under a", i)
		}
		require.Zero(t, a.ov.freeSlots())

		// a's uplink to them now carries 12 kB/s, less than the stream.
		for _, k := range kids {
			s.net.SetLink(a.tr.Addr(), k.tr.Addr(), LinkConfig{Delay: 5 * time.Millisecond, Bandwidth: 12000})
		}
		time.Sleep(10 * time.Second)
		st := a.ov.Stats()
		require.Equal(t, int64(1), st.Shed, "a shed one child (then one was left: that child's link, for all a knows)")
		require.True(t, st.Overloaded)
		require.Zero(t, a.ov.freeSlots(), "a advertises no free slot")
		var moved *testNode
		for _, k := range kids {
			if s.parentOf(k) == b {
				moved = k
			}
		}
		require.NotNil(t, moved, "the child shed moved to b")
		require.Equal(t, 2, moved.ov.Stats().Depth)
		newest := uint64(s.newest())
		require.Empty(t, moved.host.missing(newest-20, newest-3), "it is fed again")

		// The uplink recovers: a, healthy, advertises its slots back one
		// at a time (it kept one child: one step gives both back).
		for _, k := range kids {
			s.net.SetLink(a.tr.Addr(), k.tr.Addr(), LinkConfig{Delay: 5 * time.Millisecond})
		}
		time.Sleep(capRecover)
		require.False(t, a.ov.Stats().Overloaded)
		require.Equal(t, 2-a.ov.host.Children(), a.ov.freeSlots())
	})
}

func TestPatienceWaitsLongerWhileStarved(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		o := &Overlay{}
		ctx, cancel := o.patience(t.Context(), time.Second)
		defer cancel()
		time.Sleep(time.Second + time.Millisecond)
		require.Error(t, ctx.Err(), "a node not starved gives up on time")

		o.starved.Store(int64(schedLimit))
		ctx, cancel = o.patience(t.Context(), time.Second)
		defer cancel()
		time.Sleep(2 * time.Second)
		require.NoError(t, ctx.Err(), "a starved node waits on")
		o.starved.Store(0)
		time.Sleep(300 * time.Millisecond)
		require.Error(t, ctx.Err(), "until it is no longer starved")

		o.starved.Store(int64(time.Second))
		ctx, cancel = o.patience(t.Context(), time.Second)
		defer cancel()
		time.Sleep(3*time.Second - time.Millisecond)
		require.NoError(t, ctx.Err())
		time.Sleep(2 * time.Millisecond)
		require.Error(t, ctx.Err(), "three times the timeout at most")
	})
}
