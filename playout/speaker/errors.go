package speaker

import (
	"errors"
	"fmt"

	"github.com/p2pradio/p2pradio/playout"
)

var (
	// ErrDevice is wrapped by errors from the audio device: it could not
	// be opened, failed while playing, or is not available in this build.
	ErrDevice = errors.New("speaker: audio device error")
	// ErrSampleRate means the PCM's sample rate differs from the rate the
	// process's audio context runs at. It wraps playout.ErrFormat.
	ErrSampleRate = fmt.Errorf("speaker: sample rate differs from the audio device's: %w", playout.ErrFormat)
	// ErrStalled means the device took no PCM for Config.Stall while
	// WritePCM waited for room.
	ErrStalled = errors.New("speaker: audio device stalled")
)
