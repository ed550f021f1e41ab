package input

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// noise is n deterministic pseudo-random bytes, like compressed audio.
func noise(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// splice runs a splicer over a first connection that delivered old and a
// second that delivers next in pieces of size chunk, ending early if cut.
func splice(s *splicer, old, next []byte, chunk int, cut bool) []byte {
	s.remember(old)
	out := append([]byte(nil), old...)
	s.reconnected()
	for len(next) > 0 {
		n := min(chunk, len(next))
		if s.live() {
			s.remember(next[:n])
			out = append(out, next[:n]...)
		} else {
			out = s.write(out, next[:n])
		}
		next = next[n:]
	}
	if cut {
		out = s.endConn(out)
	}
	return out
}

func TestSplicer(t *testing.T) {
	stream := noise(200_000, 1)
	tests := []struct {
		name     string
		drop     int // where the first connection ended
		resume   int // where the second started
		end      int // where the second ended
		want     []byte
		noWindow bool
		window   int
	}{
		{name: "icecast burst", drop: 100_000, resume: 100_000 - 65536, end: 200_000, want: stream},
		{name: "exact resume", drop: 100_000, resume: 100_000, end: 200_000, want: stream},
		{name: "small overlap", drop: 100_000, resume: 100_000 - 300, end: 200_000, want: stream},
		{name: "overlap one probe", drop: 100_000, resume: 100_000 - spliceProbe, end: 200_000, want: stream},
		{name: "gap", drop: 100_000, resume: 120_000, end: 200_000,
			want: append(append([]byte(nil), stream[:100_000]...), stream[120_000:]...)},
		{name: "burst from the start", drop: 10_000, resume: 0, end: 200_000, want: stream},
		{name: "burst longer than the history", drop: 190_000, resume: 100_000, end: 200_000, window: 20_000,
			want: append(append([]byte(nil), stream[:190_000]...), stream[100_000:]...)},
		{name: "second connection ends inside the overlap", drop: 100_000, resume: 50_000, end: 80_000,
			want: stream[:100_000]},
		{name: "second connection ends inside the probe", drop: 100_000, resume: 99_000, end: 99_500,
			want: stream[:100_000]},
		{name: "second connection ends after a short probe", drop: 100_000, resume: 100_000, end: 100_500,
			want: stream[:100_500]},
		{name: "disabled", drop: 100_000, resume: 90_000, end: 200_000, noWindow: true,
			want: append(append([]byte(nil), stream[:100_000]...), stream[90_000:]...)},
	}
	for _, tt := range tests {
		for _, chunk := range []int{1, 100, 1000, 16 << 10, 1 << 20} {
			s := &splicer{window: 128 << 10}
			if tt.noWindow {
				s.window = 0
			}
			if tt.window > 0 {
				s.window = tt.window
			}
			got := splice(s, stream[:tt.drop], stream[tt.resume:tt.end], chunk, true)
			require.True(t, bytes.Equal(tt.want, got), "%s, chunk %d: got %d bytes, want %d", tt.name, chunk, len(got), len(tt.want))
		}
	}
}

func TestSplicerFalseMatch(t *testing.T) {
	// The new stream starts with bytes that match the history for a while
	// and then diverge: nothing may be lost.
	old := noise(50_000, 2)
	next := append(append([]byte(nil), old[20_000:23_000]...), noise(10_000, 3)...)
	for _, chunk := range []int{1, 500, 1 << 20} {
		s := &splicer{window: 64 << 10}
		got := splice(s, old, next, chunk, true)
		require.True(t, bytes.Equal(append(append([]byte(nil), old...), next...), got), "chunk %d", chunk)
	}
}

func TestSplicerHistoryBounded(t *testing.T) {
	s := &splicer{window: 1000}
	for i := 0; i < 100; i++ {
		s.remember(noise(333, uint64(i)))
		require.LessOrEqual(t, len(s.hist), 2000)
	}
	require.GreaterOrEqual(t, len(s.hist), 1000)
}

// FuzzSplice checks the splicer's invariant on any bytes: the output of a
// connection is a suffix of what it delivered, and what was dropped
// repeats the end of the history (or, when the connection ended while the
// splicer was still matching, some part of it).
func FuzzSplice(f *testing.F) {
	f.Add(noise(3000, 4), uint16(2000), uint16(1500), uint16(100))
	f.Add(bytes.Repeat([]byte{0}, 5000), uint16(3000), uint16(100), uint16(7))
	f.Add(bytes.Repeat([]byte("ab"), 3000), uint16(4000), uint16(3999), uint16(1))
	f.Fuzz(func(t *testing.T, stream []byte, drop, resume, chunk uint16) {
		d := int(drop) % (len(stream) + 1)
		r := int(resume) % (len(stream) + 1)
		c := int(chunk)%4096 + 1
		for _, cut := range []bool{false, true} {
			s := &splicer{window: 2048}
			old, next := stream[:d], stream[r:]
			out := splice(s, old, next, c, cut)
			require.True(t, bytes.HasPrefix(out, old))
			got := out[len(old):]
			require.True(t, bytes.HasSuffix(next, got), "output is not a suffix of the input")
			skipped := next[:len(next)-len(got)]
			hist := old[max(0, len(old)-2*2048):]
			switch {
			case cut:
				// The connection ended inside what looked like a repeat.
				require.True(t, bytes.Contains(hist, skipped), "dropped bytes do not repeat the history")
			case s.live():
				require.True(t, bytes.HasSuffix(hist, skipped), "dropped bytes do not repeat the end of the history")
			}
		}
	})
}
