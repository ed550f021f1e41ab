package p2pradio

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/input"
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

// Status is what /status.json answers: one node's view of the station.
// Durations are in seconds; ids are the first 6 bytes of a node's key, in
// hex.
type Status struct {
	Name        string `json:"name"`
	Station     string `json:"station"` // the station address listeners join
	Broadcaster bool   `json:"broadcaster"`
	ID          string `json:"id"`   // this node
	Addr        string `json:"addr"` // where its transport listens
	// Observed is its address as peers or the rendezvous see it (behind a
	// NAT, the router's mapping); Waiting why it has no parent.
	Observed    string  `json:"observed,omitempty"`
	Waiting     string  `json:"waiting,omitempty"`
	Reach       string  `json:"reach"`         // public, unreachable (behind a NAT) or unknown
	NAT         string  `json:"nat,omitempty"` // when unreachable: port-preserving or port-randomising
	Title       string  `json:"title"`
	BitrateKbps int     `json:"bitrate_kbps"`
	UptimeS     float64 `json:"uptime_s"`         // since Run
	Stream      string  `json:"stream,omitempty"` // the stream's path

	Depth    int          `json:"depth"`   // hops from the broadcaster; -1 while joining
	Parents  []StatusPeer `json:"parents"` // the pushing parent first, then the backups
	Children []StatusPeer `json:"children"`
	Slots    int          `json:"slots"`
	Peers    int          `json:"peers"`

	// Playback, when this node plays (null at a broadcaster without Sink;
	// continuity and lag are null until they are known).
	Playing    *bool    `json:"playing"`
	Continuity *float64 `json:"continuity"`
	LagS       *float64 `json:"lag_s"`
	BufferS    *float64 `json:"buffer_s"`
	StartupS   *float64 `json:"startup_s"`
	Frames     struct {
		Played    int64 `json:"played"`
		Concealed int64 `json:"concealed"`
		Muted     int64 `json:"muted"`
	} `json:"frames"`

	Chunks struct {
		Received  int64 `json:"received"`
		Forwarded int64 `json:"forwarded"`
		Dropped   int64 `json:"dropped"`
		Bad       int64 `json:"bad"`
		Repairs   int64 `json:"repairs"`
	} `json:"chunks"`
	Bytes struct {
		Received int64 `json:"received"`
		Sent     int64 `json:"sent"`
	} `json:"bytes"`

	HTTP *output.HTTPStats `json:"http,omitempty"`
	// Swarm is the overlay as the rendezvous sees it: at a broadcaster
	// with the embedded tracker only.
	Swarm []StatusNode `json:"swarm,omitempty"`
}

// StatusPeer is a neighbour in Status.
type StatusPeer struct {
	ID    string `json:"id"`
	Addr  string `json:"addr"`
	Depth int    `json:"depth"`
}

// StatusNode is one node of the swarm in Status.
type StatusNode struct {
	ID         string  `json:"id"`
	Addr       string  `json:"addr"`
	Depth      int     `json:"depth"`
	Parent     string  `json:"parent,omitempty"`
	FreeSlots  int     `json:"free_slots"`
	UploadKbps int     `json:"upload_kbps"`
	SeenS      float64 `json:"seen_s"` // since its last registration
	Reach      string  `json:"reach"`
	Self       bool    `json:"self,omitempty"`
}

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
		NAT:         natString(o),
		Depth:       s.Depth,
		Slots:       s.Slots,
		Peers:       s.Peers,
		Parents:     statusPeers(o.Parents),
		Children:    statusPeers(o.Children),
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
	if t := n.ov.Tracker(); t != nil {
		st.Swarm = swarm(t.Nodes(), n.ov.ID())
	}
	return st
}

// natString is the NAT's behaviour, for a node behind one.
func natString(o control.OverlayStats) string {
	if o.Reach != control.ReachUnreachable {
		return ""
	}
	return o.NAT.String()
}

func statusPeers(ps []control.PeerState) []StatusPeer {
	out := make([]StatusPeer, 0, len(ps))
	for _, p := range ps {
		out = append(out, StatusPeer{ID: p.ID.String(), Addr: p.Addr, Depth: p.Depth})
	}
	return out
}

// swarm describes the tracker's nodes, shallowest first.
func swarm(nodes []control.TrackedNode, self control.NodeID) []StatusNode {
	now := time.Now()
	out := make([]StatusNode, 0, len(nodes))
	for _, t := range nodes {
		sn := StatusNode{
			ID:         t.ID.String(),
			Addr:       t.Addr,
			Depth:      t.Depth,
			FreeSlots:  t.FreeSlots,
			UploadKbps: t.UploadKbps,
			SeenS:      now.Sub(t.Seen).Seconds(),
			Reach:      t.Reach.String(),
			Self:       t.ID == self,
		}
		if !t.Parent.IsZero() {
			sn.Parent = t.Parent.String()
		}
		out = append(out, sn)
	}
	slices.SortFunc(out, func(a, b StatusNode) int {
		return cmp.Or(cmp.Compare(a.Depth, b.Depth), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// SetTitle sets the stream title a broadcaster sends with its audio,
// overriding its source's; "" goes back to the source's title. Listeners
// see it from the next chunk on: their HTTP players and status pages at
// once, Stats().Title when its audio plays. On a listener it returns
// ErrNotBroadcaster.
//
// It needs the broadcaster's source wrapped in a titleSource, which New
// does (see titleSource); a source with its own SetTitle(string) method is
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

// titleSource decorates a broadcaster's Source with a title that SetTitle
// overrides. New wraps Config.Source in one.
type titleSource struct {
	input.Source
	title atomic.Pointer[string]
}

var _ input.Source = (*titleSource)(nil)

// SetTitle overrides the source's title; "" removes the override.
func (s *titleSource) SetTitle(title string) {
	if title == "" {
		s.title.Store(nil)
		return
	}
	s.title.Store(&title)
}

// Title is the override, else the source's title.
func (s *titleSource) Title() string {
	if t := s.title.Load(); t != nil {
		return *t
	}
	return s.Source.Title()
}
