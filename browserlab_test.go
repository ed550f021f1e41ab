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

// chunkSource signs the demo audio into chunks, looping it.
type chunkSource struct {
	frames []mux.Frame
	i      int
	ch     *mux.Chunker
}

func newChunkSource(t *testing.T, key ed25519.PrivateKey) *chunkSource {
	d := mux.NewDemuxer(bytes.NewReader(testaudio.Demo))
	s := &chunkSource{ch: mux.NewChunker(mux.ChunkerConfig{Key: key})}
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
			return c
		}
	}
}

// feederPage is a page that the test feeds chunks through
// window.p2pradio.feed: a relay at depth 1 for the other pages.
const feederPage = `<!doctype html><meta charset="utf-8"><title>feeder</title><audio id="audio"></audio>
<script>%s</script><script>p2pradio.join({audio: document.getElementById("audio"), uploadKbps: %d, fed: true});</script>`

// pageStats is window.p2pradio.stats().
type pageStats struct {
	Playing    bool     `json:"playing"`
	Continuity float64  `json:"continuity"`
	LagMs      *float64 `json:"lagMs"`
	Depth      int      `json:"depth"`
	Parent     *string  `json:"parent"`
	Children   []string `json:"children"`
	Received   int      `json:"received"`
	Relayed    int      `json:"relayed"`
	Forged     int      `json:"forged"`
	StartupMs  *float64 `json:"startupMs"`
	Rebuffers  int      `json:"rebuffers"`
	Free       int      `json:"free"`
	UploadKbps int      `json:"uploadKbps"`
	Clock      float64  `json:"clock"` // the audio element's currentTime
	ID         string   `json:"id"`
}

const statsExpr = `(() => { const s = window.p2pradio.stats(); s.clock = document.getElementById("audio").currentTime;
	const n = window.p2pradio.internals.node(); s.id = n && n.pubHex ? n.pubHex.slice(0, 12) : ""; return s; })()`

// TestPagesRelayToPages: pages among themselves, signalled by a hub of
// pages only: a page fed by the test relays to two pages, which relay to
// the third; all play; when the page that feeds another closes, its
// orphan goes on playing without a rebuffer.
func TestPagesRelayToPages(t *testing.T) {
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
	for range 3 {
		p, err := openTab(ctx, c, srv.URL+"/?join&upload=300", 900, 700)
		require.NoError(t, err)
		pages = append(pages, p)
		time.Sleep(1500 * time.Millisecond)
	}
	stats := func(p *tab) pageStats {
		var s pageStats
		p.eval(ctx, statsExpr, &s)
		return s
	}
	debug := func() {
		for i, p := range append([]*tab{feeder}, pages...) {
			var d any
			p.eval(ctx, `p2pradio.debug()`, &d)
			b, _ := json.Marshal(d)
			t.Logf("tab %d: %s", i, b)
		}
	}
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
}
