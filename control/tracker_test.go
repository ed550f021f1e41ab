package control

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"runtime"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

func TestTrackerCandidates(t *testing.T) {
	tr := NewTracker(TrackerConfig{MaxCandidates: 3})
	id := func(i byte) NodeID { return NodeID{i} }
	tr.SetSelf(PeerInfo{ID: id(1), Addr: "root", Depth: 0, FreeSlots: 0})
	// A chain 2 <- 3 <- 4 under the root, and 5 beside it; all with slots.
	tr.register(id(2), "a2", &Register{Depth: 1, FreeSlots: 1, Parent: id(1)})
	tr.register(id(3), "a3", &Register{Depth: 2, FreeSlots: 1, Parent: id(2)})
	tr.register(id(4), "a4", &Register{Depth: 3, FreeSlots: 2, Parent: id(3)})
	tr.register(id(5), "a5", &Register{Depth: 1, FreeSlots: 0, Parent: id(1)})

	// 2 asks: its descendants 3 and 4 are never offered, the full root and 5 neither.
	got := tr.register(id(2), "a2", &Register{Depth: 1, FreeSlots: 1, Parent: id(1), Want: true}).Peers
	require.Empty(t, got)
	// A newcomer gets the shallowest first.
	got = tr.register(id(9), "a9", &Register{Depth: -1, Want: true}).Peers
	require.Equal(t, []string{"a2", "a3", "a4"}, []string{got[0].Addr, got[1].Addr, got[2].Addr})
	// 5 frees a slot: it is found at depth 1; 2 fills up and leaves the index.
	tr.register(id(5), "a5", &Register{Depth: 1, FreeSlots: 1, Parent: id(1)})
	tr.register(id(2), "a2", &Register{Depth: 1, FreeSlots: 0, Parent: id(1)})
	got = tr.register(id(9), "a9", &Register{Depth: -1, Want: true}).Peers
	require.Equal(t, "a5", got[0].Addr)
	for _, p := range got {
		require.NotEqual(t, "a2", p.Addr)
	}
	// Expired nodes are forgotten.
	tr.mu.Lock()
	for _, n := range tr.nodes {
		if n != tr.self {
			n.seen = n.seen.Add(-time.Hour)
		}
	}
	tr.mu.Unlock()
	got = tr.register(id(9), "a9", &Register{Depth: -1, Want: true}).Peers
	require.Empty(t, got, "expired nodes are not offered")
	for range 64 { // the sweep is amortised over registrations
		tr.register(id(9), "a9", &Register{Depth: -1})
	}
	require.Len(t, tr.Nodes(), 2, "the root and the asker")
}

func TestTrackerDisplaceLeaves(t *testing.T) {
	tr := NewTracker(TrackerConfig{})
	id := func(i byte) NodeID { return NodeID{i} }
	tr.SetSelf(PeerInfo{ID: id(1), Addr: "root", Depth: 0, FreeSlots: 0})
	// The root's slots are held by leaf 2 and by 3, which can take
	// children; 3 has leaf 4 and capable 5 below it, and 6 below 5.
	tr.register(id(2), "a2", &Register{Depth: 1, Parent: id(1), Leaf: true})
	tr.register(id(3), "a3", &Register{Depth: 1, Parent: id(1)})
	tr.register(id(4), "a4", &Register{Depth: 2, Parent: id(3), Leaf: true})
	tr.register(id(5), "a5", &Register{Depth: 2, Parent: id(3)})
	tr.register(id(6), "a6", &Register{Depth: 3, Parent: id(5)})

	// A capable newcomer may displace a leaf: the root's (shallowest) first.
	c := tr.register(id(9), "a9", &Register{Depth: -1, Want: true})
	require.Empty(t, c.Peers, "no free slot anywhere")
	require.Equal(t, []string{"root", "a3"}, addrs(c.Displace))
	// A leaf may not.
	c = tr.register(id(8), "a8", &Register{Depth: -1, Want: true, Leaf: true})
	require.Empty(t, c.Displace)
	// 5 at depth 2 is offered only a place above it: at the root (depth
	// 1), not beside it under 3.
	c = tr.register(id(5), "a5", &Register{Depth: 2, Parent: id(3), Want: true})
	require.Equal(t, []string{"root"}, addrs(c.Displace))
	// A node is never offered its own descendant: leaf 7 hangs below 6,
	// whose parent 5 asks (as if it were deep).
	tr.register(id(7), "a7", &Register{Depth: 4, Parent: id(6), Leaf: true})
	c = tr.register(id(9), "a9", &Register{Depth: -1, Want: true})
	require.Contains(t, addrs(c.Displace), "a6")
	c = tr.register(id(5), "a5", &Register{Depth: 6, Parent: id(3), Want: true})
	require.Equal(t, []string{"root", "a3"}, addrs(c.Displace))
}

func addrs(peers []PeerInfo) []string {
	var out []string
	for _, p := range peers {
		out = append(out, p.Addr)
	}
	return out
}

func TestTrackerSpreadsJoiners(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := NewTracker(TrackerConfig{})
		id := func(i byte) NodeID { return NodeID{i} }
		tr.SetSelf(PeerInfo{ID: id(1), Addr: "root", Depth: 0, FreeSlots: 0})
		tr.register(id(2), "a2", &Register{Depth: 1, FreeSlots: 1, Parent: id(1)})
		tr.register(id(3), "a3", &Register{Depth: 2, FreeSlots: 2, Parent: id(2)})
		// The first joiner is offered 2's one slot first; the next, asking
		// right after, is not sent there too.
		require.Equal(t, "a2", tr.register(id(8), "a8", &Register{Depth: -1, Want: true}).Peers[0].Addr)
		require.Equal(t, []string{"a3"}, addrs(tr.register(id(9), "a9", &Register{Depth: -1, Want: true}).Peers))
		// A node that only looks for backups holds nothing.
		tr.register(id(4), "a4", &Register{Depth: 3, Parent: id(3), Want: true})
		tr.register(id(4), "a4", &Register{Depth: 3, Parent: id(3), Want: true})
		require.Equal(t, "a3", tr.register(id(7), "a7", &Register{Depth: -1, Want: true}).Peers[0].Addr)
		// The hold lapses.
		time.Sleep(holdFor)
		require.Equal(t, "a2", tr.register(id(9), "a9", &Register{Depth: -1, Want: true}).Peers[0].Addr)
	})
}

// TestTrackerHoldsTenThousand: a busy broadcaster's rendezvous holds
// 10,000 registrations, more than the 256 connections a node once had for
// everything, and answers joiners among them; the heap it takes is logged.
func TestTrackerHoldsTenThousand(t *testing.T) {
	tr := NewTracker(TrackerConfig{})
	tr.SetSelf(PeerInfo{ID: NodeID{1}, Depth: 0, FreeSlots: 3})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 10000 {
		var id NodeID
		binary.BigEndian.PutUint32(id[:], uint32(i+2))
		parent := NodeID{1}
		if i >= 3 {
			binary.BigEndian.PutUint32(parent[:], uint32((i-3)/2+2))
		}
		tr.register(id, fmt.Sprintf("198.51.%d.%d:7000", i/250, i%250), &Register{Depth: 1 + bits.Len(uint(i+1)), FreeSlots: i % 3, Parent: parent, UploadKbps: 400})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	require.Len(t, tr.Nodes(), 10001)
	t.Logf("10,000 registrations: %.1f MB of heap (%.0f B each)", float64(after.HeapInuse-before.HeapInuse)/1e6, float64(after.HeapInuse-before.HeapInuse)/10000)
	got := tr.register(NodeID{0xff}, "203.0.113.9:7000", &Register{Depth: -1, Want: true})
	require.NotEmpty(t, got.Peers, "a joiner gets candidates")
}

func TestTrackerRestrictedNodes(t *testing.T) {
	tr := NewTracker(TrackerConfig{})
	id := func(i byte) NodeID { return NodeID{i} }
	tr.SetSelf(PeerInfo{ID: id(1), Addr: "root", Depth: 0, FreeSlots: 0})
	// Full relays: 2 under the root, 3 under 2; 4 under the root has a
	// slot, 6 hangs below 4; 8, behind a NAT that maps each destination
	// apart, is a leaf below 3.
	tr.register(id(2), "a2", &Register{Depth: 1, Parent: id(1)})
	tr.register(id(3), "a3", &Register{Depth: 2, Parent: id(2)})
	tr.register(id(4), "a4", &Register{Depth: 1, Parent: id(1), FreeSlots: 1})
	tr.register(id(6), "a6", &Register{Depth: 2, Parent: id(4), FreeSlots: 1})
	tr.register(id(8), "a8", &Register{Depth: 3, Parent: id(3), Leaf: true, NAT: NATRandomises})

	// A restricted joiner is offered full public parents, deep first: the
	// place of a child without children of its own is likelier there.
	c := tr.register(id(9), "a9", &Register{Depth: -1, Want: true, Leaf: true, NAT: NATRandomises})
	require.Equal(t, []string{"a3", "a2", "root"}, addrs(c.Displace))
	// A relay that is not known to be public is not offered the
	// restricted leaf's place: no one else could feed it.
	c = tr.register(id(10), "a10", &Register{Depth: -1, Want: true, NAT: NATPreserves})
	require.Empty(t, c.Displace)
	tr.mu.Lock()
	tr.nodes[id(10)].reach = ReachPublic
	tr.mu.Unlock()
	c = tr.register(id(10), "a10", &Register{Depth: -1, Want: true})
	require.Equal(t, []string{"a3"}, addrs(c.Displace), "a public relay may take it")

	// A joined node asking is also offered backups on other branches:
	// 6 (below 4) gets the full 2 and 3 (no free slot: only as backups);
	// 7, below 3, gets none of 2's branch.
	c = tr.register(id(6), "a6", &Register{Depth: 2, Parent: id(4), FreeSlots: 1, Want: true})
	require.Subset(t, addrs(c.Peers), []string{"a2", "a3"})
	require.NotContains(t, addrs(c.Peers), "a6")
	tr.register(id(7), "a7", &Register{Depth: 3, Parent: id(3), FreeSlots: 0})
	c = tr.register(id(7), "a7", &Register{Depth: 3, Parent: id(3), Want: true})
	require.NotContains(t, addrs(c.Peers), "a2")
	require.NotContains(t, addrs(c.Peers), "a3")
	require.Contains(t, addrs(c.Peers), "a6")
}

func TestTrackerKeepsPublicSlotsForRestrictedNodes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := NewTracker(TrackerConfig{})
		id := func(i byte) NodeID { return NodeID{i} }
		tr.SetSelf(PeerInfo{ID: id(1), Addr: "root", Depth: 0, FreeSlots: 0})
		// 2 is public with a slot; 3 is behind a port-preserving NAT with
		// one (punchable).
		tr.register(id(2), "a2", &Register{Depth: 1, Parent: id(1), FreeSlots: 1})
		tr.register(id(3), "a3", &Register{Depth: 1, Parent: id(1), FreeSlots: 1, NAT: NATPreserves})
		tr.mu.Lock()
		tr.nodes[id(2)].reach = ReachPublic
		tr.nodes[id(3)].reach = ReachUnreachable
		tr.mu.Unlock()
		tr.register(id(2), "a2", &Register{Depth: 1, Parent: id(1), FreeSlots: 1})
		tr.register(id(3), "a3", &Register{Depth: 1, Parent: id(1), FreeSlots: 1, NAT: NATPreserves})
		// Nobody restricted waits: a joiner behind a port-preserving NAT
		// is offered both.
		c := tr.register(id(9), "a9", &Register{Depth: -1, Want: true, NAT: NATPreserves})
		require.Equal(t, []string{"a2"}, addrs(c.Peers))
		require.Equal(t, []string{"a3"}, addrs(c.Punch))
		time.Sleep(holdFor)
		// A restricted node waits: 2's slot is kept for it.
		tr.register(id(8), "a8", &Register{Depth: -1, Leaf: true, NAT: NATRandomises})
		c = tr.register(id(9), "a9", &Register{Depth: -1, Want: true, NAT: NATPreserves})
		require.Empty(t, c.Peers)
		require.Equal(t, []string{"a3"}, addrs(c.Punch))
		c = tr.register(id(8), "a8", &Register{Depth: -1, Want: true, Leaf: true, NAT: NATRandomises})
		require.Equal(t, []string{"a2"}, addrs(c.Peers))
		// Once it has a parent (or after a while), 2 is offered to all.
		tr.register(id(8), "a8", &Register{Depth: 2, Parent: id(2), Leaf: true, NAT: NATRandomises})
		time.Sleep(holdFor)
		c = tr.register(id(9), "a9", &Register{Depth: -1, Want: true, NAT: NATPreserves})
		require.Equal(t, []string{"a2"}, addrs(c.Peers))
	})
}

func TestTrackerPunchOffers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tr := NewTracker(TrackerConfig{})
		id := func(i byte) NodeID { return NodeID{i} }
		tr.SetSelf(PeerInfo{ID: id(1), Addr: "root", Depth: 0, FreeSlots: 0})
		// 3 is behind a port-preserving NAT with a slot; 4 says the same of
		// its NAT but listens at the address it registers from: it has no
		// NAT to open, and waits for its dial-back.
		tr.register(id(3), "a3:1", &Register{Depth: 1, Parent: id(1), FreeSlots: 1, NAT: NATPreserves, ListenAddr: "lan3:1"})
		tr.register(id(4), "a4:1", &Register{Depth: 1, Parent: id(1), FreeSlots: 1, NAT: NATPreserves, ListenAddr: "a4:1"})
		tr.mu.Lock()
		tr.nodes[id(3)].reach = ReachUnreachable // their dial-backs failed
		tr.nodes[id(4)].reach = ReachUnreachable
		tr.mu.Unlock()
		tr.register(id(3), "a3:1", &Register{Depth: 1, Parent: id(1), FreeSlots: 1, NAT: NATPreserves, ListenAddr: "lan3:1"})
		tr.register(id(4), "a4:1", &Register{Depth: 1, Parent: id(1), FreeSlots: 1, NAT: NATPreserves, ListenAddr: "a4:1"})
		for _, tc := range []struct {
			name string
			nat  NATBehaviour
			want []string
		}{
			{"a joiner behind a port-preserving NAT", NATPreserves, []string{"a3:1"}},
			{"a joiner whose NAT is not known yet", NATUnknown, []string{"a3:1"}},
			{"a joiner behind a port-randomising NAT: no punch opens its NAT", NATRandomises, nil},
		} {
			c := tr.register(id(9), "a9:1", &Register{Depth: -1, Want: true, NAT: tc.nat})
			require.Equal(t, tc.want, addrs(c.Punch), tc.name)
		}

		// A Connect holds 3's slot for the asker: the next joiner is not
		// sent there meanwhile.
		a, b := newMemPair(t, MemConfig{})
		session, _ := connect(t, a, b)
		defer session.Close(CodeNormal, "")
		tr.setSession(id(3), session)
		tr.connect(t.Context(), id(9), id(3))
		c := tr.register(id(10), "a10:1", &Register{Depth: -1, Want: true, NAT: NATPreserves})
		require.Empty(t, c.Punch, "its one slot is held")
		time.Sleep(punchHold)
		tr.register(id(3), "a3:1", &Register{Depth: 1, Parent: id(1), FreeSlots: 1, NAT: NATPreserves, ListenAddr: "lan3:1"})
		c = tr.register(id(10), "a10:1", &Register{Depth: -1, Want: true, NAT: NATPreserves})
		require.Equal(t, []string{"a3:1"}, addrs(c.Punch), "offered again once the hold is over")
	})
}

func TestTrackerAsksItsStationForItsEntry(t *testing.T) {
	tr := NewTracker(TrackerConfig{})
	var free atomic.Int64
	var live atomic.Uint64
	free.Store(2)
	live.Store(40)
	tr.SetSelfFunc(func() (PeerInfo, uint64) {
		return PeerInfo{ID: NodeID{1}, Addr: "root", Depth: 0, FreeSlots: int(free.Load())}, live.Load()
	})
	self := func() PeerInfo {
		for _, n := range tr.Nodes() {
			if n.ID == (NodeID{1}) {
				return n.PeerInfo
			}
		}
		return PeerInfo{}
	}
	require.Equal(t, 2, self().FreeSlots, "taken when the function is set")
	free.Store(0)
	live.Store(45)
	require.Equal(t, 0, self().FreeSlots, "asked again, not told")

	// A registration asks too: the station, full, is not offered; with a
	// free slot again it is, and the live edge is its newest.
	a, b := newMemPair(t, MemConfig{})
	ca, cb := connect(t, a, b)
	go tr.Serve(t.Context(), cb, &Register{Version: WireVersion, Depth: -1, Want: true})
	cands := func() *Candidates {
		m, err := ca.Receive(t.Context())
		require.NoError(t, err)
		c, err := ParseMessage(m)
		require.NoError(t, err)
		return c.(*Candidates)
	}
	got := cands()
	require.Equal(t, uint64(45), got.Live)
	require.Empty(t, got.Peers)
	free.Store(1)
	live.Store(50)
	require.NoError(t, ca.Send(t.Context(), AppendMessage(nil, &Register{Version: WireVersion, Depth: -1, Want: true})))
	got = cands()
	require.Equal(t, uint64(50), got.Live)
	require.Len(t, got.Peers, 1)
	require.Equal(t, "root", got.Peers[0].Addr)
}
