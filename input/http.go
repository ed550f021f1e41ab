package input

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Defaults of HTTPConfig.
const (
	// DefaultConnectTimeout is HTTPConfig.ConnectTimeout's default.
	DefaultConnectTimeout = 10 * time.Second
	// DefaultHeaderTimeout is HTTPConfig.HeaderTimeout's default.
	DefaultHeaderTimeout = 5 * time.Second
	// DefaultStallTimeout is HTTPConfig.StallTimeout's default.
	DefaultStallTimeout = 10 * time.Second
	// DefaultMinBackoff is HTTPConfig.MinBackoff's default.
	DefaultMinBackoff = 250 * time.Millisecond
	// DefaultMaxBackoff is HTTPConfig.MaxBackoff's default.
	DefaultMaxBackoff = 30 * time.Second
)

// defaultContentTypes are the media types accepted when
// HTTPConfig.ContentTypes is nil (see there).
var defaultContentTypes = []string{"audio/mpeg", "audio/mp3", "audio/mpeg3", "audio/x-mpeg", "audio/x-mp3", "audio/mpg"}

// HTTPConfig configures an HTTP source. The zero value is ready to use.
type HTTPConfig struct {
	// HTTPClient makes the requests. If nil, the source makes its own,
	// which also understands SHOUTcast v1's "ICY 200 OK" status line. A
	// client given here must not set Timeout, which would cut the endless
	// stream; ConnectTimeout and StallTimeout apply to any client.
	HTTPClient *http.Client
	// Logger receives connection events and title changes. Nil is silent.
	Logger *slog.Logger
	// ConnectTimeout bounds one connection attempt, from the request
	// (dialing and TLS included) to the response headers. If zero,
	// DefaultConnectTimeout.
	ConnectTimeout time.Duration
	// HeaderTimeout bounds the wait for the response headers once the
	// request is sent. A server that answers nothing in time is retried;
	// one that starts its headers and does not finish them in time is
	// broken, and for the first connection the error is permanent (OpenURL
	// returns it at once). If zero, DefaultHeaderTimeout.
	HeaderTimeout time.Duration
	// StallTimeout is how long Read waits for a byte before it drops the
	// connection as stalled and reconnects. If zero, DefaultStallTimeout.
	StallTimeout time.Duration
	// MinBackoff is the wait before reconnecting after a drop; it doubles
	// with each consecutive failed attempt up to MaxBackoff. If zero,
	// DefaultMinBackoff and DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// MaxRetries is how many consecutive failed connection attempts (a
	// connection that ends before delivering audio counts as one) make
	// OpenURL or Read give up and return the last error. Zero means never
	// give up; a negative value means never retry: OpenURL makes one
	// attempt, and the first drop ends the stream.
	MaxRetries int
	// ContentTypes are the media types accepted. If nil: audio/mpeg and
	// the aliases servers use for it (audio/mp3, audio/mpeg3, audio/x-mpeg,
	// audio/x-mp3, audio/mpg). application/octet-stream is not among them:
	// it is what a generic web server calls any file, while a stream server
	// that serves MP3 says so; list it here for a server that does not.
	ContentTypes []string
	// ResumeWindow is how many bytes of delivered audio are kept to find
	// and drop what a reconnection repeats. If zero, DefaultResumeWindow;
	// negative disables the search.
	ResumeWindow int
	// UserAgent is sent with each request. If empty, "p2pradio".
	UserAgent string
}

// StreamInfo is what an Icecast or SHOUTcast server says about its stream
// in the headers of its latest response.
type StreamInfo struct {
	Name        string // icy-name
	Genre       string // icy-genre
	Description string // icy-description
	URL         string // icy-url: the station's web page
	Bitrate     int    // icy-br in kbit/s, 0 if absent
	ContentType string // the media type, e.g. "audio/mpeg"
	Metaint     int    // icy-metaint: audio bytes between metadata blocks, 0 if none
}

// HTTP is a Source that plays an Icecast or SHOUTcast stream (or any HTTP
// URL serving MP3). It asks for ICY metadata (Icy-MetaData: 1), strips the
// metadata blocks from the audio and surfaces their StreamTitle as Title.
//
// The server paces a live stream; HTTP does not. When the connection drops,
// ends, or stalls for StallTimeout, Read reconnects with exponential backoff
// and goes on delivering audio; Icecast restarts a listener at the live
// point with a burst of recent audio, and the part of it that was already
// delivered is dropped (see HTTPConfig.ResumeWindow). A response with a
// Content-Length is a file, not a live stream: its end is io.EOF.
//
// HTTP starts no goroutine of its own; the HTTP client's connection
// goroutines end with the connection.
type HTTP struct {
	url     string
	cfg     HTTPConfig
	client  *http.Client
	ownTr   *http.Transport // the default client's transport, or nil
	log     *slog.Logger
	accept  map[string]bool
	initial bool // no connection has succeeded yet

	done      chan struct{}
	closeOnce sync.Once

	mu    sync.Mutex
	cur   *httpConn // the connection in use, for Close to cancel
	title string
	info  StreamInfo

	// Owned by the goroutine that calls Read (and OpenURL before it).
	c        *httpConn
	sp       splicer
	scratch  []byte
	out      []byte // spliced bytes not yet delivered
	outBuf   []byte // out's storage
	failures int    // consecutive failed attempts
	lastErr  error
	err      error // sticky: io.EOF or a permanent failure
}

var _ Source = (*HTTP)(nil)

// httpConn is one response being read.
type httpConn struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	body   io.ReadCloser
	icy    *icyReader
	stall  *time.Timer
	finite bool // the response has a Content-Length
	audio  bool // some audio was read
}

// OpenURL connects to an MP3 stream at rawURL (http or https) and returns
// the source once the server has answered with audio. It retries failed
// attempts as Read does, until ctx is done or MaxRetries is reached; it
// fails at once on a permanent error: an error status other than 408, 429
// or 5xx (a *StatusError), a Content-Type that is not MP3 (ErrContentType),
// a bad icy-metaint (ErrBadMetaint), or response headers begun and not
// finished within HeaderTimeout (ErrHeaderTimeout). ctx bounds only the connecting: it
// may be cancelled once OpenURL returns.
func OpenURL(ctx context.Context, rawURL string, cfg HTTPConfig) (*HTTP, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("input: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("input: %q is not an http or https URL", rawURL)
	}
	switch {
	case cfg.ConnectTimeout < 0, cfg.HeaderTimeout < 0, cfg.StallTimeout < 0, cfg.MinBackoff < 0, cfg.MaxBackoff < 0:
		return nil, errors.New("input: negative duration in HTTPConfig")
	case cfg.MinBackoff > 0 && cfg.MaxBackoff > 0 && cfg.MinBackoff > cfg.MaxBackoff:
		return nil, errors.New("input: HTTPConfig.MinBackoff exceeds MaxBackoff")
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.HeaderTimeout == 0 {
		cfg.HeaderTimeout = DefaultHeaderTimeout
	}
	if cfg.StallTimeout == 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = DefaultMinBackoff
		if cfg.MaxBackoff > 0 {
			cfg.MinBackoff = min(cfg.MinBackoff, cfg.MaxBackoff)
		}
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	if cfg.ContentTypes == nil {
		cfg.ContentTypes = defaultContentTypes
	}
	if cfg.ResumeWindow == 0 {
		cfg.ResumeWindow = DefaultResumeWindow
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "p2pradio"
	}
	h := &HTTP{
		url:     u.String(),
		cfg:     cfg,
		client:  cfg.HTTPClient,
		log:     cfg.Logger,
		accept:  make(map[string]bool, len(cfg.ContentTypes)),
		initial: true,
		done:    make(chan struct{}),
		sp:      splicer{window: max(cfg.ResumeWindow, 0)},
	}
	for _, t := range cfg.ContentTypes {
		h.accept[strings.ToLower(t)] = true
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	h.log = h.log.With("url", h.url)
	if h.client == nil {
		h.client, h.ownTr = defaultClient()
	}
	if err := h.reconnect(ctx); err != nil {
		_ = h.Close()
		return nil, err
	}
	return h, nil
}

// maxHeaderBytes bounds the response headers the default client reads.
const maxHeaderBytes = 64 << 10

// defaultClient makes the client used when HTTPConfig.HTTPClient is nil.
// ConnectTimeout is applied to each request through its context, so the
// transport sets no timeouts of its own.
func defaultClient() (*http.Client, *http.Transport) {
	d := &net.Dialer{KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &icyStatusConn{Conn: c}, nil
		},
		DisableCompression:     true,
		MaxIdleConnsPerHost:    1,
		MaxResponseHeaderBytes: maxHeaderBytes,
		IdleConnTimeout:        30 * time.Second,
	}
	return &http.Client{Transport: tr}, tr
}

// Read returns the next audio bytes of the stream, without metadata. While
// the source reconnects, Read blocks. It returns ErrClosed after Close,
// io.EOF at the end of a file (a response with a Content-Length), and
// otherwise an error only when it gives up (see HTTPConfig.MaxRetries) or
// meets a permanent error.
func (h *HTTP) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if h.closed() {
			return 0, ErrClosed
		}
		if len(h.out) > 0 {
			n := copy(p, h.out)
			h.out = h.out[n:]
			return n, nil
		}
		if h.c == nil {
			if h.err != nil {
				return 0, h.err
			}
			if err := h.reconnect(context.Background()); err != nil {
				if !errors.Is(err, ErrClosed) {
					h.err = err
				}
				return 0, err
			}
		}
		if h.sp.live() {
			n, err := h.c.read(p, h.cfg.StallTimeout)
			if n > 0 {
				h.sp.remember(p[:n])
			}
			if err != nil {
				h.drop(err)
			}
			if n > 0 {
				return n, nil
			}
			continue
		}
		if h.scratch == nil {
			h.scratch = make([]byte, 16<<10)
		}
		n, err := h.c.read(h.scratch, h.cfg.StallTimeout)
		h.out = h.sp.write(h.outBuf[:0], h.scratch[:n])
		h.outBuf = h.out[:0]
		if err != nil {
			h.drop(err)
		}
	}
}

// read reads audio from the connection, dropping it if no byte comes
// within stall.
func (c *httpConn) read(p []byte, stall time.Duration) (int, error) {
	if c.stall == nil {
		c.stall = time.AfterFunc(stall, func() { c.cancel(ErrStalled) })
	} else {
		c.stall.Reset(stall)
	}
	n, err := c.icy.Read(p)
	c.stall.Stop()
	if n > 0 {
		c.audio = true
	}
	if err != nil && c.ctx.Err() != nil {
		err = context.Cause(c.ctx)
	}
	return n, err
}

// drop ends the connection in use after err.
func (h *HTTP) drop(err error) {
	c := h.c
	h.c = nil
	c.cancel(err)
	if c.stall != nil {
		c.stall.Stop()
	}
	_ = c.body.Close()
	h.out = h.sp.endConn(h.out)
	h.outBuf = h.out[:0]
	h.mu.Lock()
	if h.cur == c {
		h.cur = nil
	}
	h.mu.Unlock()
	switch {
	case errors.Is(err, ErrClosed):
		return
	case err == io.EOF && c.finite:
		h.log.Info("stream ended")
		h.err = io.EOF
		return
	case err == io.EOF:
		err = errors.New("server ended the stream")
	}
	h.lastErr = fmt.Errorf("input: %s: connection dropped: %w", h.url, err)
	if !c.audio {
		h.failures++
	} else {
		h.failures = 0
	}
	h.log.Warn("connection dropped", "err", err)
}

// reconnect connects, retrying with backoff; for OpenURL (the first
// connection) the first attempt is made at once.
func (h *HTTP) reconnect(ctx context.Context) error {
	first := h.initial
	for {
		if !first {
			if h.exhausted() {
				return h.giveUp()
			}
			if err := h.wait(ctx, h.backoff()); err != nil {
				return err
			}
		}
		first = false
		err := h.connect(ctx)
		if err == nil {
			h.initial = false
			h.sp.reconnected()
			return nil
		}
		if h.closed() {
			return ErrClosed
		}
		if ctx.Err() != nil {
			return fmt.Errorf("input: %s: %w", h.url, context.Cause(ctx))
		}
		h.lastErr = err
		if h.permanent(err) {
			h.log.Error("connection failed", "err", err)
			return err
		}
		h.failures++
		h.log.Warn("connection failed", "err", err, "failures", h.failures)
	}
}

// exhausted reports whether MaxRetries forbids another attempt.
func (h *HTTP) exhausted() bool {
	switch {
	case h.cfg.MaxRetries < 0:
		return true
	case h.cfg.MaxRetries == 0:
		return false
	}
	return h.failures >= h.cfg.MaxRetries
}

// giveUp is the error Read returns when it stops reconnecting.
func (h *HTTP) giveUp() error {
	h.log.Error("giving up", "failures", h.failures, "err", h.lastErr)
	if h.failures == 0 {
		return h.lastErr
	}
	return fmt.Errorf("input: %s: giving up after %d failed attempts: %w", h.url, h.failures, h.lastErr)
}

// backoff is the wait before the next attempt.
func (h *HTTP) backoff() time.Duration {
	d := h.cfg.MinBackoff
	for i := 0; i < h.failures && d < h.cfg.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, h.cfg.MaxBackoff)
}

// wait sleeps for d, or until ctx is done or the source closed.
func (h *HTTP) wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-h.done:
		return ErrClosed
	case <-ctx.Done():
		return fmt.Errorf("input: %s: %w", h.url, context.Cause(ctx))
	}
}

// permanent reports whether retrying cannot help. An error status is
// permanent only for the first connection: Icecast answers 404 while a
// mount's source is reconnecting.
func (h *HTTP) permanent(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return h.initial && se.permanent()
	}
	var he *HeaderTimeoutError
	if errors.As(err, &he) {
		return h.initial && he.Partial
	}
	return errors.Is(err, ErrContentType) || errors.Is(err, ErrBadMetaint)
}

// connect makes one connection attempt.
func (h *HTTP) connect(ctx context.Context) error {
	cctx, cancel := context.WithCancelCause(context.Background())
	c := &httpConn{ctx: cctx, cancel: cancel}
	h.mu.Lock()
	if h.closed() {
		h.mu.Unlock()
		cancel(ErrClosed)
		return ErrClosed
	}
	h.cur = c
	h.mu.Unlock()
	ok := false
	defer func() {
		if !ok {
			cancel(ErrClosed)
			h.mu.Lock()
			if h.cur == c {
				h.cur = nil
			}
			h.mu.Unlock()
		}
	}()

	// ctx and the connect timeout bound the connecting only; the header
	// timeout runs from the request's sending to the response headers.
	stopCtx := context.AfterFunc(ctx, func() { cancel(context.Cause(ctx)) })
	timer := time.AfterFunc(h.cfg.ConnectTimeout, func() { cancel(ErrConnectTimeout) })
	var mu sync.Mutex
	var headerTimer *time.Timer
	var gotByte atomic.Bool
	hto := &HeaderTimeoutError{URL: h.url, Timeout: h.cfg.HeaderTimeout}
	trace := &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) {
			mu.Lock()
			defer mu.Unlock()
			if headerTimer == nil {
				headerTimer = time.AfterFunc(h.cfg.HeaderTimeout, func() {
					hto.Partial = gotByte.Load()
					cancel(hto)
				})
			}
		},
		GotFirstResponseByte: func() { gotByte.Store(true) },
	}
	resp, err := h.do(httptrace.WithClientTrace(cctx, trace))
	timer.Stop()
	stopCtx()
	mu.Lock()
	if headerTimer != nil {
		headerTimer.Stop()
	}
	mu.Unlock()
	if err != nil {
		if cause := context.Cause(cctx); cause != nil {
			err = cause
		}
		if errors.Is(err, ErrHeaderTimeout) {
			return err
		}
		if errors.Is(err, ErrClosed) {
			return ErrClosed
		}
		return fmt.Errorf("input: %s: %w", h.url, err)
	}
	if cctx.Err() != nil { // cancelled just as the response came
		_ = resp.Body.Close()
		return fmt.Errorf("input: %s: %w", h.url, context.Cause(cctx))
	}
	info, err := h.check(resp)
	if err != nil {
		_ = resp.Body.Close()
		return err
	}
	c.body = resp.Body
	c.finite = resp.ContentLength >= 0
	c.icy = newICYReader(resp.Body, info.Metaint, h.onMeta)
	h.c = c
	ok = true
	h.mu.Lock()
	h.info = info
	h.mu.Unlock()
	h.log.Info("connected", "name", info.Name, "content_type", info.ContentType,
		"bitrate", info.Bitrate, "metaint", info.Metaint)
	return nil
}

// do sends the request.
func (h *HTTP) do(ctx context.Context) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Icy-MetaData", "1")
	req.Header.Set("User-Agent", h.cfg.UserAgent)
	req.Header.Set("Accept", "audio/mpeg, */*;q=0.1")
	return h.client.Do(req)
}

// check validates a response and reads its stream headers.
func (h *HTTP) check(resp *http.Response) (StreamInfo, error) {
	var info StreamInfo
	if resp.StatusCode != http.StatusOK {
		return info, &StatusError{URL: h.url, StatusCode: resp.StatusCode, Status: resp.Status}
	}
	ct := resp.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || !h.accept[strings.ToLower(mt)] {
		return info, fmt.Errorf("input: %s answered with Content-Type %q: %w", h.url, ct, ErrContentType)
	}
	info.ContentType = strings.ToLower(mt)
	if v := resp.Header.Get("Icy-Metaint"); v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 || n > MaxMetaint {
			return info, fmt.Errorf("input: %s: icy-metaint %q: %w", h.url, v, ErrBadMetaint)
		}
		info.Metaint = n
	}
	info.Name = headerText(resp.Header.Get("Icy-Name"))
	info.Genre = headerText(resp.Header.Get("Icy-Genre"))
	info.Description = headerText(resp.Header.Get("Icy-Description"))
	info.URL = headerText(resp.Header.Get("Icy-Url"))
	if v := resp.Header.Get("Icy-Br"); v != "" {
		// Some servers send "128,128" or "128 kbps".
		end := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' })
		if end < 0 {
			end = len(v)
		}
		if n, err := strconv.Atoi(v[:end]); err == nil && n > 0 && n < 100000 {
			info.Bitrate = n
		}
	}
	return info, nil
}

// headerText cleans a header value that may be ISO-8859-1.
func headerText(v string) string {
	if utf8.ValidString(v) {
		return cleanTitle(v)
	}
	return cleanTitle(latin1([]byte(v)))
}

// onMeta takes one ICY metadata block.
func (h *HTTP) onMeta(meta []byte) {
	t, ok := parseStreamTitle(meta)
	if !ok {
		return
	}
	h.mu.Lock()
	changed := t != h.title
	h.title = t
	h.mu.Unlock()
	if changed {
		h.log.Info("stream title", "title", t)
	}
}

// Title returns the latest StreamTitle the server sent, "" before the
// first. It is kept across reconnections.
func (h *HTTP) Title() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.title
}

// Info returns what the server's latest response said about the stream.
func (h *HTTP) Info() StreamInfo {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.info
}

func (h *HTTP) closed() bool {
	select {
	case <-h.done:
		return true
	default:
		return false
	}
}

// Close ends the connection; a blocked Read returns ErrClosed. Close is
// idempotent.
func (h *HTTP) Close() error {
	h.closeOnce.Do(func() {
		close(h.done)
		h.mu.Lock()
		c := h.cur
		h.mu.Unlock()
		if c != nil {
			c.cancel(ErrClosed)
		}
		if h.ownTr != nil {
			h.ownTr.CloseIdleConnections()
		}
	})
	return nil
}

// icyStatusConn lets net/http read a SHOUTcast v1 response, whose status
// line starts "ICY 200 OK" instead of "HTTP/1.0 200 OK".
type icyStatusConn struct {
	net.Conn
	checked bool
	pending []byte
	err     error
}

// Read rewrites an "ICY " at the start of the stream to "HTTP/1.0 ".
func (c *icyStatusConn) Read(p []byte) (int, error) {
	if !c.checked {
		c.checked = true
		var b [4]byte
		n, err := io.ReadFull(c.Conn, b[:])
		if n == 4 && string(b[:]) == "ICY " {
			c.pending = []byte("HTTP/1.0 ")
		} else {
			c.pending = append([]byte(nil), b[:n]...)
		}
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		c.err = err
	}
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	if c.err != nil {
		return 0, c.err
	}
	return c.Conn.Read(p)
}
