package output

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fullPeer is a child whose queue is always full.
type fullPeer struct{}

func (fullPeer) SendData([]byte) error { return errors.New("queue full") }

// TestFanoutCallsASlowChildByTheAudioItLost: by default a child is slow
// once it failed to take 2 s of audio in a row, however long the chunks;
// OnSlow is called once.
func TestFanoutCallsASlowChildByTheAudioItLost(t *testing.T) {
	chunks, _ := demoChunks(t, 60, nil) // 100 ms each
	d := chunks[0].Duration()
	for _, tc := range []struct {
		name     string
		maxDrops int
		want     int // chunks lost when OnSlow is called
	}{
		{"default", 0, int((maxDropAudio + d - 1) / d)},
		{"MaxDrops", 5, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls []int
			sent := 0
			f := NewFanout(FanoutConfig{MaxDrops: tc.maxDrops, OnSlow: func(Peer) { calls = append(calls, sent) }})
			f.Add(fullPeer{})
			for _, c := range chunks {
				sent++
				f.WriteChunk(c)
			}
			require.Equal(t, []int{tc.want}, calls)
			require.Equal(t, int64(len(chunks)), f.Stats().Dropped)
		})
	}
	require.InDelta(t, 2*time.Second, time.Duration(int((maxDropAudio+d-1)/d))*d, float64(d))
}
