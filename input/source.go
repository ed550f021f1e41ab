package input

// Source is where a broadcaster's MP3 bytes come from. The broadcaster calls
// Read from one goroutine; Title from any goroutine; Close from any
// goroutine, possibly while Read is blocked.
//
// A Source delivers the bytes of a live stream: an MP3 elementary stream
// that may contain ID3 tags, Xing frames and junk between frames, which the
// demuxer skips. A Source never keeps the buffer given to Read.
type Source interface {
	// Read reads the next MP3 bytes of the live stream into p, blocking
	// until at least one is available. It returns io.EOF at the end of the
	// stream and ErrClosed after Close. Read is called from one goroutine.
	Read(p []byte) (int, error)
	// Title is the current stream title, "" if the source has none. It is
	// safe to call from any goroutine.
	Title() string
	// Close stops the source and releases what it holds; a blocked Read
	// returns. Close is idempotent.
	Close() error
}
