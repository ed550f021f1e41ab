package playout

import "errors"

var (
	// ErrClosed is returned by calls after Close.
	ErrClosed = errors.New("playout: closed")
	// ErrRunning is returned by a second call to Player.Run.
	ErrRunning = errors.New("playout: Run already called")
	// ErrBadConfig is wrapped by errors about an invalid Config.
	ErrBadConfig = errors.New("playout: bad config")
	// ErrDecode is wrapped by errors about a frame the decoder could not
	// decode; its time was filled with silence.
	ErrDecode = errors.New("playout: frame not decodable")
	// ErrFormat is wrapped by errors from a sink that cannot take the PCM
	// format it is given (a sample rate change, a rate the device does not
	// run at, PCM that is not whole stereo 16-bit sample frames).
	ErrFormat = errors.New("playout: unsupported PCM format")
)
