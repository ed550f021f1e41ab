//go:build linux && !cgo

package speaker

import (
	"fmt"
	"io"
	"time"
)

// newOutput fails: oto needs cgo on Linux.
func newOutput(done <-chan struct{}, rate int, src io.Reader, bufferBytes int, timeout time.Duration) (output, error) {
	return nil, fmt.Errorf("%w: built without cgo", ErrDevice)
}

// haveDevice reports whether this build can play sound: not without cgo.
const haveDevice = false

// quietALSA does nothing: ALSA is not used without cgo.
func quietALSA() {}

// probeDevice fails: oto needs cgo on Linux.
func probeDevice() error { return fmt.Errorf("%w: built without cgo", ErrDevice) }
