package p2pradio

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/control/rtc"
	"github.com/p2pradio/p2pradio/internal/signal"
	"github.com/p2pradio/p2pradio/internal/web"
)

// The browser hub: /peer's signalling for the station pages homed at this
// node (docs/browser-peers.md). It lives in the root package beside the
// Handler because it reads the Node's own state (its overlay's depth and
// free slots, its key) and answers offers with the Node's WebRTC
// transport, whose links the overlay accepts like any other (control.Join).

// BrowserConfig configures browser peers: station pages that join the
// overlay over WebRTC, signalling at the Handler's /peer. The zero value
// turns them on without STUN.
type BrowserConfig struct {
	// Disabled turns browser peers off: /peer is not served and the node
	// answers no offer.
	Disabled bool
	// MaxPages bounds the pages signalling at this node at once. Zero
	// means 64.
	MaxPages int
	// ICEServers are STUN or TURN URLs ("stun:host:port") for the node and
	// for the pages it serves. Nil means none: host candidates only.
	ICEServers []string
	// IPFilter says which addresses the node's ICE may use, local and
	// remote. Nil means every address: even a node whose QUIC listens on
	// loopback links over the machine's own addresses, since browsers
	// offer no loopback candidate to a page on the same machine.
	IPFilter func(net.IP) bool
}

// Bounds of the hub (the contract's).
const (
	// pageSilence is how long a page may send nothing before it is
	// dropped.
	pageSilence = 30 * time.Second
	// offerExpiry is how long an offer forwarded to a page counts as in
	// flight without an answer.
	offerExpiry = 10 * time.Second
	// pageQueue bounds the messages waiting to be written to one page; a
	// page that lets more pile up is dropped.
	pageQueue = 64
	// writeTimeout bounds one write to a page.
	writeTimeout = 10 * time.Second
)

type browserHub struct {
	n   *Node
	cfg BrowserConfig
	rtc *rtc.Transport
	log *slog.Logger

	mu     sync.Mutex
	pages  map[string]*page
	closed bool
	done   chan struct{}
	wg     sync.WaitGroup // the pages' goroutines
}

// page is one station page signalling at the hub.
type page struct {
	id     string
	key    ed25519.PublicKey
	upload int
	ws     *websocket.Conn
	out    chan []byte
	since  time.Time

	dropOnce sync.Once
	// Under the hub's mu:
	stats   *signal.Stats
	statsAt time.Time
	pending map[offerKey]time.Time // offers this page sent, not answered yet
}

type offerKey struct {
	to   string
	link int64
}

// newBrowserHub makes the hub and the WebRTC transport that answers for
// the node, unless browsers are disabled. It does no I/O.
func newBrowserHub(n *Node, cfg BrowserConfig) (*browserHub, error) {
	if cfg.Disabled {
		return nil, nil
	}
	cfg.MaxPages = cmp.Or(cfg.MaxPages, 64)
	t, err := rtc.New(rtc.Config{
		Key:        n.key,
		ICEServers: cfg.ICEServers,
		IPFilter:   cfg.IPFilter,
		Logger:     n.log,
	})
	if err != nil {
		return nil, err
	}
	return &browserHub{n: n, cfg: cfg, rtc: t, log: n.log, pages: map[string]*page{}, done: make(chan struct{})}, nil
}

// close drops every page, closes the node's WebRTC links and waits.
func (h *browserHub) close() {
	h.mu.Lock()
	if !h.closed {
		h.closed = true
		close(h.done)
	}
	pages := make([]*page, 0, len(h.pages))
	for _, p := range h.pages {
		pages = append(pages, p)
	}
	h.mu.Unlock()
	for _, p := range pages {
		p.drop(websocket.StatusGoingAway, "the node stops")
	}
	h.wg.Wait()
	h.rtc.Close()
}

// drop closes the page's socket with a reason, without waiting; its
// serve then ends.
func (p *page) drop(code websocket.StatusCode, reason string) {
	p.dropOnce.Do(func() { go p.ws.Close(code, reason) })
}

// close closes the page's socket with a reason (serve, on its way out).
func (p *page) close(code websocket.StatusCode, reason string) {
	p.dropOnce.Do(func() { p.ws.Close(code, reason) })
}

// send queues a message for the page; a page that does not keep up is
// dropped.
func (p *page) send(m any) {
	b, err := json.Marshal(m)
	if err != nil {
		return
	}
	select {
	case p.out <- b:
	default:
		p.drop(websocket.StatusPolicyViolation, "too slow")
	}
}

// serve is /peer: one page's signalling, until it leaves or breaks a rule.
func (h *browserHub) serve(w http.ResponseWriter, r *http.Request) {
	ws, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept answered the request
	}
	ws.SetReadLimit(signal.MaxMessage)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()

	rctx, rcancel := context.WithTimeout(ctx, pageSilence)
	_, b, err := ws.Read(rctx)
	rcancel()
	if err != nil {
		return
	}
	m, err := signal.Parse(b)
	if err == nil && m.Type != "hello" {
		err = errors.New("the first message must be hello")
	}
	if err != nil {
		ws.Close(websocket.StatusPolicyViolation, reason(err))
		return
	}
	key, _ := signal.ParseKey(*m.Key)
	p := &page{
		id:      control.IDOf(key).String(),
		key:     key,
		upload:  *m.UploadKbps,
		ws:      ws,
		out:     make(chan []byte, pageQueue),
		since:   time.Now(),
		pending: map[offerKey]time.Time{},
	}
	if why := h.add(p); why != "" {
		ws.Close(websocket.StatusTryAgainLater, why)
		return
	}
	defer h.remove(p)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { h.writeLoop(ctx, p) })
	wg.Go(func() {
		select {
		case <-h.n.runDone:
			p.drop(websocket.StatusGoingAway, "the node stopped")
		case <-ctx.Done():
		}
	})
	p.send(h.welcome(p))
	for {
		rctx, rcancel := context.WithTimeout(ctx, pageSilence)
		_, b, err := ws.Read(rctx)
		rcancel()
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				h.log.Debug("dropping a silent page", "page", p.id)
			}
			return
		}
		m, err := signal.Parse(b)
		if err == nil {
			err = h.handle(ctx, &wg, p, m)
		}
		if err != nil {
			h.log.Debug("dropping a page", "page", p.id, "err", err)
			p.close(websocket.StatusPolicyViolation, reason(err))
			return
		}
	}
}

// reason is err's text cut to what a close frame carries.
func reason(err error) string {
	s := err.Error()
	return s[:min(len(s), 120)]
}

func (h *browserHub) writeLoop(ctx context.Context, p *page) {
	for {
		select {
		case b := <-p.out:
			wctx, cancel := context.WithTimeout(ctx, writeTimeout)
			err := p.ws.Write(wctx, websocket.MessageText, b)
			cancel()
			if err != nil {
				p.drop(websocket.StatusGoingAway, "write failed")
				return
			}
		case <-ctx.Done():
			return
		}
	}
}

// add admits a page within MaxPages. It returns why the page is refused,
// or "". A second hello with a key already here is refused (replacing the
// first would let anyone who read a key in a candidates list cut that
// page off); a reloaded page's old socket is gone by then, or goes within
// pageSilence.
func (h *browserHub) add(p *page) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.closed:
		return "the node stops"
	case p.key.Equal(h.n.Key()):
		return "that is the node's key"
	}
	if h.pages[p.id] != nil {
		return "a page with that key is here"
	}
	if len(h.pages) >= h.cfg.MaxPages {
		return fmt.Sprintf("full: %d pages", len(h.pages))
	}
	h.pages[p.id] = p
	h.wg.Add(1)
	return ""
}

func (h *browserHub) remove(p *page) {
	h.mu.Lock()
	if h.pages[p.id] == p {
		delete(h.pages, p.id)
	}
	h.mu.Unlock()
	p.close(websocket.StatusNormalClosure, "")
	h.wg.Done()
}

func (h *browserHub) welcome(p *page) signal.Welcome {
	ice := []signal.ICEServer{}
	if len(h.cfg.ICEServers) > 0 {
		ice = append(ice, signal.ICEServer{URLs: h.cfg.ICEServers})
	}
	return signal.Welcome{
		Type:    "welcome",
		Node:    hex.EncodeToString(h.n.Key()),
		Station: hex.EncodeToString(h.n.station),
		ICE:     ice,
		You:     p.id,
	}
}

// handle acts on one message of page p; an error drops the page.
func (h *browserHub) handle(ctx context.Context, wg *sync.WaitGroup, p *page, m *signal.In) error {
	switch m.Type {
	case "hello":
		return errors.New("hello twice")
	case "candidates":
		p.send(signal.Candidates{Type: "candidates", Peers: h.candidates(p)})
	case "offer":
		link, to := *m.Link, *m.To
		q, why := h.startOffer(p, to, link)
		if why != "" {
			p.send(signal.Error{Type: "error", Link: link, Error: why})
			return nil
		}
		if q != nil { // the hub reads no SDP: it goes as the page sent it
			q.send(signal.Offer{Type: "offer", From: p.id, Link: link, SDP: *m.SDP})
			return nil
		}
		sdp := *m.SDP
		wg.Go(func() {
			answer, err := h.rtc.Answer(ctx, sdp)
			h.mu.Lock()
			delete(p.pending, offerKey{to, link})
			h.mu.Unlock()
			if err != nil {
				p.send(signal.Error{Type: "error", Link: link, Error: err.Error()})
				return
			}
			p.send(signal.Offer{Type: "answer", From: signal.NodeID, Link: link, SDP: answer})
		})
	case "answer":
		link, to := *m.Link, *m.To
		h.mu.Lock()
		q := h.pages[to]
		var ok bool
		if q != nil {
			_, ok = q.pending[offerKey{p.id, link}]
			delete(q.pending, offerKey{p.id, link})
		}
		h.mu.Unlock()
		if ok {
			q.send(signal.Offer{Type: "answer", From: p.id, Link: link, SDP: *m.SDP})
		}
	case "stats":
		var s signal.Stats
		json.Unmarshal(m.Stats, &s) // Parse checked it
		h.mu.Lock()
		if time.Since(p.statsAt) >= 900*time.Millisecond { // at most once a second, give or take
			p.stats, p.statsAt = &s, time.Now()
		}
		h.mu.Unlock()
	}
	return nil
}

// startOffer counts p's offer to to as in flight. It returns the page
// to forward it to (nil for the node), or why the offer cannot go.
func (h *browserHub) startOffer(p *page, to string, link int64) (*page, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	for k, at := range p.pending {
		if now.Sub(at) > offerExpiry {
			delete(p.pending, k)
		}
	}
	k := offerKey{to, link}
	var q *page
	switch _, dup := p.pending[k]; {
	case dup:
		return nil, "link number in use"
	case len(p.pending) >= signal.MaxOffers:
		return nil, fmt.Sprintf("%d offers in flight", len(p.pending))
	case to == p.id:
		return nil, "an offer to itself"
	case to != signal.NodeID:
		if q = h.pages[to]; q == nil {
			return nil, "no page " + to
		}
	}
	p.pending[k] = now
	return q, ""
}

// candidates are the node (when it has joined) and the pages with free
// slots that reported a depth, shallowest first, at most
// signal.MaxCandidates, p excepted.
func (h *browserHub) candidates(p *page) []signal.Candidate {
	out := []signal.Candidate{}
	if o := h.n.ov.Stats(); o.Depth >= 0 {
		out = append(out, signal.Candidate{ID: signal.NodeID, Key: hex.EncodeToString(h.n.Key()), Depth: o.Depth, Free: max(o.Slots-len(o.Children), 0)})
	}
	var pages []signal.Candidate
	h.mu.Lock()
	for _, q := range h.pages {
		if q != p && q.stats != nil && q.stats.Free > 0 && q.stats.Depth > 0 {
			pages = append(pages, signal.Candidate{ID: q.id, Key: hex.EncodeToString(q.key), Depth: q.stats.Depth, Free: q.stats.Free})
		}
	}
	h.mu.Unlock()
	slices.SortFunc(pages, func(a, b signal.Candidate) int {
		return cmp.Or(cmp.Compare(a.Depth, b.Depth), cmp.Compare(b.Free, a.Free), cmp.Compare(a.ID, b.ID))
	})
	out = append(out, pages...)
	return out[:min(len(out), signal.MaxCandidates)]
}

// status describes the pages for /status.json: what they reported, and
// whether each is a child of this node.
func (h *browserHub) status(self string, children []web.StatusPeer) []web.StatusBrowser {
	child := map[string]bool{}
	for _, c := range children {
		child[c.ID] = true
	}
	now := time.Now()
	h.mu.Lock()
	out := make([]web.StatusBrowser, 0, len(h.pages))
	for _, p := range h.pages {
		b := web.StatusBrowser{ID: p.id, Depth: -1, ConnectedS: now.Sub(p.since).Seconds(), Child: child[p.id]}
		if s := p.stats; s != nil {
			b.Reported = true
			b.SeenS = now.Sub(p.statsAt).Seconds()
			b.Playing, b.Continuity, b.LagMs = s.Playing, s.Continuity, s.LagMs
			b.Depth, b.Children, b.Free, b.UploadKbps = s.Depth, s.Children, s.Free, s.UploadKbps
			b.Received, b.Relayed, b.Forged, b.Rebuffers, b.StartupMs = s.Received, s.Relayed, s.Forged, s.Rebuffers, s.StartupMs
			if s.Parent != nil {
				b.Parent = *s.Parent
				if b.Parent == signal.NodeID {
					b.Parent = self
				}
			}
		}
		if b.Children == nil {
			b.Children = []string{}
		}
		out = append(out, b)
	}
	h.mu.Unlock()
	slices.SortFunc(out, func(a, b web.StatusBrowser) int {
		return cmp.Or(cmp.Compare(a.Depth, b.Depth), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// has reports whether id is a page signalling here.
func (h *browserHub) has(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.pages[id] != nil
}

// figures are the pages' count, how many play, and the mean continuity
// they reported (1 with none), for Stats.
func (h *browserHub) figures() (pages, playing int, continuity float64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var sum float64
	var n int
	for _, p := range h.pages {
		if p.stats == nil {
			continue
		}
		n++
		sum += p.stats.Continuity
		if p.stats.Playing {
			playing++
		}
	}
	if n == 0 {
		return len(h.pages), 0, 1
	}
	return len(h.pages), playing, sum / float64(n)
}
