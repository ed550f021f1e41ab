package mux

import "errors"

var (
	// ErrNoSync means the bytes do not start with a Layer III frame header.
	ErrNoSync = errors.New("mux: no MP3 frame header")
	// ErrShortFrame means the bytes end before the frame does.
	ErrShortFrame = errors.New("mux: truncated MP3 frame")
	// ErrUnsupported is wrapped by errors for valid MPEG audio that p2pradio
	// does not carry: free format, Layers I and II.
	ErrUnsupported = errors.New("mux: unsupported MP3 stream")
	// ErrNotMP3 means no run of valid MP3 frames was found in the input.
	ErrNotMP3 = errors.New("mux: input is not an MP3 stream")
	// ErrBadChunk is wrapped by every error about a malformed chunk.
	ErrBadChunk = errors.New("mux: malformed chunk")
	// ErrBadSignature means a chunk's signature does not verify against the
	// station key.
	ErrBadSignature = errors.New("mux: bad chunk signature")
	// ErrClosed is returned by calls after Close.
	ErrClosed = errors.New("mux: closed")
)
