package mux

import (
	"crypto/ed25519"
	"io"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// rawFrames splits a tag-free MP3 file into frames with ParseFrame alone.
func rawFrames(t testing.TB, path string) []Frame {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var fs []Frame
	for len(b) > 0 {
		f, err := ParseFrame(b)
		require.NoError(t, err)
		fs = append(fs, f)
		b = b[len(f):]
	}
	return fs
}

func chunksOf(t testing.TB, frames []Frame, cfg ChunkerConfig) []*Chunk {
	t.Helper()
	c := NewChunker(cfg)
	var out []*Chunk
	t0 := time.Unix(1_700_000_000, 0)
	for i, f := range frames {
		ch, err := c.Add(f, t0.Add(time.Duration(i)*f.Format().FrameDuration()))
		require.NoError(t, err)
		if ch != nil {
			out = append(out, ch)
		}
	}
	ch, err := c.Flush()
	require.NoError(t, err)
	if ch != nil {
		out = append(out, ch)
	}
	return out
}

func TestChunkerGroupsWholeFrames(t *testing.T) {
	frames := rawFrames(t, "../testdata/cbr128.mp3")
	_, key, _ := ed25519.GenerateKey(nil)
	chunks := chunksOf(t, frames, ChunkerConfig{Key: key})
	n := 0
	var ts int64
	for i, c := range chunks {
		require.Equal(t, uint64(i), c.Seq)
		require.Equal(t, ts, c.Timestamp)
		if i < len(chunks)-1 {
			require.Len(t, c.Frames, 4, "100 ms of 26.1 ms frames")
		}
		require.NoError(t, c.Verify(key.Public().(ed25519.PublicKey)))
		p, err := ParseChunk(c.Bytes())
		require.NoError(t, err)
		require.Equal(t, c.Frames, p.Frames)
		n += len(c.Frames)
		ts += c.Samples()
	}
	require.Equal(t, len(frames), n)
}

func TestChunkerTitleAndDiscontinuity(t *testing.T) {
	frames := rawFrames(t, "../testdata/cbr128.mp3")[:40]
	mono := rawFrames(t, "../testdata/mono22k.mp3")[:8]
	c := NewChunker(ChunkerConfig{TitleEvery: time.Second})
	c.SetTitle("Song A")
	var chunks []*Chunk
	t0 := time.Unix(0, 0)
	add := func(f Frame, at time.Duration) {
		ch, err := c.Add(f, t0.Add(at))
		require.NoError(t, err)
		if ch != nil {
			chunks = append(chunks, ch)
		}
	}
	for i, f := range frames {
		add(f, time.Duration(i)*26*time.Millisecond)
	}
	for i, f := range mono {
		add(f, time.Second+time.Duration(i)*26*time.Millisecond)
	}
	if ch, _ := c.Flush(); ch != nil {
		chunks = append(chunks, ch)
	}
	require.Equal(t, FlagMetadata, chunks[0].Flags)
	require.Equal(t, "Song A", chunks[0].Title)
	require.Zero(t, chunks[1].Flags)
	var disc, titles int
	for _, ch := range chunks {
		if ch.Flags&FlagDiscontinuity != 0 {
			disc++
			require.Equal(t, 22050, ch.Format().SampleRate)
		}
		if ch.Flags&FlagMetadata != 0 {
			titles++
		}
	}
	require.Equal(t, 1, disc)
	require.Equal(t, 2, titles, "repeated once after TitleEvery")
}

// drain pulls every slot, concealing when asked to.
func drain(t *testing.T, r *Reassembler) []Slot {
	t.Helper()
	var out []Slot
	for {
		s, ok, err := r.Next(true)
		if err == io.EOF {
			return out
		}
		require.NoError(t, err)
		require.True(t, ok)
		out = append(out, s)
		require.Less(t, len(out), 100000)
	}
}

func TestReassemblerInOrder(t *testing.T) {
	frames := rawFrames(t, "../testdata/cbr128.mp3")
	r := NewReassembler(ReassemblerConfig{})
	for _, c := range chunksOf(t, frames, ChunkerConfig{}) {
		require.NoError(t, r.Push(c))
	}
	r.End()
	slots := drain(t, r)
	require.Len(t, slots, len(frames))
	for i, s := range slots {
		require.Equal(t, frames[i], s.Frame)
		require.Equal(t, int64(i*1152), s.Timestamp)
		require.False(t, s.Concealed || s.Muted, "frame %d", i)
	}
}

func TestReassemblerShuffledDuplicatedAndMissing(t *testing.T) {
	frames := rawFrames(t, "../testdata/cbr128.mp3")
	chunks := chunksOf(t, frames, ChunkerConfig{})
	r := NewReassembler(ReassemblerConfig{})
	// Chunk 0 first so the timeline starts at zero, then the rest in reverse
	// order, each twice, without chunk 10.
	require.NoError(t, r.Push(chunks[0]))
	for i := len(chunks) - 1; i > 0; i-- {
		if i == 10 {
			continue
		}
		require.NoError(t, r.Push(chunks[i]))
		require.ErrorIs(t, r.Push(chunks[i]), ErrDuplicate)
	}
	r.End()
	slots := drain(t, r)
	require.Len(t, slots, len(frames), "the timeline keeps its length")
	lost := chunks[10]
	for i, s := range slots {
		ts := int64(i * 1152)
		require.Equal(t, ts, s.Timestamp)
		inGap := ts >= lost.Timestamp && ts < lost.End()
		require.Equal(t, inGap, s.Concealed, "frame %d", i)
		if inGap {
			require.Equal(t, Silent(frames[0].Format()), s.Frame)
			continue
		}
		require.Equal(t, frames[i], s.Frame)
		if ts == lost.End() {
			require.True(t, s.Muted, "first frame after a gap cannot be exact")
		}
	}
	require.ErrorIs(t, r.Push(chunks[3]), ErrLate)
	require.Equal(t, int64(len(chunks)-1), r.Stats().Chunks)
}

func TestReassemblerLateChunkFillsRest(t *testing.T) {
	frames := rawFrames(t, "../testdata/cbr128.mp3")
	chunks := chunksOf(t, frames, ChunkerConfig{})
	r := NewReassembler(ReassemblerConfig{})
	require.NoError(t, r.Push(chunks[0]))
	for range 4 {
		s, ok, err := r.Next(false)
		require.NoError(t, err)
		require.True(t, ok)
		require.False(t, s.Concealed)
	}
	_, ok, err := r.Next(false)
	require.NoError(t, err)
	require.False(t, ok, "no waiting frame and no concealment asked")
	s, ok, _ := r.Next(true)
	require.True(t, ok)
	require.True(t, s.Concealed)
	// Chunk 1 arrives one frame late: its last three frames still play.
	require.NoError(t, r.Push(chunks[1]))
	for i := 1; i < 4; i++ {
		s, ok, _ := r.Next(false)
		require.True(t, ok)
		require.Equal(t, chunks[1].Frames[i], s.Frame)
	}
}

func TestReassemblerJoinMutesUntilClean(t *testing.T) {
	frames := rawFrames(t, "../testdata/cbr128.mp3")
	chunks := chunksOf(t, frames, ChunkerConfig{})
	r := NewReassembler(ReassemblerConfig{})
	for _, c := range chunks[20:] {
		require.NoError(t, r.Push(c))
	}
	r.End()
	slots := drain(t, r)
	require.True(t, slots[0].Prime, "a joiner has no decoder history: the first frames only prime")
	first := -1
	for i, s := range slots {
		require.False(t, s.Muted)
		if !s.Prime && first < 0 {
			first = i
		}
		if first >= 0 {
			require.False(t, s.Prime, "only leading frames prime")
		}
	}
	require.Positive(t, first)
	// The first clean frame's reservoir was received, as was its predecessor's.
	var avail int
	for _, s := range slots[:first-1] {
		avail += s.Frame.MainDataSize()
	}
	require.LessOrEqual(t, slots[first-1].Frame.MainDataBegin(), avail)
}

func TestReassemblerWindowBeforeStart(t *testing.T) {
	frames := rawFrames(t, "../testdata/cbr128.mp3")
	chunks := chunksOf(t, frames, ChunkerConfig{})
	r := NewReassembler(ReassemblerConfig{Window: 10})
	for _, c := range chunks[:30] {
		require.NoError(t, r.Push(c))
	}
	require.Equal(t, int64(20), r.Stats().Dropped)
	s, ok, err := r.Next(false)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, chunks[20].Timestamp, s.Timestamp)
	require.ErrorIs(t, r.Push(chunks[40]), ErrTooFarAhead)
	require.InDelta(t, 10*104*time.Millisecond, r.Buffered(), float64(30*time.Millisecond))
}

func TestSignatureCache(t *testing.T) {
	frames := rawFrames(t, "../testdata/cbr128.mp3")
	pub, key, _ := ed25519.GenerateKey(nil)
	other, _, _ := ed25519.GenerateKey(nil)
	chunks := chunksOf(t, frames, ChunkerConfig{Key: key})
	cache := NewSignatureCache(4)
	for _, c := range chunks {
		require.NoError(t, cache.Verify(c, pub))
		require.NoError(t, cache.Verify(c, pub), "a hit")
		require.ErrorIs(t, cache.Verify(c, other), ErrBadSignature, "another station's key never hits")
		// The same signature over altered bytes is not a hit.
		b := append([]byte(nil), c.Bytes()...)
		b[len(b)-SignatureSize-1] ^= 1
		forged, err := ParseChunk(b)
		require.NoError(t, err)
		require.ErrorIs(t, cache.Verify(forged, pub), ErrBadSignature)
	}
	require.Len(t, cache.entries, 4)
}
