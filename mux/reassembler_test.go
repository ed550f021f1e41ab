package mux

import (
	"bytes"
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
	require.NoError(t, r.Push(chunks[40]), "a chunk far ahead is accepted: it is live audio")
	require.Equal(t, 10, r.Stats().Held)
	require.Equal(t, int64(21), r.Stats().Dropped, "the oldest not being played was dropped to make room")
	require.Less(t, r.Buffered(), 100*time.Millisecond)
}

// shift returns a copy of c moved n chunks of its length later in the
// stream (sequence number, timestamp and production time).
func shift(c *Chunk, n int) *Chunk {
	d := *c
	d.Seq += uint64(n)
	d.Timestamp += int64(n) * c.Samples()
	d.Produced += int64(n) * c.Duration().Microseconds()
	return &d
}

// longStream is the chunks of cbr128.mp3 (8 s) repeated to make n chunks,
// as if the broadcaster had looped it.
func longStream(t *testing.T, n int) []*Chunk {
	chunks := chunksOf(t, rawFrames(t, "../testdata/cbr128.mp3"), ChunkerConfig{})
	// Drop the short last chunk so that every chunk has one length.
	chunks = chunks[:len(chunks)-1]
	out := make([]*Chunk, n)
	for i := range out {
		c := chunks[i%len(chunks)]
		out[i] = shift(c, i-int(c.Seq))
	}
	return out
}

// TestReassemblerStaleBurstThenLive: a lagging peer's burst of 12 genuine
// chunks 35 s old starts playback; the live chunks that follow, 350 chunks
// ahead, are accepted, and Skip moves the playhead onto them, priming the
// decoder again; the stale chunks are then late.
func TestReassemblerStaleBurstThenLive(t *testing.T) {
	stream := longStream(t, 400)
	stale, live := stream[:12], stream[350:]
	r := NewReassembler(ReassemblerConfig{})
	for _, c := range stale {
		require.NoError(t, r.Push(c))
	}
	require.Less(t, r.Behind(), 1300*time.Millisecond)
	for range 10 {
		s, ok, err := r.Next(false)
		require.NoError(t, err)
		require.True(t, ok)
		require.False(t, s.Concealed)
	}
	for _, c := range live[:12] {
		require.NoError(t, r.Push(c), "seq %d", c.Seq)
	}
	// From the playhead (stale[2]'s third frame) to the newest end.
	playhead := stale[2].Produced + (2 * stale[2].Frames[0].Format().FrameDuration()).Microseconds()
	require.InDelta(t, producedEnd(live[11])-playhead, r.Behind().Microseconds(), 1)
	require.Greater(t, r.Behind(), 35*time.Second)
	require.False(t, r.Skip(time.Hour), "nothing is that far behind")
	require.True(t, r.Skip(time.Second))
	require.InDelta(t, time.Second, r.Behind(), float64(110*time.Millisecond), "Skip lands on a chunk boundary")
	require.Positive(t, r.Stats().Skips)
	s, ok, err := r.Next(false)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, live[2].Timestamp, s.Timestamp, "the chunk holding the point 1 s behind the newest")
	require.True(t, s.Prime, "the decoder's bit reservoir is primed again")
	require.ErrorIs(t, r.Push(stale[11]), ErrLate)
	require.ErrorIs(t, r.Push(stream[100]), ErrLate)
}

// TestReassemblerStaleAndLiveBeforeStart: chunks 35 s old and live ones
// arrive before playback starts; the stale ones, more than Window behind,
// are dropped at once; Skip passes those less far behind.
func TestReassemblerStaleAndLiveBeforeStart(t *testing.T) {
	stream := longStream(t, 400)
	r := NewReassembler(ReassemblerConfig{Window: 200})
	for _, c := range stream[:12] { // 35 s old: beyond the 20 s window
		require.NoError(t, r.Push(c))
	}
	for _, c := range stream[250:262] { // 13 s old
		require.NoError(t, r.Push(c))
	}
	for _, c := range stream[388:400] {
		require.NoError(t, r.Push(c))
	}
	st := r.Stats()
	require.EqualValues(t, 12, st.Dropped)
	require.Equal(t, 24, st.Held)
	require.InDelta(t, producedEnd(stream[399])-stream[250].Produced, r.Behind().Microseconds(), 1)
	require.True(t, r.Skip(time.Second))
	s, ok, err := r.Next(false)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, stream[390].Timestamp, s.Timestamp)
	require.ErrorIs(t, r.Push(stream[0]), ErrLate)
}

// TestReassemblerSkipsHoleOfAnyLength: a playhead stuck at a hole that
// will never be filled (the chunks were lost in an outage) moves on to the
// audio after it, however far; a chunk held at the playhead is not
// skipped.
func TestReassemblerSkipsHoleOfAnyLength(t *testing.T) {
	stream := longStream(t, 2000)
	r := NewReassembler(ReassemblerConfig{})
	for _, c := range stream[:12] {
		require.NoError(t, r.Push(c))
	}
	for range 12 * 4 { // play the burst
		_, ok, err := r.Next(false)
		require.NoError(t, err)
		require.True(t, ok)
	}
	_, ok, _ := r.Next(false)
	require.False(t, ok, "a hole at the playhead")
	require.False(t, r.Skip(time.Second), "nothing newer held")
	for _, c := range stream[1990:] { // 3 min later
		require.NoError(t, r.Push(c))
	}
	require.True(t, r.Skip(time.Second))
	s, ok, err := r.Next(false)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, stream[1990].Timestamp, s.Timestamp)
	require.False(t, r.Skip(time.Second), "the chunk at the playhead is within keep")
	require.Less(t, r.Stats().Held, 11)
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
		require.Same(t, c, cache.Lookup(c.Bytes(), pub), "the very bytes: the chunk that verified")
		require.Nil(t, cache.Lookup(bytes.Clone(c.Bytes()), pub), "a copy is parsed and checked anew")
		require.Nil(t, cache.Lookup(c.Bytes(), other))
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
