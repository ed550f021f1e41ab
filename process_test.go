package p2pradio

import (
	"bufio"
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// buildExample builds one of the example programs into dir.
func buildExample(t *testing.T, dir, name string) string {
	t.Helper()
	bin := filepath.Join(dir, name)
	out, err := exec.Command("go", "build", "-o", bin, "./examples/"+name).CombinedOutput()
	require.NoError(t, err, "go build ./examples/%s: %s", name, out)
	return bin
}

// loopMatch checks PCM recorded from a looped file's stream, which starts at
// an unknown point of the loop, against loopRef, the file decoded looped
// three times. Each 1152-sample frame must equal the reference frame at its
// place in the loop (first loop or later, which differ only just after the
// loop's start, where the decoder's history differs), or be silent
// (concealed). It returns the frames matched and the silent ones.
func loopMatch(t *testing.T, name string, got, loopRef []int16) (matched, silent int) {
	t.Helper()
	frames := len(loopRef) / frameSamples / 3 // in the file
	frame := func(s []int16, i int) []int16 { return s[i*frameSamples : (i+1)*frameSamples] }
	close1 := func(a, b []int16) bool {
		for i := range a {
			if abs(int(a[i])-int(b[i])) > 1 {
				return false
			}
		}
		return true
	}
	matches := func(g []int16, pos int) bool {
		return close1(g, frame(loopRef, pos)) || close1(g, frame(loopRef, frames+pos))
	}
	n := len(got) / frameSamples
	require.Positive(t, n, "%s: no audio", name)
	// Find the loop position of the first frame that is not silent and
	// not at the loop's start.
	k, pos := -1, -1
	for i := 0; i < n && k < 0; i++ {
		g := frame(got, i)
		if peak(g) == 0 {
			continue
		}
		for p := 2; p < frames; p++ {
			if close1(g, frame(loopRef, frames+p)) {
				k, pos = i, p
				break
			}
		}
	}
	require.GreaterOrEqual(t, k, 0, "%s: no frame of the recording is in the reference", name)
	for i := range n {
		g := frame(got, i)
		p := ((pos+i-k)%frames + frames) % frames
		switch {
		case matches(g, p):
			matched++
		case peak(g) == 0:
			silent++
		default:
			require.Failf(t, "recording differs from the reference", "%s: frame %d (loop position %d) is neither the reference nor silent", name, i, p)
		}
	}
	return matched, silent
}

// TestProcesses runs a broadcaster and three listeners as separate
// processes, as a user would: examples/broadcast on the looped test file
// with an upload budget for one direct listener, and examples/listen
// writing WAV files (8 s for the first, 6 s for the others). The first
// listener takes the broadcaster's one slot; the two that join a second
// later relay through it (not depth 1, from their logs). Every WAV is the reference decode, frame for frame,
// from where it joined the loop, with at most a few silent frames; every
// listener exits 0 on its own; the broadcaster exits 0 on SIGINT.
func TestProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the examples and runs them for about 8 s")
	}
	loopRef := loopedReference(t, "cbr128.mp3", 3)
	dir := t.TempDir()
	broadcast := buildExample(t, dir, "broadcast")
	listen := buildExample(t, dir, "listen")

	bcast := exec.Command(broadcast, "-in", "testdata/cbr128.mp3", "-loop", "-listen", "127.0.0.1:0", "-upload", "150", "-v")
	stdout, err := bcast.StdoutPipe()
	require.NoError(t, err)
	var bstderr bytes.Buffer
	bcast.Stderr = &bstderr
	require.NoError(t, bcast.Start())
	bdone := make(chan error, 1)
	go func() { bdone <- bcast.Wait() }()
	defer func() {
		if bcast.ProcessState == nil {
			bcast.Process.Kill()
			<-bdone
		}
	}()

	lines := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		lines <- strings.TrimSpace(line)
	}()
	var addr string
	select {
	case addr = <-lines:
	case <-time.After(10 * time.Second):
		t.Fatalf("the broadcaster printed no address; stderr:\n%s", bstderr.String())
	}
	station, err := ParseAddress(addr)
	require.NoError(t, err, "the first line of the broadcaster's output is its address")

	type proc struct {
		cmd    *exec.Cmd
		wav    string
		stderr bytes.Buffer
		done   chan error
	}
	start := func(i int, duration string) *proc {
		p := &proc{wav: filepath.Join(dir, "out"+string(rune('1'+i))+".wav"), done: make(chan error, 1)}
		p.cmd = exec.Command(listen, "-wav", p.wav, "-duration", duration, "-v", addr)
		p.cmd.Stderr = &p.stderr
		require.NoError(t, p.cmd.Start())
		go func() { p.done <- p.cmd.Wait() }()
		return p
	}
	// The first takes the broadcaster's slot; it outlives the two that
	// join through it a second later.
	ls := []*proc{start(0, "8s")}
	time.Sleep(time.Second)
	ls = append(ls, start(1, "6s"), start(2, "6s"))
	defer func() {
		for _, p := range ls {
			if p.cmd.ProcessState == nil {
				p.cmd.Process.Kill()
				<-p.done
			}
		}
	}()
	for i, p := range ls {
		select {
		case err := <-p.done:
			require.NoError(t, err, "listener %d exits 0; stderr:\n%s", i+1, p.stderr.String())
		case <-time.After(20 * time.Second):
			t.Fatalf("listener %d did not stop after its -duration", i+1)
		}
	}

	// SIGINT stops the broadcaster cleanly.
	require.NoError(t, bcast.Process.Signal(syscall.SIGINT))
	select {
	case err := <-bdone:
		require.NoError(t, err, "the broadcaster exits 0 on SIGINT; stderr:\n%s", bstderr.String())
	case <-time.After(10 * time.Second):
		t.Fatal("the broadcaster did not stop on SIGINT")
	}

	for i, p := range ls {
		name := "listener " + string(rune('1'+i))
		log := p.stderr.String()
		joined := ""
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "msg=joined") {
				joined = line
				break
			}
		}
		require.NotEmpty(t, joined, "%s logs its join; stderr:\n%s", name, log)
		if i == 0 {
			require.Contains(t, joined, "parent="+station.Rendezvous+" depth=1", "%s is the broadcaster's child", name)
		} else {
			require.NotContains(t, joined, "parent="+station.Rendezvous+" ", "%s joins through another listener: the broadcaster has one slot", name)
			require.NotContains(t, joined, "depth=1", name)
		}
		pcm := wavPCM(t, p.wav)
		matched, silent := loopMatch(t, name, samples(pcm), loopRef)
		frames := len(pcm) / 4 / 1152
		t.Logf("%s: %s; %d frames (%.1f s), %d the reference's, %d silent", name, strings.TrimSpace(joined[strings.Index(joined, "msg="):]),
			frames, float64(frames)*1152/44100, matched, silent)
		require.Greater(t, frames, 3*44100/1152, "%s recorded more than 3 s", name)
		require.LessOrEqual(t, silent, 2, "%s: at most a couple of silent frames", name)
	}
}
