package control

import (
	"context"
	"runtime"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/mux"
)

// The attack suite: each attack from the field, on the in-memory network
// in fake time. Honest listeners keep every chunk, and new listeners start
// within 2 s (they hold a second of audio, what the player starts with).

// startsWithin reports whether n holds a second of audio (10 chunks)
// within d of now.
func startsWithin(n *testNode, d time.Duration) (time.Duration, bool) {
	start := time.Now()
	for time.Since(start) <= d {
		n.host.mu.Lock()
		got := len(n.host.got)
		n.host.mu.Unlock()
		if got >= 10 {
			return time.Since(start), true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start), false
}

// attacker is a node that speaks the protocol as the attack wants.
type attacker struct {
	s  *testSwarm
	tr *MemTransport
}

func (s *testSwarm) attacker() *attacker {
	tr, err := s.net.NewTransport(nil)
	require.NoError(s.t, err)
	return &attacker{s: s, tr: tr}
}

func (a *attacker) send(ctx context.Context, c Conn, m Message) error {
	return c.Send(ctx, AppendMessage(nil, m))
}

// registerEverySecond keeps a rendezvous session at the root saying reg.
func (a *attacker) registerEverySecond(ctx context.Context, reg *Register) {
	a.s.wg.Go(func() {
		c, err := a.tr.Dial(ctx, a.s.root.tr.Addr(), nil)
		if err != nil {
			return
		}
		drain(ctx, c)
		for ctx.Err() == nil && c.Err() == nil {
			a.send(ctx, c, reg)
			time.Sleep(time.Second)
		}
	})
}

// drain reads and drops what c receives until it closes.
func drain(ctx context.Context, c Conn) {
	go func() {
		for {
			if _, err := c.Receive(ctx); err != nil {
				return
			}
		}
	}()
	go func() {
		for {
			if _, err := c.ReceiveData(ctx); err != nil {
				return
			}
		}
	}()
}

// joinNew adds n listeners one after another and requires each to start
// within 2 s.
func (s *testSwarm) joinNew(n int) {
	s.t.Helper()
	for range n {
		j := s.add(300)
		took, ok := startsWithin(j, 2*time.Second)
		require.True(s.t, ok, "a new listener started only after %v", took)
	}
}

// requireHeapUnder checks that the process (every node of the test) holds
// less than limit bytes of live heap.
func requireHeapUnder(t *testing.T, limit uint64) {
	t.Helper()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("heap in use: %.1f MB", float64(ms.HeapInuse)/1e6)
	require.Less(t, ms.HeapInuse, limit, "heap in use")
}

// requireUnbroken checks that the honest nodes hold every chunk from
// first to a little before the live edge.
func (s *testSwarm) requireUnbroken(first int64, nodes ...*testNode) {
	s.t.Helper()
	for i, n := range nodes {
		require.Empty(s.t, n.host.missing(uint64(first), uint64(s.newest()-5)), "honest node %d lost chunks", i)
	}
}

func TestAttackIdlePeersDoNotBlockJoiners(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSwarm(t, MemConfig{Link: LinkConfig{Delay: 5 * time.Millisecond}}, 300)
		a, b := s.add(300), s.add(300)
		time.Sleep(3 * time.Second)
		from := s.newest()
		ctx, stop := context.WithCancel(s.ctx)
		defer stop()
		// 400 connections to the root (which holds the rendezvous, so a
		// full connection table would keep joiners out) that say Hello,
		// claim to be joined deep in the tree, and only keep the link alive.
		path := []NodeID{s.root.ov.ID(), testID(50), testID(60)}
		for range 400 {
			x := s.attacker()
			s.wg.Go(func() {
				c, err := x.tr.Dial(ctx, s.root.tr.Addr(), nil)
				if err != nil {
					return
				}
				drain(ctx, c)
				x.send(ctx, c, &Hello{Station: s.root.ov.id, Depth: 3, Path: path, FreeSlots: 4})
				for ctx.Err() == nil && c.Err() == nil {
					x.send(ctx, c, &Status{Depth: 3, Path: path, FreeSlots: 4})
					time.Sleep(time.Second)
				}
				c.Close(CodeGoodbye, "")
			})
		}
		time.Sleep(2 * time.Second)
		s.joinNew(4)
		time.Sleep(2 * time.Second)
		s.requireUnbroken(from, a, b)
		require.LessOrEqual(t, s.root.ov.Stats().Peers, s.root.ov.maxChildren()+neighboursBase+1, "the root holds its budget of links, no more")
		requireHeapUnder(t, 100<<20)
	})
}

func TestAttackFakeRegistrationsDoNotBlockJoiners(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSwarm(t, MemConfig{Link: LinkConfig{Delay: 5 * time.Millisecond}}, 300)
		a, b := s.add(300), s.add(300)
		time.Sleep(3 * time.Second)
		from := s.newest()
		ctx, stop := context.WithCancel(s.ctx)
		defer stop()
		// 30 registrations claiming depth 0 and 65,535 free slots, from
		// sockets that complete handshakes but never answer.
		for range 30 {
			s.attacker().registerEverySecond(ctx, &Register{Depth: 0, FreeSlots: MaxSlots, UploadKbps: 1 << 30, Parent: s.root.ov.ID()})
		}
		time.Sleep(2 * time.Second)
		s.joinNew(4)
		s.requireUnbroken(from, a, b)
		requireHeapUnder(t, 100<<20)
		var honest []NodeID
		for _, n := range append(s.nodes, s.root) {
			honest = append(honest, n.ov.ID())
		}
		for _, n := range s.tracker.Nodes() {
			if n.Reach == ReachPublic {
				require.Contains(t, honest, n.ID, "only honest nodes are reachable")
			}
		}
	})
}

// liar serves links as a relay would, but feeds its children what feed
// says, and says of itself depth (with the root as its parent).
func (s *testSwarm) liar(ctx context.Context, depth int, feed func(c Conn)) *attacker {
	x := s.attacker()
	path := []NodeID{s.root.ov.ID()}
	hello := &Hello{Station: s.root.ov.id, Depth: depth, Path: path, FreeSlots: 8, UploadKbps: 5000}
	s.wg.Go(func() {
		for {
			c, err := x.tr.Accept(ctx)
			if err != nil {
				return
			}
			s.wg.Go(func() {
				for {
					b, err := c.Receive(ctx)
					if err != nil {
						return
					}
					switch m, _ := ParseMessage(b); m.(type) {
					case *Hello:
						x.send(ctx, c, hello)
					case *Subscribe:
						x.send(ctx, c, &Welcome{})
						feed(c)
					}
				}
			})
		}
	})
	// Registered as the root's child with free slots.
	x.registerEverySecond(ctx, &Register{Depth: depth, FreeSlots: 8, UploadKbps: 5000, Parent: s.root.ov.ID()})
	return x
}

func TestAttackFalseRootsAreCutOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSwarm(t, MemConfig{Link: LinkConfig{Delay: 5 * time.Millisecond}}, 300)
		a, b := s.add(300), s.add(300)
		time.Sleep(3 * time.Second)
		from := s.newest()
		ctx, stop := context.WithCancel(s.ctx)
		defer stop()
		var liars []NodeID
		for range 5 { // claim depth 0, feed nothing
			liars = append(liars, IDOf(s.liar(ctx, 0, func(Conn) {}).tr.Key()))
		}
		time.Sleep(2 * time.Second)
		s.joinNew(4)
		s.requireUnbroken(from, a, b)
		for _, n := range append(s.nodes, s.root) {
			for _, p := range n.ov.Stats().Parents {
				require.NotContains(t, liars, p.ID, "nobody keeps a liar as parent or backup")
			}
		}
	})
}

func TestAttackStaleBurstDoesNotSilenceJoiners(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSwarm(t, MemConfig{Link: LinkConfig{Delay: 5 * time.Millisecond}}, 300)
		time.Sleep(35 * time.Second)
		ctx, stop := context.WithCancel(s.ctx)
		defer stop()
		// A relay that answers every subscription with 12 genuine chunks
		// about 35 s old, and nothing after.
		var stale []*mux.Chunk
		for seq := range uint64(12) {
			c, _ := s.chunks.Load(seq)
			stale = append(stale, c.(*mux.Chunk))
		}
		s.liar(ctx, 1, func(c Conn) {
			for _, ch := range stale {
				c.SendData(ch.Bytes())
			}
		})
		time.Sleep(2 * time.Second)
		s.joinNew(4)
		time.Sleep(3 * time.Second)
		for i, n := range s.nodes {
			require.Empty(t, n.host.missing(uint64(s.newest()-30), uint64(s.newest()-5)), "listener %d plays live", i)
		}
	})
}

func TestAnotherWireVersionIsToldWhy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSwarm(t, MemConfig{Link: LinkConfig{Delay: 5 * time.Millisecond}}, 300)
		time.Sleep(time.Second)
		x := s.attacker()
		for _, first := range []Message{
			&Hello{Version: WireVersion + 1, Station: s.root.ov.id},
			&Register{Version: WireVersion + 1},
		} {
			c, err := x.tr.Dial(s.ctx, s.root.tr.Addr(), nil)
			require.NoError(t, err)
			require.NoError(t, x.send(s.ctx, c, first))
			<-c.Done()
			var ce *CloseError
			require.ErrorAs(t, c.Err(), &ce, "%v", first.Type())
			require.Equal(t, CodeVersion, ce.Code, "%v", first.Type())
			require.Equal(t, errWrongVersion(WireVersion+1).Error(), ce.Reason)
		}
	})
}
