package output

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/mux"
)

func TestWindow(t *testing.T) {
	w := NewWindow(4)
	require.Nil(t, w.Get(0), "an empty window holds nothing, not even seq 0")
	_, ok := w.Newest()
	require.False(t, ok)
	require.Empty(t, w.Since(0))

	chunks := make([]*mux.Chunk, 10)
	for i := range chunks {
		chunks[i] = &mux.Chunk{Seq: uint64(i)}
	}
	for _, s := range []int{1, 0, 3} {
		w.WriteChunk(chunks[s])
	}
	newest, ok := w.Newest()
	require.True(t, ok)
	require.EqualValues(t, 3, newest)
	require.Same(t, chunks[0], w.Get(0))
	require.Same(t, chunks[1], w.Get(1))
	require.Nil(t, w.Get(2))
	require.Same(t, chunks[3], w.Get(3))
	require.Nil(t, w.Get(4))
	require.Nil(t, w.Get(8), "same slot as 0, another seq")
	require.Equal(t, []*mux.Chunk{chunks[1], chunks[3]}, w.Since(1))

	w.WriteChunk(chunks[6]) // replaces 2's slot; 0..2 are now out of the window
	require.Same(t, chunks[6], w.Get(6))
	require.Nil(t, w.Get(2))
	w.WriteChunk(chunks[2]) // older than anything held: ignored
	require.Nil(t, w.Get(2))
	require.Same(t, chunks[6], w.Get(6))
	require.Same(t, chunks[3], w.Get(3))
	require.Equal(t, []*mux.Chunk{chunks[3], chunks[6]}, w.Since(0))
	require.Equal(t, []*mux.Chunk{chunks[6]}, w.Last(2))
}
