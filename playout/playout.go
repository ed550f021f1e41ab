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

// Sink takes PCM from a Player: 16-bit little-endian interleaved stereo
// (mono streams are duplicated) at the stream's sample rate.
//
// One goroutine, the Player's, calls a Sink's methods. WritePCM may block
// (a device applying back-pressure by its clock) but must return once Close
// is called; it must not keep pcm after it returns.
type Sink interface {
	// WritePCM hands the sink len(pcm)/4 sample frames at sampleRate Hz. A
	// change of sampleRate between calls is allowed.
	WritePCM(pcm []byte, sampleRate int) error
	// Close flushes and releases the sink.
	Close() error
}
