package p2pradio

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/p2pradio/p2pradio/internal/web"
	"github.com/p2pradio/p2pradio/output"
)

// HTTPConfig configures a Node's HTTP face (see Node.Handler). The zero
// value serves the page and status.json without a stream.
type HTTPConfig struct {
	// Name is the station's name on its page. Empty means "p2pradio".
	Name string
	// Stream serves the station to ordinary players at its mount
	// (output.HTTPConfig.Mount, "/stream.mp3" by default); the node feeds
	// it every chunk from the Handler's creation on (listing it in
	// Config.Outputs as well does no harm). Nil means no stream.
	Stream *output.HTTP
	// Metrics, if set, is served at /metrics (package metrics provides a
	// Prometheus handler over the node's figures).
	Metrics http.Handler
}

// Handler serves a Node over HTTP:
//
//	/             the station page: player, title, live figures and, at a
//	              broadcaster, the overlay tree
//	/status.json  the node's figures (see below)
//	/stream.mp3   the stream, when HTTPConfig.Stream is set (at its mount)
//	/metrics      when HTTPConfig.Metrics is set
//	/peer         the signalling of browser peers, a WebSocket (unless
//	              Config.Browsers.Disabled; see docs/browser-peers.md)
//
// Streams end when the node's Run returns. A Handler is safe for use by
// many goroutines; it starts none of its own beyond one per stream, which
// ends with it.
type Handler struct {
	n   *Node
	cfg HTTPConfig
	mux *http.ServeMux
}

var _ http.Handler = (*Handler)(nil)

// Handler returns the node's HTTP handler.
func (n *Node) Handler(cfg HTTPConfig) *Handler {
	if cfg.Name == "" {
		cfg.Name = "p2pradio"
	}
	h := &Handler{n: n, cfg: cfg, mux: http.NewServeMux()}
	if cfg.Stream != nil {
		n.addOutput(cfg.Stream)
	}
	h.mux.HandleFunc("GET /{$}", web.ServePage)
	h.mux.HandleFunc("GET /status.json", h.serveStatus)
	if cfg.Stream != nil {
		h.mux.HandleFunc(cfg.Stream.Mount(), h.serveStream)
	}
	if cfg.Metrics != nil {
		h.mux.Handle("/metrics", cfg.Metrics)
	}
	if n.hub != nil {
		h.mux.HandleFunc("GET /peer", n.hub.serve)
	}
	return h
}

// ServeHTTP serves the page, status.json, the stream and the metrics.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// serveStream serves the stream until the client leaves or the node stops.
func (h *Handler) serveStream(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithCancel(r.Context())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-h.n.runDone:
			cancel()
		case <-ctx.Done():
		}
	}()
	defer func() {
		cancel()
		<-stopped
	}()
	h.cfg.Stream.ServeHTTP(w, r.WithContext(ctx))
}

func (h *Handler) serveStatus(w http.ResponseWriter, r *http.Request) {
	b, err := json.MarshalIndent(h.Status(), "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Access-Control-Allow-Origin", "*")
	w.Write(append(b, '\n'))
}

// Status is what /status.json answers: one node's view of the station
// (see web.Status). StatusPeer and StatusNode are its parts.
type (
	Status     = web.Status
	StatusPeer = web.StatusPeer
	StatusNode = web.StatusNode
	// StatusPortMap is Status.PortMap.
	StatusPortMap = web.StatusPortMap
)

// Status returns what /status.json answers now.
func (h *Handler) Status() Status {
	n := h.n
	s, o := n.stats()
	st := Status{
		Name:        h.cfg.Name,
		Station:     s.Station,
		Broadcaster: s.Broadcaster,
		ID:          n.ov.ID().String(),
		Addr:        n.LocalAddr(),
		Observed:    s.Observed,
		Waiting:     s.Waiting,
		Reach:       o.Reach.String(),
		Title:       s.Title,
		BitrateKbps: o.BitrateKbps,
		NAT:         web.NAT(o),
		Depth:       s.Depth,
		Slots:       s.Slots,
		Peers:       s.Peers,
		Shed:        s.Shed,
		Overloaded:  s.Overloaded,
		Parents:     web.Peers(o.Parents),
		Children:    web.Peers(o.Children),
	}
	slices.SortFunc(st.Children, func(a, b StatusPeer) int { return cmp.Compare(a.ID, b.ID) })
	if hs := h.cfg.Stream; hs != nil {
		st.Stream = hs.Mount()
		if t := hs.Title(); t != "" {
			st.Title = t // the latest chunk's: ahead of playout's
		}
		if br := hs.Bitrate(); br > 0 {
			st.BitrateKbps = br // frames only, without the chunks' overhead
		}
		hst := hs.Stats()
		st.HTTP = &hst
	}
	n.mu.Lock()
	started := n.started
	n.mu.Unlock()
	if !started.IsZero() {
		st.UptimeS = time.Since(started).Seconds()
	}
	if n.player != nil {
		ps := s.Playout
		st.Playing = &ps.Playing
		if ps.Due() > 0 {
			st.Continuity = &s.Continuity
		}
		if ps.Lag > 0 {
			lag := ps.Lag.Seconds()
			st.LagS = &lag
		}
		buf := ps.Buffered.Seconds()
		st.BufferS = &buf
		if s.Startup > 0 {
			startup := s.Startup.Seconds()
			st.StartupS = &startup
		}
		st.Frames.Played, st.Frames.Concealed, st.Frames.Muted = ps.FramesPlayed, ps.FramesConcealed, ps.FramesMuted
	}
	st.Chunks.Received, st.Chunks.Forwarded, st.Chunks.Dropped = s.ChunksReceived, s.ChunksForwarded, s.ChunksDropped
	st.Chunks.Bad, st.Chunks.Repairs = s.BadChunks, s.Repairs
	st.Bytes.Received, st.Bytes.Sent = s.BytesReceived, s.BytesSent
	st.Browsers = []web.StatusBrowser{}
	if n.hub != nil {
		st.Browsers = n.hub.status(st.ID, st.Children)
		for i, c := range st.Children {
			st.Children[i].Browser = n.hub.has(c.ID)
		}
	}
	if t := n.ov.Tracker(); t != nil {
		st.Swarm = web.Swarm(t.Nodes(), n.ov.ID())
		st.Swarm = append(st.Swarm, web.BrowserNodes(st.Browsers)...)
	}
	if n.pm != nil {
		st.PortMap = web.PortMap(n.pm.State())
	}
	return st
}

// SetTitle sets the stream title a broadcaster sends with its audio,
// overriding its source's; "" goes back to the source's title. Listeners
// see it from the next chunk on: their HTTP players and status pages at
// once, Stats().Title when its audio plays. On a listener it returns
// ErrNotBroadcaster.
//
// It needs the broadcaster's source wrapped in an input.Titled, which New
// does; a source with its own SetTitle(string) method is
// used as is.
func (n *Node) SetTitle(title string) error {
	if !n.Broadcaster() {
		return ErrNotBroadcaster
	}
	ts, ok := n.cfg.Source.(interface{ SetTitle(string) })
	if !ok {
		return errors.New("p2pradio: the source takes no title")
	}
	ts.SetTitle(title)
	return nil
}
