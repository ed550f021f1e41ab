package control

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMappedHereOnlyOnTheObservedIP(t *testing.T) {
	for _, c := range []struct {
		mapped, observed string
		ok               bool
	}{
		{"198.51.100.1:7001", "198.51.100.1:40123", true},
		{"198.51.100.1:7001", "198.51.100.1:7001", true},
		{"[::ffff:198.51.100.1]:7001", "198.51.100.1:5000", true},
		{"", "198.51.100.1:5000", false},
		{"100.64.0.9:7001", "198.51.100.1:5000", false}, // a router behind a carrier's NAT
		{"198.51.100.2:7001", "198.51.100.1:5000", false},
		{"198.51.100.1:0", "198.51.100.1:5000", false},
		{"router:7001", "198.51.100.1:5000", false},
		{"198.51.100.1:7001", "mem:3:1", false},
	} {
		require.Equal(t, c.ok, mappedHere(c.mapped, c.observed), "%q from %q", c.mapped, c.observed)
	}
}

// A node with a port mapping is offered, and dialed back, at its mapping;
// until the dial-back got through it is no more reachable than before.
func TestTrackerDialsBackTheMappedAddress(t *testing.T) {
	prober, err := NewMemNetwork(MemConfig{}).NewTransport(nil)
	require.NoError(t, err)
	tr := NewTracker(TrackerConfig{Prober: prober})
	id := NodeID{2}
	tr.SetSelf(PeerInfo{ID: NodeID{1}, Addr: "root", Depth: 0, FreeSlots: 1})
	seen := "198.51.100.1:40123" // a port-randomising NAT's flow to the tracker
	tr.admit(id, seen)
	c := tr.register(id, seen, &Register{Depth: 1, FreeSlots: 2, Parent: NodeID{1}, NAT: NATRandomises, Want: true})
	require.Equal(t, seen, c.Observed)
	addr, due := tr.shouldProbe(id)
	require.True(t, due)
	require.Equal(t, seen, addr, "without a mapping, the observed address is dialed back")
	tr.mu.Lock()
	tr.nodes[id].probing = false
	tr.nodes[id].reach, tr.nodes[id].told = ReachUnreachable, ReachUnreachable // as a failed dial-back leaves it
	tr.mu.Unlock()

	// The router mapped a port: the next registration carries it.
	c = tr.register(id, seen, &Register{Depth: 1, FreeSlots: 2, Parent: NodeID{1}, NAT: NATRandomises, Mapped: "198.51.100.1:7001"})
	require.NotNil(t, c, "the reachability is news: unknown again")
	require.Equal(t, ReachUnknown, c.Reach)
	require.Equal(t, seen, c.Observed, "the observed address is still told")
	addr, due = tr.shouldProbe(id)
	require.True(t, due, "a new address is dialed back at once")
	require.Equal(t, "198.51.100.1:7001", addr)
	require.NotContains(t, offered(tr), "198.51.100.1:7001", "not offered before its dial-back")

	// The dial-back got through.
	tr.mu.Lock()
	n := tr.nodes[id]
	tr.unindex(n)
	n.reach, n.probing = ReachPublic, false
	tr.index(n)
	tr.mu.Unlock()
	require.Contains(t, offered(tr), "198.51.100.1:7001", "offered at its mapping")

	// A mapping on another IP (the router is behind another NAT) is
	// ignored: the observed address stays the one dialed.
	tr.register(id, seen, &Register{Depth: 1, FreeSlots: 2, Parent: NodeID{1}, Mapped: "100.64.0.9:7001"})
	for _, nd := range tr.Nodes() {
		if nd.ID == id {
			require.Equal(t, seen, nd.Addr)
		}
	}
}

// offered lists the addresses a newcomer is offered.
func offered(tr *Tracker) []string {
	var out []string
	for _, p := range tr.register(NodeID{9}, "203.0.113.5:1000", &Register{Depth: -1, Want: true}).Peers {
		out = append(out, p.Addr)
	}
	return out
}
