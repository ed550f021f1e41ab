package main

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/p2pradio/p2pradio/playout"
	"github.com/p2pradio/p2pradio/playout/speaker"
)

// deviceHint follows an error of the sound device.
const deviceHint = "no sound card here? use -wav FILE or -discard, or -fallback-discard to discard the audio when there is no device"

// openSink opens where the audio goes: a WAV file, nowhere, or the
// speakers. The speakers are probed at once, so that a machine without a
// sound device is told before joining, not when the audio arrives; with
// fallback, the audio is then discarded after a warning on warn.
func openSink(wav string, discard, fallback bool, warn io.Writer) (playout.Sink, error) {
	switch {
	case wav != "":
		w, err := playout.CreateWAV(wav)
		if err != nil {
			return nil, err
		}
		return w, nil
	case discard:
		return &playout.Discard{}, nil
	}
	if err := speaker.Probe(); err != nil {
		if !fallback {
			return nil, err
		}
		fmt.Fprintf(warn, "listen: %v\nlisten: discarding the audio (-fallback-discard)\n", err)
		return &playout.Discard{}, nil
	}
	return speaker.New(speaker.Config{})
}

// watch returns sink wrapped so that its first failure (a device lost, a
// disk full) is sent on the returned channel: the program stops and says
// so, rather than relaying on in silence. With fallback, a device error
// instead turns the sink into a discard paced by the system clock, after a
// warning on warn. The wrapper is a ClockedSink when sink is one.
func watch(sink playout.Sink, fallback bool, warn io.Writer) (playout.Sink, <-chan error) {
	w := &watched{Sink: sink, failed: make(chan error, 1), fallback: fallback, warn: warn}
	if c, ok := sink.(playout.ClockedSink); ok {
		return &watchedClocked{watched: w, clocked: c}, w.failed
	}
	return w, w.failed
}

type watched struct {
	playout.Sink
	failed   chan error
	fallback bool
	warn     io.Writer

	mu         sync.Mutex
	discarding bool
	until      time.Time // when the discarded audio would have played out
}

var (
	_ playout.Sink        = (*watched)(nil)
	_ playout.ClockedSink = (*watchedClocked)(nil)
)

func (w *watched) WritePCM(pcm []byte, sampleRate int) error {
	if w.discard(pcm, sampleRate) {
		return nil
	}
	err := w.Sink.WritePCM(pcm, sampleRate)
	if err == nil || errors.Is(err, playout.ErrClosed) {
		return err
	}
	if w.fallback && errors.Is(err, speaker.ErrDevice) {
		fmt.Fprintf(w.warn, "listen: %v\nlisten: discarding the audio from now on (-fallback-discard)\n", err)
		w.mu.Lock()
		w.discarding, w.until = true, time.Now()
		w.mu.Unlock()
		w.discard(pcm, sampleRate)
		return nil
	}
	select {
	case w.failed <- err:
	default:
	}
	return err
}

// discard drops pcm if the sink was given up, keeping the time it would
// have played.
func (w *watched) discard(pcm []byte, sampleRate int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.discarding {
		return false
	}
	if now := time.Now(); w.until.Before(now) {
		w.until = now
	}
	if sampleRate > 0 {
		w.until = w.until.Add(time.Duration(len(pcm)/4) * time.Second / time.Duration(sampleRate))
	}
	return true
}

// watchedClocked is a watched ClockedSink.
type watchedClocked struct {
	*watched
	clocked playout.ClockedSink
}

// Queued is the sink's, or, once discarding, the time until the discarded
// audio would have played out.
func (w *watchedClocked) Queued() time.Duration {
	w.mu.Lock()
	discarding, until := w.discarding, w.until
	w.mu.Unlock()
	if discarding {
		return max(time.Until(until), 0)
	}
	return w.clocked.Queued()
}
