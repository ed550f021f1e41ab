package playout

import (
	"fmt"
	"io"

	mp3 "github.com/hajimehoshi/go-mp3"

	"github.com/p2pradio/p2pradio/mux"
)

// Engine names the MP3 decoder a Decoder runs.
type Engine uint8

const (
	// DefaultEngine is Mpg123 in builds with cgo and GoMP3 without (or
	// with the build tag nompg123).
	DefaultEngine Engine = iota
	// Mpg123 is libmpg123, linked with cgo (to build: Debian's
	// libmpg123-dev and pkg-config): the decoder of the mpg123 program,
	// bit for bit, for MPEG-1, 2 and 2.5 Layer III in every channel mode,
	// within 1 LSB of ffmpeg's, and about 20 times faster than GoMP3.
	Mpg123
	// GoMP3 is github.com/hajimehoshi/go-mp3, pure Go: it plays MPEG-1 and
	// MPEG-2 but not MPEG-2.5 (those frames come out silent, with
	// ErrDecode), and is off by up to a few percent of full scale on
	// MPEG-2 joint stereo.
	GoMP3
)

func (e Engine) String() string {
	switch e {
	case DefaultEngine:
		return "default"
	case Mpg123:
		return "mpg123"
	case GoMP3:
		return "go-mp3"
	}
	return fmt.Sprintf("Engine(%d)", uint8(e))
}

// Available reports whether this build can run e: Mpg123 needs cgo and
// no nompg123 build tag.
func (e Engine) Available() bool {
	switch e {
	case DefaultEngine, GoMP3:
		return true
	case Mpg123:
		return haveMpg123
	}
	return false
}

// Resolve is the engine that e stands for in this build: DefaultEngine is
// Mpg123 where it is Available and GoMP3 otherwise; others are themselves.
func (e Engine) Resolve() Engine {
	if e != DefaultEngine {
		return e
	}
	if haveMpg123 {
		return Mpg123
	}
	return GoMP3
}

// engine is one MP3 decoder behind a Decoder, fed one whole frame per
// decode, with its bit reservoir and synthesis history carried over from
// frame to frame until reset.
type engine interface {
	// decode feeds f and writes its PCM (16-bit little-endian stereo) to
	// out, which is exactly f.Samples()*4 zero bytes. On error, out may
	// hold anything; the Decoder clears it and resets the engine.
	decode(f mux.Frame, out []byte) error
	// reset forgets the stream: the next frame is decoded as the first.
	reset()
	// close frees what the engine holds; it is not used afterwards.
	close()
}

// newEngine starts the decoder e stands for.
func newEngine(e Engine) (engine, error) {
	switch e.Resolve() {
	case Mpg123:
		return newMpg123()
	case GoMP3:
		return &goMP3Engine{}, nil
	}
	return nil, fmt.Errorf("%w: unknown decoder %v", ErrBadConfig, e)
}

// goMP3Engine decodes with one long-lived go-mp3 decoder, fed one frame at
// a time. A go-mp3 decoder starts on its first frame and has no reset, so
// a reset drops it and the next frame starts a new one.
type goMP3Engine struct {
	feed feeder
	dec  *mp3.Decoder
}

// decode turns a go-mp3 panic (it has some on hostile input) into an
// error.
func (g *goMP3Engine) decode(f mux.Frame, out []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: decoder panic: %v", ErrDecode, r)
		}
	}()
	// Bytes of an earlier frame that go-mp3 did not consume are dropped,
	// as its header search would skip them when reading a file.
	g.feed.b = f
	if g.dec == nil {
		// NewDecoder decodes the first frame at once.
		dec, err := mp3.NewDecoder(&g.feed)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrDecode, err)
		}
		g.dec = dec
	}
	if _, err := io.ReadFull(g.dec, out); err != nil {
		return fmt.Errorf("%w: %w", ErrDecode, err)
	}
	return nil
}

func (g *goMP3Engine) reset() { g.dec = nil }
func (g *goMP3Engine) close() { g.dec = nil }

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
