package p2pradio

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/control/portmap"
	"github.com/p2pradio/p2pradio/input"
	"github.com/p2pradio/p2pradio/internal/stats"
	"github.com/p2pradio/p2pradio/mux"
	"github.com/p2pradio/p2pradio/output"
	"github.com/p2pradio/p2pradio/playout"
)

// Node is a broadcaster or a listener of one station: the junction of the
// five blocks. A broadcaster's chunks come from input through mux; a
// listener's from the overlay (control), which checked them. Both go to
// the outputs (the recent window, the children, HTTP streams) and to
// playout. Create a Node with New, run it with Run, stop it with Close.
// Many Nodes may live in one process.
type Node struct {
	cfg     Config
	key     ed25519.PrivateKey
	station ed25519.PublicKey
	addr    Address
	log     *slog.Logger

	tr    control.Transport
	ownTr bool
	extra []control.Transport // the embedded rendezvous's dial-back and echo sockets, owned
	hub   *browserHub         // browser peers; nil when disabled
	join  *control.Joined     // tr and the hub's WebRTC links, for the overlay
	ov    *control.Overlay
	pm    *portmap.Keeper // the port mapping, when Config.PortMap is set

	window *output.Window
	fanout *output.Fanout
	reasm  *mux.Reassembler
	player *playout.Player

	acceptMu sync.Mutex // one chunk at a time into the outputs; guards outputs
	outputs  []output.Output
	hop      stats.Histogram
	late     atomic.Int64 // the longest arrival-to-fan-out wait since the overlay last asked, ns
	burst    atomic.Int64 // bytes sent to new children outside the fan-out

	chunksIn, bytesIn atomic.Int64

	mu      sync.Mutex
	title   string
	started time.Time // Run was called
	closed  bool

	closeOnce sync.Once
	cancel    context.CancelFunc
	runDone   chan struct{}
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
		cfg.Source = input.WithTitle(cfg.Source) // for SetTitle
	}
	n := &Node{
		cfg:     cfg,
		key:     cfg.Key,
		log:     cfg.Logger,
		runDone: make(chan struct{}),
		window:  output.NewWindow(cfg.Window),
		reasm:   mux.NewReassembler(mux.ReassemblerConfig{}),
	}
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
	}
	n.fanout = output.NewFanout(output.FanoutConfig{OnSlow: n.dropSlowChild})
	n.outputs = append([]output.Output{n.window, n.fanout}, cfg.Outputs...)

	if cfg.Transport == nil {
		qc := control.QUICConfig{ListenAddr: cfg.ListenAddr, Key: n.key, Logger: cfg.Logger}
		if cfg.Source != nil && !cfg.NoTracker {
			qc.MaxConns = trackerConns // a session per registered listener
		}
		tr, err := control.NewQUIC(qc)
		if err != nil {
			return nil, err
		}
		n.tr, n.ownTr = tr, true
	} else {
		n.tr = cfg.Transport
	}
	ovTr := n.tr
	if n.tr.Key().Equal(n.key.Public().(ed25519.PublicKey)) { // pages must see one identity
		hub, err := newBrowserHub(n, cfg.Browsers)
		if err != nil {
			n.closeTransport()
			return nil, err
		}
		if hub != nil {
			n.hub, n.join = hub, control.Join(n.tr, hub.rtc)
			ovTr = n.join
		}
	} else if !cfg.Browsers.Disabled {
		n.log.Info("no browser peers: Config.Key is not the Transport's key")
	}
	oc := control.OverlayConfig{
		Station:        n.station,
		Transport:      ovTr,
		Host:           host{n},
		Window:         n.window,
		Root:           cfg.Source != nil,
		Rendezvous:     n.addr.Rendezvous,
		UploadKbps:     cfg.UploadKbps,
		Burst:          cfg.Burst,
		WindowSize:     cfg.Window,
		StallTimeout:   cfg.StallTimeout,
		Backups:        cfg.Backups,
		SignatureCache: cfg.SignatureCache,
		Load:           n.load,
		Logger:         cfg.Logger,
	}
	if oc.Root {
		if cfg.NoTracker {
			oc.Rendezvous = cfg.Rendezvous
		} else {
			tc := cfg.Tracker
			tc.Station, tc.Logger = control.IDOf(n.station), cmp.Or(tc.Logger, cfg.Logger)
			if n.ownTr && tc.Prober == nil && tc.Echo == nil {
				// Dial-backs come from a second socket, an address no
				// listener has sent to: what gets through reaches anyone.
				// A third answers listeners that check their NAT.
				host, _, _ := net.SplitHostPort(n.tr.Addr())
				for _, t := range []*control.Transport{&tc.Prober, &tc.Echo} {
					tr, err := control.NewQUIC(control.QUICConfig{ListenAddr: net.JoinHostPort(host, "0"), Logger: cfg.Logger})
					if err != nil {
						n.closeTransport()
						return nil, err
					}
					*t = tr
					n.extra = append(n.extra, tr)
				}
			}
			oc.Tracker = control.NewTracker(tc)
		}
		n.addr = Address{Station: n.station, Rendezvous: cmp.Or(oc.Rendezvous, n.tr.Addr())}
	}
	ov, err := control.NewOverlay(oc)
	if err != nil {
		n.closeTransport()
		return nil, err
	}
	n.ov = ov
	if cfg.PortMap != nil && cfg.Source == nil {
		if n.pm, err = n.newPortMap(); err != nil {
			n.closeTransport()
			return nil, err
		}
	}
	if cfg.Source == nil || cfg.Sink != nil || cfg.Playout.Sink != nil {
		pc := cfg.Playout
		pc.Sink = cfg.sink()
		onTitle := pc.OnTitle
		pc.OnTitle = func(t string) {
			n.setTitle(t)
			if onTitle != nil {
				onTitle(t)
			}
		}
		if pc.Logger == nil {
			pc.Logger = cfg.Logger
		}
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
// those cases and an error when the node cannot work at all: the source
// or the sink failed.
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

	var wg sync.WaitGroup
	if n.pm != nil {
		wg.Go(func() { n.pm.Run(ctx) }) // removes the mapping when ctx ends
	}
	wg.Go(func() { n.ov.Run(ctx) })
	var playDone chan error
	if n.player != nil {
		playDone = make(chan error, 1)
		wg.Go(func() { playDone <- n.player.Run(ctx) })
	}
	var err error
	if n.Broadcaster() {
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
	} else if playDone != nil {
		select {
		case err = <-playDone:
			playDone = nil
		case <-ctx.Done():
		}
	} else {
		<-ctx.Done()
	}
	cancel()
	wg.Wait()
	if playDone != nil {
		if perr := <-playDone; err == nil && perr != nil {
			err = perr
		}
	}
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// endLinger is how long a broadcaster whose source ended keeps its links
// open, so that the last chunks reach its children.
const endLinger = 500 * time.Millisecond

// broadcast reads the source until it ends or ctx is done, cutting its
// frames into signed chunks that every output gets as soon as they are
// complete.
func (n *Node) broadcast(ctx context.Context) error {
	src := n.cfg.Source
	stop := context.AfterFunc(ctx, func() { src.Close() })
	defer stop()
	d := mux.NewDemuxerConfig(src, mux.DemuxConfig{Logger: n.log})
	ch := mux.NewChunker(mux.ChunkerConfig{Duration: n.cfg.ChunkDuration, Key: n.key})
	var last time.Time
	err := mux.Pump(d, ch, src.Title, func(c *mux.Chunk) {
		if gap := time.Since(last); gap > 300*time.Millisecond && c.Seq > 0 {
			n.log.Warn("source was late", "gap", gap, "seq", c.Seq)
		}
		last = time.Now()
		n.accept(c, time.Time{})
	})
	switch {
	case ctx.Err() != nil:
		return nil
	case err != nil:
		return fmt.Errorf("p2pradio: source: %w", err)
	}
	n.log.Info("source ended", "frames", d.Stats().Frames)
	return nil
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
		}
		n.ov.Close()
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
	if n.join != nil {
		n.join.Close()
	}
	if n.hub != nil {
		n.hub.close()
	}
	if n.ownTr {
		n.tr.Close()
	}
	for _, t := range n.extra {
		t.Close()
	}
}

// newPortMap makes the Keeper of the transport's port: each mapping it
// gets (or loses) is handed to the overlay, for the rendezvous to dial back.
func (n *Node) newPortMap() (*portmap.Keeper, error) {
	ap, err := netip.ParseAddrPort(n.tr.Addr())
	if err != nil || ap.Port() == 0 {
		return nil, fmt.Errorf("%w: PortMap needs a transport with a port, not %q", ErrBadConfig, n.tr.Addr())
	}
	return portmap.NewKeeper(portmap.KeeperConfig{
		Mapper: n.cfg.PortMap,
		Proto:  "udp",
		Port:   int(ap.Port()),
		Logger: n.log,
		OnChange: func(s portmap.State) {
			addr := ""
			if s.Mapping.External.IsValid() {
				addr = s.Mapping.External.String()
			}
			n.ov.SetMapped(addr)
		},
	}), nil
}

// trackerConns bounds a broadcaster's connections when it embeds the
// rendezvous: each registered listener keeps a session open.
const trackerConns = 20000

// accept takes a chunk that passed every check: it is kept, forwarded and
// played. arrived is when its bytes were received (zero for our own).
func (n *Node) accept(c *mux.Chunk, arrived time.Time) {
	n.acceptMu.Lock()
	if n.window.Get(c.Seq) != nil {
		n.acceptMu.Unlock()
		return
	}
	for _, o := range n.outputs {
		o.WriteChunk(c)
	}
	if !arrived.IsZero() {
		d := time.Since(arrived)
		if n.fanout.Len() > 0 {
			n.hop.Record(d)
		}
		for l := n.late.Load(); int64(d) > l && !n.late.CompareAndSwap(l, int64(d)); l = n.late.Load() {
		}
	}
	n.acceptMu.Unlock()
	n.chunksIn.Add(1)
	n.bytesIn.Add(int64(len(c.Bytes())))
	if n.player != nil {
		n.reasm.Push(c)
	}
}

// load is what the node sees of its own health, for the overlay's
// overload policy: how late chunks went on to the children, and how full
// the playout buffer is.
func (n *Node) load() control.Load {
	l := control.Load{Late: time.Duration(n.late.Swap(0))}
	if n.player != nil {
		ps := n.player.Stats()
		l.Playing, l.Buffered = ps.Playing, ps.Buffered
		l.Target = cmp.Or(n.cfg.Playout.Target, playout.DefaultTarget)
	}
	return l
}

// addOutput makes o receive every chunk from now on, once.
func (n *Node) addOutput(o output.Output) {
	n.acceptMu.Lock()
	defer n.acceptMu.Unlock()
	if !slices.Contains(n.outputs, o) {
		n.outputs = append(n.outputs, o)
	}
}

func (n *Node) dropSlowChild(c output.Peer) {
	if conn, ok := c.(control.Conn); ok {
		n.log.Info("dropping slow child", "addr", conn.RemoteAddr())
		conn.Close(control.CodeSlow, output.ErrSlow.Error())
	}
}

// host is the Node as its overlay sees it (control.Host).
type host struct{ n *Node }

var _ control.Host = host{}

func (h host) Accept(c *mux.Chunk, arrived time.Time) { h.n.accept(c, arrived) }

func (h host) Attach(child output.Peer, from uint64, last int) int {
	n := h.n
	n.acceptMu.Lock()
	defer n.acceptMu.Unlock()
	var burst []*mux.Chunk
	if from > 0 {
		burst = n.window.Since(from)
	} else {
		burst = n.window.Last(last)
	}
	for _, c := range burst {
		if output.Send(child, c) {
			n.burst.Add(int64(len(c.Bytes())))
		}
	}
	n.fanout.Add(child)
	return len(burst)
}

func (h host) Detach(child output.Peer) { h.n.fanout.Remove(child) }

func (h host) Children() int { return h.n.fanout.Len() }
