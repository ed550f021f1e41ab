package output

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
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
	// is disconnected. Zero means those of 2 s of audio (maxDropAudio),
	// whatever the chunks' length.
	MaxDrops int
	// WriteTimeout bounds one write to a listener: one that takes nothing
	// for this long is disconnected (a listener that stops reading is
	// usually disconnected sooner, when its Queue fills). Zero means 10 s.
	WriteTimeout time.Duration
	// Reorder is how many later chunks may wait for a missing one before
	// the stream goes on without it (chunks may arrive out of order, as
	// repairs from neighbours). Zero means those of 1 s of audio
	// (reorderAudio: about the time a node has to repair a gap before its
	// own playout conceals it), whatever the chunks' length.
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
	c.MaxDrops = max(c.MaxDrops, 0)
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	c.Reorder = max(c.Reorder, 0)
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

	mu        sync.Mutex
	queue     []segment
	spare     []segment // the writer's previous queue, for reuse
	queued    time.Duration
	writing   time.Duration // in the write under way
	unread    int64         // bytes in the connection not yet read, as last measured
	drops     int           // chunks lost in a row
	dropAudio time.Duration // their audio
	kicked    bool
	abort     func() // unblocks the writer's write; nil if it cannot be
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
		if !h.waitedEnough(c) {
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

// The defaults of HTTPConfig.Reorder and MaxDrops, in audio: chunk
// counts would mean twice as long with chunks twice as long.
const (
	reorderAudio = time.Second
	maxDropAudio = 2 * time.Second
)

// waitedEnough reports whether the chunks pending (c among them) have
// waited long enough for the missing one before them. h.mu is held.
func (h *HTTP) waitedEnough(c *mux.Chunk) bool {
	if h.cfg.Reorder > 0 {
		return len(h.pending) >= h.cfg.Reorder
	}
	return time.Duration(len(h.pending))*c.Duration() >= reorderAudio
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
			cl.dropAudio += d
			if h.cfg.MaxDrops > 0 && cl.drops >= h.cfg.MaxDrops || h.cfg.MaxDrops == 0 && cl.dropAudio >= maxDropAudio {
				h.kick(cl)
			}
		default:
			cl.queue = append(cl.queue, segment{held: hd})
			cl.queued += d
			cl.drops, cl.dropAudio = 0, 0
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
