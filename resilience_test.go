package p2pradio

import (
	"context"
	"crypto/ed25519"
	"math/rand/v2"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/input"
	"github.com/p2pradio/p2pradio/mux"
	"github.com/p2pradio/p2pradio/playout"
)

// memSwarm is a station on the in-memory network, for tests that run in
// fake time (testing/synctest): a broadcaster on the looped test file and
// listeners that can be added and killed.
type memSwarm struct {
	t      *testing.T
	net    *control.MemNetwork
	ctx    context.Context
	cancel context.CancelFunc
	b      *Node
	nodes  []*memNode
	sigs   *mux.SignatureCache
}

type memNode struct {
	n      *Node
	tr     *control.MemTransport
	cancel context.CancelFunc
	born   time.Time
	dead   bool
}

func newMemSwarm(t *testing.T, cfg control.MemConfig, sourceKbps int) *memSwarm {
	t.Helper()
	s := &memSwarm{t: t, net: control.NewMemNetwork(cfg), sigs: mux.NewSignatureCache(256)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	src, err := input.OpenFile("testdata/cbr128.mp3", input.FileConfig{Loop: true})
	require.NoError(t, err)
	_, key, _ := ed25519.GenerateKey(nil)
	tr, err := s.net.NewTransport(key)
	require.NoError(t, err)
	s.b, err = New(Config{Source: src, Key: key, Transport: tr, UploadKbps: sourceKbps})
	require.NoError(t, err)
	go s.b.Run(s.ctx)
	t.Cleanup(s.close)
	return s
}

func (s *memSwarm) add(uploadKbps int) *memNode {
	s.t.Helper()
	tr, err := s.net.NewTransport(nil)
	require.NoError(s.t, err)
	n, err := New(Config{
		Station:    s.b.Address().String(),
		Transport:  tr,
		UploadKbps: uploadKbps,
		Sink:       &playout.Discard{},
		Playout:    playout.Config{NoDecode: true},

		SignatureCache: s.sigs,
		Logger:         testLogger(s.t, tr.Addr()),
	})
	require.NoError(s.t, err)
	ctx, cancel := context.WithCancel(s.ctx)
	m := &memNode{n: n, tr: tr, cancel: cancel, born: time.Now()}
	go n.Run(ctx)
	s.nodes = append(s.nodes, m)
	return m
}

// kill makes a node vanish without a goodbye: its peers see it only by
// silence and the idle timeout.
func (s *memSwarm) kill(m *memNode) {
	m.dead = true
	m.tr.Kill()
	m.cancel()
	m.n.Close()
}

func (s *memSwarm) close() {
	s.cancel()
	for _, m := range s.nodes {
		m.n.Close()
	}
	s.b.Close()
	s.net.Close()
}

// byAddr maps transport addresses to nodes, the broadcaster included.
func (s *memSwarm) byAddr() map[string]*Node {
	m := map[string]*Node{s.b.LocalAddr(): s.b}
	for _, x := range s.nodes {
		if !x.dead {
			m[x.n.LocalAddr()] = x.n
		}
	}
	return m
}

// node returns the listener at a transport address (nil for the
// broadcaster or an unknown one).
func (s *memSwarm) node(addr string) *memNode {
	for _, x := range s.nodes {
		if x.n.LocalAddr() == addr {
			return x
		}
	}
	return nil
}

// checkNoLoop follows every live node's pushing parent up to the
// broadcaster and fails on a cycle.
func (s *memSwarm) checkNoLoop() {
	s.t.Helper()
	nodes := s.byAddr()
	for _, x := range s.nodes {
		if x.dead {
			continue
		}
		seen := map[*Node]bool{}
		n := x.n
		for n != nil && n != s.b {
			require.False(s.t, seen[n], "a loop in the tree through %s", n.LocalAddr())
			seen[n] = true
			st := n.Stats()
			if len(st.Parents) == 0 {
				break
			}
			n = nodes[st.Parents[0]]
		}
	}
}

func TestParentKilledNoConcealment(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newMemSwarm(t, control.MemConfig{Link: control.LinkConfig{Delay: 10 * time.Millisecond}}, 300)
		time.Sleep(2 * time.Second)
		s.add(300) // the broadcaster's two slots
		s.add(300)
		time.Sleep(3 * time.Second)
		a := s.add(300) // joins below b1 or b2, the other is its backup
		time.Sleep(5 * time.Second)
		st := a.n.Stats()
		require.Equal(t, 2, st.Depth)
		require.GreaterOrEqual(t, len(st.Parents), 2, "a pushing parent and a warm backup")
		parent := s.node(st.Parents[0])
		before := a.n.Stats().Playout
		s.kill(parent)
		time.Sleep(10 * time.Second)
		after := a.n.Stats()
		require.True(t, after.Playout.Playing)
		require.Greater(t, after.Playout.FramesPlayed, before.FramesPlayed+300, "still playing")
		require.Zero(t, after.Playout.FramesConcealed, "no concealed frame across the parent's death")
		require.Zero(t, after.Playout.FramesMuted)
		require.Equal(t, 1.0, after.Continuity)
		require.Equal(t, uint64(1), after.Recoveries)
		require.Less(t, after.RecoveryMax, 2*time.Second)
		require.NotContains(t, after.Parents, parent.n.LocalAddr())
	})
}

func TestChurnNoListenerStops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newMemSwarm(t, control.MemConfig{Link: control.LinkConfig{Delay: 15 * time.Millisecond, Jitter: 5 * time.Millisecond}}, 400)
		time.Sleep(2 * time.Second)
		for range 20 {
			s.add(400)
			time.Sleep(50 * time.Millisecond)
		}
		rng := rand.New(rand.NewPCG(4, 20))
		// 20% of the listeners killed per minute, each replaced at once:
		// one every 15 s for 60 s; loops are checked every 100 ms.
		for i := range 600 {
			time.Sleep(100 * time.Millisecond)
			s.checkNoLoop()
			if i%150 == 74 {
				var alive []*memNode
				for _, m := range s.nodes {
					if !m.dead {
						alive = append(alive, m)
					}
				}
				s.kill(alive[rng.IntN(len(alive))])
				s.add(400)
			}
		}
		for _, m := range s.nodes {
			if m.dead {
				continue
			}
			st := m.n.Stats()
			require.True(t, st.Playout.Playing, "listener %s stopped", m.n.LocalAddr())
			require.GreaterOrEqual(t, st.Continuity, 0.99, "listener %s: %+v", m.n.LocalAddr(), st)
			require.LessOrEqual(t, st.Depth, 8)
		}
	})
}

func TestJoinerInFullSwarmFindsSlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// One slot at the broadcaster and one at each listener: a chain, whose
		// only free slot is at its end.
		s := newMemSwarm(t, control.MemConfig{Link: control.LinkConfig{Delay: 5 * time.Millisecond}}, 150)
		time.Sleep(2 * time.Second)
		for range 6 {
			s.add(150)
			time.Sleep(3 * time.Second)
		}
		j := s.add(150)
		time.Sleep(5 * time.Second)
		st := j.n.Stats()
		require.True(t, st.Playout.Playing)
		require.Equal(t, 7, st.Depth, "the joiner found the one free slot, at the end of the chain")
		require.Equal(t, 1.0, st.Continuity)
		s.checkNoLoop()
	})
}

func TestLossyParentRepairedFromBackup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := control.MemConfig{Link: control.LinkConfig{Delay: 10 * time.Millisecond}, SendQueue: 2}
		// Two slots, and upload to spare for repairs (they count against
		// the budget).
		s := newMemSwarm(t, cfg, 400)
		time.Sleep(2 * time.Second)
		s.add(300)
		s.add(300)
		time.Sleep(3 * time.Second)
		a := s.add(300)
		time.Sleep(3 * time.Second)
		st := a.n.Stats()
		require.GreaterOrEqual(t, len(st.Parents), 2)
		parent := s.node(st.Parents[0])
		// The parent's link to a becomes too slow for the stream (100 kbit/s
		// for ~140): whole chunks are dropped from its queue of 2, and a
		// pulls them from its backup before their deadline.
		s.net.SetLink(parent.n.LocalAddr(), a.n.LocalAddr(), control.LinkConfig{Delay: 10 * time.Millisecond, Bandwidth: 100_000 / 8})
		before := a.n.Stats()
		time.Sleep(20 * time.Second)
		after := a.n.Stats()
		require.Greater(t, after.Repairs, before.Repairs, "missing chunks were requested")
		require.Zero(t, after.Playout.FramesConcealed-before.Playout.FramesConcealed, "repaired before the deadline")
		require.Greater(t, after.Playout.FramesPlayed-before.Playout.FramesPlayed, int64(700))
	})
}

// TestOrphanedSiblingsRejoinWithoutLoop: when a parent leaves, its two
// children (each the other's natural backup) must neither pick each other
// TestCapableUploadersMoveUp: leaves (no upload) that joined first hold
// the broadcaster's slots; nodes that can relay join later by taking their
// places, and the leaves move below them without a gap.
func TestCapableUploadersMoveUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newMemSwarm(t, control.MemConfig{Link: control.LinkConfig{Delay: 10 * time.Millisecond}}, 300)
		time.Sleep(2 * time.Second)
		leaves := []*memNode{s.add(-1), s.add(-1)} // the broadcaster's two slots
		time.Sleep(3 * time.Second)
		for _, l := range leaves {
			require.Equal(t, 1, l.n.Stats().Depth)
		}
		var relays []*memNode
		for range 4 {
			relays = append(relays, s.add(300))
			time.Sleep(time.Second)
			s.checkNoLoop()
		}
		time.Sleep(15 * time.Second)
		s.checkNoLoop()
		deepestRelay := 0
		for _, r := range relays {
			st := r.n.Stats()
			require.True(t, st.Playout.Playing, "relay %s plays", r.n.LocalAddr())
			deepestRelay = max(deepestRelay, st.Depth)
		}
		require.Equal(t, 2, s.b.Stats().Children)
		for _, l := range leaves {
			st := l.n.Stats()
			require.GreaterOrEqual(t, st.Depth, deepestRelay, "leaf %s below every relay", l.n.LocalAddr())
			require.True(t, st.Playout.Playing)
			require.Zero(t, st.Playout.FramesConcealed, "leaf %s moved without a gap", l.n.LocalAddr())
			require.Equal(t, 1.0, st.Continuity)
		}
	})
}

// TestOrphanPullsFromBackups: a leaf's parent stops reaching it; the leaf
// leaves it and finds no free slot elsewhere (every other node is full, and
// the slot it left is on a node it just gave up on), so it has no parent
// for seconds. Meanwhile it pulls the stream from its backups and plays on
// without a gap.
func TestOrphanPullsFromBackups(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Two slots at the broadcaster, one at each relay, and upload to
		// spare at each for pulls (answers to pulls count against the
		// budget).
		s := newMemSwarm(t, control.MemConfig{Link: control.LinkConfig{Delay: 10 * time.Millisecond}}, 400)
		time.Sleep(2 * time.Second)
		s.add(268) // the broadcaster's two slots; one slot each
		s.add(268)
		time.Sleep(3 * time.Second)
		c := s.add(-1) // takes one of their slots
		time.Sleep(2 * time.Second)
		a := s.add(-1) // takes the other
		time.Sleep(6 * time.Second)
		st := a.n.Stats()
		require.Equal(t, 2, st.Depth)
		require.Equal(t, 2, c.n.Stats().Depth)
		require.GreaterOrEqual(t, len(st.Parents), 2, "a backup to pull from")
		parent := s.node(st.Parents[0])
		before := a.n.Stats()
		s.net.SetLink(parent.n.LocalAddr(), a.n.LocalAddr(), control.LinkConfig{Delay: 10 * time.Millisecond, Bandwidth: 100})
		time.Sleep(8 * time.Second)
		after := a.n.Stats()
		require.True(t, after.Playout.Playing)
		require.Greater(t, after.Playout.FramesPlayed, before.Playout.FramesPlayed+250, "still playing")
		require.Zero(t, after.Playout.FramesConcealed, "no gap without a parent")
		require.Equal(t, 1.0, after.Continuity)
		s.checkNoLoop()
	})
}

// TestRepairAsksAnotherNeighbour: the parent's link drops chunks and the
// first backup's link is too slow to answer in time; the missing chunks
// are requested from the next neighbour before their deadline.
func TestRepairAsksAnotherNeighbour(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := control.MemConfig{Link: control.LinkConfig{Delay: 10 * time.Millisecond}, SendQueue: 2}
		// Two slots, and upload to spare for repairs (they count against
		// the budget).
		s := newMemSwarm(t, cfg, 400)
		time.Sleep(2 * time.Second)
		s.add(300)
		s.add(300)
		time.Sleep(3 * time.Second)
		a := s.add(300)
		time.Sleep(5 * time.Second)
		st := a.n.Stats()
		require.Len(t, st.Parents, 3, "a pushing parent and two backups")
		// The parent's link becomes too slow for the stream: whole chunks
		// are dropped from its queue. The first backup's link becomes
		// useless (1 kB/s): a request to it is not answered in time.
		s.net.SetLink(st.Parents[0], a.n.LocalAddr(), control.LinkConfig{Delay: 10 * time.Millisecond, Bandwidth: 100_000 / 8})
		s.net.SetLink(st.Parents[1], a.n.LocalAddr(), control.LinkConfig{Delay: 10 * time.Millisecond, Bandwidth: 1000})
		before := a.n.Stats()
		time.Sleep(20 * time.Second)
		after := a.n.Stats()
		require.Greater(t, after.Repairs, before.Repairs, "missing chunks were requested")
		require.Zero(t, after.Playout.FramesConcealed-before.Playout.FramesConcealed, "repaired before the deadline")
		require.Greater(t, after.Playout.FramesPlayed-before.Playout.FramesPlayed, int64(700))
	})
}

// (a loop) nor lose audio.
func TestOrphanedSiblingsRejoinWithoutLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newMemSwarm(t, control.MemConfig{Link: control.LinkConfig{Delay: time.Millisecond}}, 150)
		time.Sleep(2 * time.Second)
		l1 := s.add(300)
		time.Sleep(2 * time.Second)
		l2, l3 := s.add(300), s.add(300)
		time.Sleep(4 * time.Second)
		for _, m := range []*memNode{l2, l3} {
			require.Equal(t, []string{l1.n.LocalAddr()}, m.n.Stats().Parents[:1])
		}
		// l1 leaves cleanly: its links close at once.
		l1.dead = true
		l1.cancel()
		l1.n.Close()
		for range 50 {
			time.Sleep(100 * time.Millisecond)
			s.checkNoLoop()
		}
		depths := map[int]int{}
		for _, m := range []*memNode{l2, l3} {
			st := m.n.Stats()
			require.Zero(t, st.Playout.FramesConcealed, "%s", m.n.LocalAddr())
			require.Equal(t, 1.0, st.Continuity)
			depths[st.Depth]++
		}
		require.Equal(t, map[int]int{1: 1, 2: 1}, depths, "one takes the broadcaster's one slot, the other joins it")
	})
}
