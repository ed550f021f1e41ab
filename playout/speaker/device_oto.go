//go:build !linux || cgo

package speaker

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/ebitengine/oto/v3"

	"github.com/p2pradio/p2pradio/playout"
)

// shared is the process's one oto context (oto allows no second), opened
// at the sample rate of the first Speaker that plays and shared by all.
// It is the only package-level state of p2pradio.
var shared struct {
	mu    sync.Mutex
	ctx   *oto.Context
	ready chan struct{}
	rate  int
	err   error // NewContext failed; oto cannot retry
}

// newOutput returns a paused player of the shared context, opened at rate
// if it is not open yet, that reads src and keeps bufferBytes of its own.
// It waits for the device to be ready, at most timeout, or until done is
// closed.
func newOutput(done <-chan struct{}, rate int, src io.Reader, bufferBytes int, timeout time.Duration) (output, error) {
	quietALSA()
	shared.mu.Lock()
	if shared.err == nil && shared.ctx == nil {
		ctx, ready, err := oto.NewContext(&oto.NewContextOptions{
			SampleRate:   rate,
			ChannelCount: 2,
			Format:       oto.FormatSignedInt16LE,
		})
		if err != nil {
			shared.err = fmt.Errorf("%w: %w", ErrDevice, err)
		} else {
			shared.ctx, shared.ready, shared.rate = ctx, ready, rate
		}
	}
	ctx, ready, crate, err := shared.ctx, shared.ready, shared.rate, shared.err
	shared.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if rate != crate {
		return nil, fmt.Errorf("%w: the device runs at %d Hz, the PCM is at %d Hz", ErrSampleRate, crate, rate)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-ready:
	case <-done:
		return nil, playout.ErrClosed
	case <-timer.C:
		return nil, fmt.Errorf("%w: not ready after %v", ErrDevice, timeout)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDevice, err)
	}
	p := ctx.NewPlayer(src)
	p.SetBufferSize(bufferBytes)
	return otoOutput{Player: p, ctx: ctx}, nil
}

// otoOutput is an oto player whose errors include its context's.
type otoOutput struct {
	*oto.Player
	ctx *oto.Context
}

func (o otoOutput) Err() error {
	if err := o.ctx.Err(); err != nil {
		return err
	}
	return o.Player.Err()
}

// haveDevice reports whether this build can play sound.
const haveDevice = true
