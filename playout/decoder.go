package playout

import (
	"fmt"

	"github.com/p2pradio/p2pradio/mux"
)

// A Decoder decodes a frame stream with one long-lived MP3 decoder (its
// Engine: libmpg123 by default, go-mp3 in builds without cgo), fed one
// frame at a time, so that the bit reservoir and the synthesis filters
// carry over from frame to frame as in a decoder reading a whole file.
//
// Every valid frame yields exactly Samples*4 bytes of 16-bit little-endian
// stereo PCM (mono is duplicated), whatever it contains: a frame that fails
// to decode (or makes go-mp3 panic) yields silence and the next frame is
// decoded as the first of a new stream. Muted and Concealed slots yield
// silence too, but are still fed to the decoder to keep its state and
// timeline.
//
// A Decoder is not safe for concurrent use. The zero value is ready to use
// (with DefaultEngine). Close frees the engine's memory (libmpg123's is C
// memory); a Decoder used after Close starts a new engine.
type Decoder struct {
	// Engine is the decoder to run; it must be set before the first
	// Decode. Zero means DefaultEngine.
	Engine Engine

	eng    engine
	fresh  bool       // eng has been fed nothing since it started or was reset
	format mux.Format // of the last frame seen
	known  bool       // format is set
	silent bool       // check frames but do not decode them (Config.NoDecode)
}

// NewDecoder returns a Decoder running the DefaultEngine. It does no work
// until the first frame.
func NewDecoder() *Decoder { return &Decoder{} }

// Decode appends the PCM of slot's frame to dst and returns the extended
// slice and the frame's format. For a valid frame it always appends
// exactly Samples*4 bytes; err is non-nil (wrapping ErrDecode) when those
// bytes are silence standing in for a frame that could not be decoded.
//
// When slot.Frame is not a valid frame, Decode appends the silence of one
// frame of the last format it saw (nothing if it saw none), resets its
// decoder and returns an error wrapping ErrDecode and the mux error.
func (d *Decoder) Decode(dst []byte, slot mux.Slot) ([]byte, mux.Format, error) {
	f, n, err := d.check(slot)
	if err != nil {
		return appendZeros(dst, n), d.format, err
	}
	format := d.format
	off := len(dst)
	dst = appendZeros(dst, n)
	out := dst[off:]
	if d.silent || slot.Concealed && (d.eng == nil || d.fresh) {
		// Nothing to keep in step: the next real frame starts the stream.
		return dst, format, nil
	}
	if d.eng == nil {
		eng, err := newEngine(d.Engine)
		if err != nil {
			return dst, format, err
		}
		d.eng, d.fresh = eng, true
	}
	d.fresh = false
	if err := d.eng.decode(f, out); err != nil {
		d.reset()
		clear(out)
		return dst, format, err
	}
	if slot.Concealed || slot.Muted {
		clear(out)
	}
	return dst, format, nil
}

// Close frees the decoder's engine. It is idempotent; a later Decode
// starts a new engine.
func (d *Decoder) Close() error {
	if d.eng != nil {
		d.eng.close()
		d.eng = nil
	}
	return nil
}

// reset makes the next frame the first of a new stream for the engine.
func (d *Decoder) reset() {
	if d.eng != nil && !d.fresh {
		d.eng.reset()
		d.fresh = true
	}
}

// check parses slot's frame and keeps the Decoder's format and decoder in
// step with it, as Decode does; n is the length of the PCM Decode appends.
// On error (wrapping ErrDecode), n is the silence of one frame of the last
// format seen, or 0.
func (d *Decoder) check(slot mux.Slot) (f mux.Frame, n int, err error) {
	f, err = mux.ParseFrame(slot.Frame)
	if err != nil {
		d.reset()
		if d.known {
			n = d.format.SamplesPerFrame() * 4
		}
		return nil, n, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	format := f.Format()
	if slot.Discontinuity || format != d.format {
		d.reset()
	}
	d.format, d.known = format, true
	return f, format.SamplesPerFrame() * 4, nil
}

// silence is Decode for a Decoder that does not decode (Config.NoDecode):
// it returns the length of the silence Decode would append, without
// writing it.
func (d *Decoder) silence(slot mux.Slot) (n int, format mux.Format, err error) {
	_, n, err = d.check(slot)
	return n, d.format, err
}

// appendZeros appends n zero bytes to b.
func appendZeros(b []byte, n int) []byte {
	b = append(b, make([]byte, n)...)
	return b
}
