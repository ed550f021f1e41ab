package control

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func peerWithMap(first uint64, bits ...bool) *peer {
	bm := make([]byte, (len(bits)+7)/8)
	for i, b := range bits {
		if b {
			bm[i/8] |= 0x80 >> (i % 8)
		}
	}
	p := &peer{newest: -1}
	p.setHave(&Have{First: first, Bitmap: bm})
	return p
}

func TestPickSourceFollowsBufferMaps(t *testing.T) {
	hole := peerWithMap(100, true, false, true, true) // lacks 101
	full := peerWithMap(100, true, true, true, true)
	none := &peer{newest: -1} // no map yet, nothing announced
	parent := &peer{newest: 120}

	require.Equal(t, 0, hole.holds(101))
	require.Equal(t, 2, full.holds(101))
	require.Equal(t, 1, hole.holds(104), "past the map's end: probably arrived since")
	require.Equal(t, 0, hole.holds(99), "before the map: gone from its window")
	require.Equal(t, 0, none.holds(101))
	require.Equal(t, 1, parent.holds(101))

	sources := []*peer{hole, none, full, parent}
	// The first request goes to the neighbour whose map shows the chunk.
	require.Same(t, full, pickSource(sources, 101, 0))
	// Then to the others that may hold it, in turn; never to one whose map
	// shows a hole there, nor to one that announced nothing.
	seen := map[*peer]bool{}
	for try := 1; try < 4; try++ {
		p := pickSource(sources, 101, try)
		require.NotSame(t, hole, p)
		require.NotSame(t, none, p)
		seen[p] = true
	}
	require.True(t, seen[full] && seen[parent], "asked one, then another")

	// When nobody seems to hold it, everyone is asked in turn.
	seen = map[*peer]bool{}
	for try := range 4 {
		seen[pickSource([]*peer{hole, none}, 101, try)] = true
	}
	require.Len(t, seen, 2)
}
