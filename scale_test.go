package p2pradio

import (
	"encoding/json"
	"math"
	"os"
	"runtime"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/internal/stats"
)

// TestScale runs a station with P2PRADIO_SCALE listeners on the in-memory
// network in fake time (testing/synctest): the overlay at a size one
// machine cannot run in real time. It prints the swarm figures as JSON.
//
//	P2PRADIO_SCALE=10000 go test -run TestScale -timeout 60m -v .
func TestScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("P2PRADIO_SCALE"))
	if n <= 0 {
		t.Skip("set P2PRADIO_SCALE=N to run N listeners")
	}
	dur, _ := time.ParseDuration(os.Getenv("P2PRADIO_SCALE_DURATION"))
	if dur <= 0 {
		dur = 60 * time.Second
	}
	wall := time.Now()
	synctest.Test(t, func(t *testing.T) {
		s := newMemSwarm(t, control.MemConfig{Link: control.LinkConfig{Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond}, MaxConns: 1 << 16}, 512)
		time.Sleep(2 * time.Second)
		start := time.Now()
		for i := range n {
			s.add(400)
			if i%25 == 24 {
				time.Sleep(50 * time.Millisecond) // 500 joiners a second
			}
		}
		joined := time.Since(start)
		time.Sleep(dur)
		var conts []float64
		var startups, lags []time.Duration
		var recv int64
		maxDepth, playing := 0, 0
		for _, m := range s.nodes {
			st := m.n.Stats()
			recv += st.BytesReceived
			maxDepth = max(maxDepth, st.Depth)
			if st.Playout.Due() > 0 {
				conts = append(conts, st.Continuity)
				startups = append(startups, st.Startup)
				lags = append(lags, st.LagP95)
			}
			if st.Playout.Playing {
				playing++
			}
		}
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		bs := s.b.Stats()
		sum := map[string]any{
			"listeners":           n,
			"playing":             playing,
			"simulated_s":         math.Round((joined + dur).Seconds()),
			"continuity":          map[string]float64{"min": stats.Quantile(conts, 0), "p50": stats.Quantile(conts, 0.5), "mean": stats.Mean(conts)},
			"startup_ms_p95":      stats.Quantile(startups, 0.95).Milliseconds(),
			"lag_ms_p95":          stats.Quantile(lags, 0.95).Milliseconds(),
			"max_depth":           maxDepth,
			"depth_limit":         int(math.Ceil(math.Log2(float64(n)))) + 3,
			"source_upload_ratio": float64(bs.BytesSent) / float64(max(recv, 1)),
			"heap_kb_per_node":    ms.HeapInuse / 1024 / uint64(n+1),
			"goroutines":          runtime.NumGoroutine(),
		}
		b, _ := json.Marshal(sum)
		t.Log(string(b))
		require.Equal(t, n, playing)
	})
	t.Logf("wall time %v on %d CPUs", time.Since(wall).Round(time.Second), runtime.NumCPU())
}
