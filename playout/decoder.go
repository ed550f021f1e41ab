package playout

import (
	"fmt"
	"io"

	mp3 "github.com/hajimehoshi/go-mp3"

	"github.com/p2pradio/p2pradio/mux"
)

// A Decoder decodes a frame stream with one long-lived go-mp3 decoder, fed
// one frame at a time, so that the bit reservoir and the synthesis filters
// carry over from frame to frame as in a decoder reading a whole file.
//
// Every valid frame yields exactly Samples*4 bytes of 16-bit little-endian
// stereo PCM (mono is duplicated), whatever it contains: a frame that fails
// to decode, or makes go-mp3 panic, yields silence and the next frame starts
// a new go-mp3 decoder. Muted and Concealed slots yield silence too, but are
// still fed to the decoder to keep its state and timeline.
//
// A Decoder is not safe for concurrent use. The zero value is ready to use.
type Decoder struct {
	feed   feeder
	dec    *mp3.Decoder
	format mux.Format // of dec; and of the last frame seen, when dec is nil
	known  bool       // format is set
	silent bool       // check frames but do not decode them (Config.NoDecode)
}

// NewDecoder returns a Decoder. It does no work until the first frame.
func NewDecoder() *Decoder { return &Decoder{} }

// Decode appends the PCM of slot's frame to dst and returns the extended
// slice and the frame's format. For a valid frame it always appends
// exactly Samples*4 bytes; err is non-nil (wrapping ErrDecode) when those
// bytes are silence standing in for a frame that could not be decoded.
//
// When slot.Frame is not a valid frame, Decode appends the silence of one
// frame of the last format it saw (nothing if it saw none), drops its
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
	if d.silent || slot.Concealed && d.dec == nil {
		// Nothing to keep in step: the next real frame starts a decoder.
		return dst, format, nil
	}
	if err := d.decode(f, out); err != nil {
		d.dec = nil
		clear(out)
		return dst, format, err
	}
	if slot.Concealed || slot.Muted {
		clear(out)
	}
	return dst, format, nil
}

// check parses slot's frame and keeps the Decoder's format and decoder in
// step with it, as Decode does; n is the length of the PCM Decode appends.
// On error (wrapping ErrDecode), n is the silence of one frame of the last
// format seen, or 0.
func (d *Decoder) check(slot mux.Slot) (f mux.Frame, n int, err error) {
	f, err = mux.ParseFrame(slot.Frame)
	if err != nil {
		d.dec = nil
		if d.known {
			n = d.format.SamplesPerFrame() * 4
		}
		return nil, n, fmt.Errorf("%w: %w", ErrDecode, err)
	}
	format := f.Format()
	if slot.Discontinuity || format != d.format {
		d.dec = nil
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

// decode feeds f to the decoder (starting one if needed) and reads its PCM
// into out, turning a go-mp3 panic into an error.
func (d *Decoder) decode(f mux.Frame, out []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: decoder panic: %v", ErrDecode, r)
		}
	}()
	// Bytes of an earlier frame that go-mp3 did not consume are dropped,
	// as its header search would skip them when reading a file.
	d.feed.b = f
	if d.dec == nil {
		// NewDecoder decodes the first frame at once.
		dec, err := mp3.NewDecoder(&d.feed)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrDecode, err)
		}
		d.dec = dec
	}
	if _, err := io.ReadFull(d.dec, out); err != nil {
		return fmt.Errorf("%w: %w", ErrDecode, err)
	}
	return nil
}

// feeder holds the bytes of the frame being decoded. It is deliberately not
// an io.Seeker: go-mp3 would scan the whole source on a seekable reader.
type feeder struct{ b []byte }

func (r *feeder) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// appendZeros appends n zero bytes to b.
func appendZeros(b []byte, n int) []byte {
	b = append(b, make([]byte, n)...)
	return b
}
