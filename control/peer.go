package control

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// peer is one link to another node, dialed or accepted.
type peer struct {
	o    *Overlay
	conn Conn
	id   NodeID

	// What the peer told us of itself (Hello and Status).
	mu        sync.Mutex
	depth     int
	freeSlots int
	path      []NodeID
	newest    int64      // its newest chunk's sequence number, -1 none
	upload    int        // its upload budget, kbit/s (Hello)
	have      Have       // its last buffer map
	mapNewest int64      // the newest chunk that map shows, -1 none
	haveAt    time.Time  // when that map came
	listen    string     // where it says it listens (Hello)
	peerList  []PeerInfo // the last PeerList it sent
	helloed   chan struct{}
	welcome   chan answer // the answer to our Subscribe

	dialed bool // we dialed it (a parent or candidate); set before its readers start
	// countsPackets: its Hello said HelloCountsPackets (as our parent it
	// lets us send our Status every childQuiet, not parentQuiet).
	countsPackets atomic.Bool

	child      atomic.Bool  // it subscribed to us: the host feeds it
	childSince atomic.Int64 // unix nanos when it last became our child
	leaving    atomic.Bool  // a child displaced, fed until its replacement joined
	// unsubscribed: it sent us Unsubscribe while it was not our parent
	// (it displaced us before we took it as parent: see takeParent).
	// Cleared when we subscribe; written under o.mu.
	unsubscribed atomic.Bool
	lastNew      atomic.Int64 // unix nanos of the last chunk it sent that we did not have
	// lastAhead: unix nanos of the last chunk it sent that came after
	// every chunk it had sent before, whether we had it or not (see
	// lastFed); sentMax is that chunk's sequence number, -1 none.
	lastAhead atomic.Int64
	sentMax   atomic.Int64
	lastHeard atomic.Int64  // unix nanos of the last message of any kind
	lastUse   atomic.Int64  // unix nanos of the last chunk either way or request
	packets   atomic.Uint64 // its link's packets received at the last look (packetCounter)
	haveSent  atomic.Int64  // unix nanos of the last buffer map sent to answer its Request

	// What broadcastStatus sent it last, and when; its link's data
	// messages sent at the last look, and when that count last moved.
	statusMu   sync.Mutex
	sentStatus *Status
	sentAt     time.Time
	dataSent   uint64
	fedAt      time.Time
}

// answer is a peer's reply to a Subscribe.
type answer struct {
	ok     bool
	reason string
}

func newPeer(o *Overlay, c Conn, dialed bool) *peer {
	p := &peer{
		o:       o,
		conn:    c,
		id:      IDOf(c.RemoteKey()),
		depth:   -1,
		newest:  -1,
		helloed: make(chan struct{}),
		welcome: make(chan answer, 1),
		dialed:  dialed,
	}
	p.sentMax.Store(-1)
	now := time.Now().UnixNano()
	p.lastHeard.Store(now)
	p.lastUse.Store(now)
	return p
}

// startPeer registers the peer and runs its readers until the link closes.
func (o *Overlay) startPeer(ctx context.Context, p *peer) bool {
	o.mu.Lock()
	if o.closed || ctx.Err() != nil {
		o.mu.Unlock()
		p.conn.Close(CodeGoodbye, "leaving")
		return false
	}
	o.peers[p] = struct{}{}
	o.mu.Unlock()
	o.goFunc(func() { o.readControl(ctx, p) })
	o.goFunc(func() { o.readData(ctx, p) })
	return true
}

// dropPeer forgets a closed peer.
func (o *Overlay) dropPeer(p *peer) {
	o.host.Detach(p.conn)
	p.child.Store(false)
	o.mu.Lock()
	delete(o.peers, p)
	lost := o.parent == p
	if lost {
		o.lostGrand = NodeID{}
		if len(o.path) >= 2 {
			o.lostGrand = o.path[len(o.path)-2]
		}
		o.loseParent()
	}
	o.backups = slices.DeleteFunc(o.backups, func(b *peer) bool { return b == p })
	o.mu.Unlock()
	if lost {
		o.markFailed(p.id)
		o.log.Info("parent lost", "addr", p.conn.RemoteAddr(), "err", p.conn.Err())
	}
}

// loseParent forgets the parent; o.mu is held. Until a new parent feeds
// us we refuse subscribers and look unattractive, so that two orphaned
// siblings cannot pick each other and form a loop.
func (o *Overlay) loseParent() {
	o.parent = nil
	o.depth, o.path = -1, nil
}

// readData verifies and accepts the chunks a peer sends.
func (o *Overlay) readData(ctx context.Context, p *peer) {
	for {
		b, err := p.conn.ReceiveData(ctx)
		if err != nil {
			return
		}
		arrived := time.Now()
		p.lastHeard.Store(arrived.UnixNano())
		p.lastUse.Store(arrived.UnixNano())
		if o.cfg.Root {
			continue // the root's chunks come from its source
		}
		c, dup, err := o.checkChunk(b)
		if err != nil {
			o.badChunks.Add(1)
			o.kick(p, CodeBadChunk, err)
			return
		}
		if c != nil {
			p.received(c.Seq, dup, arrived.UnixNano())
		}
		if c != nil && !dup {
			o.accept(c, arrived)
		}
	}
}

// readControl handles a peer's control messages until the link closes.
func (o *Overlay) readControl(ctx context.Context, p *peer) {
	defer o.dropPeer(p)
	defer p.conn.Close(CodeGoodbye, "")
	for {
		b, err := p.conn.Receive(ctx)
		if err != nil {
			return
		}
		p.lastHeard.Store(time.Now().UnixNano())
		m, err := ParseMessage(b)
		if err != nil {
			o.kick(p, CodeBadMessage, err)
			return
		}
		if err := o.handle(ctx, p, m); err != nil {
			o.kick(p, CodeBadMessage, err)
			return
		}
	}
}

var errWrongStation = errors.New("control: peer is on another station")

func (o *Overlay) handle(ctx context.Context, p *peer, m Message) error {
	switch m := m.(type) {
	case *Hello:
		if m.Version != WireVersion {
			p.conn.Close(CodeVersion, errWrongVersion(m.Version).Error())
			return nil
		}
		if m.Station != o.id {
			p.conn.Close(CodeWrongStation, errWrongStation.Error())
			return nil
		}
		if err := o.checkDepth(p, m.Depth); err != nil {
			return err
		}
		p.update(m.Depth, m.FreeSlots, m.Path, m.Newest)
		p.mu.Lock()
		p.listen, p.upload = m.ListenAddr, m.UploadKbps
		p.countsPackets.Store(m.Flags&HelloCountsPackets != 0)
		first := false
		select {
		case <-p.helloed:
		default:
			close(p.helloed)
			first = true
		}
		p.mu.Unlock()
		o.setObserved(m.Observed)
		if first && !p.dialed {
			return o.send(ctx, p, o.hello(p))
		}
	case *Status:
		if err := o.checkDepth(p, m.Depth); err != nil {
			return err
		}
		p.update(m.Depth, m.FreeSlots, m.Path, m.Newest)
		p.mu.Lock()
		p.upload = m.UploadKbps
		p.mu.Unlock()
		o.mu.Lock()
		isParent := o.parent == p
		o.mu.Unlock()
		if isParent {
			o.adoptPath(p)
		}
	case *Subscribe:
		return o.subscribe(ctx, p, m)
	case *Unsubscribe:
		o.unsubscribed(p)
	case *Welcome:
		p.answer(answer{ok: true})
	case *Refuse:
		p.answer(answer{reason: m.Reason})
	case *Request:
		now := time.Now()
		p.lastUse.Store(now.UnixNano())
		short := false
		for _, seq := range m.Seqs {
			c := o.win.Get(seq)
			// Within the budget, else not at all.
			short = short || c == nil || !o.sendChunk(p, c)
		}
		if short && now.Sub(time.Unix(0, p.haveSent.Load())) >= haveAnswerEvery {
			// What we hold instead: a node asking because its parent
			// went silent learns at once whether anyone has newer
			// audio (see judgeStall).
			if h := o.have(); h != nil {
				p.haveSent.Store(now.UnixNano())
				sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
				o.send(sctx, p, h)
				cancel()
			}
		}
	case *PeerList:
		// Candidates learned from neighbours; kept for rejoining.
		o.learn(m.Peers)
		p.mu.Lock()
		p.peerList = m.Peers
		p.mu.Unlock()
	case *Have:
		p.setHave(m)
	default:
		return errors.New("unexpected message")
	}
	return nil
}

var errFalseRoot = errors.New("control: claims depth 0 without the station's key")

// checkDepth refuses a claim that cannot be true: depth 0 belongs to the
// station's own node, which proved the station's key in the handshake.
func (o *Overlay) checkDepth(p *peer, depth int) error {
	if depth == 0 && p.id != o.id {
		return errFalseRoot
	}
	return nil
}

// answer passes the answer to our Subscribe to whoever waits for it.
func (p *peer) answer(a answer) {
	select {
	case p.welcome <- a:
	default:
	}
}

// unsubscribed handles an Unsubscribe. From a child: it leaves. From our
// parent: it displaced us (see subscribe); its PeerList came first, naming
// the node that took our place, which has free slots now: the next join
// tries it first, without a round trip to the rendezvous.
func (o *Overlay) unsubscribed(p *peer) {
	o.host.Detach(p.conn)
	p.child.Store(false)
	p.mu.Lock()
	by := p.peerList
	p.mu.Unlock()
	o.mu.Lock()
	displaced := o.parent == p
	if displaced {
		o.loseParent()
		if len(by) > 0 {
			o.hint = &by[0]
		}
	} else {
		// It welcomed us and displaced us at once, before the search
		// that subscribed took it as parent: that search must not.
		p.unsubscribed.Store(true)
	}
	o.mu.Unlock()
	if displaced {
		o.log.Info("displaced by a relaying node", "parent", p.conn.RemoteAddr())
		p.conn.Close(CodeGoodbye, "displaced")
	}
}

// setHave takes a buffer map the peer sent.
func (p *peer) setHave(m *Have) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.have, p.mapNewest, p.haveAt = *m, m.Newest(), time.Now()
	p.newest = max(p.newest, p.mapNewest)
}

// lastHave returns the newest chunk p's last buffer map showed (-1 none)
// and when that map came.
func (p *peer) lastHave() (int64, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mapNewest, p.haveAt
}

// holds estimates whether p holds chunk seq: 2 when its buffer map says
// so, 1 when seq is past the newest chunk in the map (it has probably
// arrived there since) or, without a map, not past the newest it
// announced; 0 when the map shows a hole there or nothing is known.
func (p *peer) holds(seq uint64) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.have.Has(seq):
		return 2
	case p.have.Bitmap != nil && seq > p.have.First && int64(seq) > p.mapNewest:
		return 1
	case p.have.Bitmap == nil && int64(seq) <= p.newest:
		return 1
	}
	return 0
}

func (p *peer) update(depth, free int, path []NodeID, newest uint64) {
	p.mu.Lock()
	p.depth, p.freeSlots, p.path, p.newest = depth, free, path, int64(newest)-1
	p.mu.Unlock()
}

// state describes p for Stats.
func (p *peer) state() PeerState {
	p.mu.Lock()
	defer p.mu.Unlock()
	addr := p.listen
	if ap, err := netip.ParseAddrPort(addr); err != nil || ap.Addr().IsUnspecified() {
		addr = p.conn.RemoteAddr() // it listens on every address: where we reach it
	}
	return PeerState{ID: p.id, Addr: addr, Depth: p.depth}
}

// page reports whether p is a station page: its link is a browser's, or
// its Hello had no ListenAddr (nobody can dial it), so it is never offered
// to other nodes.
func (p *peer) page() bool {
	if fromBrowser(p.conn) {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.listen == ""
}

// info describes p as a candidate for others (peer exchange).
func (p *peer) info() PeerInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return PeerInfo{ID: p.id, Addr: p.conn.RemoteAddr(), Depth: p.depth, FreeSlots: p.freeSlots, UploadKbps: p.upload}
}

// snapshot is what a policy needs of p, read under its lock once. Its
// path is p's own, clipped: a path is replaced whole (update), never
// changed in place, and an append to the view's copies it.
func (p *peer) snapshot() peerView {
	p.mu.Lock()
	defer p.mu.Unlock()
	apart := mappedApart(p.listen, p.conn.RemoteAddr())
	return peerView{id: p.id, depth: p.depth, free: p.freeSlots, path: slices.Clip(p.path), newest: p.newest, upload: p.upload,
		restricted: p.upload <= 0 && apart, apart: apart, public: p.listen != "" && p.listen == p.conn.RemoteAddr()}
}

// appendSnapshots appends the snapshots of ps to dst.
func appendSnapshots(dst []peerView, ps []*peer) []peerView {
	for _, p := range ps {
		dst = append(dst, p.snapshot())
	}
	return dst
}

// fedThrough is p.snapshot().fedThrough(ids) without the rest of the
// snapshot, for the checks that need only the path.
func (p *peer) fedThrough(ids []NodeID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return peerView{id: p.id, path: p.path}.fedThrough(ids)
}

// statusDue reports whether p is to be sent st now, and if so records it
// as sent: always, unless the link is quiet (quiet > 0), the last Status
// sent said the same (its newest chunk aside: the chunks say that) and it
// went less than quiet ago (half a statusEvery of slack, so that a 2 s
// interval is every second tick).
func (p *peer) statusDue(st *Status, now time.Time, quiet time.Duration) bool {
	p.statusMu.Lock()
	defer p.statusMu.Unlock()
	if quiet > 0 && p.sentStatus != nil && sameStatus(p.sentStatus, st) && now.Sub(p.sentAt) < quiet-statusEvery/2 {
		return false
	}
	p.sentStatus, p.sentAt = st, now
	return true
}

// sameStatus reports whether a and b say the same but for the newest chunk.
func sameStatus(a, b *Status) bool {
	return a.Depth == b.Depth && a.FreeSlots == b.FreeSlots && a.UploadKbps == b.UploadKbps && slices.Equal(a.Path, b.Path)
}

// fedWithin reports whether the count of data messages sent on p's link,
// now sent, has moved within d before now.
func (p *peer) fedWithin(sent uint64, now time.Time, d time.Duration) bool {
	p.statusMu.Lock()
	defer p.statusMu.Unlock()
	if sent != p.dataSent {
		p.dataSent, p.fedAt = sent, now
	}
	return !p.fedAt.IsZero() && now.Sub(p.fedAt) < d
}

// received records chunk seq from p, arrived at unix nanos at: new to
// us unless dup. Only p's data reader calls it.
func (p *peer) received(seq uint64, dup bool, at int64) {
	if int64(seq) > p.sentMax.Load() {
		p.sentMax.Store(int64(seq))
		p.lastAhead.Store(at)
	}
	if !dup {
		p.lastNew.Store(at)
	}
}

// lastFed is when p, as our parent, last fed us: its last chunk that we
// did not have, or that came after all it had sent before though we had
// it already. A parent whose own parent died relays what it pulls from
// its backups, and so do its children: each asks its own backups too
// (judgeStall), and whichever answer comes first makes the other a
// duplicate. Counting only chunks new to us, the whole subtree below a
// dead node judged its parents stalled within the same tick and scattered
// to its backups (in the 1,000-node swarm under churn, a subtree of nodes
// 8 deep went to 12 and 13 at once), where the subtree should have moved
// as one with the dead node's child. A parent that only repeats old
// chunks still feeds us nothing.
func (p *peer) lastFed() int64 { return max(p.lastNew.Load(), p.lastAhead.Load()) }
