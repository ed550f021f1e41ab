package metrics_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio"
	"github.com/p2pradio/p2pradio/input"
	"github.com/p2pradio/p2pradio/metrics"
	"github.com/p2pradio/p2pradio/output"
)

// scrape reads one metric's value from a /metrics page.
func scrape(t *testing.T, url, name string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(b)
	require.NotNil(t, m, "%s in\n%s", name, b)
	v, err := strconv.ParseFloat(string(m[1]), 64)
	require.NoError(t, err)
	return v
}

func TestNodeHandlerServesMetrics(t *testing.T) {
	src, err := input.OpenFile("../testdata/cbr128.mp3", input.FileConfig{Loop: true, Lead: time.Second})
	require.NoError(t, err)
	stream := output.NewHTTP(output.HTTPConfig{})
	n, err := p2pradio.New(p2pradio.Config{Source: src, Outputs: []output.Output{stream}})
	require.NoError(t, err)
	defer n.Close()
	defer stream.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()

	srv := httptest.NewServer(n.Handler(p2pradio.HTTPConfig{
		Stream:  stream,
		Metrics: metrics.Handler(n, metrics.Config{Stream: stream}),
	}))
	defer srv.Close()
	require.Eventually(t, func() bool { return scrape(t, srv.URL+"/metrics", "p2pradio_chunks_received_total") >= 5 },
		10*time.Second, 20*time.Millisecond)
	require.Equal(t, 0.0, scrape(t, srv.URL+"/metrics", "p2pradio_depth"))
	require.Equal(t, 0.0, scrape(t, srv.URL+"/metrics", "p2pradio_http_listeners"))

	resp, err := http.Get(srv.URL + "/stream.mp3")
	require.NoError(t, err)
	require.Equal(t, 1.0, scrape(t, srv.URL+"/metrics", "p2pradio_http_listeners"))
	resp.Body.Close()
	require.Eventually(t, func() bool { return scrape(t, srv.URL+"/metrics", "p2pradio_http_listeners") == 0 },
		5*time.Second, 10*time.Millisecond)
	require.Equal(t, 1.0, scrape(t, srv.URL+"/metrics", "p2pradio_http_served_total"))
}

// A node's HTTP face with Prometheus metrics, as the example programs
// wire it.
func Example() {
	src, err := input.OpenFile("song.mp3", input.FileConfig{Loop: true})
	if err != nil {
		panic(err)
	}
	stream := output.NewHTTP(output.HTTPConfig{Name: "My station"})
	n, err := p2pradio.New(p2pradio.Config{Source: src, Outputs: []output.Output{stream}})
	if err != nil {
		panic(err)
	}
	defer n.Close()
	go n.Run(context.Background())
	h := n.Handler(p2pradio.HTTPConfig{
		Name:    "My station",
		Stream:  stream,
		Metrics: metrics.Handler(n, metrics.Config{Stream: stream}),
	})
	http.ListenAndServe("127.0.0.1:8000", h) // /, /stream.mp3, /status.json, /metrics
}
