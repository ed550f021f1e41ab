package stats

import (
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
