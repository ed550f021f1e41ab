//go:build linux && cgo

package speaker

// #cgo pkg-config: alsa
//
// #include <stdlib.h>
// #include <alsa/asoundlib.h>
//
// // p2pradio_alsa_error drops libasound's messages, which it would
// // otherwise print on standard error (a page of them on a machine with no
// // sound card); the errors reach the caller as return codes anyway.
// static void p2pradio_alsa_error(const char *file, int line, const char *function, int err, const char *fmt, ...) {}
//
// static void p2pradio_alsa_quiet(void) { snd_lib_error_set_handler(p2pradio_alsa_error); }
//
// // p2pradio_alsa_probe opens the PCM name for playback without blocking,
// // and closes it: 0, or libasound's negative error code.
// static int p2pradio_alsa_probe(const char *name) {
// 	snd_pcm_t *h;
// 	int err = snd_pcm_open(&h, name, SND_PCM_STREAM_PLAYBACK, SND_PCM_NONBLOCK);
// 	if (err < 0) {
// 		return err;
// 	}
// 	snd_pcm_close(h);
// 	return 0;
// }
import "C"

import (
	"fmt"
	"strings"
	"sync"
	"unsafe"
)

var quietOnce sync.Once

// quietALSA keeps libasound's error messages off standard error, for the
// whole process (libasound has one handler).
func quietALSA() { quietOnce.Do(func() { C.p2pradio_alsa_quiet() }) }

// probeDevice opens and closes the PCM devices oto tries first.
func probeDevice() error {
	quietALSA()
	var msgs []string
	for _, name := range []string{"default", "plug:default"} {
		cname := C.CString(name)
		err := C.p2pradio_alsa_probe(cname)
		C.free(unsafe.Pointer(cname))
		if err == 0 {
			return nil
		}
		msgs = append(msgs, fmt.Sprintf("%q: %s", name, C.GoString(C.snd_strerror(err))))
	}
	return fmt.Errorf("%w: ALSA cannot open a playback device: %s", ErrDevice, strings.Join(msgs, ", "))
}
