package p2pradio

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/mux"
	"github.com/p2pradio/p2pradio/output"
)

// peer is one link to another node, dialed or accepted.
type peer struct {
	n    *Node
	conn control.Conn
	id   control.NodeID

	// What the peer told us of itself (Hello and Status).
	mu        sync.Mutex
	depth     int
	freeSlots int
	path      []control.NodeID
	newest    int64              // its newest chunk's sequence number, -1 none
	upload    int                // its upload budget, kbit/s (Hello)
	have      control.Have       // its last buffer map
	mapNewest int64              // the newest chunk that map shows, -1 none
	listen    string             // where it says it listens (Hello)
	peerList  []control.PeerInfo // the last PeerList it sent
	helloed   chan struct{}      // closed when its Hello arrived
	welcome   chan bool          // the answer to our Subscribe

	dialed bool // we dialed it (a parent or candidate); set before its readers start

	child     atomic.Bool  // it subscribed to us: it is in the fanout
	lastData  atomic.Int64 // unix nanos of the last chunk it sent
	lastNew   atomic.Int64 // unix nanos of the last chunk it sent that we did not have
	lastHeard atomic.Int64 // unix nanos of the last message of any kind
}

func (n *Node) newPeer(c control.Conn) *peer {
	p := &peer{
		n:       n,
		conn:    c,
		id:      control.IDOf(c.RemoteKey()),
		depth:   -1,
		helloed: make(chan struct{}),
		welcome: make(chan bool, 1),
	}
	p.lastData.Store(time.Now().UnixNano())
	p.lastHeard.Store(time.Now().UnixNano())
	return p
}

// start registers the peer and runs its readers until the link closes.
func (n *Node) startPeer(ctx context.Context, p *peer) bool {
	n.mu.Lock()
	if n.closed || ctx.Err() != nil {
		n.mu.Unlock()
		p.conn.Close(codeGoodbye, "leaving")
		return false
	}
	n.peers[p] = struct{}{}
	n.mu.Unlock()
	n.goFunc(func() { n.readControl(ctx, p) })
	n.goFunc(func() { n.readData(ctx, p) })
	return true
}

// dropPeer forgets a closed peer.
func (n *Node) dropPeer(p *peer) {
	n.fanout.Remove(p.conn)
	n.updateTracker()
	n.mu.Lock()
	delete(n.peers, p)
	lost := n.parent == p
	if lost {
		// Not joined until a new parent feeds us: we refuse subscribers and
		// look unattractive, so that two orphaned siblings cannot pick
		// each other and form a loop.
		n.parent = nil
		n.depth, n.path = -1, nil
	}
	n.backups = slices.DeleteFunc(n.backups, func(b *peer) bool { return b == p })
	n.mu.Unlock()
	if lost {
		n.markFailed(p.id)
		n.log.Info("parent lost", "addr", p.conn.RemoteAddr(), "err", p.conn.Err())
	}
}

// kick disconnects a misbehaving peer.
func (n *Node) kick(p *peer, code uint64, why error) {
	n.log.Warn("disconnecting peer", "addr", p.conn.RemoteAddr(), "why", why)
	p.conn.Close(code, why.Error())
}

func (n *Node) dropSlowChild(c output.Peer) {
	if conn, ok := c.(control.Conn); ok {
		n.log.Info("dropping slow child", "addr", conn.RemoteAddr())
		conn.Close(codeSlow, output.ErrSlow.Error())
	}
}

// readData verifies and accepts the chunks a peer sends.
func (n *Node) readData(ctx context.Context, p *peer) {
	for {
		b, err := p.conn.ReceiveData(ctx)
		if err != nil {
			return
		}
		arrived := time.Now()
		p.lastData.Store(arrived.UnixNano())
		p.lastHeard.Store(arrived.UnixNano())
		c, err := n.checkChunk(b)
		if err != nil {
			n.badChunks.Add(1)
			n.kick(p, codeBadChunk, err)
			return
		}
		if c != nil {
			p.lastNew.Store(arrived.UnixNano())
			n.accept(c, arrived)
		}
	}
}

// send sends one control message, giving up after a few seconds.
func (n *Node) send(ctx context.Context, p *peer, m control.Message) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return p.conn.Send(ctx, control.AppendMessage(nil, m))
}

// hello is what this node says of itself.
func (n *Node) hello() *control.Hello {
	n.mu.Lock()
	defer n.mu.Unlock()
	return &control.Hello{
		Station:    control.IDOf(n.station),
		Depth:      n.depth,
		FreeSlots:  n.freeSlots(),
		UploadKbps: n.cfg.UploadKbps,
		ListenAddr: n.tr.Addr(),
		Path:       n.path,
		Newest:     uint64(n.newest.Load() + 1),
	}
}

// readControl handles a peer's control messages until the link closes.
func (n *Node) readControl(ctx context.Context, p *peer) {
	defer n.dropPeer(p)
	defer p.conn.Close(codeGoodbye, "")
	for {
		b, err := p.conn.Receive(ctx)
		if err != nil {
			return
		}
		p.lastHeard.Store(time.Now().UnixNano())
		m, err := control.ParseMessage(b)
		if err != nil {
			n.kick(p, codeBadMessage, err)
			return
		}
		if err := n.handle(ctx, p, m); err != nil {
			n.kick(p, codeBadMessage, err)
			return
		}
	}
}

var errWrongStation = errors.New("p2pradio: peer is on another station")

func (n *Node) handle(ctx context.Context, p *peer, m control.Message) error {
	switch m := m.(type) {
	case *control.Hello:
		if m.Station != control.IDOf(n.station) {
			p.conn.Close(codeWrongStation, errWrongStation.Error())
			return nil
		}
		p.update(m.Depth, m.FreeSlots, m.Path, m.Newest)
		p.mu.Lock()
		p.listen, p.upload = m.ListenAddr, m.UploadKbps
		first := false
		select {
		case <-p.helloed:
		default:
			close(p.helloed)
			first = true
		}
		p.mu.Unlock()
		if first && !p.dialed {
			return n.send(ctx, p, n.hello())
		}
	case *control.Status:
		p.update(m.Depth, m.FreeSlots, m.Path, m.Newest)
		n.mu.Lock()
		isParent := n.parent == p
		n.mu.Unlock()
		if isParent {
			n.adoptPath(p)
		}
	case *control.Subscribe:
		return n.subscribe(ctx, p, m)
	case *control.Unsubscribe:
		// From a child: it leaves. From our parent: it displaced us (see
		// subscribe); its PeerList came first.
		n.fanout.Remove(p.conn)
		p.child.Store(false)
		n.updateTracker()
		p.mu.Lock()
		by := p.peerList // the node that took our place comes first
		p.mu.Unlock()
		n.mu.Lock()
		displaced := n.parent == p
		if displaced {
			n.parent = nil
			n.depth, n.path = -1, nil
			if len(by) > 0 {
				// It has free slots now: the next join tries it first,
				// without a round trip to the rendezvous.
				n.hint = &by[0]
			}
		}
		n.mu.Unlock()
		if displaced {
			n.log.Info("displaced by a relaying node", "parent", p.conn.RemoteAddr())
			p.conn.Close(codeGoodbye, "displaced")
		}
	case *control.Welcome:
		select {
		case p.welcome <- true:
		default:
		}
	case *control.Refuse:
		select {
		case p.welcome <- false:
		default:
		}
	case *control.Request:
		for _, seq := range m.Seqs {
			if c := n.window.Get(seq); c != nil {
				n.sendChunk(p, c)
			}
		}
	case *control.PeerList:
		// Candidates learned from neighbours; kept for rejoining.
		n.learn(m.Peers)
		p.mu.Lock()
		p.peerList = m.Peers
		p.mu.Unlock()
	case *control.Have:
		p.setHave(m)
	case *control.Ping:
		return n.send(ctx, p, &control.Pong{Nonce: m.Nonce, Time: m.Time})
	case *control.Pong:
		// lastHeard is updated; nothing else to do.
	default:
		return errors.New("unexpected message")
	}
	return nil
}

// setHave takes a buffer map the peer sent.
func (p *peer) setHave(m *control.Have) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.have, p.mapNewest = *m, -1
	for i := len(m.Bitmap)*8 - 1; i >= 0; i-- {
		if m.Bitmap[i/8]&(0x80>>(i%8)) != 0 {
			p.mapNewest = int64(m.First) + int64(i)
			break
		}
	}
	p.newest = max(p.newest, p.mapNewest)
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

func (p *peer) update(depth, free int, path []control.NodeID, newest uint64) {
	p.mu.Lock()
	p.depth, p.freeSlots, p.path, p.newest = depth, free, path, int64(newest)-1
	p.mu.Unlock()
}

// subscribe answers a peer that wants to become our child.
func (n *Node) subscribe(ctx context.Context, p *peer, m *control.Subscribe) error {
	// One subscription at a time, so that two cannot take the last slot.
	n.subMu.Lock()
	defer n.subMu.Unlock()
	if p.child.Load() {
		return nil
	}
	n.mu.Lock()
	depth := n.depth
	inPath := false
	for _, id := range n.path {
		if id == p.id {
			inPath = true
		}
	}
	n.mu.Unlock()
	switch {
	case depth < 0:
		return n.send(ctx, p, &control.Refuse{Reason: "not joined"})
	case inPath:
		return n.send(ctx, p, &control.Refuse{Reason: "loop: you are my ancestor"})
	}
	var victim *peer
	if n.freeSlots() == 0 {
		// Capable uploaders move up: a newcomer that can relay takes the
		// place of a child that cannot, which is moved away.
		if victim = n.leafChild(p); victim == nil {
			return n.send(ctx, p, &control.Refuse{Reason: "no free slot"})
		}
		n.displace(ctx, victim, p)
	}
	if err := n.send(ctx, p, &control.Welcome{}); err != nil {
		return err
	}
	if err := n.send(ctx, p, n.status()); err != nil {
		return err
	}
	// Peer exchange: the newcomer learns our parent, backup and children,
	// candidates for its backup or for a rejoin that need no rendezvous.
	if err := n.send(ctx, p, &control.PeerList{Peers: n.neighbours(p)}); err != nil {
		return err
	}
	// The burst: recent chunks so the child starts at once, with its bit
	// reservoir; then everything live.
	n.acceptMu.Lock()
	var burst []*mux.Chunk
	if m.From > 0 {
		burst = n.window.Since(m.From)
	} else {
		burst = n.window.Last(n.cfg.Burst)
	}
	for _, c := range burst {
		n.sendChunk(p, c)
	}
	n.fanout.Add(p.conn)
	p.child.Store(true)
	n.acceptMu.Unlock()
	n.updateTracker()
	n.log.Debug("new child", "addr", p.conn.RemoteAddr(), "burst", len(burst))
	return nil
}

// leafChild returns one of our children that can take no children itself
// when p can (nil otherwise).
func (n *Node) leafChild(p *peer) *peer {
	p.mu.Lock()
	upload := p.upload
	p.mu.Unlock()
	if n.slotsFor(upload) == 0 {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for q := range n.peers {
		q.mu.Lock()
		leaf := n.slotsFor(q.upload) == 0
		q.mu.Unlock()
		if q != p && leaf && q.child.Load() {
			return q
		}
	}
	return nil
}

// displace stops pushing to the leaf child victim, so that by takes its
// slot: it is told where by went (a parent with free slots now) and that
// we unsubscribe it; it switches to a backup without a gap.
func (n *Node) displace(ctx context.Context, victim, by *peer) {
	n.fanout.Remove(victim.conn)
	victim.child.Store(false)
	info := control.PeerInfo{ID: by.id, Addr: by.conn.RemoteAddr(), FreeSlots: 1}
	by.mu.Lock()
	info.UploadKbps = by.upload
	by.mu.Unlock()
	n.mu.Lock()
	info.Depth = n.depth + 1
	n.mu.Unlock()
	n.send(ctx, victim, &control.PeerList{Peers: []control.PeerInfo{info}})
	n.send(ctx, victim, &control.Unsubscribe{})
	n.log.Info("child displaced by a relaying node", "leaf", victim.conn.RemoteAddr(), "by", by.conn.RemoteAddr())
}

// neighbours describes up to 8 of our peers that have joined, except p.
func (n *Node) neighbours(except *peer) []control.PeerInfo {
	n.mu.Lock()
	peers := make([]*peer, 0, len(n.peers))
	for q := range n.peers {
		peers = append(peers, q)
	}
	n.mu.Unlock()
	var out []control.PeerInfo
	for _, q := range peers {
		q.mu.Lock()
		info := control.PeerInfo{ID: q.id, Addr: q.conn.RemoteAddr(), Depth: q.depth, FreeSlots: q.freeSlots}
		q.mu.Unlock()
		if q == except || info.Depth < 0 {
			continue
		}
		out = append(out, info)
		if len(out) == 8 {
			break
		}
	}
	return out
}

// updateTracker tells the embedded rendezvous at once when the
// broadcaster's free slots change.
func (n *Node) updateTracker() {
	if n.tracker != nil {
		n.tracker.SetSelf(n.selfEntry())
	}
}

// sendChunk sends one chunk outside the fan-out (burst, repair).
func (n *Node) sendChunk(p *peer, c *mux.Chunk) {
	if output.Send(p.conn, c) {
		n.bytesOut.Add(int64(len(c.Bytes())))
	}
}

// status is this node's current Status message.
func (n *Node) status() *control.Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	return &control.Status{Depth: n.depth, Children: n.fanout.Len(), FreeSlots: n.freeSlots(), Path: n.path, Newest: uint64(n.newest.Load() + 1)}
}
