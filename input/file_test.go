package input

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/mux"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", name))
	require.NoError(t, err)
	return b
}

func testdataPath(name string) string { return filepath.Join("..", "testdata", name) }

// frameStarts lists the start offset and due time of every frame of a file
// made of back-to-back frames (cbr128.mp3), found independently of the
// scanner, and the total playing time.
func frameStarts(t *testing.T, data []byte) (offsets []int, due []time.Duration, total time.Duration) {
	samples := int64(0)
	for off := 0; off < len(data); {
		f, err := mux.ParseFrame(data[off:])
		require.NoError(t, err, "offset %d", off)
		offsets = append(offsets, off)
		due = append(due, time.Duration(samples*int64(time.Second)/int64(f.Format().SampleRate)))
		samples += int64(f.Samples())
		off += len(f)
	}
	return offsets, due, time.Duration(samples * int64(time.Second) / 44100)
}

func TestFilePacing(t *testing.T) {
	data := readTestdata(t, "cbr128.mp3")
	offsets, due, total := frameStarts(t, data)
	require.Len(t, offsets, 308)
	// bytesDue is how many bytes are due at elapsed time el with lead.
	bytesDue := func(el, lead time.Duration) int {
		n := 0
		for i, d := range due {
			if d-lead <= el {
				n = len(data)
				if i+1 < len(offsets) {
					n = offsets[i+1]
				}
			}
		}
		return n
	}
	for _, lead := range []time.Duration{0, 500 * time.Millisecond, 2 * time.Second} {
		t.Run(lead.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f, err := OpenFile(testdataPath("cbr128.mp3"), FileConfig{Lead: lead})
				require.NoError(t, err)
				defer f.Close()
				start := time.Now()
				var got []byte
				buf := make([]byte, 1<<20)
				for {
					n, err := f.Read(buf)
					el := time.Since(start)
					if err == io.EOF {
						// The stream ends when its audio has played.
						require.Equal(t, total-lead, el)
						break
					}
					require.NoError(t, err)
					got = append(got, buf[:n]...)
					// Exactly the frames due by now have been released:
					// none early, none held back.
					require.Equal(t, bytesDue(el, lead), len(got), "at %v", el)
				}
				require.Equal(t, data, got)
				require.InDelta(t, 8045*time.Millisecond, total, float64(27*time.Millisecond))
			})
		})
	}
}

func TestFileDurations(t *testing.T) {
	// Each file takes its playing time in bubble time, to one frame, and
	// passes every byte through. Frame counts are those of audio frames
	// (ffprobe's, but for speech.mp3, where ffprobe drops one frame of
	// lame's encoder delay: 287 frames are its 7.497 s); the Xing frame
	// takes no time. junk.mp3 is cbr128.mp3 with junk spliced in;
	// truncated.mp3 ends inside its 206th frame.
	tests := []struct {
		name    string
		frames  int
		samples int // per frame
		rate    int
		title   string
	}{
		{"cbr128.mp3", 308, 1152, 44100, "cbr128"},
		{"vbr_id3_xing.mp3", 308, 1152, 44100, "VBR test"},
		{"mono22k.mp3", 232, 576, 22050, "mono22k"},
		{"speech.mp3", 287, 576, 22050, "Speech test"},
		{"junk.mp3", 308, 1152, 44100, "junk"},
		{"truncated.mp3", 205, 1152, 44100, "truncated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := readTestdata(t, tt.name)
			synctest.Test(t, func(t *testing.T) {
				f, err := OpenFile(testdataPath(tt.name), FileConfig{})
				require.NoError(t, err)
				defer f.Close()
				require.Equal(t, tt.title, f.Title())
				start := time.Now()
				got, err := io.ReadAll(f)
				require.NoError(t, err)
				require.Equal(t, data, got)
				want := time.Duration(tt.frames*tt.samples) * time.Second / time.Duration(tt.rate)
				frame := time.Duration(tt.samples) * time.Second / time.Duration(tt.rate)
				require.InDelta(t, want, time.Since(start), float64(frame+time.Millisecond))
			})
		})
	}
}

func TestFileLoop(t *testing.T) {
	data := readTestdata(t, "vbr_id3_xing.mp3")
	const frame = 1152 * time.Second / 44100
	total := 308 * frame
	synctest.Test(t, func(t *testing.T) {
		f, err := OpenFile(testdataPath("vbr_id3_xing.mp3"), FileConfig{Loop: true})
		require.NoError(t, err)
		defer f.Close()
		start := time.Now()
		var got []byte
		buf := make([]byte, 3000)
		var passes []time.Duration // when each pass's first byte came
		for len(got) < 3*len(data)+1000 {
			n, err := f.Read(buf)
			require.NoError(t, err)
			if len(got)/len(data) != (len(got)+n)/len(data) || len(got) == 0 {
				passes = append(passes, time.Since(start))
			}
			got = append(got, buf[:n]...)
		}
		for i := 0; i < 3; i++ {
			require.Equal(t, data, got[i*len(data):(i+1)*len(data)], "pass %d", i)
		}
		require.Equal(t, data[:1000], got[3*len(data):3*len(data)+1000])
		// The clock runs on across the loop: pass i starts at i times the
		// file's playing time (its first bytes, the ID3 tag, are released
		// with the last frame of the pass before).
		require.Len(t, passes, 4)
		for i, at := range passes {
			require.InDelta(t, time.Duration(i)*total, at, float64(frame), "pass %d", i)
		}
	})
}

func TestFileNotMP3(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, b, 0o644))
		return p
	}
	// A WAV of a 440 Hz tone, 2 s, 16-bit stereo.
	pcm := make([]byte, 44100*2*2*2)
	for i := 0; i < len(pcm)/4; i++ {
		v := int16(20000 * math.Sin(2*math.Pi*440*float64(i)/44100))
		binary.LittleEndian.PutUint16(pcm[4*i:], uint16(v))
		binary.LittleEndian.PutUint16(pcm[4*i+2:], uint16(v))
	}
	wav := append([]byte("RIFF\x00\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x02\x00\x44\xac\x00\x00\x10\xb1\x02\x00\x04\x00\x10\x00data"), make([]byte, 4)...)
	wav = append(wav, pcm...)
	id3Only := append([]byte("ID3\x04\x00\x00\x00\x00\x01\x00"), make([]byte, 128)...)
	mp3 := readTestdata(t, "cbr128.mp3")
	lateFrames := append(bytes.Repeat([]byte("not audio "), 10000), mp3...)
	// Free-format Layer III (bitrate index 0), frames of 600 bytes: valid
	// MPEG audio that p2pradio does not carry.
	free := bytes.Repeat(append([]byte{0xFF, 0xFB, 0x00, 0x64}, make([]byte, 600-4)...), 50)

	tests := map[string]string{
		"text":        write("notes.txt", bytes.Repeat([]byte("This is not an MP3 file.\n"), 100)),
		"wav":         write("tone.wav", wav),
		"empty":       write("empty.mp3", nil),
		"id3 only":    write("tag.mp3", id3Only),
		"late frames": write("late.mp3", lateFrames),
		"directory":   dir,
		"free format": write("free.mp3", free),
	}
	for name, path := range tests {
		t.Run(name, func(t *testing.T) {
			done := make(chan struct{})
			go func() {
				defer close(done)
				f, err := OpenFile(path, FileConfig{Loop: true})
				require.ErrorIs(t, err, mux.ErrNotMP3)
				require.Nil(t, f)
				if name == "free format" {
					require.ErrorIs(t, err, mux.ErrUnsupported)
				}
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("OpenFile hangs on a file that is not MP3")
			}
		})
	}
	// MPEG-2.5 is carried.
	f, err := OpenFile(filepath.Join("testdata", "mpeg25.mp3"), FileConfig{})
	require.NoError(t, err)
	require.NoError(t, f.Close())
	_, err = OpenFile(filepath.Join(dir, "missing.mp3"), FileConfig{})
	require.ErrorIs(t, err, os.ErrNotExist)
	_, err = OpenFile(testdataPath("cbr128.mp3"), FileConfig{Lead: -time.Second})
	require.Error(t, err)
}

func TestFileLoopOfEmptiedFile(t *testing.T) {
	// A looping file that loses its frames must fail, not spin.
	path := filepath.Join(t.TempDir(), "x.mp3")
	require.NoError(t, os.WriteFile(path, readTestdata(t, "mono22k.mp3"), 0o644))
	synctest.Test(t, func(t *testing.T) {
		f, err := OpenFile(path, FileConfig{Loop: true, Lead: time.Hour})
		require.NoError(t, err)
		defer f.Close()
		require.NoError(t, os.WriteFile(path, []byte("gone"), 0o644))
		_, err = io.ReadAll(f)
		require.ErrorIs(t, err, mux.ErrNotMP3)
	})
}

func TestFileContract(t *testing.T) {
	data := readTestdata(t, "speech.mp3")
	testSource(t, func(t *testing.T) Source {
		// Loop so the stream never ends; a long lead so reads are quick.
		f, err := OpenFile(testdataPath("speech.mp3"), FileConfig{Loop: true, Lead: time.Hour})
		require.NoError(t, err)
		return f
	}, append(append([]byte(nil), data...), data...))
}

func TestFileCloseWhileWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f, err := OpenFile(testdataPath("cbr128.mp3"), FileConfig{})
		require.NoError(t, err)
		_, err = f.Read(make([]byte, 1<<16)) // the first frame, at once
		require.NoError(t, err)
		errc := make(chan error)
		go func() {
			_, err := f.Read(make([]byte, 1<<16))
			errc <- err
		}()
		synctest.Wait() // Read is waiting for the second frame's time
		start := time.Now()
		require.NoError(t, f.Close())
		require.ErrorIs(t, <-errc, ErrClosed)
		require.Zero(t, time.Since(start))
	})
}

func ExampleOpenFile() {
	f, err := OpenFile("../testdata/vbr_id3_xing.mp3", FileConfig{Loop: true, Lead: 2 * time.Second})
	if err != nil {
		panic(err)
	}
	defer f.Close()
	fmt.Println(f.Title())
	// Output: VBR test
}

// FuzzFile: whatever a file holds, OpenFile refuses it with ErrNotMP3 or
// the File passes every byte through unchanged.
func FuzzFile(f *testing.F) {
	mp3 := readTestdata(f, "cbr128.mp3")
	f.Add(mp3[:3000])
	f.Add(append([]byte("ID3\x04\x00\x10\x00\x00\x00\x05abcde3DI\x04\x00\x10\x00\x00\x00\x05"), mp3[:2000]...))
	f.Add(append(append(append([]byte{}, mp3[:1000]...), "junk"...), mp3[1000:3000]...))
	f.Add(readTestdata(f, "speech.mp3")[:4000])
	f.Add([]byte{0xff, 0xfb, 0x90, 0x64})
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "fuzz.mp3")
		require.NoError(t, os.WriteFile(path, data, 0o644))
		fl, err := OpenFile(path, FileConfig{Lead: time.Hour})
		if err != nil {
			require.ErrorIs(t, err, mux.ErrNotMP3)
			return
		}
		defer fl.Close()
		type result struct {
			got []byte
			err error
		}
		read := make(chan result, 1)
		go func() {
			got, err := io.ReadAll(fl)
			read <- result{got, err}
		}()
		select {
		case r := <-read:
			require.NoError(t, r.err)
			require.True(t, bytes.Equal(data, r.got))
		case <-time.After(5 * time.Second):
			// Without this the fuzzer reports a hang only as a worker that
			// stopped answering, and saves no input.
			t.Fatalf("reading %d bytes hangs: %x", len(data), data)
		}
	})
}

func TestFileLongJunkMidFile(t *testing.T) {
	// 100 kB of junk in the middle of a file takes no time and is passed
	// through; the frames after it play on.
	mp3 := readTestdata(t, "cbr128.mp3")
	offsets, _, total := frameStarts(t, mp3)
	mid := offsets[150]
	data := append(append(append([]byte{}, mp3[:mid]...), bytes.Repeat([]byte("not audio "), 10000)...), mp3[mid:]...)
	path := filepath.Join(t.TempDir(), "junk.mp3")
	require.NoError(t, os.WriteFile(path, data, 0o644))
	synctest.Test(t, func(t *testing.T) {
		f, err := OpenFile(path, FileConfig{})
		require.NoError(t, err)
		defer f.Close()
		start := time.Now()
		got, err := io.ReadAll(f)
		require.NoError(t, err)
		require.Equal(t, data, got)
		require.Equal(t, total, time.Since(start))
	})
}
