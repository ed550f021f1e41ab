package p2pradio

import (
	"context"
	"crypto/ed25519"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/internal/stats"
	"github.com/p2pradio/p2pradio/mux"
	"github.com/p2pradio/p2pradio/output"
	"github.com/p2pradio/p2pradio/playout"
)

// Close codes a Node gives the peers it disconnects.
const (
	codeBadChunk     uint64 = 16 // a chunk failed to parse or verify
	codeBadMessage   uint64 = 17 // a control message was malformed or out of place
	codeSlow         uint64 = 18 // a child could not keep up
	codeWrongStation uint64 = 19
	codeGoodbye      uint64 = 20 // the node is leaving
)

// Node is a broadcaster or a listener of one station. Create it with New,
// run it with Run, stop it with Close. Many Nodes may live in one process.
type Node struct {
	cfg     Config
	key     ed25519.PrivateKey
	station ed25519.PublicKey
	addr    Address
	log     *slog.Logger

	tr    control.Transport
	ownTr bool

	window  *output.Window
	fanout  *output.Fanout
	outputs output.Output
	reasm   *mux.Reassembler
	player  *playout.Player
	tracker *control.Tracker

	acceptMu  sync.Mutex           // serialises accept: window, fanout and outputs see one chunk at a time
	subMu     sync.Mutex           // serialises subscriptions: the free-slot check and the add
	arrivals  [arrivalRing]arrival // guarded by acceptMu
	newest    atomic.Int64
	firstSeq  atomic.Int64 // the first chunk accepted
	haveFirst bool         // guarded by acceptMu
	repairs   atomic.Int64 // chunks requested from neighbours
	kbps      atomic.Int64 // the stream's bitrate in kbit/s, measured

	mu      sync.Mutex
	peers   map[*peer]struct{}
	parent  *peer
	backups []*peer // warm, fed by none of our ancestors; the first is promoted first
	depth   int
	path    []control.NodeID // root first, parent last
	title   string
	heard   []control.PeerInfo           // peers learned from neighbours
	failed  map[control.NodeID]time.Time // peers that died or did not answer lately
	hint    *control.PeerInfo            // a parent to try first on the next join
	started time.Time                    // Run was called
	closed  bool

	// figures
	chunksIn, bytesIn, bytesOut, badChunks atomic.Int64
	lag, hop                               stats.Histogram
	recovery                               stats.Histogram
	parentSince                            atomic.Int64 // unix nanos of the last parent change
	lastChunk                              atomic.Int64 // unix nanos of the last chunk accepted

	closeOnce sync.Once
	cancel    context.CancelFunc
	runDone   chan struct{}
	wg        sync.WaitGroup
}

// New checks cfg and creates a Node. It does no I/O except, when
// cfg.Transport is nil, binding the QUIC transport's UDP socket (so that
// Address is known before Run).
func New(cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	if cfg.Source != nil {
		cfg.Source = &titleSource{Source: cfg.Source} // for SetTitle
	}
	n := &Node{
		cfg:     cfg,
		key:     cfg.Key,
		log:     cfg.Logger,
		peers:   make(map[*peer]struct{}),
		failed:  make(map[control.NodeID]time.Time),
		runDone: make(chan struct{}),
		window:  output.NewWindow(cfg.Window),
		reasm:   mux.NewReassembler(mux.ReassemblerConfig{}),
	}
	n.newest.Store(-1)
	if n.key == nil {
		_, k, err := ed25519.GenerateKey(nil)
		if err != nil {
			return nil, err
		}
		n.key = k
	}
	if cfg.Source != nil {
		n.station = n.key.Public().(ed25519.PublicKey)
	} else {
		a, err := ParseAddress(cfg.Station)
		if err != nil {
			return nil, err
		}
		n.station, n.addr = a.Station, a
		n.depth = -1
	}
	n.fanout = output.NewFanout(output.FanoutConfig{OnSlow: n.dropSlowChild})
	outs := []output.Output{n.window, n.fanout}
	n.outputs = output.Multi(append(outs, cfg.Outputs...)...)

	if cfg.Transport == nil {
		tr, err := control.NewQUIC(control.QUICConfig{ListenAddr: cfg.ListenAddr, Key: n.key, Logger: cfg.Logger})
		if err != nil {
			return nil, err
		}
		n.tr, n.ownTr = tr, true
	} else {
		n.tr = cfg.Transport
	}
	if cfg.Source != nil {
		rv := n.tr.Addr()
		if cfg.NoTracker {
			rv = cfg.Rendezvous
		} else {
			n.tracker = control.NewTracker(control.TrackerConfig{})
		}
		n.addr = Address{Station: n.station, Rendezvous: rv}
		n.depth = 0
	}
	if cfg.Source == nil || cfg.Sink != nil {
		pc := cfg.Playout
		pc.Sink = cfg.Sink
		pc.OnTitle = n.setTitle
		pc.Logger = cfg.Logger
		p, err := playout.New(n.reasm, pc)
		if err != nil {
			n.closeTransport()
			return nil, err
		}
		n.player = p
	}
	return n, nil
}

// Address is the station's address: what a listener needs to join.
func (n *Node) Address() Address { return n.addr }

// Key is the node's identity on the overlay: its transport's key. With the
// default transport it is Config.Key's public half.
func (n *Node) Key() ed25519.PublicKey { return n.tr.Key() }

// id is the node's overlay identity.
func (n *Node) id() control.NodeID { return control.IDOf(n.tr.Key()) }

// LocalAddr is the address this node's transport listens on.
func (n *Node) LocalAddr() string { return n.tr.Addr() }

// Broadcaster reports whether the node is the station's broadcaster.
func (n *Node) Broadcaster() bool { return n.cfg.Source != nil }

func (n *Node) setTitle(t string) {
	n.mu.Lock()
	n.title = t
	n.mu.Unlock()
}

// Run runs the node until ctx is done, Close is called, or (for a
// broadcaster whose source ends) the stream has ended. It returns nil in
// those cases and an error when the node cannot work at all (for example a
// listener that finds no parent for a long time returns ErrNoParent only
// if ctx allows; it otherwise keeps trying).
func (n *Node) Run(ctx context.Context) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return ErrClosed
	}
	if !n.started.IsZero() {
		n.mu.Unlock()
		return errors.New("p2pradio: Run called twice")
	}
	n.started = time.Now()
	ctx, cancel := context.WithCancel(ctx)
	n.cancel = cancel
	n.mu.Unlock()
	defer close(n.runDone)
	defer cancel()

	n.goFunc(func() { n.acceptLoop(ctx) })
	n.goFunc(func() { n.statusLoop(ctx) })
	var playDone chan error
	if n.player != nil {
		playDone = make(chan error, 1)
		n.goFunc(func() { playDone <- n.player.Run(ctx) })
	}
	var err error
	if n.Broadcaster() {
		if n.tracker == nil {
			n.goFunc(func() { n.registerLoop(ctx) })
		}
		err = n.broadcast(ctx)
		n.reasm.End()
		if err == nil && playDone == nil && ctx.Err() == nil {
			// The source ended: closing the links now would discard the
			// last chunks still queued for the children.
			select {
			case <-time.After(endLinger):
			case <-ctx.Done():
			}
		}
		if err == nil && playDone != nil {
			// Let local playout finish the stream.
			select {
			case err = <-playDone:
				playDone = nil
			case <-ctx.Done():
			}
		}
	} else {
		n.goFunc(func() { n.maintain(ctx) })
		<-ctx.Done()
	}
	cancel()
	n.shutdown()
	n.wg.Wait()
	if playDone != nil {
		if perr := <-playDone; err == nil && perr != nil && !errors.Is(perr, context.Canceled) {
			err = perr
		}
	}
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

func (n *Node) goFunc(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

// Close stops the node and waits for every goroutine it started. It is
// idempotent; calls after it return ErrClosed.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.mu.Lock()
		n.closed = true
		cancel, ran := n.cancel, !n.started.IsZero()
		n.mu.Unlock()
		if ran {
			cancel()
			<-n.runDone
		} else {
			n.shutdown()
		}
		if n.player != nil {
			n.player.Close()
		}
		n.closeTransport()
		if n.cfg.Source != nil {
			n.cfg.Source.Close()
		}
	})
	return nil
}

func (n *Node) closeTransport() {
	if n.ownTr {
		n.tr.Close()
	}
}

// shutdown closes every peer link.
func (n *Node) shutdown() {
	n.mu.Lock()
	peers := make([]*peer, 0, len(n.peers))
	for p := range n.peers {
		peers = append(peers, p)
	}
	n.mu.Unlock()
	for _, p := range peers {
		p.conn.Close(codeGoodbye, "leaving")
	}
}

// slots is how many children the upload budget allows.
func (n *Node) slots() int { return n.slotsFor(n.cfg.UploadKbps) }

// slotsFor is how many children an upload budget allows at the stream's
// bitrate (with 5% for protocol overhead); a node with none is a leaf.
func (n *Node) slotsFor(uploadKbps int) int {
	if uploadKbps <= 0 {
		return 0
	}
	kbps := n.kbps.Load()
	if kbps <= 0 {
		kbps = 128
	}
	return int(float64(uploadKbps) / (float64(kbps) * 1.05))
}

func (n *Node) freeSlots() int {
	return max(n.slots()-n.fanout.Len(), 0)
}

// accept takes a chunk that passed every check: it is forwarded, kept and
// played. arrived is when its bytes were received (for the hop figure).
func (n *Node) accept(c *mux.Chunk, arrived time.Time) {
	n.acceptMu.Lock()
	if n.window.Get(c.Seq) != nil {
		n.acceptMu.Unlock()
		return
	}
	n.outputs.WriteChunk(c)
	if !arrived.IsZero() && n.fanout.Len() > 0 {
		n.hop.Record(time.Since(arrived))
	}
	n.arrivals[c.Seq%arrivalRing] = arrival{c.Seq, time.Now().UnixNano()}
	if !n.haveFirst {
		n.haveFirst = true
		n.firstSeq.Store(int64(c.Seq))
	}
	if int64(c.Seq) > n.newest.Load() {
		n.newest.Store(int64(c.Seq))
	}
	n.acceptMu.Unlock()
	if d := c.Duration(); d > 0 {
		n.kbps.Store(int64(len(c.Bytes())) * 8 * int64(time.Second) / int64(d) / 1000)
	}
	now := time.Now()
	if prev := n.lastChunk.Swap(now.UnixNano()); prev != 0 {
		if since := n.parentSince.Load(); since > prev {
			// The first chunk after a parent change: the gap is the recovery.
			n.recovery.Record(now.Sub(time.Unix(0, prev)))
			n.parentSince.Store(0)
		}
	}
	n.chunksIn.Add(1)
	n.bytesIn.Add(int64(len(c.Bytes())))
	if n.player != nil {
		n.reasm.Push(c)
	}
}

const arrivalRing = 64

// endLinger is how long a broadcaster whose source ended keeps its links
// open, so that the last chunks reach its children.
const endLinger = 500 * time.Millisecond

type arrival struct {
	seq uint64
	at  int64 // unix nanos
}

// seenAt is when the first chunk from seq on that we hold was accepted (0
// if none is known).
func (n *Node) seenAt(seq uint64) int64 {
	newest := n.newest.Load()
	n.acceptMu.Lock()
	defer n.acceptMu.Unlock()
	for s := seq; int64(s) <= newest && s < seq+arrivalRing; s++ {
		if a := n.arrivals[s%arrivalRing]; a.seq == s && a.at != 0 {
			return a.at
		}
	}
	return time.Now().UnixNano()
}

// checkChunk parses and verifies a data message from a peer. It returns
// (nil, nil) for a chunk that is honest but not wanted (duplicate, too old).
func (n *Node) checkChunk(b []byte) (*mux.Chunk, error) {
	c, err := mux.ParseChunk(b)
	if err != nil {
		return nil, err
	}
	newest := n.newest.Load()
	if newest >= 0 {
		if int64(c.Seq)+int64(n.cfg.Window) <= newest {
			return nil, nil // older than anything we keep: late
		}
		if int64(c.Seq) > newest+int64(4*n.cfg.Window) && n.window.Get(uint64(newest)) != nil {
			return nil, nil // implausibly far ahead; the signature decides only for plausible ones
		}
	}
	if n.window.Get(c.Seq) != nil {
		return nil, nil // duplicate
	}
	verify := c.Verify
	if n.cfg.SignatureCache != nil {
		verify = func(k ed25519.PublicKey) error { return n.cfg.SignatureCache.Verify(c, k) }
	}
	if err := verify(n.station); err != nil {
		return nil, err
	}
	return c, nil
}

// Stats is a snapshot of a node's figures, with DESIGN.md's definitions.
type Stats struct {
	Broadcaster bool
	Station     string
	// Depth is the hops from the broadcaster (0 for it; -1 while joining).
	Depth    int
	Parents  []string // addresses: the pushing parent first, then the backups
	Children int
	Slots    int
	Peers    int
	Title    string

	ChunksReceived  int64 // accepted (verified, new)
	ChunksForwarded int64 // sent to children
	ChunksDropped   int64 // not sent to a child whose queue was full
	BytesReceived   int64
	BytesSent       int64 // chunk bytes sent to other nodes
	BadChunks       int64 // malformed or forged; their senders were cut off
	Repairs         int64 // chunks requested from neighbours to fill gaps

	Playout playout.Stats
	// Continuity is frames played from received audio / frames due since
	// playback began.
	Continuity float64
	// Startup is from Run to the first PCM handed to the sink (0 before).
	Startup time.Duration
	// Lag is when a frame was handed to the sink minus when the
	// broadcaster's input produced it: quantiles over the chunks received.
	LagP50, LagP95, LagMax time.Duration
	// HopP50 and HopP99 are per-hop delays: a chunk's arrival to its send
	// to the children.
	HopP50, HopP99 time.Duration
	// Recoveries counts parent changes that were followed by audio;
	// RecoveryMax is the longest gap between the last chunk before and the
	// first after such a change.
	Recoveries  uint64
	RecoveryP50 time.Duration
	RecoveryMax time.Duration
}

// Stats returns the node's figures. It is safe from any goroutine.
func (n *Node) Stats() Stats {
	n.mu.Lock()
	s := Stats{
		Broadcaster: n.Broadcaster(),
		Station:     n.addr.String(),
		Depth:       n.depth,
		Peers:       len(n.peers),
		Title:       n.title,
	}
	if n.parent != nil {
		s.Parents = append(s.Parents, n.parent.conn.RemoteAddr())
	}
	for _, b := range n.backups {
		s.Parents = append(s.Parents, b.conn.RemoteAddr())
	}
	started := n.started
	n.mu.Unlock()
	if s.Title == "" && n.Broadcaster() {
		s.Title = n.cfg.Source.Title()
	}
	fs := n.fanout.Stats()
	s.Children, s.Slots = fs.Children, n.slots()
	s.ChunksForwarded, s.ChunksDropped = fs.Sent, fs.Dropped
	s.ChunksReceived, s.BytesReceived = n.chunksIn.Load(), n.bytesIn.Load()
	s.BytesSent = fs.SentBytes + n.bytesOut.Load()
	s.BadChunks = n.badChunks.Load()
	s.Repairs = n.repairs.Load()
	if n.player != nil {
		s.Playout = n.player.Stats()
		s.Continuity = s.Playout.Continuity()
		if !s.Playout.Started.IsZero() && !started.IsZero() {
			s.Startup = s.Playout.Started.Sub(started)
		}
		s.LagP50, s.LagP95, s.LagMax = s.Playout.LagP50, s.Playout.LagP95, s.Playout.MaxLag
	}
	s.HopP50, s.HopP99 = n.hop.Quantile(0.5), n.hop.Quantile(0.99)
	s.Recoveries, s.RecoveryP50, s.RecoveryMax = n.recovery.Count(), n.recovery.Quantile(0.5), n.recovery.Quantile(1)
	return s
}

// selfEntry is how the broadcaster describes itself to its tracker.
func (n *Node) selfEntry() control.PeerInfo {
	return control.PeerInfo{
		ID:         n.id(),
		Addr:       n.tr.Addr(),
		Depth:      0,
		FreeSlots:  n.freeSlots(),
		UploadKbps: n.cfg.UploadKbps,
	}
}
