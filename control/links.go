package control

import "time"

// Budgets for the links others open to us (children and the neighbours
// that keep us as a backup; our own links, to a parent, backups and
// candidates, are bounded by what we dial).
const (
	// silentAfter is how long a peer may send nothing at all before it is
	// taken for gone: its Status comes every second, or on a quiet link
	// (see childQuiet) its chunks or, over QUIC, its acknowledgements of
	// ours do.
	silentAfter = 3 * time.Second
	// idleAfter is how long an accepted link may stay without joining
	// (its Hello and Status say depth -1) and without using us.
	idleAfter = 5 * time.Second
	// neighboursBase is how many accepted links besides our child slots
	// we keep; the idlest goes when a newcomer needs room.
	neighboursBase = 16
	// evictGrace is how long a new link is safe from being closed to make
	// room.
	evictGrace = 2 * time.Second
	// perHostLinks bounds the accepted links from one /24 or /64
	// (loopback excepted) beyond our child slots.
	perHostLinks = 8
)

// dropIdle closes links whose peer is gone (silent for silentAfter:
// sooner than the transport's idle timeout), and accepted links that neither joined nor
// used us for idleAfter: a peer that says hello and then sits there.
func (o *Overlay) dropIdle(now time.Time) {
	for _, p := range o.peerList() {
		if pc, ok := p.conn.(packetCounter); ok {
			// Any packet is a sign of life: a child we feed acknowledges
			// our chunks, and may send its Status only every parentQuiet.
			if n := pc.PacketsReceived(); p.packets.Swap(n) != n {
				p.lastHeard.Store(now.UnixNano())
			}
		}
		if now.Sub(time.Unix(0, p.lastHeard.Load())) > silentAfter {
			o.log.Debug("dropping a silent peer", "addr", p.conn.RemoteAddr())
			p.conn.Close(CodeGoodbye, "silent")
			o.dropPeer(p)
			continue
		}
		if p.dialed || p.child.Load() || now.Sub(time.Unix(0, p.lastUse.Load())) <= idleAfter {
			continue
		}
		if p.snapshot().depth < 0 {
			o.log.Debug("dropping an idle peer", "addr", p.conn.RemoteAddr())
			p.conn.Close(CodeIdle, "idle")
		}
	}
}

// makeRoom admits a newly accepted peer within the budgets: when the
// accepted links are at their bound, overall or from its host, the one
// that used us least lately (never a child) is closed. It returns why the
// newcomer is refused, or "".
func (o *Overlay) makeRoom(p *peer) string {
	host := hostKey(p.conn.RemoteAddr())
	var all, same []*peer
	for _, q := range o.peerList() {
		if q.dialed {
			continue
		}
		all = append(all, q)
		if host != "" && hostKey(q.conn.RemoteAddr()) == host {
			same = append(same, q)
		}
	}
	slots := o.maxChildren()
	for _, c := range []struct {
		links []*peer
		bound int
	}{{all, slots + neighboursBase}, {same, slots + perHostLinks}} {
		if len(c.links) < c.bound {
			continue
		}
		victim := idlest(c.links, time.Now())
		if victim == nil {
			return "no room for another peer"
		}
		o.log.Debug("making room for a peer", "closing", victim.conn.RemoteAddr(), "for", p.conn.RemoteAddr())
		victim.conn.Close(CodeIdle, "making room")
		o.dropPeer(victim)
	}
	return ""
}

// idlest is the peer among ps, not a child, that used us least lately,
// and not within evictGrace: a joiner between its Hello and its Subscribe
// is not pushed out by the next one (in a join storm they would push each
// other out); nil when there is none.
func idlest(ps []*peer, now time.Time) *peer {
	var v *peer
	for _, q := range ps {
		used := q.lastUse.Load()
		if !q.child.Load() && now.Sub(time.Unix(0, used)) > evictGrace && (v == nil || used < v.lastUse.Load()) {
			v = q
		}
	}
	return v
}

// packetCounter is a Conn that counts the packets it received, of any
// kind: QUICConn, whose count includes QUIC's acknowledgements. A peer
// whose packets keep arriving is alive though it sends no message.
type packetCounter interface {
	PacketsReceived() uint64
}

var _ packetCounter = (*QUICConn)(nil)

// statser is a Conn that counts its data messages: both transports'
// connections (QUICConn, MemConn).
type statser interface{ Stats() ConnStats }
