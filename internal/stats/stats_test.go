package stats

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestHistogramQuantiles(t *testing.T) {
	var h Histogram
	r := rand.New(rand.NewPCG(1, 2))
	var xs []time.Duration
	for range 10000 {
		d := time.Duration(r.ExpFloat64() * float64(time.Millisecond))
		xs = append(xs, d)
		h.Record(d)
	}
	for _, q := range []float64{0.01, 0.5, 0.9, 0.99} {
		want := Quantile(xs, q)
		got := h.Quantile(q)
		require.InEpsilon(t, float64(want), float64(got), 0.04, "q=%v", q)
	}
	require.Equal(t, Quantile(xs, 1), h.Quantile(1))
	var m Histogram
	m.Merge(&h)
	m.Merge(&h)
	require.Equal(t, uint64(20000), m.Count())
	require.Equal(t, h.Quantile(0.5), m.Quantile(0.5))
}

// TestHistogramQuantileScan: Quantile, which skips whole groups of
// buckets, gives what a scan of every bucket gives.
func TestHistogramQuantileScan(t *testing.T) {
	var h, m Histogram
	r := rand.New(rand.NewPCG(3, 4))
	for i := range 5000 {
		d := time.Duration(r.Int64N(int64(10 * time.Second)))
		if i%3 == 0 {
			d = time.Duration(r.Int64N(100)) // the exact small buckets
		}
		h.Record(d)
	}
	m.Merge(&h)
	scan := func(h *Histogram, q float64) time.Duration {
		rank := max(uint64(math.Ceil(q*float64(h.n))), 1)
		var seen uint64
		for i, c := range h.counts {
			if seen += uint64(c); seen >= rank {
				return min(bucketValue(i), h.max)
			}
		}
		return h.max
	}
	for q := 0.0; q < 1; q += 0.001 {
		require.Equal(t, scan(&h, q), h.Quantile(q), "q=%v", q)
		require.Equal(t, scan(&h, q), m.Quantile(q), "merged, q=%v", q)
	}
}

func TestHistogramSmallAndEmpty(t *testing.T) {
	var h Histogram
	require.Zero(t, h.Quantile(0.5))
	h.Record(-5)
	h.Record(3)
	require.Equal(t, time.Duration(3), h.Quantile(1))
	require.Equal(t, time.Duration(0), h.Quantile(0.5))
}

func TestQuantileSlice(t *testing.T) {
	require.Equal(t, 3, Quantile([]int{5, 1, 3, 2, 4}, 0.5))
	require.Equal(t, 5, Quantile([]int{5, 1, 3, 2, 4}, 1))
	require.Equal(t, 1, Quantile([]int{5, 1, 3, 2, 4}, 0))
	require.Equal(t, 2.0, Mean([]float64{1, 3}))
}
