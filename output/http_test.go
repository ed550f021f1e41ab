package output

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/input"
	"github.com/p2pradio/p2pradio/internal/testaudio"
	"github.com/p2pradio/p2pradio/mux"
)

// demoChunks cuts n chunks (100 ms, 4 frames each) from the demo audio,
// looping it if needed; title(seq) is the title set before each chunk's
// frames (nil: none). It also returns the frames in order.
func demoChunks(t testing.TB, n int, title func(seq int) string) ([]*mux.Chunk, []mux.Frame) {
	t.Helper()
	var frames []mux.Frame
	d := mux.NewDemuxer(bytes.NewReader(testaudio.Demo))
	for {
		f, err := d.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		frames = append(frames, f)
	}
	ch := mux.NewChunker(mux.ChunkerConfig{})
	start := time.Unix(1_700_000_000, 0)
	var chunks []*mux.Chunk
	var all []mux.Frame
	for i := 0; len(chunks) < n; i++ {
		if title != nil {
			ch.SetTitle(title(len(chunks)))
		}
		f := frames[i%len(frames)]
		c, err := ch.Add(f, start.Add(time.Duration(i)*f.Format().FrameDuration()))
		require.NoError(t, err)
		if c != nil {
			chunks = append(chunks, c)
			all = append(all, c.Frames...)
		}
	}
	return chunks, all
}

func concat(frames []mux.Frame) []byte {
	var b []byte
	for _, f := range frames {
		b = append(b, f...)
	}
	return b
}

// icyStream is a strict ICY client: it reads the audio, checks every
// metadata block's framing and keeps each title announced, with the audio
// offset where its block was.
type icyStream struct {
	r       *bufio.Reader
	metaint int
	audio   []byte
	titles  []string
	at      []int
}

func newICYStream(r io.Reader, metaint int) *icyStream {
	return &icyStream{r: bufio.NewReader(r), metaint: metaint}
}

// read reads n more bytes of audio.
func (s *icyStream) read(n int) error {
	want := len(s.audio) + n
	for len(s.audio) < want {
		if len(s.audio) > 0 && len(s.audio)%s.metaint == 0 && (len(s.at) == 0 || s.at[len(s.at)-1] != len(s.audio)) {
			if err := s.readBlock(); err != nil {
				return err
			}
		}
		k := min(s.metaint-len(s.audio)%s.metaint, want-len(s.audio))
		buf := make([]byte, k)
		if _, err := io.ReadFull(s.r, buf); err != nil {
			return err
		}
		s.audio = append(s.audio, buf...)
	}
	return nil
}

func (s *icyStream) readBlock() error {
	n, err := s.r.ReadByte()
	if err != nil || n == 0 {
		s.at = append(s.at, len(s.audio)) // mark the block read
		s.titles = append(s.titles, "\x00")
		return err
	}
	block := make([]byte, int(n)*16)
	if _, err := io.ReadFull(s.r, block); err != nil {
		return err
	}
	text := bytes.TrimRight(block, "\x00")
	if len(block)-len(text) >= 16 {
		return fmt.Errorf("block at %d: %d bytes of padding", len(s.audio), len(block)-len(text))
	}
	title, ok := strings.CutPrefix(string(text), "StreamTitle='")
	if title, ok = strings.CutSuffix(title, "';"); !ok {
		return fmt.Errorf("block at %d: %q", len(s.audio), text)
	}
	s.titles = append(s.titles, title)
	s.at = append(s.at, len(s.audio))
	return nil
}

// announced is the titles announced by non-empty blocks, and where.
func (s *icyStream) announced() ([]string, []int) {
	var titles []string
	var at []int
	for i, t := range s.titles {
		if t != "\x00" {
			titles, at = append(titles, t), append(at, s.at[i])
		}
	}
	return titles, at
}

// serve serves h until the test ends; h is closed first, so that the
// server does not wait for its streams.
func serve(t *testing.T, h *HTTP) *httptest.Server {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { h.Close() })
	return srv
}

// testClient fails a read that waits too long, rather than hang the test.
var testClient = &http.Client{Timeout: 20 * time.Second}

func get(t *testing.T, url string, icy bool) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	if icy {
		req.Header.Set("Icy-MetaData", "1")
	}
	resp, err := testClient.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// burstFrames is how many frames of the demo audio make a burst of d.
func burstFrames(frames []mux.Frame, d time.Duration) int {
	fd := frames[0].Format().FrameDuration()
	return int((d + fd - 1) / fd)
}

func TestHTTPStartsWithBurstAtFrameBoundaryThenLive(t *testing.T) {
	chunks, frames := demoChunks(t, 60, nil)
	h := NewHTTP(HTTPConfig{})
	srv := serve(t, h)

	const before = 30 // chunks written before the listener comes
	for _, c := range chunks[:before] {
		h.WriteChunk(c)
	}
	resp := get(t, srv.URL+"/stream.mp3", false)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "audio/mpeg", resp.Header.Get("Content-Type"))
	require.Equal(t, "no-cache, no-store", resp.Header.Get("Cache-Control"))
	require.Equal(t, "p2pradio", resp.Header.Get("icy-name"))
	require.Equal(t, "128", resp.Header.Get("icy-br"))
	require.Empty(t, resp.Header.Get("icy-metaint"), "no metadata unless asked")
	require.Equal(t, 1, h.Stats().Listeners)

	// The burst: the last 2 s of frames before the listener came, exactly.
	nb := burstFrames(frames, 2*time.Second)
	sent := before * len(chunks[0].Frames)
	burst := make([]byte, len(concat(frames[sent-nb:sent])))
	_, err := io.ReadFull(resp.Body, burst)
	require.NoError(t, err)
	require.Equal(t, concat(frames[sent-nb:sent]), burst)
	_, err = mux.ParseFrame(burst)
	require.NoError(t, err, "starts at a frame boundary")

	// Then live: every later chunk as it is written.
	for _, c := range chunks[before:] {
		h.WriteChunk(c)
	}
	live := make([]byte, len(concat(frames[sent:])))
	_, err = io.ReadFull(resp.Body, live)
	require.NoError(t, err)
	require.Equal(t, concat(frames[sent:]), live)

	resp.Body.Close()
	require.Eventually(t, func() bool { return h.Stats().Listeners == 0 }, 5*time.Second, 10*time.Millisecond)
	st := h.Stats()
	require.Equal(t, int64(1), st.Served)
	require.GreaterOrEqual(t, st.Bytes, int64(len(burst)+len(live)))
	require.Zero(t, st.Dropped)
}

func TestHTTPHeadAndErrors(t *testing.T) {
	chunks, _ := demoChunks(t, 20, nil)
	h := NewHTTP(HTTPConfig{Mount: "/radio", Name: "Test FM", MaxListeners: 2})
	srv := serve(t, h)
	for _, c := range chunks {
		h.WriteChunk(c)
	}

	resp, err := http.Head(srv.URL + "/radio")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "audio/mpeg", resp.Header.Get("Content-Type"))
	require.Equal(t, "Test FM", resp.Header.Get("icy-name"))
	require.Equal(t, "128", resp.Header.Get("icy-br"))
	require.Zero(t, h.Stats().Served, "HEAD is not a listener")

	resp, err = http.Get(srv.URL + "/stream.mp3")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	resp, err = http.Post(srv.URL+"/radio", "audio/mpeg", nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)

	// Two listeners fit, the third is refused with a reason.
	a := get(t, srv.URL+"/radio", true)
	require.Equal(t, strconv.Itoa(DefaultMetaint), a.Header.Get("icy-metaint"))
	get(t, srv.URL+"/radio", false)
	resp, err = http.Get(srv.URL + "/radio")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Contains(t, string(body), "full (2 listeners)")
	require.Equal(t, HTTPStats{Listeners: 2, Served: 2, Refused: 1}, withoutBytes(h.Stats()))

	// Close ends the streams and refuses new ones.
	require.NoError(t, h.Close())
	_, err = io.ReadAll(a.Body)
	require.NoError(t, err, "a clean end of the stream")
	resp, err = http.Get(srv.URL + "/radio")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.NoError(t, h.Close(), "idempotent")
}

func withoutBytes(s HTTPStats) HTTPStats {
	s.Bytes = 0
	return s
}

func TestHTTPICYTitles(t *testing.T) {
	// Song A for 4 s, then Song B.
	chunks, frames := demoChunks(t, 80, func(seq int) string {
		if seq < 40 {
			return "Song A"
		}
		return "Song B"
	})
	const metaint = 4000
	h := NewHTTP(HTTPConfig{Metaint: metaint, Burst: time.Second, Queue: 20 * time.Second}) // it reads after all is written
	srv := serve(t, h)

	const before = 30
	for _, c := range chunks[:before] {
		h.WriteChunk(c)
	}
	require.Equal(t, "Song A", h.Title())
	resp := get(t, srv.URL+"/stream.mp3", true)
	require.Equal(t, strconv.Itoa(metaint), resp.Header.Get("icy-metaint"))
	for _, c := range chunks[before:70] {
		h.WriteChunk(c)
	}
	sent := before * len(chunks[0].Frames)
	start := sent - burstFrames(frames, time.Second)
	want := concat(frames[start : 70*len(chunks[0].Frames)])
	s := newICYStream(resp.Body, metaint)
	require.NoError(t, s.read(len(want)))
	require.Equal(t, want, s.audio, "the audio, metadata stripped, is the frames")
	titles, at := s.announced()
	require.Equal(t, []string{"Song A", "Song B"}, titles, "each title once, when it changes")
	require.Equal(t, metaint, at[0], "the first block tells the title")
	// Song B starts with chunk 40: its block is the first one after.
	bAt := len(concat(frames[start : 40*len(chunks[0].Frames)]))
	require.Equal(t, (bAt/metaint+1)*metaint, at[1])
	require.Len(t, s.titles, len(want)/metaint, "a block every metaint bytes, empty when nothing changed")

	// An override replaces the chunks' title from the next block on.
	h.SetTitle("Live from the studio")
	require.Equal(t, "Live from the studio", h.Title())
	for _, c := range chunks[70:] {
		h.WriteChunk(c)
	}
	rest := concat(frames[70*len(chunks[0].Frames):])
	require.NoError(t, s.read(len(rest)))
	require.Equal(t, rest, s.audio[len(want):])
	titles, _ = s.announced()
	require.Equal(t, []string{"Song A", "Song B", "Live from the studio"}, titles)
	h.SetTitle("")
	require.Equal(t, "Song B", h.Title())
}

func TestHTTPICYThroughInputSource(t *testing.T) {
	// The library's own Icecast client (package input) reads what we serve:
	// bitrate, name, metaint and title changes.
	chunks, frames := demoChunks(t, 100, func(seq int) string {
		if seq < 50 {
			return "First song"
		}
		return "Second song"
	})
	h := NewHTTP(HTTPConfig{Name: "Loopback FM", Queue: 20 * time.Second}) // it reads after all is written
	srv := serve(t, h)
	for _, c := range chunks[:30] {
		h.WriteChunk(c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := input.OpenURL(ctx, srv.URL+"/stream.mp3", input.HTTPConfig{MaxRetries: -1})
	require.NoError(t, err)
	defer src.Close()
	info := src.Info()
	require.Equal(t, "Loopback FM", info.Name)
	require.Equal(t, 128, info.Bitrate)
	require.Equal(t, DefaultMetaint, info.Metaint)

	for _, c := range chunks[30:] {
		h.WriteChunk(c)
	}
	start := 30*4 - burstFrames(frames, 2*time.Second)
	want := concat(frames[start:])
	var got []byte
	var titles []string
	buf := make([]byte, 4096)
	for len(got) < len(want) {
		n, err := src.Read(buf[:min(len(buf), len(want)-len(got))])
		require.NoError(t, err, "%d of %d", len(got), len(want))
		got = append(got, buf[:n]...)
		if tt := src.Title(); tt != "" && (len(titles) == 0 || titles[len(titles)-1] != tt) {
			titles = append(titles, tt)
		}
	}
	require.Equal(t, want, got)
	require.Equal(t, []string{"First song", "Second song"}, titles)
}

func TestHTTPReordersAndSkips(t *testing.T) {
	chunks, _ := demoChunks(t, 20, nil)
	h := NewHTTP(HTTPConfig{Burst: -1, Reorder: 3})
	srv := serve(t, h)
	h.WriteChunk(chunks[0])
	resp := get(t, srv.URL+"/stream.mp3", false)
	// 2 and 1 swapped (a repair), 5 never comes, 4 comes after the stream
	// gave up on 5... and 3 before 4.
	order := []int{2, 1, 3, 6, 7, 8, 5, 9, 10}
	for _, i := range order {
		h.WriteChunk(chunks[i])
	}
	var want []byte
	for _, i := range []int{1, 2, 3, 6, 7, 8, 9, 10} {
		want = append(want, concat(chunks[i].Frames)...)
	}
	got := make([]byte, len(want))
	_, err := io.ReadFull(resp.Body, got)
	require.NoError(t, err)
	require.Equal(t, want, got)
	require.Equal(t, int64(3), h.Stats().Skipped, "4 and 5 given up, then 5 came late")
}

func TestHTTPBurstTakesLateChunksBeforeAnyListener(t *testing.T) {
	// A joining node accepts its parent's first live chunk, then the burst
	// of older ones: they go into the HTTP burst all the same.
	chunks, frames := demoChunks(t, 30, nil)
	h := NewHTTP(HTTPConfig{Reorder: 4})
	srv := serve(t, h)
	h.WriteChunk(chunks[14])
	for _, c := range chunks[:14] {
		h.WriteChunk(c)
	}
	h.WriteChunk(chunks[3]) // a duplicate
	for _, c := range chunks[15:25] {
		h.WriteChunk(c)
	}
	require.Zero(t, h.Stats().Skipped)
	resp := get(t, srv.URL+"/stream.mp3", false)
	// Once a listener is there, a late chunk is skipped.
	h.WriteChunk(chunks[26])
	h.WriteChunk(chunks[27])
	h.WriteChunk(chunks[28])
	h.WriteChunk(chunks[29])
	h.WriteChunk(chunks[25]) // given up with Reorder (4) newer ones waiting
	require.Equal(t, int64(2), h.Stats().Skipped, "25 given up, then too late")

	nb := burstFrames(frames, 2*time.Second)
	want := concat(frames[25*4-nb : 25*4])
	want = append(want, concat(frames[26*4:])...)
	got := make([]byte, len(want))
	_, err := io.ReadFull(resp.Body, got)
	require.NoError(t, err)
	require.Equal(t, want, got)
}

// stuckWriter is a ResponseWriter whose client never reads: Write blocks
// until release is closed.
type stuckWriter struct {
	hdr     http.Header
	release chan struct{}
	writes  chan struct{} // a Write started
}

func (w *stuckWriter) Header() http.Header { return w.hdr }
func (w *stuckWriter) WriteHeader(int)     {}
func (w *stuckWriter) Flush()              {}
func (w *stuckWriter) Write(b []byte) (int, error) {
	select {
	case w.writes <- struct{}{}:
	default:
	}
	<-w.release
	return 0, errors.New("client gone")
}

func TestHTTPSlowListenerLosesChunksAndNeverSlowsOthers(t *testing.T) {
	const n = 250
	chunks, frames := demoChunks(t, n, nil)
	h := NewHTTP(HTTPConfig{Burst: -1, Queue: 15 * time.Second, MaxDrops: 10, MaxPerAddress: -1})
	srv := serve(t, h)
	h.WriteChunk(chunks[0])

	// One listener that takes nothing...
	stuck := &stuckWriter{hdr: http.Header{}, release: make(chan struct{}), writes: make(chan struct{}, 1)}
	stuckDone := make(chan struct{})
	go func() {
		defer close(stuckDone)
		h.ServeHTTP(stuck, httptest.NewRequest(http.MethodGet, "/stream.mp3", nil))
	}()
	require.Eventually(t, func() bool { return h.Stats().Listeners == 1 }, 5*time.Second, time.Millisecond)
	// ...and many that read as fast as they can.
	const fast = 20
	want := concat(frames[len(chunks[0].Frames):])
	got := make([][]byte, fast)
	var wg sync.WaitGroup
	for i := range fast {
		resp := get(t, srv.URL+"/stream.mp3", false)
		wg.Go(func() {
			b := make([]byte, len(want))
			if _, err := io.ReadFull(resp.Body, b); err == nil {
				got[i] = b
			}
		})
	}
	require.Equal(t, 1+fast, h.Stats().Listeners)

	// The chunks come at 20 times real time. WriteChunk never waits for the
	// stuck listener: this loop ends although it never reads a byte.
	var slowest time.Duration
	for i, c := range chunks[1:] {
		t0 := time.Now()
		h.WriteChunk(c)
		slowest = max(slowest, time.Since(t0))
		if i == 0 {
			<-stuck.writes // it is stuck in its first write
		}
		time.Sleep(5 * time.Millisecond)
	}
	wg.Wait()
	for i := range fast {
		require.Equal(t, want, got[i], "fast listener %d got every frame", i)
	}
	t.Logf("slowest WriteChunk with %d listeners, one stuck: %v", fast+1, slowest)

	st := h.Stats()
	require.GreaterOrEqual(t, st.Dropped, int64(10), "the stuck listener lost whole chunks")
	close(stuck.release)
	<-stuckDone
	st = h.Stats()
	require.Equal(t, int64(1), st.Slow, "and was disconnected")
}

// ffmpegDecode decodes an HTTP MP3 stream with ffmpeg to 16-bit stereo PCM
// at 44.1 kHz, until the stream ends. With icy, ffmpeg asks for ICY
// metadata and titles lists the title updates it logged; else stderr is
// its warnings and errors.
func ffmpegDecode(ctx context.Context, url string, icy bool) (pcm []byte, titles []string, stderr string, err error) {
	args := []string{"-nostdin", "-hide_banner", "-icy", "0", "-loglevel", "warning"}
	if icy {
		args = []string{"-nostdin", "-hide_banner", "-icy", "1", "-loglevel", "verbose"}
	}
	cmd := exec.CommandContext(ctx, "ffmpeg", append(args, "-i", url, "-f", "s16le", "-ac", "2", "-ar", "44100", "pipe:1")...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	stderr = errb.String()
	if icy {
		const update = "Metadata update for StreamTitle: "
		for line := range strings.Lines(stderr) {
			if _, t, ok := strings.Cut(line, update); ok {
				titles = append(titles, strings.TrimSpace(t))
			}
		}
		stderr = ""
	}
	return out.Bytes(), titles, stderr, err
}

func TestHTTPFFmpegPlaysTheStream(t *testing.T) {
	if _, err := exec.LookPath("ffmpeg"); err != nil {
		t.Skip("ffmpeg not installed (.ci/setup installs it)")
	}
	const n = 50 // 5.2 s
	chunks, frames := demoChunks(t, n, func(seq int) string {
		if seq < 35 {
			return "Demo one"
		}
		return "Demo two"
	})
	h := NewHTTP(HTTPConfig{})
	srv := serve(t, h)
	const before = 25
	for _, c := range chunks[:before] {
		h.WriteChunk(c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// ffprobe sees the stream's ICY headers and title.
	out, err := exec.CommandContext(ctx, "ffprobe", "-v", "error", "-icy", "1",
		"-show_entries", "format_tags", "-of", "json", srv.URL+"/stream.mp3").Output()
	require.NoError(t, err)
	var probe struct {
		Format struct {
			Tags map[string]string `json:"tags"`
		} `json:"format"`
	}
	require.NoError(t, json.Unmarshal(out, &probe), "%s", out)
	require.Equal(t, map[string]string{"Icy-Br": "128", "Icy-Name": "p2pradio", "StreamTitle": "Demo one"}, probe.Format.Tags)
	require.Eventually(t, func() bool { return h.Stats().Listeners == 0 }, 5*time.Second, 10*time.Millisecond)

	// Several ffmpeg players decode it at once, with and without metadata.
	type result struct {
		pcm    []byte
		titles []string
		stderr string
		err    error
	}
	const players = 4
	results := make([]chan result, players)
	for i := range players {
		results[i] = make(chan result, 1)
		go func() {
			pcm, titles, stderr, err := ffmpegDecode(ctx, srv.URL+"/stream.mp3", i%2 == 0)
			results[i] <- result{pcm, titles, stderr, err}
		}()
	}
	require.Eventually(t, func() bool { return h.Stats().Listeners == players }, 10*time.Second, 10*time.Millisecond)
	for _, c := range chunks[before:] {
		h.WriteChunk(c)
		time.Sleep(10 * time.Millisecond)
	}
	// Let them take everything, then end the stream.
	nb := burstFrames(frames, 2*time.Second)
	first := before*len(chunks[0].Frames) - nb
	require.Eventually(t, func() bool { return h.Stats().Bytes >= int64(players*len(concat(frames[first:]))) },
		10*time.Second, 10*time.Millisecond)
	h.Close()
	wantFrames := len(frames) - first
	for i := range players {
		r := <-results[i]
		require.NoError(t, r.err, r.stderr)
		require.Empty(t, r.stderr, "no warnings")
		got := len(r.pcm) / 4 / 1152
		t.Logf("ffmpeg %d decoded %d frames (%d sent), titles %q", i, got, wantFrames, r.titles)
		require.InDelta(t, wantFrames, got, 1)
		if i%2 == 0 {
			require.Equal(t, []string{"Demo one", "Demo two"}, r.titles)
		}
	}
}

// TestHTTPWaitsASecondOfAudioForAMissingChunk: by default the stream waits
// for a missing chunk while later ones of less than 1 s of audio are
// pending, however long the chunks.
func TestHTTPWaitsASecondOfAudioForAMissingChunk(t *testing.T) {
	chunks, _ := demoChunks(t, 20, nil) // 100 ms each
	wait := int((reorderAudio + chunks[0].Duration() - 1) / chunks[0].Duration())
	h := NewHTTP(HTTPConfig{Burst: -1})
	h.WriteChunk(chunks[0])
	for i := 2; i < 2+wait-1; i++ {
		h.WriteChunk(chunks[i])
	}
	require.Zero(t, h.Stats().Skipped, "1 still waited for")
	h.WriteChunk(chunks[2+wait-1])
	require.Equal(t, int64(1), h.Stats().Skipped, "1 given up with 1 s of audio after it")
}
