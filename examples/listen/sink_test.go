package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/playout"
	"github.com/p2pradio/p2pradio/playout/speaker"
)

// TestOpenSinkWithoutDevice: with no sound device (an ALSA configuration
// that has none), the speakers fail at once with speaker.ErrDevice, before
// any audio; with fallback, the audio is discarded after a warning.
func TestOpenSinkWithoutDevice(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "alsa.conf")
	require.NoError(t, os.WriteFile(conf, []byte("pcm.!default {\n\ttype hw\n\tcard 99\n}\n"), 0o600))
	t.Setenv("ALSA_CONFIG_PATH", conf) // before anything in this process opens ALSA

	start := time.Now()
	_, err := openSink("", false, false, os.Stderr)
	require.ErrorIs(t, err, speaker.ErrDevice)
	require.Less(t, time.Since(start), time.Second)

	var warn bytes.Buffer
	sink, err := openSink("", false, true, &warn)
	require.NoError(t, err)
	require.IsType(t, &playout.Discard{}, sink)
	require.Contains(t, warn.String(), "discarding the audio")
}

// TestWatchReportsSinkFailure: a WAV file on a full disk fails at the first
// write, and the failure is reported on the channel.
func TestWatchReportsSinkFailure(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	w, err := openSink("/dev/full", false, true, os.Stderr)
	require.NoError(t, err)
	sink, failed := watch(w, true, os.Stderr)
	require.ErrorIs(t, sink.WritePCM(make([]byte, 4608), 44100), syscall.ENOSPC)
	select {
	case err := <-failed:
		require.ErrorIs(t, err, syscall.ENOSPC, "a disk full is not a device error: no fallback")
	default:
		t.Fatal("the failure was not reported")
	}
	_ = sink.Close()
}

// brokenDevice is a ClockedSink whose device fails after a while.
type brokenDevice struct {
	mu     sync.Mutex
	writes int
}

func (d *brokenDevice) WritePCM(pcm []byte, rate int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.writes++
	if d.writes > 2 {
		return fmt.Errorf("%w: unplugged", speaker.ErrDevice)
	}
	return nil
}
func (d *brokenDevice) Close() error          { return nil }
func (d *brokenDevice) Queued() time.Duration { return 50 * time.Millisecond }

// TestWatchFallsBackToDiscard: with fallback, a device that fails while
// playing is replaced by a discard that keeps the device's pace (Queued
// by the system clock), after a warning; nothing is reported as failed.
func TestWatchFallsBackToDiscard(t *testing.T) {
	var warn bytes.Buffer
	sink, failed := watch(&brokenDevice{}, true, &warn)
	clocked, ok := sink.(playout.ClockedSink)
	require.True(t, ok, "a clocked sink stays clocked")
	second := make([]byte, 44100*4)
	for range 3 {
		require.NoError(t, sink.WritePCM(second[:4608], 44100))
	}
	require.Contains(t, warn.String(), "discarding the audio from now on")
	require.NoError(t, sink.WritePCM(second, 44100))
	require.InDelta(t, float64(time.Second), float64(clocked.Queued()), float64(200*time.Millisecond))
	select {
	case err := <-failed:
		t.Fatalf("reported %v", err)
	default:
	}

	// Without fallback, the device error is reported.
	sink, failed = watch(&brokenDevice{}, false, &warn)
	for range 2 {
		require.NoError(t, sink.WritePCM(second[:4608], 44100))
	}
	require.ErrorIs(t, sink.WritePCM(second[:4608], 44100), speaker.ErrDevice)
	require.ErrorIs(t, <-failed, speaker.ErrDevice)
}
