package control

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pradio/p2pradio/internal/stats"
	"github.com/p2pradio/p2pradio/mux"
	"github.com/p2pradio/p2pradio/output"
)

// Close codes an Overlay gives the peers it disconnects.
const (
	CodeBadChunk     uint64 = 16 // a chunk failed to parse or verify
	CodeBadMessage   uint64 = 17 // a control message was malformed or out of place
	CodeSlow         uint64 = 18 // a child could not keep up
	CodeWrongStation uint64 = 19 // the peer relays another station
	CodeGoodbye      uint64 = 20 // the node is leaving the link
	CodeVersion      uint64 = 21 // the peer speaks another WireVersion
	CodeIdle         uint64 = 22 // the peer neither fed us nor was fed
)

// Host is the node an Overlay serves: its data path. The overlay hands it
// every chunk that passed its checks and asks it to feed children;
// p2pradio.Node implements it. Its methods are called from many
// goroutines and must not block on the network.
type Host interface {
	// Accept takes a chunk that passed every check (parsed, fresh, signed
	// by the station, not held yet): the host keeps it in its Window,
	// forwards it to its children and plays it. arrived is when its bytes
	// came in.
	Accept(c *mux.Chunk, arrived time.Time)
	// Attach makes child one of the host's children: it is sent the held
	// chunks from sequence number from on (from 0: the last n), then every
	// chunk accepted after, with none missed or sent twice between the
	// two. It returns how many chunks the first part had.
	Attach(child output.Peer, from uint64, n int) int
	// Detach stops sending to child; a child not attached is ignored.
	Detach(child output.Peer)
	// Children is how many children are attached.
	Children() int
}

// Window is the host's recent chunks, which the overlay reads to answer
// repair requests and to build its buffer map. output.Window implements it.
type Window interface {
	// Get returns chunk seq if held, else nil.
	Get(seq uint64) *mux.Chunk
	// Newest returns the highest sequence number held (false: none yet).
	Newest() (uint64, bool)
}

var _ Window = (*output.Window)(nil)

// OverlayConfig configures an Overlay. Station, Transport, Host and Window
// are required; every other zero field means its documented default.
type OverlayConfig struct {
	// Station is the station's key: only chunks it signed are accepted.
	Station ed25519.PublicKey
	// Transport carries the links. The overlay does not close it.
	Transport Transport
	// Host receives the chunks; Window is its recent chunks.
	Host   Host
	Window Window

	// Root makes this overlay the broadcaster's: depth 0, never a parent
	// of its own, chunks come from Host, not from peers.
	Root bool
	// Tracker, when set, is the rendezvous this overlay serves to peers
	// that send Register (a broadcaster embeds one by default).
	Tracker *Tracker
	// Rendezvous is the tracker's address to register with. Empty at a
	// root with a Tracker.
	Rendezvous string

	// UploadKbps is the upload budget for children, repair and pulls. The
	// number of child slots is the budget divided by the stream's bitrate;
	// zero or negative means no children (a leaf).
	UploadKbps int
	// Burst is how many recent chunks a new child is sent at once. Zero
	// means those of the last 1.2 s (burstAudio): 6 of the default 200 ms
	// chunks, 12 of 100 ms.
	Burst int
	// WindowSize is how many recent chunks Window holds: chunks older than
	// that behind the newest are not accepted. Zero means 50.
	WindowSize int
	// StallTimeout is how long without a chunk from the parent before it
	// is replaced. Zero means 1 s.
	StallTimeout time.Duration
	// Backups is how many warm backups to keep besides the parent. Zero
	// means 2; negative means none.
	Backups int
	// Load, when set, is called every half second from one goroutine
	// for what the host sees of its own health (see Load): with it, the
	// overload policy also judges the host's data path and playout, not
	// only the sends to children. It must not block.
	Load func() Load
	// SignatureCache, when set, is shared by the overlays of one process
	// (a simulation) so that each chunk's signature is checked once.
	SignatureCache *mux.SignatureCache
	// Logger receives structured logs. Nil means silent.
	Logger *slog.Logger
}

func (c *OverlayConfig) setDefaults() error {
	switch {
	case len(c.Station) != ed25519.PublicKeySize:
		return errors.New("control: OverlayConfig.Station is not an ed25519 key")
	case c.Transport == nil || c.Host == nil || c.Window == nil:
		return errors.New("control: OverlayConfig needs Transport, Host and Window")
	case c.Root && !c.Transport.Key().Equal(c.Station):
		return errors.New("control: a root's Transport must have the station's key")
	case !c.Root && c.Rendezvous == "":
		return errors.New("control: a listener's OverlayConfig needs Rendezvous")
	case c.Root && c.Tracker == nil && c.Rendezvous == "":
		return errors.New("control: a root needs a Tracker or a Rendezvous")
	}
	if c.WindowSize <= 0 {
		c.WindowSize = 50
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = time.Second
	}
	if c.Backups == 0 {
		c.Backups = 2
	}
	c.Backups = max(c.Backups, 0)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Overlay is one node's part of the overlay: its links to other nodes,
// the parent that pushes the stream to it, warm backups, children; joining
// through the rendezvous, stall detection, repair, climbing and peer
// exchange. Create it with NewOverlay, run it with Run, stop it with Close.
type Overlay struct {
	cfg   OverlayConfig
	log   *slog.Logger
	self  NodeID
	id    NodeID // the station's
	host  Host
	win   Window
	slots slotBudget

	mu      sync.Mutex
	peers   map[*peer]struct{}
	parent  *peer
	backups []*peer // warm, fed by none of our ancestors; the first is promoted first
	depth   int
	path    []NodeID // root first, parent last
	heard   []PeerInfo
	failed  map[NodeID]time.Time // peers that died or did not answer lately
	report  []NodeID             // failures not yet reported to the rendezvous
	hint    *PeerInfo            // a parent to try first on the next join
	waiting string               // why we have no parent: the last refusal or failed search
	closed  bool
	// lostGrand is our parent's parent when our parent died (see
	// reclaim), zero when tried or when our parent was the root.
	lostGrand NodeID

	subMu    sync.Mutex // one subscription at a time: the free-slot check and the attach
	admitMu  sync.Mutex // one accepted peer at a time: the budgets and the admission
	recv     received
	observed atomic.Pointer[string] // our address as the last peer or tracker saw it
	reach    atomic.Uint32          // a Reach: what the rendezvous's dial-back found
	nat      atomic.Uint32          // a NATBehaviour: what checkNAT found
	mapped   atomic.Pointer[string] // our port mapping's address (SetMapped)
	live     atomic.Uint64          // the station's live edge as the rendezvous said (Candidates.Live)

	repairs, badChunks, bytesOut atomic.Int64
	pullMu                       sync.Mutex
	pulls                        tokenBucket // what the upload budget leaves for repair and bridge answers
	pullsRefused                 atomic.Int64
	recovery                     stats.Histogram
	load                         loadState
	starved                      atomic.Int64 // how late the load loop ran lately, ns (see patience)
	parentSince                  atomic.Int64 // unix nanos of the last parent loss
	lastChunk                    atomic.Int64 // unix nanos of the last chunk accepted

	cancel  context.CancelFunc
	started chan struct{}
	wg      sync.WaitGroup
}

// NewOverlay checks cfg and returns an Overlay. It does no I/O.
func NewOverlay(cfg OverlayConfig) (*Overlay, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	o := &Overlay{
		cfg:     cfg,
		log:     cfg.Logger,
		self:    IDOf(cfg.Transport.Key()),
		id:      IDOf(cfg.Station),
		host:    cfg.Host,
		win:     cfg.Window,
		slots:   slotBudget{uploadKbps: cfg.UploadKbps},
		peers:   make(map[*peer]struct{}),
		failed:  make(map[NodeID]time.Time),
		depth:   -1,
		started: make(chan struct{}),
	}
	o.recv.first.Store(-1)
	if cfg.Root {
		o.depth = 0
	}
	return o, nil
}

// Run runs the overlay until ctx is done or Close is called; it returns
// nil then. A root's overlay serves peers (and its Tracker); a listener's
// also keeps itself joined.
func (o *Overlay) Run(ctx context.Context) error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return ErrClosed
	}
	select {
	case <-o.started:
		o.mu.Unlock()
		return errors.New("control: Overlay.Run called twice")
	default:
	}
	ctx, o.cancel = context.WithCancel(ctx)
	close(o.started)
	o.mu.Unlock()

	o.goFunc(func() { o.acceptLoop(ctx) })
	o.goFunc(func() { o.statusLoop(ctx) })
	o.goFunc(func() { o.loadLoop(ctx) })
	if o.cfg.Root {
		o.goFunc(func() { o.rootLoop(ctx) })
		if t := o.cfg.Tracker; t != nil && t.cfg.Echo != nil {
			o.goFunc(func() { ServeEcho(ctx, t.cfg.Echo, o.id) })
		}
	} else {
		o.goFunc(func() { newMaintainer(o).run(ctx) })
	}
	<-ctx.Done()
	o.shutdown()
	o.wg.Wait()
	return nil
}

// Close stops the overlay, closes every link it holds and waits for every
// goroutine it started. It is idempotent.
func (o *Overlay) Close() error {
	o.mu.Lock()
	o.closed = true
	cancel := o.cancel
	o.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	o.shutdown()
	o.wg.Wait()
	return nil
}

func (o *Overlay) goFunc(f func()) {
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		f()
	}()
}

// shutdown closes every peer link.
func (o *Overlay) shutdown() {
	for _, p := range o.peerList() {
		p.conn.Close(CodeGoodbye, "leaving")
	}
}

func (o *Overlay) peerList() []*peer {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]*peer, 0, len(o.peers))
	for p := range o.peers {
		out = append(out, p)
	}
	return out
}

// acceptLoop takes incoming links: rendezvous sessions (with a Tracker)
// and peers.
func (o *Overlay) acceptLoop(ctx context.Context) {
	for {
		c, err := o.cfg.Transport.Accept(ctx)
		if err != nil {
			return
		}
		o.goFunc(func() { o.serveIncoming(ctx, c) })
	}
}

// firstMessageTimeout is how long an incoming link may take to say what
// it is.
const firstMessageTimeout = 3 * time.Second

// readFirst reads an incoming link's first message, which tells what the
// link is for. It closes c and returns nil when none comes in time or it
// is malformed.
func readFirst(ctx context.Context, c Conn) Message {
	fctx, cancel := context.WithTimeout(ctx, firstMessageTimeout)
	b, err := c.Receive(fctx)
	cancel()
	if err != nil {
		c.Close(CodeBadMessage, "no first message")
		return nil
	}
	m, err := ParseMessage(b)
	if err != nil {
		c.Close(CodeBadMessage, err.Error())
		return nil
	}
	return m
}

// serveIncoming serves an incoming link by its first message.
func (o *Overlay) serveIncoming(ctx context.Context, c Conn) {
	switch m := readFirst(ctx, c).(type) {
	case nil:
	case *Register:
		if o.cfg.Tracker == nil || fromBrowser(c) {
			c.Close(CodeBadMessage, "no rendezvous here")
			return
		}
		o.cfg.Tracker.Serve(ctx, c, m)
	case *Hello:
		p := newPeer(o, c, false)
		o.admitMu.Lock() // the budget check and the admission, one peer at a time
		why := o.makeRoom(p)
		started := why == "" && o.startPeer(ctx, p)
		o.admitMu.Unlock()
		if why != "" {
			c.Close(CodeRefused, why)
		}
		if !started {
			return
		}
		if err := o.handle(ctx, p, m); err != nil {
			o.kick(p, CodeBadMessage, err)
		}
	default:
		c.Close(CodeBadMessage, "unexpected first message")
	}
}

// statusEvery is how often statusLoop runs: every neighbour hears our
// Status (on quiet links, only when it changed or is due: see quietFor),
// backup keepers our buffer map, and links that carry nothing are dropped.
const statusEvery = time.Second

// Quiet links. A Status every second tells a neighbour that we are alive.
// Where something else tells it, a link is quiet: our Status goes only
// when it changed (depth, free slots, upload, path), or at the latest
// after the link's quiet interval. At a node with many children, most of
// its control traffic was these Status messages.
const (
	// childQuiet is for a child we feed: each chunk is a sign of life to
	// it (its silentAfter rule counts any message, data too).
	childQuiet = 5 * time.Second
	// parentQuiet is for a parent that feeds us over a transport that
	// counts packets (QUIC): our acknowledgements of its chunks are signs
	// of life to it (dropIdle). Not longer: a node from before that rule
	// drops a child silent for silentAfter (3 s). A parent whose Hello
	// says HelloCountsPackets gets childQuiet: at a station with 100
	// children their Status, and our acknowledgements of them, were
	// about a twentieth of its CPU.
	parentQuiet = 2 * time.Second
)

// statusLoop tells every neighbour this node's depth, free slots and
// newest chunk once a second (quiet links less often), and those that
// keep it as a backup its buffer map; it drops links that carry nothing.
func (o *Overlay) statusLoop(ctx context.Context) {
	t := time.NewTicker(statusEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		o.broadcastStatus(ctx)
		o.dropIdle(time.Now())
	}
}

// broadcastStatus sends every neighbour our Status, except on quiet links
// where it has not changed and is not due, and those that keep us as a
// backup (they dialed us and are not our children) our buffer map.
func (o *Overlay) broadcastStatus(ctx context.Context) {
	now := time.Now()
	st := o.status()
	msg := AppendMessage(nil, st)
	o.mu.Lock()
	parent := o.parent
	o.mu.Unlock()
	var have []byte // built for the first peer that keeps us as a backup
	for _, p := range o.peerList() {
		keeper := !p.dialed && !p.child.Load()
		if !p.statusDue(st, now, o.quietFor(p, p == parent, now)) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		p.conn.Send(sctx, msg)
		if keeper {
			if have == nil {
				if h := o.have(); h != nil {
					have = AppendMessage(nil, h)
				}
			}
			if have != nil {
				p.conn.Send(sctx, have)
			}
		}
		cancel()
	}
}

// quietFor is p's quiet interval, or 0 when the link is not quiet and p
// hears our Status every statusEvery: a child we fed within the last
// statusEvery or so gets childQuiet; our parent, when it fed us as lately
// and the link counts packets, parentQuiet, or childQuiet when its Hello
// said it counts them too (HelloCountsPackets).
func (o *Overlay) quietFor(p *peer, isParent bool, now time.Time) time.Duration {
	const lately = statusEvery + statusEvery/2
	switch {
	case p.child.Load():
		if sc, ok := p.conn.(statser); ok && p.fedWithin(sc.Stats().DataSent, now, lately) {
			return childQuiet
		}
	case isParent:
		if _, ok := p.conn.(packetCounter); ok && now.Sub(time.Unix(0, p.lastNew.Load())) < lately {
			if p.countsPackets.Load() {
				return childQuiet
			}
			return parentQuiet
		}
	}
	return 0
}

// haveSpan is how many chunks, up to the newest, a buffer map covers.
const haveSpan = 64

// have is this node's buffer map (nil before its first chunk).
func (o *Overlay) have() *Have {
	newest, ok := o.win.Newest()
	if !ok {
		return nil
	}
	first := newest - min(newest, haveSpan-1)
	if f := o.recv.first.Load(); f >= 0 {
		first = max(first, uint64(f))
	}
	return NewHave(first, newest, func(s uint64) bool { return o.win.Get(s) != nil })
}

// newest is the highest sequence number held, -1 before the first chunk.
func (o *Overlay) newest() int64 {
	if s, ok := o.win.Newest(); ok {
		return int64(s)
	}
	return -1
}

// askFrom is the first chunk worth asking a neighbour for: our newest,
// or a little before the live edge when we hold nothing that recent.
func (o *Overlay) askFrom() int64 {
	return max(o.newest(), int64(o.live.Load())-5)
}

// status is this node's current Status message.
func (o *Overlay) status() *Status {
	o.mu.Lock()
	defer o.mu.Unlock()
	return &Status{Depth: o.depth, FreeSlots: o.freeSlots(), UploadKbps: o.uploadClaim(), Path: o.path, Newest: uint64(o.newest() + 1)}
}

// hello is what this node says of itself to p.
func (o *Overlay) hello(p *peer) *Hello {
	h := &Hello{Station: o.id, UploadKbps: o.uploadClaim(), ListenAddr: o.cfg.Transport.Addr(), Flags: HelloCountsPackets}
	if !p.dialed {
		h.Observed = p.conn.RemoteAddr()
	}
	o.mu.Lock()
	h.Depth, h.FreeSlots, h.Path, h.Newest = o.depth, o.freeSlots(), o.path, uint64(o.newest()+1)
	o.mu.Unlock()
	return h
}

// burstAudio is how much audio a new child is sent at once when
// OverlayConfig.Burst is zero: a little more than the default playout
// target (1 s), the buffer a listener plays with and so most of its lag.
const burstAudio = 1200 * time.Millisecond

// burst is how many recent chunks a new child is sent at once: Burst, or
// the chunks of burstAudio at the duration of the newest chunk (12 before
// the first).
func (o *Overlay) burst() int {
	if o.cfg.Burst > 0 {
		return o.cfg.Burst
	}
	d := 100 * time.Millisecond
	if newest, ok := o.win.Newest(); ok {
		if c := o.win.Get(newest); c != nil && c.Duration() > 0 {
			d = c.Duration()
		}
	}
	return max(1, int((burstAudio+d-1)/d))
}

// freeSlots is how many more children the upload budget allows, fewer
// after an overload (see slotCap).
func (o *Overlay) freeSlots() int {
	return max(o.capSlots(o.maxChildren())-o.host.Children(), 0)
}

// maxChildren is how many children the node takes: what its budget allows,
// none while the rendezvous finds it unreachable and no punch can open its
// NAT (no one it has not contacted can dial it: it sits below the relays,
// as a leaf).
func (o *Overlay) maxChildren() int {
	if !o.cfg.Root && Reach(o.reach.Load()) == ReachUnreachable && NATBehaviour(o.nat.Load()) != NATPreserves {
		return 0
	}
	return o.slots.slots(o.bitrate())
}

// uploadClaim is the upload budget this node states to others: none while
// it cannot take children.
func (o *Overlay) uploadClaim() int {
	if o.maxChildren() == 0 {
		return 0
	}
	return o.cfg.UploadKbps
}

// bitrate is the stream's bitrate in kbit/s, from the newest chunk held
// (0 before the first).
func (o *Overlay) bitrate() int {
	newest, ok := o.win.Newest()
	if !ok {
		return 0
	}
	c := o.win.Get(newest)
	if c == nil || c.Duration() <= 0 {
		return 0
	}
	return int(int64(len(c.Bytes())) * 8 * int64(time.Second) / int64(c.Duration()) / 1000)
}

// slotBudget turns an upload budget into child slots.
type slotBudget struct{ uploadKbps int }

// slots is how many children the budget allows at the stream's bitrate
// (128 kbit/s until it is known), with 5% for protocol overhead; a node
// with none is a leaf.
func (b slotBudget) slots(kbps int) int {
	if b.uploadKbps <= 0 {
		return 0
	}
	if kbps <= 0 {
		kbps = 128
	}
	return int(float64(b.uploadKbps) / (float64(kbps) * 1.05))
}

// PeerState is one neighbour as this node sees it.
type PeerState struct {
	ID    NodeID
	Addr  string // where it listens (its Hello), else the observed address
	Depth int
}

// OverlayStats is a snapshot of an Overlay.
type OverlayStats struct {
	Depth    int         // hops from the broadcaster; -1 while joining
	Parents  []PeerState // the pushing parent first, then the backups
	Children []PeerState
	Slots    int // children the budget allows
	// BitrateKbps is the stream's, chunk overhead included (0 before the
	// first chunk).
	BitrateKbps int
	Peers       int // links of every kind
	// Observed is this node's address as a peer or the rendezvous last saw
	// it (its public address behind a NAT); empty until told.
	Observed string
	// Reach is what the rendezvous's dial-back found; NAT what the node
	// found out about its NAT's mapping when unreachable.
	Reach Reach
	NAT   NATBehaviour
	// Waiting says why a listener has no parent (empty when it has one).
	Waiting string

	BytesSent int64 // chunk bytes sent outside the host's fan-out (repair, bridge)
	// PullsRefused counts requested chunks not sent: the upload budget
	// had nothing left beside the children's stream.
	PullsRefused int64
	BadChunks    int64 // malformed or forged; their senders were cut off
	// Shed counts children closed with CodeOverloaded because this node
	// could not keep up; Overloaded is true while it advertises fewer
	// free slots than its budget allows for that reason.
	Shed       int64
	Overloaded bool
	Repairs    int64 // chunks requested from neighbours to fill gaps
	// Recoveries counts parent losses that were followed by audio;
	// RecoveryP50 and RecoveryMax are of the gap between the last chunk
	// before and the first after.
	Recoveries               uint64
	RecoveryP50, RecoveryMax time.Duration
}

// Stats returns the overlay's figures. It is safe from any goroutine.
func (o *Overlay) Stats() OverlayStats {
	kbps := o.bitrate()
	s := OverlayStats{
		Slots:        o.slots.slots(kbps),
		BitrateKbps:  kbps,
		BytesSent:    o.bytesOut.Load(),
		PullsRefused: o.pullsRefused.Load(),
		BadChunks:    o.badChunks.Load(),
		Repairs:      o.repairs.Load(),
		Recoveries:   o.recovery.Count(),
		RecoveryP50:  o.recovery.Quantile(0.5),
		RecoveryMax:  o.recovery.Quantile(1),
		Overloaded:   o.overloaded(),
	}
	o.load.mu.Lock()
	s.Shed = o.load.shed
	o.load.mu.Unlock()
	if a := o.observed.Load(); a != nil {
		s.Observed = *a
	}
	s.Reach = Reach(o.reach.Load())
	s.NAT = NATBehaviour(o.nat.Load())
	o.mu.Lock()
	s.Depth, s.Peers = o.depth, len(o.peers)
	links := append([]*peer{o.parent}, o.backups...)
	var children []*peer
	for p := range o.peers {
		if p.child.Load() {
			children = append(children, p)
		}
	}
	if o.parent == nil && !o.cfg.Root {
		s.Waiting = o.waiting
		if s.Waiting == "" {
			s.Waiting = "looking for a parent"
		}
	}
	o.mu.Unlock()
	for _, p := range links {
		if p != nil {
			s.Parents = append(s.Parents, p.state())
		}
	}
	for _, p := range children {
		s.Children = append(s.Children, p.state())
	}
	return s
}

// Tracker is the rendezvous this overlay serves, or nil.
func (o *Overlay) Tracker() *Tracker { return o.cfg.Tracker }

// ID is this node's identity on the overlay.
func (o *Overlay) ID() NodeID { return o.self }

// received keeps what the overlay needs to know of the chunks it accepted
// from peers: the first one, and when recent ones arrived (repair asks for
// a chunk only once a later one has been here a while).
type received struct {
	first atomic.Int64 // the first chunk accepted, -1 none
	mu    sync.Mutex
	ring  [arrivalRing]arrival
}

const arrivalRing = 64

type arrival struct {
	seq uint64
	at  int64 // unix nanos
}

func (r *received) record(seq uint64, at time.Time) {
	r.first.CompareAndSwap(-1, int64(seq))
	r.mu.Lock()
	r.ring[seq%arrivalRing] = arrival{seq, at.UnixNano()}
	r.mu.Unlock()
}

// seenAt is when the first chunk from seq on up to newest that we hold was
// accepted (now if none is known).
func (r *received) seenAt(seq uint64, newest int64) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	for s := seq; int64(s) <= newest && s < seq+arrivalRing; s++ {
		if a := r.ring[s%arrivalRing]; a.seq == s && a.at != 0 {
			return time.Unix(0, a.at)
		}
	}
	return time.Now()
}

// checkChunk parses and verifies a data message from a peer. It returns
// (nil, false, nil) for a chunk that is too old or a copy of one we hold
// with other bytes, and a duplicate (the bytes we hold: not verified
// again) with dup set.
func (o *Overlay) checkChunk(b []byte) (c *mux.Chunk, dup bool, err error) {
	if o.cfg.SignatureCache != nil {
		// The very bytes another node of the process parsed and verified.
		c = o.cfg.SignatureCache.Lookup(b, o.cfg.Station)
	}
	verified := c != nil
	if c == nil {
		if c, err = mux.ParseChunk(b); err != nil {
			return nil, false, err
		}
	}
	// Older than anything we keep, or than a window behind the live edge
	// the rendezvous told us: late or stale, whoever sends it. (A chunk
	// far ahead of our newest is checked like any other: if its signature
	// holds, the live edge has moved on, and so do we.)
	if floor := max(o.newest()+1, int64(o.live.Load())) - int64(o.cfg.WindowSize); int64(c.Seq) < floor {
		return nil, false, nil
	}
	if held := o.win.Get(c.Seq); held != nil {
		// A duplicate is not verified again; it counts (as a parent
		// feeding us, see peer.lastFed) only if it is the very chunk we
		// hold: a forged copy of a chunk we pulled elsewhere must not
		// make a silent parent look alive.
		if verified || bytes.Equal(held.Bytes(), b) {
			return c, true, nil
		}
		return nil, false, nil
	}
	switch {
	case verified:
	case o.cfg.SignatureCache != nil:
		err = o.cfg.SignatureCache.Verify(c, o.cfg.Station)
	default:
		err = c.Verify(o.cfg.Station)
	}
	if err != nil {
		return nil, false, err
	}
	return c, false, nil
}

// accept hands a checked chunk from a peer to the host and keeps the
// figures.
func (o *Overlay) accept(c *mux.Chunk, arrived time.Time) {
	o.recv.record(c.Seq, arrived)
	o.host.Accept(c, arrived)
	if prev := o.lastChunk.Swap(arrived.UnixNano()); prev != 0 {
		if since := o.parentSince.Load(); since > prev {
			// The first chunk after a parent loss: the gap is the recovery.
			o.recovery.Record(arrived.Sub(time.Unix(0, prev)))
			o.log.Debug("recovered", "gap", arrived.Sub(time.Unix(0, prev)), "orphaned", arrived.Sub(time.Unix(0, since)))
			o.parentSince.Store(0)
		}
	}
}

// sendChunk sends one chunk outside the host's fan-out (repair, bridge),
// within what the upload budget leaves beside the children (pullRate);
// it reports false when the budget is spent.
func (o *Overlay) sendChunk(p *peer, c *mux.Chunk) bool {
	n := len(c.Bytes())
	rate := pullRate(o.cfg.UploadKbps, o.host.Children(), o.bitrate())
	o.pullMu.Lock()
	ok := o.pulls.take(n, rate, time.Now())
	o.pullMu.Unlock()
	if !ok {
		o.log.Debug("pull refused", "to", p.conn.RemoteAddr(), "children", o.host.Children())
		o.pullsRefused.Add(1)
		return false
	}
	if output.Send(p.conn, c) {
		o.bytesOut.Add(int64(n))
	}
	return true
}

// send sends one control message, giving up after a few seconds.
func (o *Overlay) send(ctx context.Context, p *peer, m Message) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return p.conn.Send(ctx, AppendMessage(nil, m))
}

// kick disconnects a misbehaving peer.
func (o *Overlay) kick(p *peer, code uint64, why error) {
	o.log.Warn("disconnecting peer", "addr", p.conn.RemoteAddr(), "why", why)
	p.conn.Close(code, why.Error())
}

// SetMapped tells the overlay the address that a port mapping on our
// router forwards to our socket ("" when there is none or no longer): the
// next registration with the rendezvous carries it (Register.Mapped), and
// the rendezvous dials it back. Until that dial-back got through, the node
// counts as reachable no more than before. Safe from any goroutine.
func (o *Overlay) SetMapped(addr string) { o.mapped.Store(&addr) }

// mappedAddr is the address SetMapped last set ("" none).
func (o *Overlay) mappedAddr() string {
	if a := o.mapped.Load(); a != nil {
		return *a
	}
	return ""
}

// setObserved records our address as someone else saw it.
func (o *Overlay) setObserved(addr string) {
	if addr != "" {
		o.observed.Store(&addr)
	}
}

// rootLoop keeps a broadcaster's entry at the rendezvous fresh: an
// external one's by registering; its embedded Tracker asks for the entry
// when it needs it (Tracker.SetSelfFunc).
func (o *Overlay) rootLoop(ctx context.Context) {
	if o.cfg.Tracker != nil {
		o.cfg.Tracker.SetSelfFunc(func() (PeerInfo, uint64) {
			return o.selfEntry(), uint64(o.newest() + 1)
		})
		return
	}
	rv := newRendezvous(o)
	defer rv.close()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		rv.maybeRegister(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// selfEntry is how a root describes itself to its embedded tracker.
func (o *Overlay) selfEntry() PeerInfo {
	return PeerInfo{ID: o.self, Addr: o.cfg.Transport.Addr(), Depth: 0, FreeSlots: o.freeSlots(), UploadKbps: o.cfg.UploadKbps}
}

// errWrongVersion is the reason given to a peer that speaks another
// WireVersion.
func errWrongVersion(v uint8) error {
	return fmt.Errorf("control: wire version %d, this node speaks %d", v, WireVersion)
}
