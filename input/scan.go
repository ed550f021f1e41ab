package input

import (
	"bufio"
	"bytes"
	"errors"
	"io"

	"github.com/p2pradio/p2pradio/mux"
)

// segKind says what a scanner segment is.
type segKind uint8

const (
	segOther segKind = iota // junk, or a truncated last frame
	segTag                  // (a piece of) an ID3v2 tag
	segFrame                // one whole MP3 frame
)

const (
	// scanBufSize is the scanner's read buffer.
	scanBufSize = 32 << 10
	// maxTagPiece bounds the piece of an ID3v2 tag one segment carries.
	maxTagPiece = 4096
	// scanPeek is what the scanner looks at to judge a frame: the largest
	// frame and the header after it.
	scanPeek = mux.MaxFrameSize + mux.HeaderSize
)

// scanner splits an MP3 byte stream into segments for pacing: one whole
// frame, a piece of an ID3v2 tag, or a run of other bytes. Concatenated, the
// segments are exactly the input, whatever it is.
//
// A frame counts only when it is chained to another: a valid header (or an
// ID3 tag, or the end of the input) follows where it ends, or it starts
// where the frame before it ended. A fake sync word in junk is rarely either.
type scanner struct {
	br          *bufio.Reader
	tagLeft     int64 // bytes of an ID3v2 tag still to pass
	afterFrame  bool  // the previous segment was a frame
	unsupported error // the first ErrUnsupported header seen, for error messages
}

func newScanner(r io.Reader) *scanner {
	return &scanner{br: bufio.NewReaderSize(r, scanBufSize)}
}

// reset restarts the scanner on r.
func (s *scanner) reset(r io.Reader) {
	s.br.Reset(r)
	s.tagLeft = 0
	s.afterFrame = false
}

// next appends the next segment to dst[:0] and returns it with its kind; a
// frame's header is returned too. At the end of the input it returns io.EOF
// and no bytes.
func (s *scanner) next(dst []byte) ([]byte, segKind, mux.Header, error) {
	dst = dst[:0]
	if s.tagLeft > 0 {
		b, err := s.br.Peek(int(min(s.tagLeft, maxTagPiece)))
		if len(b) == 0 {
			return dst, segOther, 0, eofOr(err)
		}
		dst = append(dst, b...)
		s.discard(len(b))
		s.tagLeft -= int64(len(b))
		s.afterFrame = false
		return dst, segTag, 0, nil
	}
	b, err := s.br.Peek(scanPeek)
	if len(b) == 0 || (err != nil && err != io.EOF && err != bufio.ErrBufferFull) {
		return dst, segOther, 0, eofOr(err)
	}
	atEOF := err == io.EOF
	if n := id3v2Size(b); n > 0 {
		s.tagLeft = n
		return s.next(dst)
	}
	if f, ok := s.frameAt(b, atEOF); ok {
		dst = append(dst, f...)
		s.discard(len(f))
		s.afterFrame = true
		return dst, segFrame, f.Header(), nil
	}
	// Other bytes, up to the next byte that may start a frame or a tag.
	n := len(b)
	if i := bytes.IndexAny(b[1:], "\xffI"); i >= 0 {
		n = 1 + i
	}
	dst = append(dst, b[:n]...)
	s.discard(n)
	s.afterFrame = false
	return dst, segOther, 0, nil
}

// frameAt returns the frame b starts with if it is chained (see scanner).
func (s *scanner) frameAt(b []byte, atEOF bool) (mux.Frame, bool) {
	f, err := mux.ParseFrame(b)
	if err != nil {
		if errors.Is(err, mux.ErrUnsupported) && s.unsupported == nil {
			s.unsupported = err
		}
		return nil, false
	}
	if s.afterFrame {
		return f, true
	}
	rest := b[len(f):]
	if len(rest) < mux.HeaderSize {
		return f, atEOF
	}
	if _, err := mux.ParseHeader(rest); err == nil {
		return f, true
	}
	return f, bytes.HasPrefix(rest, []byte("TAG")) || bytes.HasPrefix(rest, []byte("ID3"))
}

// discard drops n bytes that Peek returned, so it cannot fail.
func (s *scanner) discard(n int) { _, _ = s.br.Discard(n) }

// eofOr returns err, or io.EOF when err is nil.
func eofOr(err error) error {
	if err == nil || err == bufio.ErrBufferFull {
		return io.EOF
	}
	return err
}
