package speaker

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/mux"
	"github.com/p2pradio/p2pradio/playout"
)

// childEnv marks the process TestSpeakerALSA starts: oto's one context must
// open under the ALSA configuration of that test, before anything else in
// the process touches the device.
const childEnv = "P2PRADIO_SPEAKER_CHILD"

// testFrameCount frames of cbr128.mp3 are played: 2.5 s.
const testFrameCount = 96

// testPCM decodes the first testFrameCount frames of cbr128.mp3 (no tags,
// so frames follow each other from byte 0).
func testPCM(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "cbr128.mp3"))
	require.NoError(t, err)
	var d playout.Decoder
	var pcm []byte
	for range testFrameCount {
		f, err := mux.ParseFrame(b)
		require.NoError(t, err)
		b = b[len(f):]
		pcm, _, err = d.Decode(pcm, mux.Slot{Frame: f})
		require.NoError(t, err)
	}
	return pcm
}

// firstSound is the index of the first sample frame of 16-bit stereo pcm
// with a non-zero sample, or -1.
func firstSound(pcm []byte) int {
	for i := 0; i+4 <= len(pcm); i += 4 {
		if binary.LittleEndian.Uint32(pcm[i:]) != 0 {
			return i / 4
		}
	}
	return -1
}

// firstSoundFloat is firstSound for float32 stereo.
func firstSoundFloat(b []byte) int {
	for i := 0; i+8 <= len(b); i += 8 {
		if binary.LittleEndian.Uint64(b[i:]) != 0 {
			return i / 8
		}
	}
	return -1
}

// TestSpeakerALSA plays the decode of cbr128.mp3 through a Speaker, in a
// child process whose ALSA default device is a file plugin writing into a
// FIFO, reads the FIFO at the device's real-time pace, and checks that the
// samples reaching ALSA are exactly the decoded ones.
func TestSpeakerALSA(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		t.Skip("this is the child process")
	}
	if !haveDevice {
		t.Skip("built without cgo: no audio device")
	}
	if _, err := os.Stat("/usr/share/alsa/alsa.conf"); err != nil {
		t.Skip("libasound's configuration is not installed")
	}
	dir := t.TempDir()
	fifo := filepath.Join(dir, "pcm.fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	asoundrc := fmt.Sprintf("pcm.!default {\n\ttype file\n\tslave.pcm \"null\"\n\tfile %q\n\tformat \"raw\"\n}\n", fifo)
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".asoundrc"), []byte(asoundrc), 0o600))
	// Read and write: opening never blocks, and ALSA's end never sees the
	// pipe closed.
	f, err := os.OpenFile(fifo, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	// Shrink the pipe to one page (512 sample frames) so that, like a sound
	// card, ALSA cannot run far ahead of the reader: with the default 64 KiB
	// it would take 8192 sample frames from oto in one burst at the start.
	const fSetPipeSize = 1031 // F_SETPIPE_SZ
	rc, err := f.SyscallConn()
	require.NoError(t, err)
	var serr syscall.Errno
	require.NoError(t, rc.Control(func(fd uintptr) {
		_, _, serr = syscall.Syscall(syscall.SYS_FCNTL, fd, fSetPipeSize, 4096)
	}))
	require.Zero(t, serr, "F_SETPIPE_SZ: %v", serr)

	var out lockedBuffer
	cmd := exec.Command(os.Args[0], "-test.run=^TestSpeakerChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "HOME="+dir, childEnv+"=1")
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	childDone := false
	defer func() {
		if !childDone {
			_ = cmd.Process.Kill()
			<-exited
		}
	}()

	want := testPCM(t)
	e := firstSound(want)
	require.GreaterOrEqual(t, e, 0)
	need := len(want)/4 - e // sample frames to compare

	// Read the FIFO at the device's pace, from its first byte: 44100
	// sample frames of two float32 a second.
	const bytesPerSecond = 44100 * 2 * 4
	var got []byte
	var first time.Time
	buf := make([]byte, 8192)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if r := firstSoundFloat(got); r >= 0 && len(got)/8 >= r+need {
			break
		}
		limit := len(buf)
		if !first.IsZero() {
			limit = int(time.Since(first).Seconds()*bytesPerSecond) + len(buf) - len(got)
			if limit < 8 {
				time.Sleep(5 * time.Millisecond)
				continue
			}
		}
		require.NoError(t, f.SetReadDeadline(time.Now().Add(100*time.Millisecond)))
		n, err := f.Read(buf[:min(limit, len(buf))])
		if n > 0 && first.IsZero() {
			first = time.Now()
		}
		got = append(got, buf[:n]...)
		if err != nil {
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			select {
			case err := <-exited:
				childDone = true
				t.Fatalf("child exited (%v) before the audio arrived; %d bytes read:\n%s", err, len(got), out.String())
			default:
			}
			require.True(t, time.Now().Before(deadline), "timed out; %d bytes read", len(got))
		}
	}

	// Let the child drain its queue and exit.
	for !childDone {
		select {
		case err := <-exited:
			childDone = true
			require.NoError(t, err, "child:\n%s", out.String())
		default:
			require.NoError(t, f.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
			_, _ = f.Read(buf)
			require.True(t, time.Now().Before(deadline), "child did not exit:\n%s", out.String())
		}
	}
	t.Logf("child:\n%s", out.String())

	r := firstSoundFloat(got)
	t.Logf("%d sample frames of leading silence at the device; comparing %d sample frames (%.2f s)", r, need, float64(need)/44100)
	for i := range need * 2 {
		v := math.Float32frombits(binary.LittleEndian.Uint32(got[r*8+i*4:]))
		s := int16(binary.LittleEndian.Uint16(want[e*4+i*2:]))
		if v*32768 != float32(s) {
			t.Fatalf("sample %d (frame %d, channel %d): device got %v (%v/32768), decoded %d", i, i/2, i%2, v, v*32768, s)
		}
	}
}

// lockedBuffer collects the child's output, written by exec's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestSpeakerChild is the child process of TestSpeakerALSA.
func TestSpeakerChild(t *testing.T) {
	if os.Getenv(childEnv) != "1" {
		t.Skip("run by TestSpeakerALSA in a process of its own")
	}
	require.NoError(t, Probe(), "the device opens")
	pcm := testPCM(t)
	s, err := New(Config{})
	require.NoError(t, err)
	require.Zero(t, s.Queued())
	n := 1152 * 4
	maxQueued := time.Duration(0)
	for i := 0; i < len(pcm); i += n {
		require.NoError(t, s.WritePCM(pcm[i:i+n], 44100))
		maxQueued = max(maxQueued, s.Queued())
	}
	st := s.Stats()
	t.Logf("stats before Close: %+v; most queued %v", st, maxQueued)
	require.Equal(t, 44100, st.SampleRate)
	require.Zero(t, st.Underruns)
	require.InDelta(t, float64(testFrameCount*1152)/44100, st.Written.Seconds(), 1e-6)
	// WritePCM blocked: the queue stayed within its bound (ring plus oto's
	// buffer, which may hold up to twice its size).
	require.LessOrEqual(t, maxQueued, DefaultBuffer+2*deviceFrames*time.Second/44100)
	require.Greater(t, maxQueued, DefaultBuffer/2)

	// The process has one audio context: another rate is refused.
	other, err := New(Config{})
	require.NoError(t, err)
	err = other.WritePCM(make([]byte, 8), 22050)
	require.ErrorIs(t, err, ErrSampleRate)
	require.ErrorIs(t, err, playout.ErrFormat)
	require.NoError(t, other.Close())

	require.NoError(t, s.Close())
	require.Zero(t, s.Queued(), "Close lets the queue play out")
	require.ErrorIs(t, s.WritePCM(pcm[:n], 44100), playout.ErrClosed)
	require.NoError(t, s.Close())

	// A second Speaker at the same rate shares the context; Close unblocks
	// its WritePCM.
	same, err := New(Config{Buffer: 100 * time.Millisecond})
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() {
		chunk := make([]byte, 44100*4)
		for {
			if err := same.WritePCM(chunk, 44100); err != nil {
				errc <- err
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)
	require.NoError(t, same.Close())
	require.True(t, errors.Is(<-errc, playout.ErrClosed))
}

func TestSpeakerConfig(t *testing.T) {
	_, err := New(Config{Buffer: -1})
	require.ErrorIs(t, err, playout.ErrBadConfig)
	s, err := New(Config{})
	require.NoError(t, err)
	require.ErrorIs(t, s.WritePCM([]byte{1, 2, 3}, 44100), playout.ErrFormat)
	require.ErrorIs(t, s.WritePCM([]byte{1, 2, 3, 4}, 0), playout.ErrFormat)
	require.NoError(t, s.Close())
	require.ErrorIs(t, s.WritePCM([]byte{1, 2, 3, 4}, 44100), playout.ErrClosed, "no device is opened after Close")
	require.Equal(t, Stats{}, s.Stats())
}

// TestSpeakerMissingDevice: in a process whose ALSA configuration has no
// usable playback device (a card that is not there), Probe and the first
// WritePCM fail with ErrDevice within a second, and libasound prints
// nothing on the terminal.
func TestSpeakerMissingDevice(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		t.Skip("this is the child process")
	}
	if !haveDevice {
		t.Skip("built without cgo: no audio device")
	}
	dir := t.TempDir()
	// ALSA_CONFIG_PATH replaces the whole configuration (alsa.conf), so
	// that no card of this machine is found either.
	conf := filepath.Join(dir, "alsa.conf")
	require.NoError(t, os.WriteFile(conf, []byte("pcm.!default {\n\ttype hw\n\tcard 99\n}\n"), 0o600))
	cmd := exec.Command(os.Args[0], "-test.run=^TestSpeakerMissingChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "ALSA_CONFIG_PATH="+conf, "HOME="+dir, childEnv+"=missing")
	var stdout, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "child:\n%s%s", stdout.String(), stderr.String())
	t.Logf("child:\n%s", stdout.String())
	require.NotContains(t, stdout.String(), "ALSA lib")
	require.Empty(t, stderr.String(), "libasound printed on standard error")
}

// TestSpeakerMissingChild is the child process of TestSpeakerMissingDevice.
func TestSpeakerMissingChild(t *testing.T) {
	if os.Getenv(childEnv) != "missing" {
		t.Skip("run by TestSpeakerMissingDevice in a process of its own")
	}
	start := time.Now()
	err := Probe()
	t.Logf("Probe after %v: %v", time.Since(start), err)
	require.ErrorIs(t, err, ErrDevice)
	require.Less(t, time.Since(start), time.Second)

	s, err := New(Config{})
	require.NoError(t, err)
	start = time.Now()
	err = s.WritePCM(make([]byte, 4096), 44100)
	t.Logf("WritePCM after %v: %v", time.Since(start), err)
	require.ErrorIs(t, err, ErrDevice)
	require.Less(t, time.Since(start), time.Second)
	require.NoError(t, s.Close())
}
