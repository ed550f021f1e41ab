package control

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

// The NAT tests run homes behind the in-memory network's NAT model
// (MemNAT: Linux MASQUERADE's behaviour, port-preserving or randomising).

// fedBy counts the listeners whose parent is one of from.
func (s *testSwarm) fedBy(nodes []*testNode, from []*testNode) int {
	n := 0
	for _, x := range nodes {
		for _, f := range from {
			if s.parentOf(x) == f {
				n++
			}
		}
	}
	return n
}

func TestNATedListenersRelayThroughPunches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSwarm(t, MemConfig{Link: LinkConfig{Delay: 10 * time.Millisecond}}, 150) // one slot
		var homes []*testNode
		for range 4 {
			homes = append(homes, s.addBehind(s.net.NewNAT(NATConfig{Kind: NATPortPreserving}), 400))
			time.Sleep(500 * time.Millisecond)
		}
		time.Sleep(8 * time.Second)
		for i, h := range homes {
			st := h.ov.Stats()
			require.Equal(t, ReachUnreachable, st.Reach, "home %d is behind a NAT", i)
			require.Equal(t, NATPreserves, st.NAT, "home %d found its NAT's behaviour", i)
			require.Positive(t, st.Depth, "home %d joined", i)
			require.Empty(t, h.host.missing(uint64(s.newest()-20), uint64(s.newest()-5)), "home %d receives the stream", i)
		}
		require.GreaterOrEqual(t, s.fedBy(homes, homes), 2, "NATed listeners feed listeners in other homes")
		require.Equal(t, 1, s.root.host.Children(), "the broadcaster feeds one child, its budget")
	})
}

func TestRandomisingNATsWaitForARelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSwarm(t, MemConfig{Link: LinkConfig{Delay: 10 * time.Millisecond}}, 150) // one slot
		var homes []*testNode
		for range 3 {
			homes = append(homes, s.addBehind(s.net.NewNAT(NATConfig{Kind: NATPortRandom}), 400))
			time.Sleep(500 * time.Millisecond)
		}
		time.Sleep(6 * time.Second)
		waiting := 0
		for _, h := range homes {
			st := h.ov.Stats()
			if st.Depth < 0 {
				waiting++
				require.NotEmpty(t, st.Waiting, "a waiting listener says why")
			}
		}
		require.Equal(t, 2, waiting, "the broadcaster's slot is used; the others cannot be reached")
		// A public relay arrives: it takes the NATed leaf's place at the
		// broadcaster and everyone plays within 5 s.
		relay := s.add(1000)
		time.Sleep(5 * time.Second)
		require.Equal(t, 1, relay.ov.Stats().Depth)
		for i, h := range homes {
			require.Empty(t, h.host.missing(uint64(s.newest()-10), uint64(s.newest()-3)), "home %d plays", i)
		}
	})
}
