package control

import (
	"testing"
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
	got := tr.register(id(2), "a2", &Register{Depth: 1, FreeSlots: 1, Parent: id(1), Want: true})
	require.Empty(t, got)
	// A newcomer gets the shallowest first.
	got = tr.register(id(9), "a9", &Register{Depth: -1, Want: true})
	require.Equal(t, []string{"a2", "a3", "a4"}, []string{got[0].Addr, got[1].Addr, got[2].Addr})
	// 5 frees a slot: it is found at depth 1; 2 fills up and leaves the index.
	tr.register(id(5), "a5", &Register{Depth: 1, FreeSlots: 1, Parent: id(1)})
	tr.register(id(2), "a2", &Register{Depth: 1, FreeSlots: 0, Parent: id(1)})
	got = tr.register(id(9), "a9", &Register{Depth: -1, Want: true})
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
	got = tr.register(id(9), "a9", &Register{Depth: -1, Want: true})
	require.Empty(t, got, "expired nodes are not offered")
	for range 64 { // the sweep is amortised over registrations
		tr.register(id(9), "a9", &Register{Depth: -1})
	}
	require.Len(t, tr.Nodes(), 2, "the root and the asker")
}
