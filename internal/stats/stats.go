// Package stats holds the small measuring tools behind p2pradio's figures:
// a fixed-size, mergeable histogram of durations with about 3% resolution,
// and quantiles of plain samples.
package stats

import (
	"math"
	"math/bits"
	"slices"
	"sync"
	"time"
)

const subBits = 5 // 32 sub-buckets per power of two: < 3.2% error

// Histogram records durations from 1 ns to about 292 years in log-linear
// buckets. The zero value is ready; it is safe for use by many goroutines.
type Histogram struct {
	mu     sync.Mutex
	counts [64 << subBits]uint32
	groups [64]uint64 // sums of counts by 1<<subBits buckets, for Quantile
	n      uint64
	max    time.Duration
}

func bucket(d time.Duration) int {
	v := uint64(max(d, 0))
	if v < 1<<subBits {
		return int(v)
	}
	e := bits.Len64(v) - 1 // v in [2^e, 2^(e+1))
	sub := (v >> (e - subBits)) & (1<<subBits - 1)
	return (e-subBits+1)<<subBits | int(sub)
}

// lower bound of bucket i
func bucketValue(i int) time.Duration {
	if i < 1<<subBits {
		return time.Duration(i)
	}
	e := i>>subBits + subBits - 1
	sub := uint64(i & (1<<subBits - 1))
	v := (uint64(1)<<subBits | sub) << (e - subBits)
	// middle of the bucket
	return time.Duration(v + (uint64(1)<<(e-subBits))/2)
}

// Record adds one duration; negative ones count as zero.
func (h *Histogram) Record(d time.Duration) {
	d = max(d, 0)
	i := bucket(d)
	h.mu.Lock()
	h.counts[i]++
	h.groups[i>>subBits]++
	h.n++
	h.max = max(h.max, d)
	h.mu.Unlock()
}

// Count is the number of durations recorded.
func (h *Histogram) Count() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

// Quantile returns the q-quantile (0 <= q <= 1) of the recorded durations,
// or 0 if none were recorded. Quantile(1) is the exact maximum.
func (h *Histogram) Quantile(q float64) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == 0 {
		return 0
	}
	if q >= 1 {
		return h.max
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	// Find the group, then the bucket in it: a listener's figures take
	// two quantiles, and scanning all 2048 buckets cost more than the
	// rest of them.
	var seen uint64
	for g, c := range h.groups {
		if seen+c < rank {
			seen += c
			continue
		}
		for i := g << subBits; i < (g+1)<<subBits; i++ {
			seen += uint64(h.counts[i])
			if seen >= rank {
				return min(bucketValue(i), h.max)
			}
		}
	}
	return h.max
}

// Merge adds every duration recorded in o to h.
func (h *Histogram) Merge(o *Histogram) {
	o.mu.Lock()
	counts, groups, n, mx := o.counts, o.groups, o.n, o.max
	o.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, c := range counts {
		h.counts[i] += c
	}
	for g, c := range groups {
		h.groups[g] += c
	}
	h.n += n
	h.max = max(h.max, mx)
}

// Quantile returns the q-quantile of xs by the nearest-rank method (0 for
// an empty slice). It sorts a copy.
func Quantile[T int | int64 | float64 | time.Duration](xs []T, q float64) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(q * float64(len(s))))
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

// Mean is the arithmetic mean of xs (0 for an empty slice).
func Mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}
