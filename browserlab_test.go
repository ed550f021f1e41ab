package p2pradio

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/websocket"

	"github.com/p2pradio/p2pradio/internal/signal"
	"github.com/p2pradio/p2pradio/internal/testaudio"
	"github.com/p2pradio/p2pradio/internal/web"
	"github.com/p2pradio/p2pradio/mux"
)

// browserFlags are the Chromium flags of the browser-peer tests: WebRTC
// gathers loopback candidates (the only ones in the namespace they run
// in, see inFreshNetns) under their own addresses, and a tab in the
// background runs its timers as one in front.
var browserFlags = []string{
	"--allow-loopback-in-peer-connection",
	"--disable-features=WebRtcHideLocalIpsWithMdns",
	"--disable-background-timer-throttling",
	"--disable-renderer-backgrounding",
	"--disable-backgrounding-occluded-windows",
	// No sound card here: a fake output whose clock runs in real time,
	// rather than ALSA's failures and fallbacks at every page's start.
	"--disable-audio-output",
}

// netnsAddr is the one address besides loopback in the namespace of
// inFreshNetns, on one end of a veth pair that stays in it: Chromium gathers no ICE candidate on
// loopback alone (--allow-loopback-in-peer-connection notwithstanding),
// and none while the namespace has no default route (so the default route
// goes into the veth, which leads nowhere); that address is as local as loopback.
const netnsAddr = "10.213.0.1"

// inFreshNetns runs the calling test again in a new network namespace
// that has only loopback and a veth pair of its own (unshare -n), so that
// WebRTC's ICE in Chromium and in the nodes can use no address of the
// machine's own interfaces. It returns
// true in the namespace, where the test goes on; outside it returns false
// once the run there ended (and failed the test if that run failed). It
// skips without root or unshare.
func inFreshNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv("P2PRADIO_NETNS") == t.Name() {
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: Chromium and the nodes run in a network namespace with only loopback")
	}
	unshare, err1 := exec.LookPath("unshare")
	ip, err2 := exec.LookPath("ip")
	if err1 != nil || err2 != nil {
		t.Skip("needs unshare and ip (util-linux, iproute2)")
	}
	setup := fmt.Sprintf("%[1]s link set lo up && %[1]s link add p2pr0 type veth peer name p2pr1 && %[1]s link set p2pr1 up && %[1]s addr add %[2]s/24 dev p2pr0 && %[1]s link set p2pr0 up && %[1]s route add default dev p2pr0", ip, netnsAddr)
	args := []string{"-n", "--", "sh", "-c", setup + ` && exec "$0" "$@"`,
		os.Args[0], "-test.run=^" + t.Name() + "$", "-test.v", "-test.count=1", "-test.timeout=10m"}
	cmd := exec.Command(unshare, args...)
	cmd.Env = append(os.Environ(), "P2PRADIO_NETNS="+t.Name())
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = cmd.Stdout
	require.NoError(t, cmd.Start())
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		t.Log(sc.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the run in the namespace failed: %v", err)
	}
	return false
}

// pageHub is /peer's signalling for pages only (no Go node among the
// peers), as docs/browser-peers.md has it, to test pages among themselves.
type pageHub struct {
	t       *testing.T
	station ed25519.PublicKey
	node    string // a made-up node key

	mu    sync.Mutex
	pages map[string]*hubPage
}

type hubPage struct {
	id, key string
	ws      *websocket.Conn
	mu      sync.Mutex // sends
	depth   int
	free    int
	stats   json.RawMessage
}

func (p *hubPage) send(m any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	websocket.JSON.Send(p.ws, m)
}

func newPageHub(t *testing.T, station ed25519.PublicKey) *pageHub {
	k, _, _ := ed25519.GenerateKey(nil)
	return &pageHub{t: t, station: station, node: hex.EncodeToString(k), pages: make(map[string]*hubPage)}
}

func (h *pageHub) serve(ws *websocket.Conn) {
	var hello struct {
		Type string `json:"type"`
		Key  string `json:"key"`
	}
	if websocket.JSON.Receive(ws, &hello) != nil || hello.Type != "hello" || len(hello.Key) != 64 {
		return
	}
	p := &hubPage{id: hello.Key[:12], key: hello.Key, ws: ws, depth: -1}
	h.mu.Lock()
	h.pages[p.id] = p
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.pages, p.id)
		h.mu.Unlock()
	}()
	p.send(map[string]any{"type": "welcome", "node": h.node, "station": hex.EncodeToString(h.station), "ice": []any{}, "you": p.id})
	for {
		var m struct {
			Type  string          `json:"type"`
			To    string          `json:"to"`
			Link  int             `json:"link"`
			SDP   string          `json:"sdp"`
			Stats json.RawMessage `json:"stats"`
		}
		if websocket.JSON.Receive(ws, &m) != nil {
			return
		}
		switch m.Type {
		case "candidates":
			h.mu.Lock()
			var peers []map[string]any
			for _, q := range h.pages {
				if q != p && q.free > 0 && q.depth >= 0 {
					peers = append(peers, map[string]any{"id": q.id, "key": q.key, "depth": q.depth, "free": q.free})
				}
			}
			h.mu.Unlock()
			slices.SortFunc(peers, func(a, b map[string]any) int { return a["depth"].(int) - b["depth"].(int) })
			p.send(map[string]any{"type": "candidates", "peers": peers})
		case "offer", "answer":
			h.mu.Lock()
			q := h.pages[m.To]
			h.mu.Unlock()
			if q == nil {
				p.send(map[string]any{"type": "error", "link": m.Link, "error": "no page " + m.To})
				continue
			}
			q.send(map[string]any{"type": m.Type, "from": p.id, "link": m.Link, "sdp": m.SDP})
		case "stats":
			var st struct {
				Depth int `json:"depth"`
				Free  int `json:"free"`
			}
			json.Unmarshal(m.Stats, &st)
			h.mu.Lock()
			p.depth, p.free, p.stats = st.Depth, st.Free, m.Stats
			h.mu.Unlock()
		}
	}
}

// chunkSource signs the demo audio into chunks, looping it, and keeps
// them.
type chunkSource struct {
	frames []mux.Frame
	i      int
	ch     *mux.Chunker

	mu   sync.Mutex
	sent map[uint64]*mux.Chunk
}

func (s *chunkSource) chunk(seq uint64) *mux.Chunk {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent[seq]
}

func newChunkSource(t *testing.T, key ed25519.PrivateKey) *chunkSource {
	d := mux.NewDemuxer(bytes.NewReader(testaudio.Demo))
	s := &chunkSource{ch: mux.NewChunker(mux.ChunkerConfig{Key: key}), sent: make(map[uint64]*mux.Chunk)}
	for {
		f, err := d.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		s.frames = append(s.frames, append(mux.Frame(nil), f...))
	}
	require.NotEmpty(t, s.frames)
	return s
}

// next returns the next chunk, its frames produced now.
func (s *chunkSource) next(t *testing.T) *mux.Chunk {
	for {
		f := s.frames[s.i%len(s.frames)]
		s.i++
		c, err := s.ch.Add(f, time.Now())
		require.NoError(t, err)
		if c != nil {
			s.mu.Lock()
			s.sent[c.Seq] = c
			s.mu.Unlock()
			return c
		}
	}
}

// feederPage is a page that the test feeds chunks through
// window.p2pradio.feed: a relay at depth 1 for the other pages.
const feederPage = `<!doctype html><meta charset="utf-8"><title>feeder</title><audio id="audio"></audio>
<script>%s</script><script>p2pradio.join({audio: document.getElementById("audio"), uploadKbps: %d, fed: true});</script>`

// pageStats is window.p2pradio.stats(), with what statsExpr adds.
type pageStats struct {
	signal.Stats
	Clock float64 `json:"clock"` // the audio element's currentTime
	ID    string  `json:"id"`
}

const statsExpr = `(() => { const s = window.p2pradio.stats(); s.clock = document.getElementById("audio").currentTime;
	const n = window.p2pradio.internals.node(); s.id = n && n.pubHex ? n.pubHex.slice(0, 12) : ""; return s; })()`

// TestPagesRelayToPages: pages among themselves, signalled by a hub of
// pages only: a page fed by the test relays to two pages, which relay to
// the others; all play; when the page that feeds another closes, its
// orphan goes on playing without a rebuffer; a page that relays a forged
// chunk is cut off by its child, which plays on; every frame that child
// played is the station's (or muted), and its PCM equals mpg123's.
func TestPagesRelayToPages(t *testing.T) {
	if os.Getenv("P2PRADIO_BROWSER_FIGURES") == "" {
		t.Skip("pages among themselves, 30 s: set P2PRADIO_BROWSER_FIGURES=1 (TestPagesJoinAGoNode covers most of it)")
	}
	if !inFreshNetns(t) {
		return
	}
	pub, priv, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	hub := newPageHub(t, pub)
	mx := http.NewServeMux()
	mx.Handle("/peer", websocket.Handler(hub.serve))
	mx.HandleFunc("/{$}", web.ServePage)
	mx.HandleFunc("/status.json", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"name":"pages","station":"","depth":-1,"parents":[],"children":[],"chunks":{}}`)
	})
	mx.HandleFunc("/feeder", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, feederPage, web.PeerJS, 300)
	})
	srv := httptest.NewServer(mx)
	defer srv.Close()

	c := startChromium(t, browserFlags...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	feeder, err := openTab(ctx, c, srv.URL+"/feeder", 400, 300)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		var ok bool
		return feeder.eval(ctx, `!!(window.p2pradio && p2pradio.internals.node() && p2pradio.internals.node().station)`, &ok) == nil && ok
	}, 10*time.Second, 50*time.Millisecond)

	// Feed it in real time.
	src := newChunkSource(t, priv)
	feedCtx, stopFeed := context.WithCancel(ctx)
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		start := time.Now()
		var played time.Duration
		for feedCtx.Err() == nil {
			ch := src.next(t)
			if err := feeder.eval(feedCtx, `p2pradio.feed(p2pradio.internals.unhex("`+hex.EncodeToString(ch.Bytes())+`"))`, nil); err != nil {
				return
			}
			played += ch.Duration()
			time.Sleep(time.Until(start.Add(played)))
		}
	}()
	defer func() { stopFeed(); <-fed }()

	var pages []*tab
	for range 4 {
		p, err := openTab(ctx, c, srv.URL+"/?join&upload=300", 900, 700)
		require.NoError(t, err)
		pages = append(pages, p)
		time.Sleep(time.Second)
	}
	stats := func(p *tab) pageStats {
		var s pageStats
		p.eval(ctx, statsExpr, &s)
		return s
	}
	debug := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for i, p := range append([]*tab{feeder}, pages...) {
			var d any
			p.eval(ctx, `p2pradio.debug()`, &d)
			b, _ := json.Marshal(d)
			t.Logf("tab %d: %s", i, b)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			debug()
		}
	})
	if !assert.Eventually(t, func() bool {
		for _, p := range pages {
			if s := stats(p); !s.Playing || s.Clock < 2 {
				return false
			}
		}
		return true
	}, 20*time.Second, 200*time.Millisecond, "every page plays") {
		debug()
		t.FailNow()
	}
	all := make([]pageStats, len(pages))
	byID := map[string]int{}
	for i, p := range pages {
		all[i] = stats(p)
		byID[all[i].ID] = i
		b, _ := json.Marshal(all[i])
		t.Logf("page %d: %s", i, b)
	}
	// Which page feeds another?
	parentPage, orphan := -1, -1
	for i, s := range all {
		if s.Parent != nil {
			if j, ok := byID[*s.Parent]; ok {
				parentPage, orphan = j, i
			}
		}
	}
	require.GreaterOrEqual(t, parentPage, 0, "a page feeds another page")
	before := all[orphan]
	require.NoError(t, pages[parentPage].close(ctx))
	time.Sleep(4 * time.Second)
	after := stats(pages[orphan])
	b, _ := json.Marshal(after)
	t.Logf("orphan after its parent closed: %s", b)
	require.Greater(t, after.Clock, before.Clock+3, "the orphan's audio clock went on")
	require.Equal(t, before.Rebuffers, after.Rebuffers, "no rebuffer")
	require.NotNil(t, after.Parent)
	require.NotEqual(t, *before.Parent, *after.Parent)
	require.GreaterOrEqual(t, after.Continuity, 0.99)

	// A page that feeds another turns hostile: one chunk with a forged
	// signature to its child, which cuts it off and goes on playing
	// without it (its backup is the feeder, which has a free slot now).
	victim, hostile := -1, -1
	for i, p := range pages {
		if i == parentPage {
			continue
		}
		all[i] = stats(p)
		byID[all[i].ID] = i
	}
	for i, s := range all {
		if i == parentPage || s.Parent == nil {
			continue
		}
		if j, ok := byID[*s.Parent]; ok && j != parentPage {
			victim, hostile = i, j
		}
	}
	require.GreaterOrEqual(t, hostile, 0, "a page feeds another")
	var sent bool
	require.NoError(t, pages[hostile].eval(ctx, `(() => { const n = p2pradio.internals.node(), c = n.win.get(n.newest);
		const kid = n.children().find((l) => l.id === "`+all[victim].ID+`");
		const b = c.raw.slice(); new DataView(b.buffer).setUint32(6, n.newest + 1); return !!kid && kid.sendData(b); })()`, &sent))
	require.True(t, sent, "the forged chunk was sent")
	require.GreaterOrEqual(t, victim, 0)
	vBefore := stats(pages[victim])
	time.Sleep(3 * time.Second)
	vAfter := stats(pages[victim])
	b, _ = json.Marshal(vAfter)
	t.Logf("the victim of a forged chunk: %s", b)
	require.Equal(t, int64(1), vAfter.Forged, "the forged chunk was caught")
	require.NotNil(t, vAfter.Parent)
	require.NotEqual(t, all[hostile].ID, *vAfter.Parent)
	require.Greater(t, vAfter.Clock, vBefore.Clock+2, "the victim plays on")
	require.Equal(t, vBefore.Rebuffers, vAfter.Rebuffers, "no rebuffer")
	checkPagePlayed(t, ctx, pages[victim], src)
}

// checkPagePlayed checks what a page played: every frame it appended is
// the station's (with src, the source's chunk at that place, or that
// frame muted where its bit reservoir was missing, or silence where a
// chunk was missing; without, no frame of a hostile page's), and the PCM
// Chromium decodes from them equals mpg123's.
func checkPagePlayed(t *testing.T, ctx context.Context, p *tab, src *chunkSource) {
	t.Helper()
	var ex struct {
		Rate     int        `json:"rate"`
		Channels int        `json:"channels"`
		PCM      []byte     `json:"pcm"`
		MP3      []byte     `json:"mp3"`
		Appended [][2]int64 `json:"appended"`
	}
	require.NoError(t, p.eval(ctx, `p2pradio.exportPCM()`, &ex))
	t.Logf("exported %d bytes of MP3, %d of PCM, %d runs: %v", len(ex.MP3), len(ex.PCM), len(ex.Appended), ex.Appended[:min(5, len(ex.Appended))])
	rest := ex.MP3
	next := func() mux.Frame {
		f, err := mux.ParseFrame(rest)
		require.NoError(t, err, "at byte %d of %d", len(ex.MP3)-len(rest), len(ex.MP3))
		rest = rest[len(f):]
		return f
	}
	// broken: the frames after which the decoder's state is not the
	// stream's (muted or silent frames): the next frames' output depends
	// on how a decoder starts from zero state, where mpg123 and FFmpeg
	// differ (and both differ from a decode of the whole stream) for two
	// frames or so.
	var real, muted, silent int
	broken := map[int]bool{}
	frame := 0
	for _, a := range ex.Appended {
		seq, n := a[0], int(a[1])
		if seq < 0 {
			for range n {
				f := next()
				require.Equal(t, mux.Silent(f.Format()), f, "concealment is silence")
				silent++
				broken[frame] = true
				frame++
			}
			continue
		}
		if src == nil {
			for range n {
				f := next()
				side := f[mux.HeaderSize:][:f.Header().SideInfoSize()]
				if !slices.ContainsFunc(side, func(b byte) bool { return b != 0 }) {
					muted++ // side information zero
					broken[frame] = true
				} else {
					real++
				}
				frame++
			}
			continue
		}
		c := src.chunk(uint64(seq))
		require.NotNil(t, c, "chunk %d was sent", seq)
		require.Len(t, c.Frames, n)
		for _, want := range c.Frames {
			got := next()
			frame++
			if bytes.Equal(got, want) {
				real++
				continue
			}
			m := append(mux.Frame(nil), want...)
			side := mux.HeaderSize
			if want.Header().Protected() {
				side += 2
			}
			clear(m[side : side+want.Header().SideInfoSize()])
			require.Equal(t, m, got, "chunk %d: the station's frame or that frame muted", seq)
			muted++
			broken[frame-1] = true
		}
	}
	require.Empty(t, rest)
	noForgedFrames(t, ex.MP3)
	t.Logf("appended: %d frames from the station, %d muted, %d silent", real, muted, silent)
	require.Greater(t, real, 10*muted+silent)

	mpg123, err := exec.LookPath("mpg123")
	if err != nil {
		t.Log("no mpg123: the PCM is not compared (.ci/setup installs it)")
		return
	}
	cmd := exec.CommandContext(ctx, mpg123, "-q", "-s", "--no-gapless", "-")
	cmd.Stdin = bytes.NewReader(ex.MP3)
	ref, err := cmd.Output()
	require.NoError(t, err)
	got, want := pcm16(ex.PCM), pcm16(ref)
	require.Len(t, got, len(want), "as many samples from Chromium as from mpg123")
	perFrame := 1152 * ex.Channels // MPEG-1
	var maxDiff, compared, skipped int
	for fr := 0; fr*perFrame < len(want); fr++ {
		if broken[fr] || broken[fr-1] || broken[fr-2] {
			skipped++
			continue
		}
		for i := fr * perFrame; i < min((fr+1)*perFrame, len(want)); i++ {
			d := int(got[i]) - int(want[i])
			maxDiff = max(maxDiff, d, -d)
			compared++
		}
	}
	t.Logf("PCM: %d samples; %d frames at or just after a muted or silent frame left out; the rest (%d samples) differs by at most %d", len(want), skipped, compared, maxDiff)
	require.LessOrEqual(t, maxDiff, 2, "Chromium's decode equals mpg123's (to rounding)")
}

func pcm16(b []byte) []int16 {
	out := make([]int16, len(b)/2)
	for i := range out {
		out[i] = int16(uint16(b[2*i]) | uint16(b[2*i+1])<<8)
	}
	return out
}
