package p2pradio

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/input"
	"github.com/p2pradio/p2pradio/mux"
	"github.com/p2pradio/p2pradio/playout"
)

// testFiles are the bundled test files and how close go-mp3's decode is to
// mpg123's for each (in LSB). go-mp3 and mpg123 differ by more than 1 LSB on
// a few samples of two files (measured: vbr_id3_xing's first two frames,
// 160 samples of speech); the pipeline itself is bit-exact with go-mp3's
// whole-file decode (see TestPipelineMatchesWholeFileDecode).
var testFiles = []struct {
	name  string
	tol   int // max |diff| allowed vs mpg123
	loose int // how many samples may exceed 1 LSB (up to tol)
}{
	{"cbr128.mp3", 1, 0},
	{"vbr_id3_xing.mp3", 8, 2 * 1152 * 2},
	{"mono22k.mp3", 1, 0},
	{"speech.mp3", 2, 400},
	{"junk.mp3", 1, 0},
	{"truncated.mp3", 1, 0},
}

// reference decodes a file with mpg123 (the independent decoder) to 16-bit
// stereo PCM.
func reference(t *testing.T, name string) []byte {
	t.Helper()
	if _, err := exec.LookPath("mpg123"); err != nil {
		t.Skip("mpg123 not installed (.ci/setup installs it)")
	}
	src := filepath.Join("testdata", name)
	if name == "junk.mp3" {
		// mpg123 drops the bit reservoir across the junk; the frames are
		// cbr128's, byte for byte (mux tests prove it).
		src = filepath.Join("testdata", "cbr128.mp3")
	}
	out, err := exec.Command("mpg123", "--no-gapless", "--stereo", "-q", "-s", src).Output()
	require.NoError(t, err)
	return out
}

func samples(pcm []byte) []int16 {
	s := make([]int16, len(pcm)/2)
	for i := range s {
		s[i] = int16(binary.LittleEndian.Uint16(pcm[2*i:]))
	}
	return s
}

func peak(s []int16) int {
	p := 0
	for _, v := range s {
		p = max(p, abs(int(v)))
	}
	return p
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// compare checks got against want sample by sample.
func compare(t *testing.T, got, want []int16, tol, loose int) {
	t.Helper()
	require.Equal(t, len(want), len(got), "length in samples")
	var over, worst int
	for i := range want {
		d := abs(int(got[i]) - int(want[i]))
		worst = max(worst, d)
		if d > 1 {
			over++
		}
	}
	require.LessOrEqual(t, worst, tol, "largest difference")
	require.LessOrEqual(t, over, loose, "samples more than 1 LSB off")
}

// playBytes runs MP3 bytes through input -> Local (demux, chunk,
// reassemble, decode) into a WAV file in fake time, and returns the WAV's
// PCM.
func playBytes(t *testing.T, mp3 []byte) []byte {
	t.Helper()
	wav := filepath.Join(t.TempDir(), "out.wav")
	synctest.Test(t, func(t *testing.T) {
		sink, err := playout.CreateWAV(wav)
		require.NoError(t, err)
		l, err := NewLocal(input.NewReader(bytes.NewReader(mp3)), playout.Config{Sink: sink})
		require.NoError(t, err)
		require.NoError(t, l.Run(context.Background()))
		st := l.Stats()
		require.Zero(t, st.FramesConcealed)
		require.Zero(t, st.FramesMuted)
		require.Equal(t, 1.0, st.Continuity())
		require.NoError(t, l.Close())
	})
	return wavPCM(t, wav)
}

func wavPCM(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Greater(t, len(b), 44)
	require.Equal(t, "RIFF", string(b[:4]))
	require.Equal(t, "data", string(b[36:40]))
	n := binary.LittleEndian.Uint32(b[40:])
	require.Equal(t, int(n), len(b)-44)
	return b[44:]
}

func TestPipelineEqualsReference(t *testing.T) {
	for _, f := range testFiles {
		t.Run(f.name, func(t *testing.T) {
			want := reference(t, f.name)
			mp3, err := os.ReadFile(filepath.Join("testdata", f.name))
			require.NoError(t, err)
			got := playBytes(t, mp3)
			compare(t, samples(got), samples(want), f.tol, f.loose)
		})
	}
}

// chunksOfFile demuxes and chunks a file.
func chunksOfFile(t *testing.T, name string) []*mux.Chunk {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	d := mux.NewDemuxer(bytes.NewReader(b))
	c := mux.NewChunker(mux.ChunkerConfig{})
	var out []*mux.Chunk
	for {
		f, err := d.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		ch, err := c.Add(f, time.Now())
		require.NoError(t, err)
		if ch != nil {
			out = append(out, ch)
		}
	}
	if ch, _ := c.Flush(); ch != nil {
		out = append(out, ch)
	}
	return out
}

// playChunks plays chunks (some may be missing) through a Reassembler and
// a Player in fake time, and returns the PCM and the player's figures.
func playChunks(t *testing.T, chunks []*mux.Chunk) ([]byte, playout.Stats) {
	t.Helper()
	var pcm []byte
	var st playout.Stats
	synctest.Test(t, func(t *testing.T) {
		r := mux.NewReassembler(mux.ReassemblerConfig{})
		sink := &playout.MemorySink{}
		p, err := playout.New(r, playout.Config{Sink: sink})
		require.NoError(t, err)
		done := make(chan error, 1)
		go func() { done <- p.Run(context.Background()) }()
		// Chunks arrive in real time, 100 ms apart, as from a live source.
		for _, c := range chunks {
			if c != nil {
				require.NoError(t, r.Push(c))
			}
			time.Sleep(c0Duration(chunks))
		}
		r.End()
		require.NoError(t, <-done)
		pcm, st = sink.PCM(), p.Stats()
	})
	return pcm, st
}

func c0Duration(chunks []*mux.Chunk) time.Duration {
	for _, c := range chunks {
		if c != nil {
			return c.Duration()
		}
	}
	return 0
}

func TestDroppedChunksAreSilentAndClickFree(t *testing.T) {
	for _, name := range []string{"cbr128.mp3", "vbr_id3_xing.mp3", "mono22k.mp3", "speech.mp3"} {
		t.Run(name, func(t *testing.T) {
			want := samples(reference(t, name))
			chunks := chunksOfFile(t, name)
			rng := rand.New(rand.NewPCG(5, uint64(len(name))))
			lost := make([]bool, len(chunks))
			kept := make([]*mux.Chunk, len(chunks))
			drops := 0
			for i, c := range chunks {
				// Keep the first chunk so the timeline starts at zero.
				if i > 0 && rng.Float64() < 0.05 {
					lost[i] = true
					drops++
					continue
				}
				kept[i] = c
			}
			require.Positive(t, drops)
			pcm, st := playChunks(t, kept)
			got := samples(pcm)
			require.Len(t, got, len(want), "the output keeps the reference's length")
			require.Positive(t, st.FramesConcealed)
			ref := peak(want)
			require.LessOrEqual(t, peak(got), ref, "no sample beyond the reference's peak: no click")
			for i, c := range chunks {
				if !lost[i] {
					continue
				}
				from, to := 2*c.Timestamp, 2*c.End()
				for j := from; j < to && j < int64(len(got)); j++ {
					require.Zero(t, got[j], "dropped span of chunk %d is silent", i)
				}
			}
		})
	}
}

func TestJoinAtRandomChunksIsClickFreeAndExact(t *testing.T) {
	name := "cbr128.mp3"
	want := samples(reference(t, name))
	chunks := chunksOfFile(t, name)
	rng := rand.New(rand.NewPCG(20, 26))
	ref := peak(want)
	for range 20 {
		k := 1 + rng.IntN(len(chunks)-10)
		pcm, st := playChunks(t, chunks[k:])
		got := samples(pcm)
		require.Zero(t, st.FramesMuted, "join %d", k)
		require.Zero(t, st.FramesConcealed, "join %d", k)
		require.LessOrEqual(t, peak(got), ref, "join at chunk %d: no click", k)
		// Playback starts with the first frame that decodes exactly; from
		// there it equals the reference.
		first := 2 * st.FirstTimestamp
		require.GreaterOrEqual(t, first, 2*chunks[k].Timestamp)
		require.Less(t, first, 2*chunks[k].Timestamp+2*1152*4, "priming takes at most a few frames")
		compare(t, got, want[first:], 1, 0)
	}
}

// TestPipelineMatchesWholeFileDecode: the chunked, reassembled stream
// decodes bit-exactly like go-mp3 reading the whole file, also after a join.
func TestPipelineMatchesWholeFileDecode(t *testing.T) {
	chunks := chunksOfFile(t, "vbr_id3_xing.mp3")
	whole, _ := playChunks(t, chunks)
	joined, st := playChunks(t, chunks[7:])
	first := 4 * st.FirstTimestamp
	require.Equal(t, whole[first:], joined)
}

func TestPlayExampleWritesReferenceWAV(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs examples/play")
	}
	want := reference(t, "mono22k.mp3")
	dir := t.TempDir()
	bin := filepath.Join(dir, "play")
	build := exec.Command("go", "build", "-o", bin, "./examples/play")
	build.Env = append(os.Environ(), "CGO_ENABLED=1")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))
	wav := filepath.Join(dir, "out.wav")
	// The example paces a file in real time: 6 s of audio, target 0.2 s.
	out, err = exec.Command(bin, "-target", "200ms", "-wav", wav, "testdata/mono22k.mp3").CombinedOutput()
	require.NoError(t, err, string(out))
	compare(t, samples(wavPCM(t, wav)), samples(want), 1, 0)
}
