package p2pradio

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/control/rtc"
	"github.com/p2pradio/p2pradio/input"
	"github.com/p2pradio/p2pradio/output"
	"github.com/p2pradio/p2pradio/playout"
)

var updateScreenshot = flag.Bool("update-screenshot", false, "write the station page's screenshot to docs/station.png")

// webStation is a broadcaster and listeners over QUIC on loopback, running
// until the test ends.
type webStation struct {
	b       *Node
	bStream *output.HTTP
	ls      []*Node
	streams []*output.HTTP // each listener's HTTP stream
}

func httpTestLogger(t *testing.T) *slog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return slog.New(slog.NewTextHandler(httpLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type httpLogWriter struct{ t *testing.T }

func (w httpLogWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// startWebStation starts a broadcaster of testdata/cbr128.mp3 (looped, titled
// title, with upload kbit/s for children: 0 is the default) with an HTTP
// stream, and n listeners, each with an HTTP stream.
func startWebStation(t *testing.T, n int, title string, upload int) *webStation {
	t.Helper()
	f, err := input.OpenFile("testdata/cbr128.mp3", input.FileConfig{Loop: true, Lead: 2 * time.Second})
	require.NoError(t, err)
	src := input.WithTitle(f)
	st := &webStation{bStream: output.NewHTTP(output.HTTPConfig{Name: "Test FM"})}
	st.b, err = New(Config{Source: src, UploadKbps: upload, Outputs: []output.Output{st.bStream}, Logger: httpTestLogger(t),
		Browsers: BrowserConfig{IPFilter: rtc.LoopbackOnly}}) // tests' pages: loopback only
	require.NoError(t, err)
	require.NoError(t, st.b.SetTitle(title))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		for _, l := range st.ls {
			l.Close()
		}
		st.b.Close()
		st.bStream.Close()
		for _, s := range st.streams {
			s.Close()
		}
	})
	wg.Go(func() { st.b.Run(ctx) })
	for range n {
		hs := output.NewHTTP(output.HTTPConfig{Name: "Test FM"})
		l, err := New(Config{
			Station: st.b.Address().String(),
			Sink:    &playout.Discard{},
			Outputs: []output.Output{hs},
			Logger:  httpTestLogger(t),
		})
		require.NoError(t, err)
		st.ls, st.streams = append(st.ls, l), append(st.streams, hs)
		wg.Go(func() { l.Run(ctx) })
	}
	return st
}

// serveNode serves n's Handler until the test ends.
func serveNode(t *testing.T, n *Node, cfg HTTPConfig) *httptest.Server {
	srv := httptest.NewServer(n.Handler(cfg))
	t.Cleanup(srv.Close)
	if cfg.Stream != nil {
		t.Cleanup(func() { cfg.Stream.Close() }) // first: the server waits for its streams
	}
	return srv
}

func getStatus(t *testing.T, url string) Status {
	t.Helper()
	resp, err := http.Get(url + "/status.json")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var s Status
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&s))
	return s
}

// ffmpegDecode decodes d of an HTTP MP3 stream with ffmpeg to 16-bit
// stereo PCM at 44.1 kHz.
func ffmpegDecode(ctx context.Context, url string, d time.Duration) (pcm []byte, stderr string, err error) {
	cmd := exec.CommandContext(ctx, "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "warning",
		"-i", url, "-t", fmt.Sprint(d.Seconds()), "-f", "s16le", "-ac", "2", "-ar", "44100", "pipe:1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.Bytes(), errb.String(), err
}

func TestListenerServesHTTPOverQUIC(t *testing.T) {
	if _, err := exec.LookPath("ffmpeg"); err != nil {
		t.Skip("ffmpeg not installed (.ci/setup installs it)")
	}
	st := startWebStation(t, 1, "Song one", 0)
	l, ls := st.ls[0], st.streams[0]
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "p2pradio_depth", l.Stats().Depth) })
	lsrv := serveNode(t, l, HTTPConfig{Name: "Test FM", Stream: ls, Metrics: metrics})
	bsrv := serveNode(t, st.b, HTTPConfig{Name: "Test FM", Stream: st.bStream})
	// The listener has joined over QUIC and holds more than a burst.
	require.Eventually(t, func() bool { return l.Stats().ChunksReceived > 25 }, 15*time.Second, 20*time.Millisecond)
	url := lsrv.URL + "/stream.mp3"

	resp, err := http.Head(url)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "audio/mpeg", resp.Header.Get("Content-Type"))
	require.Equal(t, "128", resp.Header.Get("icy-br"))
	require.Equal(t, "Test FM", resp.Header.Get("icy-name"))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Real players decode the listener's stream, several at once.
	const players = 3
	type decoded struct {
		pcm    []byte
		stderr string
		err    error
	}
	results := make(chan decoded, players)
	for range players {
		go func() {
			pcm, stderr, err := ffmpegDecode(ctx, url, 3*time.Second)
			results <- decoded{pcm, stderr, err}
		}()
	}

	// Meanwhile an ICY client (package input's) follows the title.
	src, err := input.OpenURL(ctx, url, input.HTTPConfig{MaxRetries: -1})
	require.NoError(t, err)
	defer src.Close()
	require.Equal(t, output.DefaultMetaint, src.Info().Metaint)
	waitTitle := func(want string) time.Duration {
		t0 := time.Now()
		buf := make([]byte, 4096)
		for src.Title() != want {
			_, err := src.Read(buf)
			require.NoError(t, err, "waiting for title %q, have %q", want, src.Title())
		}
		return time.Since(t0)
	}
	waitTitle("Song one")
	require.NoError(t, st.b.SetTitle("Song two"))
	took := waitTitle("Song two")
	t.Logf("a new title reached an HTTP player through the overlay in %v", took)

	for range players {
		r := <-results
		require.NoError(t, r.err, r.stderr)
		require.Empty(t, r.stderr)
		require.Len(t, r.pcm, 3*44100*4, "ffmpeg decoded 3 s")
		require.Greater(t, peak(samples(r.pcm)), 1000, "and it is not silence")
	}

	// Every node shows the title: status pages at once, playout when the
	// frames carrying it play.
	require.Eventually(t, func() bool { return l.Stats().Title == "Song two" }, 10*time.Second, 20*time.Millisecond)
	ls1 := getStatus(t, lsrv.URL)
	require.Equal(t, "Song two", ls1.Title)
	require.Equal(t, "Test FM", ls1.Name)
	require.False(t, ls1.Broadcaster)
	require.Equal(t, st.b.Address().String(), ls1.Station)
	require.Equal(t, l.ov.ID().String(), ls1.ID)
	require.Equal(t, 1, ls1.Depth)
	require.Len(t, ls1.Parents, 1)
	require.Equal(t, st.b.ov.ID().String(), ls1.Parents[0].ID)
	require.Equal(t, 0, ls1.Parents[0].Depth)
	require.Equal(t, 128, ls1.BitrateKbps)
	require.Equal(t, "/stream.mp3", ls1.Stream)
	require.NotNil(t, ls1.Playing)
	require.True(t, *ls1.Playing)
	require.NotNil(t, ls1.Continuity)
	require.GreaterOrEqual(t, *ls1.Continuity, 0.9)
	require.NotNil(t, ls1.LagS)
	require.Positive(t, *ls1.LagS)
	require.Positive(t, *ls1.BufferS)
	require.Positive(t, ls1.UptimeS)
	require.Positive(t, ls1.Chunks.Received)
	require.NotNil(t, ls1.HTTP)
	require.Equal(t, 1, ls1.HTTP.Listeners, "the ICY client")
	require.Equal(t, int64(1+players), ls1.HTTP.Served)
	require.Nil(t, ls1.Swarm, "only the broadcaster knows the swarm")

	bs := getStatus(t, bsrv.URL)
	require.True(t, bs.Broadcaster)
	require.Equal(t, "Song two", bs.Title)
	require.Equal(t, 0, bs.Depth)
	require.Nil(t, bs.Playing, "the broadcaster does not play")
	require.Len(t, bs.Children, 1)
	require.Equal(t, l.ov.ID().String(), bs.Children[0].ID)
	require.Len(t, bs.Swarm, 2)
	require.Equal(t, StatusNode{ID: st.b.ov.ID().String(), Addr: st.b.LocalAddr(), Depth: 0, FreeSlots: bs.Swarm[0].FreeSlots,
		UploadKbps: 512, SeenS: bs.Swarm[0].SeenS, Reach: "public", Self: true}, bs.Swarm[0])
	require.Equal(t, l.ov.ID().String(), bs.Swarm[1].ID)
	require.Equal(t, 1, bs.Swarm[1].Depth)
	require.Equal(t, st.b.ov.ID().String(), bs.Swarm[1].Parent)

	// The page and the metrics.
	resp, err = http.Get(lsrv.URL + "/")
	require.NoError(t, err)
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	require.Contains(t, resp.Header.Get("Content-Security-Policy"), "default-src 'none'")
	require.Contains(t, string(page), `<audio id="audio"`)
	resp, err = http.Get(lsrv.URL + "/metrics")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, "p2pradio_depth 1\n", string(body))
	resp, err = http.Get(bsrv.URL + "/metrics")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "no metrics handler, no /metrics")

	// When the node stops, its streams end.
	src.Close()
	resp = httpGet(t, url)
	require.NoError(t, l.Close())
	_, err = io.Copy(io.Discard, resp.Body)
	require.NoError(t, err, "a clean end")
}

func httpGet(t *testing.T, url string) *http.Response {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	require.Equal(t, http.StatusOK, resp.StatusCode)
	return resp
}

func TestHandlerWithoutStream(t *testing.T) {
	st := startWebStation(t, 0, "Quiet", 0)
	srv := serveNode(t, st.b, HTTPConfig{})
	resp, err := http.Get(srv.URL + "/stream.mp3")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	resp, err = http.Head(srv.URL + "/")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	s := getStatus(t, srv.URL)
	require.Equal(t, "p2pradio", s.Name)
	require.Empty(t, s.Stream)
	require.Nil(t, s.HTTP)
	require.Equal(t, "Quiet", s.Title)

	// The overload figures are there for a node that never shed (the
	// namespace lab's TestOverloadLab reads them from one that did).
	resp, err = http.Get(srv.URL + "/status.json")
	require.NoError(t, err)
	var raw map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&raw))
	resp.Body.Close()
	require.Equal(t, 0.0, raw["shed"])
	require.Equal(t, false, raw["overloaded"])
}

func TestSetTitleOnlyAtTheBroadcaster(t *testing.T) {
	st := startWebStation(t, 0, "One", 0)
	require.Equal(t, "One", st.b.Stats().Title)
	require.NoError(t, st.b.SetTitle(""))
	require.Equal(t, "cbr128", st.b.Stats().Title, "back to the file's own (its ID3 tag's)")

	l, err := New(Config{Station: st.b.Address().String()})
	require.NoError(t, err)
	defer l.Close()
	require.ErrorIs(t, l.SetTitle("x"), ErrNotBroadcaster)
}

// cdp drives a headless Chromium through the DevTools protocol over a pipe
// (--remote-debugging-pipe: commands on its fd 3, answers on its fd 4, each
// message JSON ended by a NUL byte).
type cdp struct {
	t       *testing.T
	cmd     *exec.Cmd
	w       io.WriteCloser
	session string

	mu      sync.Mutex
	nextID  int
	waiting map[int]chan cdpAnswer
	readErr error
	done    chan struct{} // the reader ended
}

type cdpAnswer struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Message string `json:"message"`
	} `json:"error"`
}

func startChromium(t *testing.T, flags ...string) *cdp {
	t.Helper()
	bin := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		t.Skip("chromium not installed (.ci/setup installs it)")
	}
	toChrome, ourEnd, err := os.Pipe()
	require.NoError(t, err)
	fromChrome, chromeEnd, err := os.Pipe()
	require.NoError(t, err)
	cmd := exec.Command(bin,
		"--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(), "--autoplay-policy=no-user-gesture-required",
		"--remote-debugging-pipe", "--window-size=1000,900")
	cmd.Args = append(append(cmd.Args, flags...), "about:blank")
	cmd.ExtraFiles = []*os.File{toChrome, chromeEnd}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	toChrome.Close()
	chromeEnd.Close()
	c := &cdp{t: t, cmd: cmd, w: ourEnd, waiting: make(map[int]chan cdpAnswer), done: make(chan struct{})}
	go c.read(fromChrome)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c.call(ctx, "", "Browser.close", nil, nil)
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		ourEnd.Close()
		<-c.done
		fromChrome.Close()
		if t.Failed() {
			t.Logf("chromium stderr:\n%s", stderr.String())
		}
	})
	return c
}

// read dispatches answers until the pipe closes.
func (c *cdp) read(r io.Reader) {
	defer close(c.done)
	br := bufio.NewReader(r)
	for {
		msg, err := br.ReadBytes(0)
		if err != nil {
			c.mu.Lock()
			c.readErr = err
			for id, ch := range c.waiting {
				close(ch)
				delete(c.waiting, id)
			}
			c.mu.Unlock()
			return
		}
		var m struct {
			ID     int             `json:"id"`
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
			cdpAnswer
		}
		if json.Unmarshal(msg[:len(msg)-1], &m) != nil {
			continue
		}
		if m.ID == 0 {
			if m.Method == "Runtime.consoleAPICalled" || m.Method == "Runtime.exceptionThrown" || m.Method == "Log.entryAdded" {
				c.t.Logf("page: %s %s", m.Method, m.Params)
			}
			continue
		}
		c.mu.Lock()
		ch := c.waiting[m.ID]
		delete(c.waiting, m.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- m.cdpAnswer
		}
	}
}

// call sends a command (to the page's session unless session is "") and
// decodes its result into out.
func (c *cdp) call(ctx context.Context, session, method string, params, out any) error {
	c.mu.Lock()
	if c.readErr != nil {
		c.mu.Unlock()
		return c.readErr
	}
	c.nextID++
	id := c.nextID
	ch := make(chan cdpAnswer, 1)
	c.waiting[id] = ch
	c.mu.Unlock()
	msg := map[string]any{"id": id, "method": method}
	if params != nil {
		msg["params"] = params
	}
	if session != "" {
		msg["sessionId"] = session
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	if _, err := c.w.Write(append(b, 0)); err != nil {
		return err
	}
	select {
	case a, ok := <-ch:
		if !ok {
			return fmt.Errorf("%s: chromium went away", method)
		}
		if a.Error != nil {
			return fmt.Errorf("%s: %s", method, a.Error.Message)
		}
		if out != nil {
			return json.Unmarshal(a.Result, out)
		}
		return nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.waiting, id)
		c.mu.Unlock()
		return fmt.Errorf("%s: %w", method, ctx.Err())
	}
}

// open opens url in a new tab of w x h pixels and attaches to it.
func (c *cdp) open(ctx context.Context, url string, w, h int) {
	t := c.t
	var target struct {
		TargetID string `json:"targetId"`
	}
	require.NoError(t, c.call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &target))
	var att struct {
		SessionID string `json:"sessionId"`
	}
	require.NoError(t, c.call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att))
	c.session = att.SessionID
	for _, m := range []string{"Page.enable", "Runtime.enable", "Log.enable"} {
		require.NoError(t, c.call(ctx, c.session, m, nil, nil))
	}
	require.NoError(t, c.call(ctx, c.session, "Emulation.setDeviceMetricsOverride",
		map[string]any{"width": w, "height": h, "deviceScaleFactor": 1, "mobile": false}, nil))
	require.NoError(t, c.call(ctx, c.session, "Page.navigate", map[string]any{"url": url}, nil))
}

// eval evaluates a JavaScript expression in the page (awaiting a promise)
// and decodes its value into out.
func (c *cdp) eval(ctx context.Context, expr string, out any) error {
	return (&tab{c: c, session: c.session}).eval(ctx, expr, out) // browser_test.go
}

// waitFor evaluates expr until it is true.
func (c *cdp) waitFor(ctx context.Context, what, expr string) {
	c.t.Helper()
	for {
		var ok bool
		err := c.eval(ctx, expr, &ok)
		if err == nil && ok {
			return
		}
		select {
		case <-ctx.Done():
			var diag any
			c.eval(context.Background(), `({title: document.getElementById("title").textContent, state: document.getElementById("state").textContent,
				t: document.getElementById("audio").currentTime, err: document.getElementById("audio").error && document.getElementById("audio").error.message,
				circles: document.querySelectorAll("#tree circle").length})`, &diag)
			c.t.Fatalf("waiting for %s (%s): %v; last error %v; page %v", what, expr, ctx.Err(), err, diag)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *cdp) screenshot(ctx context.Context) []byte {
	var shot struct {
		Data string `json:"data"`
	}
	require.NoError(c.t, c.call(ctx, c.session, "Page.captureScreenshot", map[string]any{"format": "png"}, &shot))
	b, err := base64.StdEncoding.DecodeString(shot.Data)
	require.NoError(c.t, err)
	return b
}

func TestStationPageInChromium(t *testing.T) {
	c := startChromium(t)
	// Two slots at the broadcaster (and at each listener): a tree of
	// depth 2 or more.
	st := startWebStation(t, 5, "Chromium Test Song", 300)
	srv := serveNode(t, st.b, HTTPConfig{Name: "Test FM", Stream: st.bStream})
	// The tree is drawn from what the rendezvous knows: wait for all.
	require.Eventually(t, func() bool {
		n := 0
		for _, l := range st.ls {
			if l.Stats().Depth > 0 {
				n++
			}
		}
		return n == len(st.ls) && len(st.b.ov.Tracker().Nodes()) == 1+len(st.ls)
	}, 20*time.Second, 50*time.Millisecond)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.open(ctx, srv.URL+"/?http", 1000, 820) // the HTTP stream: a peer needs the namespace of browserlab_test.go
	c.waitFor(ctx, "the title", `document.getElementById("title").textContent === "Chromium Test Song"`)
	var canPlay string
	require.NoError(t, c.eval(ctx, `document.getElementById("audio").canPlayType("audio/mpeg")`, &canPlay))
	require.NotEmpty(t, canPlay, "chromium plays MP3")

	require.NoError(t, c.eval(ctx, `document.getElementById("play").click()`, nil))
	c.waitFor(ctx, "the audio to play 2 s", `document.getElementById("audio").currentTime > 2`)
	c.waitFor(ctx, "the tree", `document.querySelectorAll("#tree circle").length === 6 && document.querySelectorAll("#tree line").length === 5`)
	c.waitFor(ctx, "the figures", `document.getElementById("figs").textContent.includes("HTTP listeners")`)
	var state string
	require.NoError(t, c.eval(ctx, `document.getElementById("state").textContent`, &state))
	require.Equal(t, "playing", state)
	require.Equal(t, 1, st.bStream.Stats().Listeners, "the page's player is a listener of the stream")

	png := c.screenshot(ctx)
	require.True(t, bytes.HasPrefix(png, []byte("\x89PNG")))
	path := filepath.Join(t.TempDir(), "station.png")
	require.NoError(t, os.WriteFile(path, png, 0o644))
	t.Logf("screenshot: %s (%d bytes)", path, len(png))
	if *updateScreenshot {
		require.NoError(t, os.MkdirAll("docs", 0o755))
		require.NoError(t, os.WriteFile(filepath.Join("docs", "station.png"), png, 0o644))
	}
}
