package control

import (
	"context"
	"net"
	"sync"
	"time"
)

// NAT traversal at the rendezvous: nodes behind port-preserving NATs are
// offered as parents through a coordinated punch (Connect, Punch), nodes
// behind the same public address reach each other by their LAN addresses,
// and a node behind a NAT learns how it maps (Candidates.Echo).

// punchable reports whether n is behind a NAT that a coordinated punch
// opens: one mapping for every destination, and not (yet) known to be
// reachable without a punch. (A punch towards a public node does no harm,
// and a node behind a NAT is offered this way as soon as it has checked
// its NAT, without waiting for the dial-back to time out. A node seen from
// the very address it listens on has no NAT to open: it waits for its
// dial-back, for its punch would reach the joiner's NAT and leave there
// the trace of a dropped packet, which maps the joiner's next flow
// towards it to another port.)
func (n *tracked) punchable() bool {
	return n.reach != ReachPublic && n.nat == NATPreserves && n.listen != n.info.Addr
}

// maxPunch is how many punchable parents one answer lists; punchHold is
// how long a slot of one is held for a joiner that asked to reach it (a
// Punch, a round trip, a dial and a subscription).
const (
	maxPunch  = 4
	punchHold = time.Second
)

// traversal adds to c what a node behind a NAT needs: punchable parents,
// parents behind its own public address (by their LAN address), and the
// echo address. t.mu is held.
func (t *Tracker) traversal(asker *tracked, c *Candidates, now time.Time) {
	// A node behind a NAT that maps each destination apart cannot be
	// punched to: its dial leaves from another port than the one the
	// parent opened its NAT to (and leaves a trace there that spoils the
	// parent's next punch). It gets only parents on its own LAN.
	restricted := asker.restricted()
	for d := 0; d <= t.maxDepth && len(c.Punch) < maxPunch; d++ {
		for nid, n := range t.punchable[d] {
			if nid == asker.info.ID || t.isDescendant(n, asker.info.ID) || t.failedFor(asker.info.ID, nid) || now.Sub(n.seen) > offerFor || n.heldFull(now) {
				continue
			}
			info := n.info
			if sameHost(info.Addr, asker.info.Addr) && n.listen != "" {
				// Behind the same router: its LAN address, no punch
				// (routers seldom hairpin).
				info.Addr = n.listen
				c.Peers = append(c.Peers, info)
				continue
			}
			if restricted {
				continue
			}
			c.Punch = append(c.Punch, info)
			if len(c.Punch) == maxPunch {
				break
			}
		}
	}
}

// echo is the echo address for n, a node not known to be reachable.
func (t *Tracker) echo(n *tracked) string {
	if t.cfg.Echo == nil || n.reach == ReachPublic {
		return ""
	}
	return t.cfg.Echo.Addr()
}

// sameHost reports whether two addresses have the same IP.
func sameHost(a, b string) bool {
	ha, _, errA := net.SplitHostPort(a)
	hb, _, errB := net.SplitHostPort(b)
	return errA == nil && errB == nil && ha == hb
}

// setSession records id's rendezvous session, over which a Punch reaches
// it.
func (t *Tracker) setSession(id NodeID, c Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if n := t.nodes[id]; n != nil {
		n.session = c
	}
}

// connect has target open its NAT to asker, which is about to dial it.
func (t *Tracker) connect(ctx context.Context, asker, target NodeID) {
	t.mu.Lock()
	a, n := t.nodes[asker], t.nodes[target]
	if a == nil || n == nil || n.session == nil || !n.punchable() {
		t.mu.Unlock()
		return
	}
	c, peer := n.session, a.info
	// The asker takes one of its slots: held for it while the punch and
	// the subscription run, so that joiners that got the same list go
	// elsewhere.
	n.hold(time.Now(), punchHold)
	t.mu.Unlock()
	sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	c.Send(sctx, AppendMessage(nil, &Punch{Peer: peer}))
}

// ServeEcho answers each connection on tr (TrackerConfig.Echo) with a
// Hello that tells the dialer the address it came from, so that a node
// can compare it with what the rendezvous saw (see Candidates.Echo). It
// runs until ctx is done, and returns once every connection it answered
// is closed.
func ServeEcho(ctx context.Context, tr Transport, station NodeID) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := tr.Accept(ctx)
		if err != nil {
			return
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		c.Send(sctx, AppendMessage(nil, &Hello{Station: station, Depth: -1, Observed: c.RemoteAddr()}))
		cancel()
		wg.Go(func() {
			// The dialer closes once it has read the answer.
			select {
			case <-c.Done():
			case <-time.After(2 * time.Second):
			case <-ctx.Done():
			}
			c.Close(CodeNormal, "")
		})
	}
}
