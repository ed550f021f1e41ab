package output

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pradio/p2pradio/mux"
)

// HTTPConfig configures an HTTP output. The zero value is usable.
type HTTPConfig struct {
	// Mount is the path the stream is served at. Empty means "/stream.mp3";
	// a leading "/" is added if missing.
	Mount string
	// Name is the station's name, sent as icy-name. Empty means "p2pradio".
	Name string
	// Burst is how much recent audio a new listener gets at once, so that
	// its player starts playing at once. Zero means 2 s; negative means
	// none (the listener starts with the next chunk).
	Burst time.Duration
	// Metaint is the number of audio bytes between two ICY metadata blocks
	// for a client that asks for them (Icy-MetaData: 1). Zero means
	// DefaultMetaint (16000).
	Metaint int
	// MaxListeners bounds the streams served at once; a request beyond it
	// is refused with 503 Service Unavailable. Zero means 100; negative
	// means no limit.
	MaxListeners int
	// MaxPerAddress bounds the streams served at once to one client
	// address (an IPv4 address, or an IPv6 /64: one host's addresses); a
	// request beyond it is refused with 429 Too Many Requests. Loopback
	// counts like any address. Behind a reverse proxy every listener has
	// the proxy's address: raise it or make it negative there. Zero means
	// 8; negative means no limit.
	MaxPerAddress int
	// Queue is how much audio may wait for one listener: in its queue here
	// and, as far as the server can tell, in its connection, sent or not
	// but not yet read by its player. A listener whose queue is full loses
	// whole chunks. Zero means Burst + 4 s; a value below Burst + 1 s is
	// raised to that.
	Queue time.Duration
	// MaxDrops is how many chunks in a row a listener may lose before it
	// is disconnected. Zero means 20 (about 2 s of audio).
	MaxDrops int
	// WriteTimeout bounds one write to a listener: one that takes nothing
	// for this long is disconnected (a listener that stops reading is
	// usually disconnected sooner, when its Queue fills). Zero means 10 s.
	WriteTimeout time.Duration
	// Reorder is how many later chunks may wait for a missing one before
	// the stream goes on without it (chunks may arrive out of order, as
	// repairs from neighbours). Zero means 10 (about 1 s, the time a node
	// has to repair a gap before its own playout conceals it).
	Reorder int
	// Logger receives listener events. Nil means silent.
	Logger *slog.Logger
}

func (c *HTTPConfig) setDefaults() {
	if c.Mount == "" {
		c.Mount = "/stream.mp3"
	}
	if !strings.HasPrefix(c.Mount, "/") {
		c.Mount = "/" + c.Mount
	}
	if c.Name == "" {
		c.Name = "p2pradio"
	}
	if c.Burst == 0 {
		c.Burst = 2 * time.Second
	}
	if c.Metaint <= 0 {
		c.Metaint = DefaultMetaint
	}
	if c.MaxListeners == 0 {
		c.MaxListeners = 100
	}
	if c.MaxPerAddress == 0 {
		c.MaxPerAddress = 8
	}
	burst := max(c.Burst, 0)
	if c.Queue == 0 {
		c.Queue = burst + 4*time.Second
	}
	c.Queue = max(c.Queue, burst+time.Second)
	if c.MaxDrops <= 0 {
		c.MaxDrops = 20
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.Reorder <= 0 {
		c.Reorder = 10
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// HTTP serves the stream to ordinary players (browsers, ffmpeg, VLC, mpv)
// the way an Icecast mount does: GET on the mount answers audio/mpeg that
// starts at a frame boundary with a burst of recent audio, then goes on
// live as chunks are written, with ICY metadata (the stream title) for
// clients that ask for it. HEAD answers the headers alone.
//
// Chunks are put back in sequence order: a chunk that arrives after the
// stream moved past it is skipped, unless no listener was there yet (then
// it joins the burst). Each listener has a bounded queue:
// WriteChunk never waits for a listener; one that reads too slowly loses
// whole chunks and, after MaxDrops in a row, is disconnected. It never
// slows the node or the other listeners.
//
// A listener that stops reading is noticed by what it has not taken, not
// by a blocked write alone: the socket buffers of one TCP connection hold
// minutes of audio. For an HTTP/1 connection, HTTP takes the connection
// over from the server, as an Icecast server does (it writes the response
// itself, chunked for HTTP/1.1, and closes the connection at the end),
// keeps its send buffer small and, on Linux, reads from the kernel after
// each write the bytes not yet sent or acknowledged and how far the
// client's TCP window has shrunk (what it has received and not read).
// These count against the listener's Queue, so one that stops reading is
// disconnected within a few seconds (about Queue - Burst, then MaxDrops
// chunks: 7 s with the defaults on loopback), and its slot is free at
// once. Elsewhere, and over HTTP/2, only the queue here counts, with
// WriteTimeout.
//
// The title is the one carried by the latest chunk with mux.FlagMetadata,
// unless SetTitle overrides it. WriteChunk is called from one goroutine;
// ServeHTTP, SetTitle, Title, Bitrate, Stats and Close from any.
type HTTP struct {
	cfg      HTTPConfig
	log      *slog.Logger
	done     chan struct{} // closed by Close
	override atomic.Pointer[string]

	mu        sync.Mutex
	closed    bool
	clients   map[*client]struct{}
	perAddr   map[string]int // listeners by addrKey
	started   bool
	next      uint64                // the next sequence number to send
	pending   map[uint64]*mux.Chunk // arrived ahead of next
	recent    []held                // sent chunks, oldest first, covering Burst
	recentDur time.Duration
	recentLen int64 // frame bytes in recent
	title     string

	served, bytes, dropped, slow, refused, skipped, refusedAddr atomic.Int64
}

var (
	_ Output       = (*HTTP)(nil)
	_ http.Handler = (*HTTP)(nil)
)

// held is a chunk sent on to the listeners, with the title in effect for
// its audio.
type held struct {
	c     *mux.Chunk
	title string
}

// segment is what waits in a listener's queue: frames from of a chunk.
type segment struct {
	held
	from int
}

// client is one listener's queue.
type client struct {
	wake chan struct{} // cap 1: the queue has something, or the client was kicked
	addr string        // addrKey of its address

	mu      sync.Mutex
	queue   []segment
	spare   []segment // the writer's previous queue, for reuse
	queued  time.Duration
	writing time.Duration // in the write under way
	unread  int64         // bytes in the connection not yet read, as last measured
	drops   int           // chunks lost in a row
	kicked  bool
	abort   func() // unblocks the writer's write; nil if it cannot be
}

// behind is how much audio waits for the listener, at rate bytes per
// second for what is measured in bytes. cl.mu is held.
func (cl *client) behind(rate float64) time.Duration {
	d := cl.queued + cl.writing
	if rate > 0 {
		d += time.Duration(float64(cl.unread) / rate * float64(time.Second))
	}
	return d
}

func (cl *client) signal() {
	select {
	case cl.wake <- struct{}{}:
	default:
	}
}

// HTTPStats counts an HTTP output's listeners and what they were sent.
type HTTPStats struct {
	Listeners      int   `json:"listeners"`       // streams being served now
	Served         int64 `json:"served"`          // streams started so far
	Bytes          int64 `json:"bytes"`           // bytes sent to listeners (audio and ICY metadata)
	Dropped        int64 `json:"dropped"`         // chunks a listener lost because its queue was full
	Slow           int64 `json:"slow"`            // listeners disconnected for not keeping up
	Refused        int64 `json:"refused"`         // requests refused at MaxListeners
	RefusedAddress int64 `json:"refused_address"` // requests refused at MaxPerAddress
	Skipped        int64 `json:"skipped"`         // chunks the stream went on without (missing or late)
}

// ErrStreamClosed is what a listener is told after Close.
var ErrStreamClosed = errors.New("output: stream closed")

// NewHTTP returns an HTTP output with no listeners.
func NewHTTP(cfg HTTPConfig) *HTTP {
	cfg.setDefaults()
	return &HTTP{
		cfg:     cfg,
		log:     cfg.Logger,
		done:    make(chan struct{}),
		clients: make(map[*client]struct{}),
		perAddr: make(map[string]int),
		pending: make(map[uint64]*mux.Chunk),
	}
}

// Mount is the path the stream is served at.
func (h *HTTP) Mount() string { return h.cfg.Mount }

// SetTitle overrides the title of the chunks for every listener, from
// their next metadata block on; "" goes back to the chunks' title.
func (h *HTTP) SetTitle(title string) {
	if title == "" {
		h.override.Store(nil)
		return
	}
	h.override.Store(&title)
}

// Title is the stream title: SetTitle's, else the latest chunk's.
func (h *HTTP) Title() string {
	if t := h.override.Load(); t != nil {
		return *t
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.title
}

// Bitrate is the stream's bitrate in kbit/s, averaged over the recent
// chunks (exact for a constant bitrate), or 0 before the first chunk.
func (h *HTTP) Bitrate() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.bitrate()
}

func (h *HTTP) bitrate() int {
	if h.recentDur <= 0 {
		return 0
	}
	return int((float64(h.recentLen)*8/h.recentDur.Seconds() + 500) / 1000)
}

// Stats returns the counters.
func (h *HTTP) Stats() HTTPStats {
	h.mu.Lock()
	n := len(h.clients)
	h.mu.Unlock()
	return HTTPStats{
		Listeners:      n,
		Served:         h.served.Load(),
		Bytes:          h.bytes.Load(),
		Dropped:        h.dropped.Load(),
		Slow:           h.slow.Load(),
		Refused:        h.refused.Load(),
		RefusedAddress: h.refusedAddr.Load(),
		Skipped:        h.skipped.Load(),
	}
}

// Close ends every stream; later requests are answered 503. It is
// idempotent. It does not wait for the handlers to return: a handler
// blocked writing to a stuck client returns within WriteTimeout.
func (h *HTTP) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.closed = true
		close(h.done)
	}
	return nil
}

// WriteChunk sends c on to every listener, in sequence order.
func (h *HTTP) WriteChunk(c *mux.Chunk) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	if !h.started {
		h.started, h.next = true, c.Seq
	}
	if c.Seq < h.next {
		// Too late for the listeners, but with none yet it can still
		// go into the burst (a joining node gets its parent's burst
		// after the first live chunk).
		if len(h.clients) > 0 || !h.insertRecent(c) {
			h.skipped.Add(1)
		}
		return
	}
	if _, dup := h.pending[c.Seq]; dup {
		return
	}
	h.pending[c.Seq] = c
	for len(h.pending) > 0 {
		if c, ok := h.pending[h.next]; ok {
			delete(h.pending, h.next)
			h.send(c)
			h.next++
			continue
		}
		if len(h.pending) < h.cfg.Reorder {
			return
		}
		// Waited long enough for h.next: go on from the oldest pending.
		oldest := h.next
		for s := range h.pending {
			if oldest == h.next || s < oldest {
				oldest = s
			}
		}
		h.skipped.Add(int64(oldest - h.next))
		h.next = oldest
	}
}

// send keeps c among the recent chunks and queues it for every listener.
// h.mu is held.
func (h *HTTP) send(c *mux.Chunk) {
	if c.Flags&mux.FlagMetadata != 0 {
		h.title = c.Title
	}
	hd := held{c: c, title: h.title}
	d := c.Duration()
	h.recent = append(h.recent, hd)
	h.recentDur += d
	h.recentLen += frameBytes(c)
	h.trimRecent()
	rate := h.byteRate()
	for cl := range h.clients {
		cl.mu.Lock()
		switch {
		case cl.kicked:
		case cl.behind(rate)+d > h.cfg.Queue:
			h.dropped.Add(1)
			cl.drops++
			if cl.drops >= h.cfg.MaxDrops {
				h.kick(cl)
			}
		default:
			cl.queue = append(cl.queue, segment{held: hd})
			cl.queued += d
			cl.drops = 0
		}
		cl.mu.Unlock()
		cl.signal()
	}
}

// kick disconnects a listener that does not keep up: its slot is free at
// once, and its writer is stopped. h.mu and cl.mu are held.
func (h *HTTP) kick(cl *client) {
	cl.kicked = true
	h.slow.Add(1)
	h.remove(cl)
	if cl.abort != nil {
		cl.abort()
	}
}

// remove frees a listener's slot. h.mu is held.
func (h *HTTP) remove(cl *client) {
	if _, ok := h.clients[cl]; !ok {
		return
	}
	delete(h.clients, cl)
	if cl.addr != "" {
		if h.perAddr[cl.addr]--; h.perAddr[cl.addr] <= 0 {
			delete(h.perAddr, cl.addr)
		}
	}
}

// byteRate is the stream's rate in bytes per second over the recent
// chunks, 0 before the first. h.mu is held.
func (h *HTTP) byteRate() float64 {
	if h.recentDur <= 0 {
		return 0
	}
	return float64(h.recentLen) / h.recentDur.Seconds()
}

// keepRecent is how much audio the recent chunks cover: Burst, and 1 s for
// the bitrate.
func (h *HTTP) keepRecent() time.Duration { return max(h.cfg.Burst, time.Second) }

// trimRecent drops the oldest chunks beyond keepRecent. h.mu is held.
func (h *HTTP) trimRecent() {
	k := 0
	for k < len(h.recent)-1 && h.recentDur-h.recent[k].c.Duration() >= h.keepRecent() {
		h.recentDur -= h.recent[k].c.Duration()
		h.recentLen -= frameBytes(h.recent[k].c)
		k++
	}
	if k > 0 {
		n := copy(h.recent, h.recent[k:])
		clear(h.recent[n:])
		h.recent = h.recent[:n]
	}
}

// insertRecent puts a chunk older than the newest sent in its place among
// the recent ones, and reports whether it is kept there (or already was).
// h.mu is held.
func (h *HTTP) insertRecent(c *mux.Chunk) bool {
	i, found := slices.BinarySearchFunc(h.recent, c.Seq, func(hd held, seq uint64) int { return cmp.Compare(hd.c.Seq, seq) })
	if found {
		return true
	}
	if i == 0 && h.recentDur >= h.keepRecent() {
		return false // older than the burst needs
	}
	hd := held{c: c}
	switch {
	case c.Flags&mux.FlagMetadata != 0:
		hd.title = c.Title
	case i > 0:
		hd.title = h.recent[i-1].title
	default:
		hd.title = h.recent[0].title
	}
	h.recent = slices.Insert(h.recent, i, hd)
	h.recentDur += c.Duration()
	h.recentLen += frameBytes(c)
	h.trimRecent()
	return true
}

func frameBytes(c *mux.Chunk) int64 {
	var n int64
	for _, f := range c.Frames {
		n += int64(len(f))
	}
	return n
}

// refusal is why join did not add a listener.
type refusal struct {
	code int
	msg  string
}

// addrKey is what MaxPerAddress counts by for a client at remote (an
// http.Request's RemoteAddr): its IPv4 address, or its IPv6 /64; "" (no
// limit) for an address that is not IP.
func addrKey(remote string) string {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return ""
	}
	a := ap.Addr().Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p.String()
	}
	return a.String()
}

// join adds a listener from the address key addr with the burst in its
// queue (or, for a HEAD request, only reads the bitrate).
func (h *HTTP) join(head bool, addr string) (*client, int, *refusal) {
	h.mu.Lock()
	defer h.mu.Unlock()
	br := h.bitrate()
	if h.closed {
		return nil, br, &refusal{http.StatusServiceUnavailable, "p2pradio: " + ErrStreamClosed.Error()}
	}
	if head {
		return nil, br, nil
	}
	if h.cfg.MaxListeners > 0 && len(h.clients) >= h.cfg.MaxListeners {
		h.refused.Add(1)
		return nil, br, &refusal{http.StatusServiceUnavailable,
			fmt.Sprintf("p2pradio: this stream is full (%d listeners); try again later or join the station as a peer", h.cfg.MaxListeners)}
	}
	if addr != "" && h.cfg.MaxPerAddress > 0 && h.perAddr[addr] >= h.cfg.MaxPerAddress {
		h.refusedAddr.Add(1)
		return nil, br, &refusal{http.StatusTooManyRequests,
			fmt.Sprintf("p2pradio: too many streams to your address (%d)", h.cfg.MaxPerAddress)}
	}
	cl := &client{wake: make(chan struct{}, 1), addr: addr}
	if i, from := h.burstStart(); i >= 0 {
		for j, hd := range h.recent[i:] {
			s := segment{held: hd}
			if j == 0 {
				s.from = from
			}
			cl.queue = append(cl.queue, s)
			cl.queued += hd.c.Duration()
		}
		cl.signal()
	}
	h.clients[cl] = struct{}{}
	if addr != "" {
		h.perAddr[addr]++
	}
	h.served.Add(1)
	return cl, br, nil
}

// burstStart is where a new listener's burst starts: recent[i].Frames[from],
// the frame about Burst before the end. i is -1 for no burst.
func (h *HTTP) burstStart() (i, from int) {
	if h.cfg.Burst <= 0 || len(h.recent) == 0 {
		return -1, 0
	}
	var d time.Duration
	i = len(h.recent)
	for i > 0 && d < h.cfg.Burst {
		i--
		d += h.recent[i].c.Duration()
	}
	c := h.recent[i].c
	fd := c.Format().FrameDuration()
	for from < len(c.Frames)-1 && d-fd >= h.cfg.Burst {
		from++
		d -= fd
	}
	return i, from
}

func (h *HTTP) leave(cl *client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.remove(cl)
}

// setAbort sets what unblocks the listener's writer. It is called before
// the writer's first write.
func (h *HTTP) setAbort(cl *client, abort func()) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.abort = abort
}

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
