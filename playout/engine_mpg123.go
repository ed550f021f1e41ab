//go:build cgo && !nompg123

package playout

/*
#cgo pkg-config: libmpg123
#include <stdlib.h>
#include <mpg123.h>

// From API 46 (mpg123 1.27.0) on, handles need no mpg123_init: the
// package keeps no global state.
#if MPG123_API_VERSION < 46
#error "libmpg123 1.27.0 or later is needed"
#endif

// p2p_mpg123_open returns a handle opened for feeding whole frames, with
// output forced to 16-bit stereo at the stream's own rate (mono is
// duplicated, nothing is resampled), without gapless trimming (as
// mpg123 --no-gapless), or NULL with *err set.
static mpg123_handle *p2p_mpg123_open(int *err) {
	mpg123_handle *mh = mpg123_new(NULL, err);
	if (mh == NULL) return NULL;
	// NO_READAHEAD: every frame comes whole, so decode it at once instead
	// of waiting for the next header to confirm it.
	long flags = MPG123_QUIET | MPG123_FORCE_STEREO | MPG123_NO_READAHEAD;
	if ((*err = mpg123_param(mh, MPG123_FLAGS, flags, 0)) != MPG123_OK ||
	    (*err = mpg123_format_none(mh)) != MPG123_OK) {
		mpg123_delete(mh);
		return NULL;
	}
	const long *rates;
	size_t n;
	mpg123_rates(&rates, &n);
	for (size_t i = 0; i < n; i++) {
		if ((*err = mpg123_format(mh, rates[i], MPG123_STEREO, MPG123_ENC_SIGNED_16)) != MPG123_OK) {
			mpg123_delete(mh);
			return NULL;
		}
	}
	if ((*err = mpg123_open_feed(mh)) != MPG123_OK) {
		mpg123_delete(mh);
		return NULL;
	}
	return mh;
}

// p2p_mpg123_reopen forgets the stream: the bit reservoir, the synthesis
// history and any bytes still buffered.
static int p2p_mpg123_reopen(mpg123_handle *mh) {
	mpg123_close(mh);
	return mpg123_open_feed(mh);
}

// p2p_mpg123_decode feeds one frame and writes the PCM it yields to out,
// up to outsize bytes; *done is the count written. It returns MPG123_OK
// when the decoder wants more input (it has used the whole frame), or an
// error code.
static int p2p_mpg123_decode(mpg123_handle *mh, const unsigned char *in, size_t insize,
		unsigned char *out, size_t outsize, size_t *done) {
	*done = 0;
	int r = mpg123_feed(mh, in, insize);
	if (r != MPG123_OK) return r;
	for (;;) {
		size_t n = 0;
		r = mpg123_read(mh, out + *done, outsize - *done, &n);
		*done += n;
		switch (r) {
		case MPG123_NEED_MORE:
			return MPG123_OK;
		case MPG123_OK:
		case MPG123_NEW_FORMAT:
			if (*done == outsize) {
				// The frame is complete: anything more is a decoder that
				// lost step with the frames.
				unsigned char spare[64];
				size_t m = 0;
				r = mpg123_read(mh, spare, sizeof spare, &m);
				if (m > 0) return MPG123_ERR;
				if (r == MPG123_NEED_MORE) return MPG123_OK;
				if (r != MPG123_OK && r != MPG123_NEW_FORMAT) return r;
				return MPG123_ERR;
			}
			continue;
		default:
			return r;
		}
	}
}
*/
import "C"

import (
	"fmt"
	"runtime"
	"unsafe"

	"github.com/p2pradio/p2pradio/mux"
)

// haveMpg123 is true in builds with cgo (and without the nompg123 tag),
// where libmpg123 is linked.
const haveMpg123 = true

// mpg123Engine decodes with libmpg123 through its feed API: one handle per
// Decoder, fed one whole frame per call.
type mpg123Engine struct {
	h       *C.mpg123_handle
	cleanup runtime.Cleanup // deletes h if the engine is lost unclosed
	done    C.size_t        // decode's count, here so that it does not escape per call
}

func newMpg123() (engine, error) {
	var cerr C.int
	h := C.p2p_mpg123_open(&cerr)
	if h == nil {
		return nil, fmt.Errorf("%w: mpg123: %s", ErrDecode, C.GoString(C.mpg123_plain_strerror(cerr)))
	}
	e := &mpg123Engine{h: h}
	e.cleanup = runtime.AddCleanup(e, func(h *C.mpg123_handle) { C.mpg123_delete(h) }, h)
	return e, nil
}

// decode feeds f and reads its PCM into out. A frame that yields less
// than out (libmpg123 pads a frame it cannot decode whole with silence,
// but a corrupt one may yield nothing) leaves the rest of out zero; one
// that yields more means the decoder is out of step with the frames: an
// error, and the Decoder resets it.
func (e *mpg123Engine) decode(f mux.Frame, out []byte) error {
	r := C.p2p_mpg123_decode(e.h, (*C.uchar)(unsafe.Pointer(&f[0])), C.size_t(len(f)),
		(*C.uchar)(unsafe.Pointer(&out[0])), C.size_t(len(out)), &e.done)
	done := e.done
	if r != C.MPG123_OK {
		return fmt.Errorf("%w: mpg123: %s", ErrDecode, C.GoString(C.mpg123_plain_strerror(r)))
	}
	if int(done) < len(out) {
		clear(out[done:])
	}
	return nil
}

func (e *mpg123Engine) reset() {
	if r := C.p2p_mpg123_reopen(e.h); r != C.MPG123_OK {
		// Cannot happen for the feed reader; the next decode reports it.
		_ = r
	}
}

func (e *mpg123Engine) close() {
	if e.h == nil {
		return
	}
	e.cleanup.Stop()
	C.mpg123_delete(e.h)
	e.h = nil
}
