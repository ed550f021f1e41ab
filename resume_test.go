package p2pradio

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// freePort returns a TCP port on loopback that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// played reads a node's frames played (and whether it plays) from its
// /status.json; ok is false while it does not answer.
func played(url string) (frames int64, playing, ok bool) {
	c := http.Client{Timeout: 300 * time.Millisecond}
	resp, err := c.Get(url)
	if err != nil {
		return 0, false, false
	}
	defer resp.Body.Close()
	var st Status
	if json.NewDecoder(resp.Body).Decode(&st) != nil || st.Playing == nil {
		return 0, false, false
	}
	return st.Frames.Played, *st.Playing, true
}

// playingAgain is how long after since a node's frames played (read by
// frames: false while it does not play or answer) advance at the audio's
// pace again: 5 of the 7.7 frames due between two looks 200 ms apart. Zero
// when that does not happen within limit.
func playingAgain(since time.Time, limit time.Duration, frames func() (int64, bool)) time.Duration {
	last := int64(-1)
	for time.Since(since) < limit {
		f, ok := frames()
		if ok && last >= 0 && f >= last+5 {
			return time.Since(since)
		}
		if ok {
			last = f
		} else {
			last = -1
		}
		time.Sleep(200 * time.Millisecond)
	}
	return 0
}

// TestListenerFrozenComesBack: a listener process frozen with SIGSTOP for
// 5 s (a laptop that slept, a starved VM) plays again within 2 s of
// SIGCONT, at the live edge, and keeps playing.
func TestListenerFrozenComesBack(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the examples and runs them for about 20 s")
	}
	dir := t.TempDir()
	broadcast, listen := buildExample(t, dir, "broadcast"), buildExample(t, dir, "listen")
	bcast := exec.Command(broadcast, "-in", "testdata/cbr128.mp3", "-loop", "-listen", "127.0.0.1:0")
	out, err := bcast.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, bcast.Start())
	defer func() { bcast.Process.Kill(); bcast.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)

	port := freePort(t)
	l := exec.Command(listen, "-discard", "-v", "-http", fmt.Sprintf("127.0.0.1:%d", port), strings.TrimSpace(line))
	var lerr bytes.Buffer
	l.Stderr = &lerr
	defer func() {
		if t.Failed() {
			t.Logf("listener's log:\n%s", lerr.String())
		}
	}()
	require.NoError(t, l.Start())
	defer func() { l.Process.Signal(syscall.SIGCONT); l.Process.Kill(); l.Wait() }()
	url := fmt.Sprintf("http://127.0.0.1:%d/status.json", port)

	require.Eventually(t, func() bool {
		f, playing, ok := played(url)
		return ok && playing && f > 100
	}, 15*time.Second, 100*time.Millisecond, "the listener plays")
	require.NoError(t, l.Process.Signal(syscall.SIGSTOP))
	time.Sleep(5 * time.Second)
	require.NoError(t, l.Process.Signal(syscall.SIGCONT))
	resumed := time.Now()

	// Playing again: the frames played advance at the audio's pace (5 of
	// the 7.7 frames due) between two looks 200 ms apart.
	back := playingAgain(resumed, 5*time.Second, func() (int64, bool) {
		f, playing, ok := played(url)
		return f, ok && playing
	})
	t.Logf("playing again %v after SIGCONT", back)
	require.NotZero(t, back, "the listener plays again")
	require.LessOrEqual(t, back, 2*time.Second, "within 2 s of SIGCONT")

	// And keeps playing: 5 s of audio in 5 s, give or take a frame or two.
	f0, _, _ := played(url)
	time.Sleep(5 * time.Second)
	f1, playing, ok := played(url)
	require.True(t, ok && playing)
	perSecond := 44100.0 / 1152
	t.Logf("%d frames in 5 s (%.0f due)", f1-f0, 5*perSecond)
	require.InDelta(t, 5*perSecond, float64(f1-f0), 0.05*5*perSecond, "it keeps playing")
}
