package playout

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/mux"
)

// TestPlayerWithReassembler plays cbr128.mp3 chunked by mux.Chunker and
// delivered in real time to a mux.Reassembler, with one chunk lost: the
// Player starts after Target, conceals the lost chunk at its deadline,
// mutes what lacks its bit reservoir after it, and never runs late.
func TestPlayerWithReassembler(t *testing.T) {
	frames := testFrames(t, "cbr128.mp3")
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		ch := mux.NewChunker(mux.ChunkerConfig{})
		var chunks []*mux.Chunk
		for i, f := range frames {
			c, err := ch.Add(f, start.Add(due(i)))
			require.NoError(t, err)
			if c != nil {
				chunks = append(chunks, c)
			}
		}
		c, err := ch.Flush()
		require.NoError(t, err)
		if c != nil {
			chunks = append(chunks, c)
		}
		const lost = 20
		require.Greater(t, len(chunks), lost+10)

		r := mux.NewReassembler(mux.ReassemblerConfig{})
		sink := &MemorySink{}
		p, err := New(r, Config{Sink: sink})
		require.NoError(t, err)
		errc := runPlayer(p, context.Background())

		// The broadcaster's chunks arrive as they are completed, 30 ms
		// later.
		for i, c := range chunks {
			time.Sleep(time.Until(start.Add(c.Format().Duration(c.End()) + 30*time.Millisecond)))
			if i != lost {
				require.NoError(t, r.Push(c))
			}
		}
		r.End()
		require.NoError(t, <-errc)

		st := p.Stats()
		t.Logf("%+v continuity %.3f", st, st.Continuity())
		require.EqualValues(t, len(frames), st.Due())
		require.EqualValues(t, len(chunks[lost].Frames), st.FramesConcealed)
		require.Positive(t, st.FramesMuted, "frames after the gap lack their reservoir")
		require.Zero(t, st.Underruns)
		require.Zero(t, st.Rebuffers)
		// Startup: Target buffered, i.e. the chunk completing 1 s arrived.
		require.Greater(t, st.Startup, DefaultTarget)
		require.Less(t, st.Startup, DefaultTarget+200*time.Millisecond)
		// Lag: Target and the transit behind the broadcaster, less Lead.
		require.InDelta(t, float64(st.Startup-DefaultLead), float64(st.Lag), float64(150*time.Millisecond))

		pcm := sink.PCM()
		require.Len(t, pcm, pcmLength(frames))
		gap := int(chunks[lost].Timestamp) * 4
		require.Equal(t, decodeAll(t, frames[:chunks[lost].Timestamp/frameSamples]), pcm[:gap])
		require.True(t, isZero(pcm[gap:int(chunks[lost].End())*4]))
	})
}
