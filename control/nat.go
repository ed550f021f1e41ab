package control

import (
	"context"
	"slices"
	"strings"
	"time"
)

// A node behind a NAT: what it learns of its NAT, and how it reaches a
// parent behind another NAT (the rendezvous side is in traverse.go).

// punchTTL is the TTL of a punch's packets: out of our own router, not
// into the far one, whose conntrack would otherwise remember a dropped
// packet and map the dialer's next flow to another port.
const punchTTL = 2

// checkNAT dials the rendezvous's echo address and compares the address
// it saw with the one the rendezvous saw: the same port from two
// destinations is an endpoint-independent mapping (a punch opens it).
func (o *Overlay) checkNAT(ctx context.Context, echo, seen string) {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	c, err := o.cfg.Transport.Dial(dctx, echo, nil)
	if err != nil {
		o.log.Debug("echo unreachable", "addr", echo, "err", err)
		return
	}
	defer c.Close(CodeNormal, "")
	b, err := c.Receive(dctx)
	if err != nil {
		o.log.Debug("no answer from the echo", "addr", echo, "err", err)
		return
	}
	m, err := ParseMessage(b)
	h, ok := m.(*Hello)
	if err != nil || !ok {
		o.log.Debug("a bad answer from the echo", "addr", echo, "err", err)
		return
	}
	p1, p2 := port(seen), port(h.Observed)
	if p1 == "" || p2 == "" {
		o.log.Debug("addresses without ports", "seen", seen, "echo saw", h.Observed)
		return
	}
	nat := NATRandomises
	if p1 == p2 {
		nat = NATPreserves
	}
	o.nat.Store(uint32(nat))
	o.log.Info("NAT check", "mapping", nat, "seen by the rendezvous", seen, "by its echo", h.Observed)
}

// port is the port of a host:port address ("" if none).
func port(addr string) string {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return ""
	}
	return addr[i+1:]
}

// punch opens our NAT to a peer about to dial us (a Punch from the
// rendezvous).
func (o *Overlay) punch(ctx context.Context, m *Punch) {
	pu, ok := o.cfg.Transport.(Puncher)
	if !ok {
		return
	}
	if a := o.observed.Load(); a != nil && *a == o.cfg.Transport.Addr() {
		// Seen from the address we listen on: no NAT of ours to open, and
		// our packets would reach the joiner's NAT (see punchTTL).
		return
	}
	for range 3 {
		if err := pu.Punch(ctx, m.Peer.Addr, punchTTL); err != nil {
			o.log.Debug("punch failed", "addr", m.Peer.Addr, "err", err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// punchBatch is how many parents behind NATs a joiner reaches at once.
const punchBatch = 2

// joinPunched tries parents behind NATs, punchBatch at a time: for each,
// the rendezvous has it open its NAT to us (and holds one of its slots for
// us a moment), and we dial them all a moment later.
func (o *Overlay) joinPunched(ctx context.Context, rv *rendezvous, targets []PeerInfo) []ranked {
	targets = slices.DeleteFunc(slices.Clone(targets), func(c PeerInfo) bool { return o.failedRecently(c.ID) })
	for len(targets) > 0 {
		batch := targets[:min(punchBatch, len(targets))]
		targets = targets[len(batch):]
		for _, c := range batch {
			if !rv.send(ctx, &Connect{Target: c.ID}) {
				return nil
			}
			o.log.Debug("punch: asked the rendezvous", "target", c.Addr)
		}
		// Let the Punch reach them and their packets go out first: a dial
		// packet that reaches a NAT before them is dropped, and the NAT
		// then maps its flow towards us to another port, which spoils the
		// punch. The rendezvous is a round trip from us and, say, one from
		// them; the dial retries its first packets anyway.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(max(3*rv.rtt(), 100*time.Millisecond)):
		}
		if found := o.probe(ctx, batch, true, len(batch), nil); len(found) > 0 {
			o.log.Info("reached a parent behind a NAT", "addr", found[0].p.conn.RemoteAddr())
			return found
		}
	}
	return nil
}
