// Package metrics exports a p2pradio Node's figures (Node.Stats and, when
// it serves one, its HTTP stream's) to Prometheus. It is the only package
// of the module that depends on the Prometheus client: the root package
// does not.
//
//	stream := output.NewHTTP(output.HTTPConfig{})
//	n, _ := p2pradio.New(p2pradio.Config{..., Outputs: []output.Output{stream}})
//	h := n.Handler(p2pradio.HTTPConfig{
//		Stream:  stream,
//		Metrics: metrics.Handler(n, metrics.Config{Stream: stream}),
//	})
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/p2pradio/p2pradio"
	"github.com/p2pradio/p2pradio/output"
)

// Node is what the Collector reads; *p2pradio.Node satisfies it. Stats is
// called once per scrape, from the scraping goroutine.
type Node interface {
	Stats() p2pradio.Stats
}

// Stream is an HTTP stream's figures; *output.HTTP satisfies it.
type Stream interface {
	Stats() output.HTTPStats
}

// Config configures a Collector. The zero value is usable.
type Config struct {
	// Namespace prefixes every metric name. Empty means "p2pradio".
	Namespace string
	// Stream, if set, adds the HTTP stream's listener figures.
	Stream Stream
	// ConstLabels are added to every metric (for example to tell nodes
	// apart when one process runs several).
	ConstLabels prometheus.Labels
}

// Collector is a prometheus.Collector over one Node's figures: each scrape
// reads Node.Stats once. Counters are the Node's own totals since it was
// created; gauges are its state at the scrape.
type Collector struct {
	node   Node
	stream Stream
	descs  []*desc
}

var _ prometheus.Collector = (*Collector)(nil)

type desc struct {
	d     *prometheus.Desc
	typ   prometheus.ValueType
	value func(s *p2pradio.Stats, h *output.HTTPStats) float64
	http  bool // needs the stream
}

// NewCollector returns a Collector over node.
func NewCollector(node Node, cfg Config) *Collector {
	ns := cfg.Namespace
	if ns == "" {
		ns = "p2pradio"
	}
	c := &Collector{node: node, stream: cfg.Stream}
	add := func(name, help string, typ prometheus.ValueType, v func(s *p2pradio.Stats, h *output.HTTPStats) float64) {
		c.descs = append(c.descs, &desc{
			d:     prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, nil, cfg.ConstLabels),
			typ:   typ,
			value: v,
		})
	}
	counter, gauge := prometheus.CounterValue, prometheus.GaugeValue
	i64 := func(f func(s *p2pradio.Stats) int64) func(*p2pradio.Stats, *output.HTTPStats) float64 {
		return func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return float64(f(s)) }
	}
	add("chunks_received_total", "Chunks accepted: verified and new.", counter, i64(func(s *p2pradio.Stats) int64 { return s.ChunksReceived }))
	add("chunks_forwarded_total", "Chunks sent to children.", counter, i64(func(s *p2pradio.Stats) int64 { return s.ChunksForwarded }))
	add("chunks_dropped_total", "Chunks not sent to a child whose queue was full.", counter, i64(func(s *p2pradio.Stats) int64 { return s.ChunksDropped }))
	add("chunks_bad_total", "Malformed or forged chunks; their senders were cut off.", counter, i64(func(s *p2pradio.Stats) int64 { return s.BadChunks }))
	add("repairs_total", "Chunks requested from neighbours to fill gaps.", counter, i64(func(s *p2pradio.Stats) int64 { return s.Repairs }))
	add("received_bytes_total", "Chunk bytes accepted.", counter, i64(func(s *p2pradio.Stats) int64 { return s.BytesReceived }))
	add("sent_bytes_total", "Chunk bytes sent to other nodes.", counter, i64(func(s *p2pradio.Stats) int64 { return s.BytesSent }))
	add("frames_played_total", "Frames played from received audio.", counter, i64(func(s *p2pradio.Stats) int64 { return s.Playout.FramesPlayed }))
	add("frames_concealed_total", "Frames missing at their deadline, played as silence.", counter, i64(func(s *p2pradio.Stats) int64 { return s.Playout.FramesConcealed }))
	add("frames_muted_total", "Frames received but played as silence (bit reservoir missing or decode error).", counter, i64(func(s *p2pradio.Stats) int64 { return s.Playout.FramesMuted }))
	add("underruns_total", "Frames handed to the sink after they were due.", counter, i64(func(s *p2pradio.Stats) int64 { return s.Playout.Underruns }))
	add("rebuffers_total", "Times playback stopped to buffer again.", counter, i64(func(s *p2pradio.Stats) int64 { return s.Playout.Rebuffers }))
	add("shed_children_total", "Children closed because this node could not keep up with them (its uplink carries less than it claims).", counter, i64(func(s *p2pradio.Stats) int64 { return s.Shed }))
	add("recoveries_total", "Parent changes followed by audio.", counter, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return float64(s.Recoveries) })

	add("continuity_ratio", "Frames played from received audio / frames due since playback began.", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return s.Continuity })
	add("depth", "Hops from the broadcaster (0 for it, -1 while joining).", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return float64(s.Depth) })
	add("parents", "Parents: the pushing one and the backup.", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return float64(len(s.Parents)) })
	add("children", "Children this node relays to.", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return float64(s.Children) })
	add("child_slots", "Children the upload budget allows.", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return float64(s.Slots) })
	add("overloaded", "1 while this node offers fewer child slots than its budget allows because it could not keep up lately.", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return b2f(s.Overloaded) })
	add("peers", "Links to other nodes.", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return float64(s.Peers) })
	add("playing", "1 while playing, 0 while joining or buffering.", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return b2f(s.Playout.Playing) })
	add("buffer_seconds", "Audio received and not yet played.", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return s.Playout.Buffered.Seconds() })
	add("lag_seconds", "Time a frame is played minus the time the broadcaster's input produced it, for the last frame played.", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return s.Playout.Lag.Seconds() })
	add("lag_p95_seconds", "95th percentile of the lag, sampled every second while playing.", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return s.LagP95.Seconds() })
	add("startup_seconds", "From Run to the first audio played (0 before).", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return s.Startup.Seconds() })
	add("hop_p99_seconds", "99th percentile of the delay from a chunk's arrival to its send to the children.", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return s.HopP99.Seconds() })
	add("browser_pages", "Station pages signalling at this node.", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return float64(s.BrowserPages) })
	add("browser_pages_playing", "Station pages signalling at this node that report they play.", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return float64(s.BrowsersPlaying) })
	add("browser_continuity_ratio", "Mean continuity the station pages signalling at this node report (1 with none).", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return s.BrowserContinuity })
	add("position_seconds", "Audio played so far.", gauge, func(s *p2pradio.Stats, _ *output.HTTPStats) float64 { return s.Playout.Position.Seconds() })

	if c.stream != nil {
		n := len(c.descs)
		add("http_listeners", "HTTP stream listeners now.", gauge, func(_ *p2pradio.Stats, h *output.HTTPStats) float64 { return float64(h.Listeners) })
		add("http_served_total", "HTTP streams started.", counter, func(_ *p2pradio.Stats, h *output.HTTPStats) float64 { return float64(h.Served) })
		add("http_sent_bytes_total", "Bytes sent to HTTP listeners.", counter, func(_ *p2pradio.Stats, h *output.HTTPStats) float64 { return float64(h.Bytes) })
		add("http_dropped_chunks_total", "Chunks an HTTP listener lost because its queue was full.", counter, func(_ *p2pradio.Stats, h *output.HTTPStats) float64 { return float64(h.Dropped) })
		add("http_slow_total", "HTTP listeners disconnected for not keeping up.", counter, func(_ *p2pradio.Stats, h *output.HTTPStats) float64 { return float64(h.Slow) })
		add("http_refused_total", "HTTP requests refused at the listener limit.", counter, func(_ *p2pradio.Stats, h *output.HTTPStats) float64 { return float64(h.Refused) })
		for _, d := range c.descs[n:] {
			d.http = true
		}
	}
	return c
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d.d
	}
}

// Collect reads the node's figures once and sends every metric.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.node.Stats()
	var h output.HTTPStats
	if c.stream != nil {
		h = c.stream.Stats()
	}
	for _, d := range c.descs {
		ch <- prometheus.MustNewConstMetric(d.d, d.typ, d.value(&s, &h))
	}
}

// Handler returns an http.Handler serving node's metrics, with the Go
// runtime's and the process's, in the Prometheus text format. Each call
// makes its own registry: several nodes in one process do not collide.
func Handler(node Node, cfg Config) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(node, cfg))
	reg.MustRegister(collectors.NewGoCollector())
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
