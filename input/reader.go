package input

import (
	"io"
	"sync"
	"sync/atomic"
)

// Reader is a Source over any io.Reader that carries a live MP3 stream, such
// as stdin fed by ffmpeg or lame, or a pipe. It does not pace: a live pipe is
// paced by its writer. Its title is empty.
type Reader struct {
	r         io.Reader
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

var _ Source = (*Reader)(nil)

// NewReader returns a Source that reads r. Close closes r when r is an
// io.Closer, which is what unblocks a Read waiting on r: an os.Pipe, an
// io.Pipe or a net.Conn unblock; a blocking terminal or a regular file's
// read does not, so Read then returns ErrClosed only once r's read returns.
func NewReader(r io.Reader) *Reader {
	return &Reader{r: r}
}

// Read reads from the underlying reader. It returns ErrClosed after Close,
// in place of whatever error Close made the underlying reader return.
func (r *Reader) Read(p []byte) (int, error) {
	if r.closed.Load() {
		return 0, ErrClosed
	}
	if len(p) == 0 {
		return 0, nil // an io.Pipe would block
	}
	n, err := r.r.Read(p)
	if err != nil && r.closed.Load() {
		return n, ErrClosed
	}
	return n, err
}

// Title returns "": a byte stream carries no title.
func (r *Reader) Title() string { return "" }

// Close closes the underlying reader if it is an io.Closer and returns its
// error. Close is idempotent.
func (r *Reader) Close() error {
	r.closeOnce.Do(func() {
		r.closed.Store(true)
		if c, ok := r.r.(io.Closer); ok {
			r.closeErr = c.Close()
		}
	})
	return r.closeErr
}
