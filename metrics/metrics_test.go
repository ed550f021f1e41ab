package metrics

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio"
	"github.com/p2pradio/p2pradio/output"
	"github.com/p2pradio/p2pradio/playout"
)

type fakeNode struct{ s p2pradio.Stats }

func (f *fakeNode) Stats() p2pradio.Stats { return f.s }

type fakeStream struct{ s output.HTTPStats }

func (f *fakeStream) Stats() output.HTTPStats { return f.s }

func listenerStats() p2pradio.Stats {
	return p2pradio.Stats{
		Depth:           2,
		Parents:         []string{"127.0.0.1:1", "127.0.0.1:2"},
		Children:        1,
		Slots:           3,
		Peers:           4,
		ChunksReceived:  1200,
		ChunksForwarded: 1100,
		ChunksDropped:   7,
		BytesReceived:   2_000_000,
		BytesSent:       1_800_000,
		Repairs:         5,
		Continuity:      0.998,
		Playout: playout.Stats{
			FramesPlayed:    4990,
			FramesConcealed: 8,
			FramesMuted:     2,
			Buffered:        1500 * time.Millisecond,
			Playing:         true,
			Lag:             2250 * time.Millisecond,
		},
	}
}

func TestCollectorExportsStats(t *testing.T) {
	n := &fakeNode{s: listenerStats()}
	hs := &fakeStream{s: output.HTTPStats{Listeners: 3, Served: 10, Dropped: 4, Slow: 1}}
	c := NewCollector(n, Config{Stream: hs, ConstLabels: prometheus.Labels{"node": "a"}})

	want := `
# HELP p2pradio_chunks_received_total Chunks accepted: verified and new.
# TYPE p2pradio_chunks_received_total counter
p2pradio_chunks_received_total{node="a"} 1200
# HELP p2pradio_chunks_dropped_total Chunks not sent to a child whose queue was full.
# TYPE p2pradio_chunks_dropped_total counter
p2pradio_chunks_dropped_total{node="a"} 7
# HELP p2pradio_continuity_ratio Frames played from received audio / frames due since playback began.
# TYPE p2pradio_continuity_ratio gauge
p2pradio_continuity_ratio{node="a"} 0.998
# HELP p2pradio_depth Hops from the broadcaster (0 for it, -1 while joining).
# TYPE p2pradio_depth gauge
p2pradio_depth{node="a"} 2
# HELP p2pradio_buffer_seconds Audio received and not yet played.
# TYPE p2pradio_buffer_seconds gauge
p2pradio_buffer_seconds{node="a"} 1.5
# HELP p2pradio_lag_seconds Time a frame is played minus the time the broadcaster's input produced it, for the last frame played.
# TYPE p2pradio_lag_seconds gauge
p2pradio_lag_seconds{node="a"} 2.25
# HELP p2pradio_frames_concealed_total Frames missing at their deadline, played as silence.
# TYPE p2pradio_frames_concealed_total counter
p2pradio_frames_concealed_total{node="a"} 8
# HELP p2pradio_parents Parents: the pushing one and the backup.
# TYPE p2pradio_parents gauge
p2pradio_parents{node="a"} 2
# HELP p2pradio_playing 1 while playing, 0 while joining or buffering.
# TYPE p2pradio_playing gauge
p2pradio_playing{node="a"} 1
# HELP p2pradio_http_listeners HTTP stream listeners now.
# TYPE p2pradio_http_listeners gauge
p2pradio_http_listeners{node="a"} 3
# HELP p2pradio_http_slow_total HTTP listeners disconnected for not keeping up.
# TYPE p2pradio_http_slow_total counter
p2pradio_http_slow_total{node="a"} 1
`
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want),
		"p2pradio_chunks_received_total", "p2pradio_chunks_dropped_total", "p2pradio_continuity_ratio",
		"p2pradio_depth", "p2pradio_buffer_seconds", "p2pradio_lag_seconds", "p2pradio_frames_concealed_total",
		"p2pradio_parents", "p2pradio_playing", "p2pradio_http_listeners", "p2pradio_http_slow_total"))

	// The values follow the node from one scrape to the next.
	n.s.ChunksReceived = 1300
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(`
# HELP p2pradio_chunks_received_total Chunks accepted: verified and new.
# TYPE p2pradio_chunks_received_total counter
p2pradio_chunks_received_total{node="a"} 1300
`), "p2pradio_chunks_received_total"))

	problems, err := testutil.CollectAndLint(c)
	require.NoError(t, err)
	require.Empty(t, problems, "metric names and help follow Prometheus conventions")
}

func TestCollectorWithoutStream(t *testing.T) {
	c := NewCollector(&fakeNode{s: listenerStats()}, Config{Namespace: "radio"})
	require.Equal(t, len(c.descs), testutil.CollectAndCount(c))
	require.Zero(t, testutil.CollectAndCount(c, "radio_http_listeners"), "no stream, no HTTP metrics")
	require.Equal(t, 1, testutil.CollectAndCount(c, "radio_depth"))
}

func TestHandlerScrapes(t *testing.T) {
	srv := httptest.NewServer(Handler(&fakeNode{s: listenerStats()}, Config{Stream: &fakeStream{}}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	text := string(b)
	for _, want := range []string{
		"p2pradio_depth 2\n",
		"p2pradio_children 1\n",
		"p2pradio_child_slots 3\n",
		"p2pradio_frames_played_total 4990\n",
		"p2pradio_http_listeners 0\n",
		"go_goroutines ",
	} {
		require.Contains(t, text, want)
	}
	// A second handler has its own registry: no duplicate registration.
	require.NotPanics(t, func() { Handler(&fakeNode{}, Config{}) })
}

func TestCollectorExportsWhatBrowserPagesReport(t *testing.T) {
	s := listenerStats()
	s.BrowserPages, s.BrowsersPlaying, s.BrowserContinuity = 3, 2, 0.95
	c := NewCollector(&fakeNode{s: s}, Config{})
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(`
# HELP p2pradio_browser_pages Station pages signalling at this node.
# TYPE p2pradio_browser_pages gauge
p2pradio_browser_pages 3
# HELP p2pradio_browser_pages_playing Station pages signalling at this node that report they play.
# TYPE p2pradio_browser_pages_playing gauge
p2pradio_browser_pages_playing 2
# HELP p2pradio_browser_continuity_ratio Mean continuity the station pages signalling at this node report (1 with none).
# TYPE p2pradio_browser_continuity_ratio gauge
p2pradio_browser_continuity_ratio 0.95
`), "p2pradio_browser_pages", "p2pradio_browser_pages_playing", "p2pradio_browser_continuity_ratio"))
}

func TestCollectorExportsOverload(t *testing.T) {
	s := listenerStats()
	n := &fakeNode{s: s}
	c := NewCollector(n, Config{})
	want := func(shed int, overloaded int) string {
		return fmt.Sprintf(`
# HELP p2pradio_shed_children_total Children closed because this node could not keep up with them (its uplink carries less than it claims).
# TYPE p2pradio_shed_children_total counter
p2pradio_shed_children_total %d
# HELP p2pradio_overloaded 1 while this node offers fewer child slots than its budget allows because it could not keep up lately.
# TYPE p2pradio_overloaded gauge
p2pradio_overloaded %d
`, shed, overloaded)
	}
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want(0, 0)), "p2pradio_shed_children_total", "p2pradio_overloaded"))
	n.s.Shed, n.s.Overloaded = 3, true
	require.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want(3, 1)), "p2pradio_shed_children_total", "p2pradio_overloaded"))
}
