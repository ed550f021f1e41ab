package mux

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// testdataFiles lists the MP3 files in ../testdata (made by make.sh).
func testdataFiles() []string {
	return []string{"cbr128.mp3", "vbr_id3_xing.mp3", "mono22k.mp3", "speech.mp3", "junk.mp3", "truncated.mp3"}
}

// testdataPath is the path of a file in ../testdata.
func testdataPath(name string) string { return filepath.Join("..", "testdata", name) }

// readTestdata returns the bytes of a file in ../testdata.
func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(testdataPath(name))
	require.NoError(t, err)
	return b
}

// demuxAll runs a Demuxer over r to its end and returns the frames and the
// error that ended it (io.EOF for a clean end).
func demuxAll(r io.Reader) ([]Frame, DemuxStats, error) { return nextAll(NewDemuxer(r)) }

// nextAll calls d.Next until it fails, and returns the frames and the error.
func nextAll(d *Demuxer) ([]Frame, DemuxStats, error) {
	var fs []Frame
	for {
		f, err := d.Next()
		if err != nil {
			return fs, d.Stats(), err
		}
		fs = append(fs, f)
	}
}

// demuxBytes is demuxAll over b, ending with io.EOF.
func demuxBytes(t testing.TB, b []byte) ([]Frame, DemuxStats) {
	t.Helper()
	fs, st, err := demuxAll(bytes.NewReader(b))
	require.ErrorIs(t, err, io.EOF)
	return fs, st
}

// requireTool skips the test if the named program is not installed.
func requireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s is not installed", name)
	}
}

// refSamples decodes the file with mpg123 (no gapless trimming, mixed to
// mono) and returns the number of samples per channel it produced.
func refSamples(t testing.TB, path string) int {
	t.Helper()
	requireTool(t, "mpg123")
	out, err := exec.Command("mpg123", "--no-gapless", "-q", "-m", "-s", path).Output()
	require.NoError(t, err, "mpg123 %s", path)
	return len(out) / 2
}

// runTool runs a program, failing the test with its output if it fails.
func runTool(t testing.TB, name string, args ...string) {
	t.Helper()
	requireTool(t, name)
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(t, err, "%s: %s", name, out)
}

// joinFrames concatenates frames.
func joinFrames(fs ...[]Frame) []byte {
	var b []byte
	for _, s := range fs {
		for _, f := range s {
			b = append(b, f...)
		}
	}
	return b
}

// frameSamples is the number of samples per channel in the frames.
func frameSamples(fs []Frame) int {
	n := 0
	for _, f := range fs {
		n += f.Samples()
	}
	return n
}

// id3v2Tag builds an ID3v2.major tag holding body, with a footer when asked
// (ID3v2.4 only).
func id3v2Tag(major byte, body []byte, footer bool) []byte {
	n := len(body)
	size := []byte{byte(n >> 21 & 0x7f), byte(n >> 14 & 0x7f), byte(n >> 7 & 0x7f), byte(n & 0x7f)}
	var flags byte
	if footer {
		flags = 0x10
	}
	tag := append([]byte{'I', 'D', '3', major, 0, flags}, size...)
	tag = append(tag, body...)
	if footer {
		tag = append(tag, '3', 'D', 'I', major, 0, flags)
		tag = append(tag, size...)
	}
	return tag
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// endless is a reader that never ends, repeating its pattern.
type endless struct {
	pattern []byte
	i       int
}

func (e *endless) Read(p []byte) (int, error) {
	for k := range p {
		p[k] = e.pattern[e.i%len(e.pattern)]
		e.i++
	}
	return len(p), nil
}

// chanReader delivers the byte slices sent on its channel, as a live
// network stream would, and io.EOF once the channel is closed.
type chanReader struct {
	ch  chan []byte
	cur []byte
}

func (r *chanReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		b, ok := <-r.ch
		if !ok {
			return 0, io.EOF
		}
		r.cur = b
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// errAfterReader returns err once after every k bytes, then carries on.
type errAfterReader struct {
	r    io.Reader
	k, n int
	err  error
}

func (e *errAfterReader) Read(p []byte) (int, error) {
	if e.n >= e.k {
		e.n = 0
		return 0, e.err
	}
	p = p[:min(len(p), e.k-e.n)]
	n, err := e.r.Read(p)
	e.n += n
	return n, err
}

var errTransient = errors.New("transient read error")
