package mux

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testKey is a fixed station key; seed picks which.
func testKey(seed byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
}

// testChunk is a signed chunk of frames from a test file.
func testChunk(t testing.TB, file string, first, n int, title string) *Chunk {
	t.Helper()
	fs, _ := demuxBytes(t, readTestdata(t, file))
	c := &Chunk{
		Seq:       7,
		Timestamp: int64(first * fs[0].Samples()),
		Produced:  time.Date(2025, 1, 2, 3, 4, 5, 6000, time.UTC).UnixMicro(),
		Frames:    fs[first : first+n],
	}
	if title != "" {
		c.Flags |= FlagMetadata
		c.Title = title
	}
	require.NoError(t, c.Sign(testKey(1)))
	return c
}

func TestChunkSignParseVerify(t *testing.T) {
	key := testKey(1)
	pub := key.Public().(ed25519.PublicKey)
	tests := []struct {
		name string
		c    *Chunk
	}{
		{"four frames with a title", testChunk(t, "cbr128.mp3", 10, 4, "Artist - Title ✓")},
		{"one mono frame", testChunk(t, "mono22k.mp3", 0, 1, "")},
		{"the most frames", testChunk(t, "speech.mp3", 100, MaxChunkFrames, "")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.c
			require.NoError(t, c.Verify(pub))
			b := c.Bytes()
			require.Len(t, b, c.encodedSize())

			p, err := ParseChunk(bytes.Clone(b))
			require.NoError(t, err)
			require.NoError(t, p.Verify(pub))
			require.Equal(t, c.Seq, p.Seq)
			require.Equal(t, c.Timestamp, p.Timestamp)
			require.Equal(t, c.Produced, p.Produced)
			require.Equal(t, c.Flags, p.Flags)
			require.Equal(t, c.Title, p.Title)
			require.Equal(t, c.Frames, p.Frames)
			require.Equal(t, c.Signature, p.Signature)
			require.Equal(t, b, p.Bytes())
			require.Equal(t, c.Format(), p.Format())
			require.Equal(t, c.End(), p.End())
			require.Equal(t, c.ProducedTime(), p.ProducedTime())

			// Signing is deterministic, and the same fields encode the same.
			again := &Chunk{Seq: c.Seq, Timestamp: c.Timestamp, Produced: c.Produced, Flags: c.Flags, Title: c.Title, Frames: c.Frames}
			require.NoError(t, again.Sign(key))
			require.Equal(t, b, again.Bytes())
		})
	}
}

func TestChunkTiming(t *testing.T) {
	c := testChunk(t, "cbr128.mp3", 10, 4, "")
	require.Equal(t, Format{MPEG1, 44100, 2}, c.Format())
	require.Equal(t, int64(4*1152), c.Samples())
	require.Equal(t, int64(14*1152), c.End())
	require.Equal(t, 104489795*time.Nanosecond, c.Duration())
	require.Equal(t, time.Date(2025, 1, 2, 3, 4, 5, 6000, time.UTC), c.ProducedTime().UTC())

	// Kept by Sign and ParseChunk, computed for a chunk made by hand.
	p, err := ParseChunk(c.Bytes())
	require.NoError(t, err)
	require.Equal(t, int64(4*1152), p.Samples())
	require.Equal(t, Format{MPEG1, 44100, 2}, p.Format())
	require.Equal(t, 1152, p.frameSamples())
	byHand := &Chunk{Timestamp: c.Timestamp, Frames: c.Frames[:2]}
	require.Equal(t, int64(2*1152), byHand.Samples())
	require.Equal(t, int64(12*1152), byHand.End())
	require.Equal(t, Format{MPEG1, 44100, 2}, byHand.Format())
	require.Equal(t, 1152, byHand.frameSamples())
}

// TestChunkTamper: changing any byte of a signed chunk makes it fail to
// parse or to verify.
func TestChunkTamper(t *testing.T) {
	pub := testKey(1).Public().(ed25519.PublicKey)
	b := testChunk(t, "mono22k.mp3", 20, 3, "title").Bytes()
	for i := range b {
		for _, x := range []byte{0x01, 0x80, 0xFF} {
			m := bytes.Clone(b)
			m[i] ^= x
			c, err := ParseChunk(m)
			if err == nil {
				err = c.Verify(pub)
				require.ErrorIs(t, err, ErrBadSignature, "byte %d ^ %#x", i, x)
			} else {
				require.ErrorIs(t, err, ErrBadChunk, "byte %d ^ %#x", i, x)
			}
		}
	}
}

// TestChunkOtherStation: a chunk verifies only against the key that signed
// it, and a bad key is an error, not a panic.
func TestChunkOtherStation(t *testing.T) {
	c := testChunk(t, "cbr128.mp3", 0, 2, "")
	other := testKey(2).Public().(ed25519.PublicKey)
	require.ErrorIs(t, c.Verify(other), ErrBadSignature)
	p, err := ParseChunk(c.Bytes())
	require.NoError(t, err)
	require.ErrorIs(t, p.Verify(other), ErrBadSignature)
	require.ErrorIs(t, p.Verify(nil), ErrBadSignature)
	require.ErrorIs(t, p.Verify(other[:31]), ErrBadSignature)

	// The same fields signed by another station: the signatures differ, and
	// neither verifies for the other.
	d := &Chunk{Seq: c.Seq, Timestamp: c.Timestamp, Produced: c.Produced, Frames: c.Frames}
	require.NoError(t, d.Sign(testKey(2)))
	require.NotEqual(t, c.Signature, d.Signature)
	require.NoError(t, d.Verify(other))
	require.ErrorIs(t, d.Verify(testKey(1).Public().(ed25519.PublicKey)), ErrBadSignature)

	// Unsigned.
	u := &Chunk{Frames: c.Frames}
	require.ErrorIs(t, u.Verify(other), ErrBadSignature)
}

// TestParseChunkTruncated: every proper prefix, and any extension, of a
// chunk is rejected.
func TestParseChunkTruncated(t *testing.T) {
	b := testChunk(t, "cbr128.mp3", 3, 3, "a title").Bytes()
	for i := range len(b) {
		_, err := ParseChunk(bytes.Clone(b[:i]))
		require.ErrorIs(t, err, ErrBadChunk, "%d of %d bytes", i, len(b))
	}
	_, err := ParseChunk(append(bytes.Clone(b), 0))
	require.ErrorIs(t, err, ErrBadChunk)
}

// rawChunk encodes a chunk by hand, without the checks Sign makes.
func rawChunk(version byte, flags Flags, ts int64, title string, lens []int, frames ...[]byte) []byte {
	b := []byte{version, byte(flags)}
	b = binary.BigEndian.AppendUint64(b, 1)
	b = binary.BigEndian.AppendUint64(b, uint64(ts))
	b = binary.BigEndian.AppendUint64(b, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(title)))
	b = binary.BigEndian.AppendUint16(b, uint16(len(lens)))
	for _, l := range lens {
		b = binary.BigEndian.AppendUint16(b, uint16(l))
	}
	b = append(b, title...)
	for _, f := range frames {
		b = append(b, f...)
	}
	return append(b, make([]byte, SignatureSize)...)
}

func TestParseChunkRejects(t *testing.T) {
	cbr, _ := demuxBytes(t, readTestdata(t, "cbr128.mp3"))
	mono, _ := demuxBytes(t, readTestdata(t, "mono22k.mp3"))
	a, b := cbr[0], cbr[1]
	lens := func(fs ...Frame) []int {
		var l []int
		for _, f := range fs {
			l = append(l, len(f))
		}
		return l
	}
	many := make([]Frame, MaxChunkFrames+1)
	for i := range many {
		many[i] = mono[i]
	}
	manyBytes := make([][]byte, len(many))
	for i, f := range many {
		manyBytes[i] = f
	}
	tests := []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"valid", rawChunk(1, 0, 0, "", lens(a, b), a, b), true},
		{"valid with title", rawChunk(1, FlagMetadata, 0, "t", lens(a), a), true},
		{"metadata flag, empty title", rawChunk(1, FlagMetadata|FlagDiscontinuity, 0, "", lens(a), a), true},
		{"the most frames", rawChunk(1, 0, 0, "", lens(many[:MaxChunkFrames]...), manyBytes[:MaxChunkFrames]...), true},
		{"version 0", rawChunk(0, 0, 0, "", lens(a), a), false},
		{"version 2", rawChunk(2, 0, 0, "", lens(a), a), false},
		{"unknown flag", rawChunk(1, 1<<5, 0, "", lens(a), a), false},
		{"no frames", rawChunk(1, 0, 0, "", nil), false},
		{"too many frames", rawChunk(1, 0, 0, "", lens(many...), manyBytes...), false},
		{"title without flag", rawChunk(1, 0, 0, "t", lens(a), a), false},
		{"title too long", rawChunk(1, FlagMetadata, 0, string(make([]byte, MaxTitleLen+1)), lens(a), a), false},
		{"negative timestamp", rawChunk(1, 0, -1, "", lens(a), a), false},
		{"mixed formats", rawChunk(1, 0, 0, "", lens(a, mono[0]), a, mono[0]), false},
		{"length shorter than the frame", rawChunk(1, 0, 0, "", []int{len(a) - 1}, a[:len(a)-1]), false},
		{"length longer than the frame", rawChunk(1, 0, 0, "", []int{len(a) + 1}, a, []byte{0}), false},
		{"lengths swapped", rawChunk(1, 0, 0, "", []int{len(b), len(a)}, a, b), len(a) == len(b)},
		{"not a frame", rawChunk(1, 0, 0, "", []int{417}, make([]byte, 417)), false},
		{"unsupported frame", rawChunk(1, 0, 0, "", []int{100}, append(headerBytes(0xFFE39064), make([]byte, 96)...)), false},
		{"bytes after the frames", rawChunk(1, 0, 0, "", lens(a), a, []byte{1, 2}), false},
		{"a frame count of 0xFFFF", append(rawChunk(1, 0, 0, "", nil)[:28], 0xFF, 0xFF), false},
		{"too long", make([]byte, MaxChunkSize+1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseChunk(tt.b)
			if tt.ok {
				require.NoError(t, err)
				require.Equal(t, tt.b, c.Bytes())
				return
			}
			require.ErrorIs(t, err, ErrBadChunk)
			require.Nil(t, c)
		})
	}
}

// TestChunkSignRejects: Sign refuses chunks that ParseChunk would reject,
// so a station never sends what its listeners must drop.
func TestChunkSignRejects(t *testing.T) {
	cbr, _ := demuxBytes(t, readTestdata(t, "cbr128.mp3"))
	mono, _ := demuxBytes(t, readTestdata(t, "mono22k.mp3"))
	tests := []struct {
		name string
		c    Chunk
	}{
		{"no frames", Chunk{}},
		{"too many frames", Chunk{Frames: mono[:MaxChunkFrames+1]}},
		{"title too long", Chunk{Flags: FlagMetadata, Title: string(make([]byte, MaxTitleLen+1)), Frames: cbr[:1]}},
		{"title without flag", Chunk{Title: "t", Frames: cbr[:1]}},
		{"unknown flag", Chunk{Flags: 1 << 6, Frames: cbr[:1]}},
		{"negative timestamp", Chunk{Timestamp: -1, Frames: cbr[:1]}},
		{"mixed formats", Chunk{Frames: []Frame{cbr[0], mono[0]}}},
		{"not a frame", Chunk{Frames: []Frame{make(Frame, 417)}}},
		{"a frame with a tail", Chunk{Frames: []Frame{append(append(Frame{}, cbr[0]...), 0)}}},
		{"an empty frame", Chunk{Frames: []Frame{{}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.ErrorIs(t, tt.c.Sign(testKey(1)), ErrBadChunk)
			require.Nil(t, tt.c.Bytes())
			require.ErrorIs(t, tt.c.Verify(testKey(1).Public().(ed25519.PublicKey)), ErrBadChunk)
		})
	}
}

// BenchmarkParseChunk is what every node pays to parse a chunk of 100 ms
// (4 frames at 128 kbit/s), the signature aside: one allocation.
func BenchmarkParseChunk(b *testing.B) {
	raw := testChunk(b, "cbr128.mp3", 10, 4, "").Bytes()
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		if _, err := ParseChunk(raw); err != nil {
			b.Fatal(err)
		}
	}
}
