package output

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// ServeHTTP serves the stream at the mount: GET streams, HEAD answers the
// headers; other paths are 404.
func (h *HTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != h.cfg.Mount {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "p2pradio: the stream answers GET and HEAD", http.StatusMethodNotAllowed)
		return
	}
	head := r.Method == http.MethodHead
	cl, br, ref := h.join(head, addrKey(r.RemoteAddr))
	if ref != nil {
		w.Header().Set("Retry-After", "10")
		http.Error(w, ref.msg, ref.code)
		return
	}
	metaint := 0
	if r.Header.Get("Icy-MetaData") == "1" {
		metaint = h.cfg.Metaint
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "audio/mpeg")
	hdr.Set("Cache-Control", "no-cache, no-store")
	hdr.Set("Access-Control-Allow-Origin", "*")
	hdr.Set("icy-name", h.cfg.Name)
	if br > 0 {
		hdr.Set("icy-br", strconv.Itoa(br))
	}
	if metaint > 0 {
		hdr.Set("icy-metaint", strconv.Itoa(metaint))
	}
	if head {
		w.WriteHeader(http.StatusOK)
		return
	}
	defer h.leave(cl)
	log := h.log.With("client", r.RemoteAddr)
	log.Info("http listener joined", "icy", metaint > 0)
	var err error
	if conn, brw, herr := http.NewResponseController(w).Hijack(); herr == nil {
		err = h.streamConn(r, conn, brw.Reader, cl, metaint, hdr)
	} else {
		err = h.stream(w, r, cl, metaint)
	}
	log.Info("http listener left", "why", err)
}

// flush sends what was written; a ResponseWriter that cannot flush sends
// it when its buffer fills.
func flush(rc *http.ResponseController) error {
	if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

// errSlowListener ends a stream whose listener lost MaxDrops chunks in a
// row.
var errSlowListener = errors.New("too slow: lost too many chunks")

// errClientGone ends a stream whose client closed its connection.
var errClientGone = errors.New("client closed the connection")

// sendBuffer is the send buffer asked for a taken-over connection (Linux
// doubles it): a few seconds of audio, so that a listener that stops
// reading soon blocks the writes rather than filling megabytes of kernel
// memory.
const sendBuffer = 32 << 10

// streamConn streams to a connection taken over from the HTTP server: it
// writes the response head itself, then the listener's queue as it fills,
// and measures after each write what the client has not read.
func (h *HTTP) streamConn(r *http.Request, conn net.Conn, in io.Reader, cl *client, metaint int, hdr http.Header) (err error) {
	tcp := tcpConn(conn)
	gone := make(chan struct{})
	readDone := make(chan struct{})
	defer func() {
		if errors.Is(err, errSlowListener) && tcp != nil {
			_ = tcp.SetLinger(0) // drop what it did not take at once
		}
		_ = conn.Close()
		<-readDone
	}()
	_ = conn.SetReadDeadline(time.Time{})
	go func() {
		// The client sends nothing after its request; a read fails when
		// it resets or closes the connection (or when conn is closed).
		defer close(readDone)
		if _, err := io.Copy(io.Discard, in); err != nil {
			close(gone)
		}
	}()
	var sock sockState
	if tcp != nil {
		_ = tcp.SetWriteBuffer(sendBuffer)
	}
	h.setAbort(cl, func() { _ = conn.SetWriteDeadline(time.Now()) })

	// HTTP/1.1 clients get the body chunked, so that the end of the
	// stream is told from a cut (ffmpeg reports a cut as an error);
	// HTTP/1.0 ones get it up to the close.
	var head bytes.Buffer
	chunked := r.ProtoAtLeast(1, 1)
	if chunked {
		head.WriteString("HTTP/1.1 200 OK\r\n")
		hdr.Set("Transfer-Encoding", "chunked")
	} else {
		head.WriteString("HTTP/1.0 200 OK\r\n")
	}
	hdr.Set("Connection", "close")
	if err := hdr.Write(&head); err != nil {
		return err
	}
	head.WriteString("\r\n")
	out := head.Bytes()
	pre := len(out) // bytes of out before the audio
	var buf []byte
	icy := newICYWriter(metaint)
	for {
		if len(out) > 0 {
			if err := h.arm(cl, conn.SetWriteDeadline); err != nil {
				return err
			}
			n, err := conn.Write(out)
			h.bytes.Add(int64(min(max(n-pre, 0), len(buf))))
			if err := h.wrote(cl, err, sock.unread(tcp)); err != nil {
				return err
			}
		}
		if buf, err = h.nextWrite(r, cl, &icy, buf, gone); err != nil {
			if chunked && (errors.Is(err, ErrStreamClosed) || errors.Is(err, r.Context().Err())) {
				_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = io.WriteString(conn, "0\r\n\r\n") // the end of the body
			}
			return err
		}
		out = out[:0]
		if len(buf) > 0 && chunked {
			out = fmt.Appendf(out, "%x\r\n", len(buf))
		}
		pre = len(out)
		out = append(out, buf...)
		if len(buf) > 0 && chunked {
			out = append(out, "\r\n"...)
		}
	}
}

// tcpConn returns the TCP connection under c (a TLS connection's, say), or
// nil.
func tcpConn(c net.Conn) *net.TCPConn {
	for {
		switch t := c.(type) {
		case *net.TCPConn:
			return t
		case interface{ NetConn() net.Conn }:
			c = t.NetConn()
		default:
			return nil
		}
	}
}

// sockState follows what a listener's TCP connection holds.
type sockState struct {
	peakWindow int64 // the largest receive window the client advertised
}

// unread is how many bytes sent to the listener it has not read: those
// not yet sent or acknowledged, and those it acknowledged but did not
// read, seen as its receive window shrinking from the largest it
// advertised. Linux advertises about half the free room of a receive
// buffer (the rest is overhead), so the shrinking counts twice. Where the
// kernel does not tell, it is 0.
func (s *sockState) unread(c *net.TCPConn) int64 {
	if c == nil {
		return 0
	}
	unsent, window, ok := tcpQueue(c)
	if !ok {
		return 0
	}
	if window < 0 { // not reported
		return unsent
	}
	s.peakWindow = max(s.peakWindow, window)
	return unsent + 2*(s.peakWindow-window)
}

// stream writes the listener's queue as it fills until the client leaves,
// falls behind or the output is closed.
func (h *HTTP) stream(w http.ResponseWriter, r *http.Request, cl *client, metaint int) error {
	rc := http.NewResponseController(w)
	defer rc.SetWriteDeadline(time.Time{})
	h.setAbort(cl, func() { _ = rc.SetWriteDeadline(time.Now()) })
	w.WriteHeader(http.StatusOK)
	if err := flush(rc); err != nil {
		return err
	}
	icy := newICYWriter(metaint)
	var buf []byte
	for {
		var err error
		if buf, err = h.nextWrite(r, cl, &icy, buf, nil); err != nil {
			return err
		}
		if len(buf) == 0 {
			continue
		}
		if err := h.arm(cl, rc.SetWriteDeadline); err != nil { // not every ResponseWriter supports deadlines
			return err
		}
		n, err := w.Write(buf)
		h.bytes.Add(int64(n))
		if err == nil {
			err = flush(rc)
		}
		if err := h.wrote(cl, err, 0); err != nil {
			return err
		}
	}
}

// nextWrite waits for the listener's queue to fill and returns its audio
// (with ICY metadata) in buf's storage. It returns an error when the
// stream is to end: the client left (its request's context is done, or
// gone is closed), the output closed, or the listener was kicked.
func (h *HTTP) nextWrite(r *http.Request, cl *client, icy *icyWriter, buf []byte, gone <-chan struct{}) ([]byte, error) {
	select {
	case <-cl.wake:
	case <-r.Context().Done():
		return nil, r.Context().Err()
	case <-h.done:
		return nil, ErrStreamClosed
	case <-gone:
		return nil, errClientGone
	}
	cl.mu.Lock()
	segs, kicked, queued := cl.queue, cl.kicked, cl.queued
	cl.queue, cl.spare, cl.queued, cl.writing = cl.spare[:0], nil, 0, queued
	cl.mu.Unlock()
	if kicked {
		return nil, errSlowListener
	}
	override := h.override.Load()
	buf = buf[:0]
	for _, s := range segs {
		title := s.title
		if override != nil {
			title = *override
		}
		for _, f := range s.c.Frames[s.from:] {
			buf = icy.append(buf, f, title)
		}
	}
	clear(segs)
	cl.mu.Lock()
	cl.spare = segs[:0]
	cl.mu.Unlock()
	return buf, nil
}

// arm sets the deadline of the listener's next write with set, unless it
// was kicked: then its abort (which sets a deadline in the past) has run
// or will not run again.
func (h *HTTP) arm(cl *client, set func(time.Time) error) error {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.kicked {
		return errSlowListener
	}
	_ = set(time.Now().Add(h.cfg.WriteTimeout))
	return nil
}

// wrote records the end of a write: err is its error, unread the bytes the
// connection holds that the client has not read (as far as is known).
// It returns the error that ends the stream, if any.
func (h *HTTP) wrote(cl *client, err error, unread int64) error {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.writing, cl.unread = 0, unread
	if cl.kicked {
		return errSlowListener
	}
	return err
}
