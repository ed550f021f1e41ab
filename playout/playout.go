package playout

import (
	"time"

	"github.com/p2pradio/p2pradio/mux"
)

// Frames is where a Player takes the continuous frame stream from.
// *mux.Reassembler implements it. Buffered and Ready may be called from any
// goroutine; Next is called from the Player's goroutine only.
type Frames interface {
	// Next returns the slot at the playhead and advances the playhead. When
	// that frame has not arrived, Next returns ok == false if conceal is
	// false, and a Concealed slot (a silent frame of the current format) if
	// conceal is true. It returns io.EOF once the stream has ended and every
	// slot was returned. Next never blocks.
	Next(conceal bool) (slot mux.Slot, ok bool, err error)
	// Buffered is the playing time received ahead of the playhead.
	Buffered() time.Duration
	// Ready is signalled (without blocking the sender) whenever new audio
	// arrives or the stream ends.
	Ready() <-chan struct{}
}

// EndedFrames is a Frames that can also tell, without moving its playhead,
// that its stream has ended: no more audio will arrive. It is optional.
// Before playback starts the Player does not call Next (the first Next fixes
// the playhead), so it can only learn that a stream ended before Target was
// buffered through Ended; with a Frames that lacks it, such a stream waits
// for Target until Run's context is done.
type EndedFrames interface {
	Frames
	// Ended reports whether the stream has ended. It may be called from any
	// goroutine and must not block.
	Ended() bool
}

// Sink takes PCM from a Player: 16-bit little-endian interleaved stereo
// (mono streams are duplicated) at the stream's sample rate.
//
// One goroutine, the Player's, calls WritePCM and, when Run returns, Close.
// The one exception: Close may be called from another goroutine while
// WritePCM blocks, and WritePCM must then return promptly (ErrClosed).
// WritePCM may block (a device applying back-pressure by its clock) but must
// not modify pcm, even temporarily (as io.Writer), nor keep it after it
// returns. Close is idempotent.
type Sink interface {
	// WritePCM hands the sink len(pcm)/4 sample frames at sampleRate Hz. A
	// change of sampleRate between calls is allowed; a sink that cannot
	// follow it returns an error wrapping ErrFormat.
	WritePCM(pcm []byte, sampleRate int) error
	// Close flushes and releases the sink.
	Close() error
}

// ClockedSink is a Sink that plays by its own clock, a sound card's. A
// Player paces itself by such a sink's Queued instead of the system clock,
// so that the device's clock, not the network's or the host's, drives
// playback.
type ClockedSink interface {
	Sink
	// Queued is the playing time handed to WritePCM and not yet played. It
	// may be called from any goroutine and must not block.
	Queued() time.Duration
}

// LiveFrames is a Frames that knows where the live edge is, the newest
// audio received, and can jump its playhead forward to it. It is optional:
// with one, a Player that fell behind (starved, or after a rebuffer)
// resumes near the live edge instead of where it stopped (Config.Resync).
// *mux.Reassembler implements it. Behind may be called from any goroutine;
// Skip from the Player's goroutine only.
type LiveFrames interface {
	Frames
	// Behind is how far the playhead is behind the live edge: the playing
	// time received (holes included) after it. It must not block.
	Behind() time.Duration
	// Skip moves the playhead forward, at a chunk boundary, so that it is
	// at most about keep behind the live edge, and over a hole at the
	// playhead; the audio passed is dropped. The frames after the jump
	// that cannot decode exactly are Prime. It reports whether the
	// playhead moved.
	Skip(keep time.Duration) bool
}
