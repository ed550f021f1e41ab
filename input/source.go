package input

import "sync/atomic"

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

// Titled decorates a Source with a title that SetTitle overrides (a
// station's name for the hour, a show's title set by hand).
type Titled struct {
	Source
	title atomic.Pointer[string]
}

var _ Source = (*Titled)(nil)

// WithTitle returns src decorated by a Titled.
func WithTitle(src Source) *Titled { return &Titled{Source: src} }

// SetTitle overrides the source's title; "" removes the override.
func (s *Titled) SetTitle(title string) {
	if title == "" {
		s.title.Store(nil)
		return
	}
	s.title.Store(&title)
}

// Title is the override, else the source's title.
func (s *Titled) Title() string {
	if t := s.title.Load(); t != nil {
		return *t
	}
	return s.Source.Title()
}
