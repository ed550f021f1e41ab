package control

import (
	"context"
	"crypto/ed25519"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"time"
)

// newPair makes the two ends of a connection from a to b.
func (n *MemNetwork) newPair(a, b *MemTransport, link LinkConfig) (ca, cb *MemConn) {
	n.mu.Lock()
	id := n.lastPipe
	n.lastPipe += 2
	n.mu.Unlock()
	ca = newMemConn(a, b)
	cb = newMemConn(b, a)
	ab := &memPipe{net: n, to: cb, link: link, id: id, space: make(chan struct{}, 1)}
	ba := &memPipe{net: n, to: ca, link: link, id: id + 1, space: make(chan struct{}, 1)}
	ca.out, ca.in = ab, ba
	cb.out, cb.in = ba, ab
	return ca, cb
}

// Kinds of memMsg.
const (
	memControl = iota
	memData
	memClose // the connection's end: err is the receiver's reason
)

type memMsg struct {
	kind int
	b    []byte
	err  error
}

// memPipe is one direction of a connection: the messages in flight to one
// end, released by a timer when due.
type memPipe struct {
	net *MemNetwork
	to  *MemConn
	id  uint64

	mu        sync.Mutex
	link      LinkConfig
	rng       *mrand.Rand // made on first use
	flight    delayHeap[memMsg]
	timer     *time.Timer
	timerAt   time.Time // when the timer is armed for; zero if not
	lastCtrl  time.Time // control messages leave in order
	busyUntil time.Time // the link is sending until then
	departs   []time.Time
	ctrlOut   int // control messages sent and not yet received
	space     chan struct{}
	closed    bool // nothing more is delivered
}

func (p *memPipe) random() *mrand.Rand {
	if p.rng == nil {
		p.rng = mrand.New(mrand.NewPCG(p.net.cfg.Link.Seed, p.id))
	}
	return p.rng
}

// sendLocked puts m on the link (p.mu held).
func (p *memPipe) sendLocked(m memMsg) {
	l := p.link
	if l.Delay <= 0 && l.Jitter <= 0 && l.Loss <= 0 && (l.Bandwidth <= 0 || m.kind != memData) && p.flight.Len() == 0 {
		p.deliverLocked(m)
		return
	}
	now := time.Now()
	at := now
	if m.kind == memData && l.Bandwidth > 0 {
		if p.busyUntil.After(at) {
			at = p.busyUntil
		}
		at = at.Add(l.serialization(len(m.b)))
		p.busyUntil = at
		p.departs = append(p.departs, at)
	}
	lost := m.kind != memClose && l.Loss > 0 && p.random().Float64() < l.Loss
	if l.Jitter > 0 || lost {
		at = at.Add(l.extraDelay(p.random(), lost))
	}
	at = at.Add(l.Delay)
	if m.kind != memData {
		if at.Before(p.lastCtrl) {
			at = p.lastCtrl
		}
		p.lastCtrl = at
	}
	p.pushLocked(at, m)
}

// pushLocked queues m for at and arms the timer.
func (p *memPipe) pushLocked(at time.Time, m memMsg) {
	p.flight.push(at, m, nil)
	p.armLocked(at)
}

// armLocked makes sure the timer fires by at.
func (p *memPipe) armLocked(at time.Time) {
	if p.timerAt.IsZero() || at.Before(p.timerAt) {
		p.timerAt = at
		if p.timer == nil {
			p.timer = time.AfterFunc(time.Until(at), p.fire)
		} else {
			p.timer.Reset(time.Until(at))
		}
	}
}

// fire delivers what is due and rearms the timer for the rest. A spurious
// call delivers nothing.
func (p *memPipe) fire() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.timerAt = time.Time{}
	now := time.Now()
	for p.flight.Len() > 0 && !p.flight.items[0].at.After(now) {
		p.deliverLocked(p.flight.pop().v)
	}
	if p.flight.Len() > 0 {
		p.armLocked(p.flight.items[0].at)
	}
}

func (p *memPipe) deliverLocked(m memMsg) {
	if p.closed {
		return
	}
	switch m.kind {
	case memControl:
		p.to.push(m.b, false)
	case memData:
		p.to.push(m.b, true)
	case memClose:
		p.shutdownLocked()
		p.to.closeWith(m.err)
	}
}

// shutdownLocked stops all delivery on the pipe and wakes blocked senders,
// which then find it closed.
func (p *memPipe) shutdownLocked() {
	p.closed = true
	p.flight = delayHeap[memMsg]{}
	p.departs = nil
	if p.timer != nil {
		p.timer.Stop()
		p.timerAt = time.Time{}
	}
	signal(p.space)
}

func (p *memPipe) shutdown() {
	p.mu.Lock()
	p.shutdownLocked()
	p.mu.Unlock()
}

// ctrlReceived returns a control slot to the sender.
func (p *memPipe) ctrlReceived() {
	p.mu.Lock()
	p.ctrlOut--
	p.mu.Unlock()
	signal(p.space)
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// msgQueue is a FIFO of messages that reuses its array once drained.
type msgQueue struct {
	buf  [][]byte
	head int
}

func (q *msgQueue) len() int      { return len(q.buf) - q.head }
func (q *msgQueue) push(b []byte) { q.buf = append(q.buf, b) }

func (q *msgQueue) pop() []byte {
	b := q.buf[q.head]
	q.buf[q.head] = nil
	q.head++
	if q.head == len(q.buf) {
		q.buf, q.head = q.buf[:0], 0
	}
	return b
}

// MemConn is a connection of a MemTransport.
type MemConn struct {
	t          *MemTransport
	in, out    *memPipe
	remoteAddr string // as this end observes it
	peerAddr   string // the peer's own Addr, which names the link
	remoteKey  ed25519.PublicKey
	flow       *memFlow // the NAT flow this end keeps open, or nil

	mu      sync.Mutex
	ctrl    msgQueue
	data    msgQueue
	ctrlSig chan struct{} // cap 1: a control message arrived
	dataSig chan struct{}
	done    chan struct{}
	err     error
	stats   connCounters
}

var _ Conn = (*MemConn)(nil)

func newMemConn(local, remote *MemTransport) *MemConn {
	return &MemConn{
		t:          local,
		remoteAddr: remote.addr,
		peerAddr:   remote.addr,
		remoteKey:  remote.pub,
		ctrlSig:    make(chan struct{}, 1),
		dataSig:    make(chan struct{}, 1),
		done:       make(chan struct{}),
	}
}

// push queues an arrived message; a data message finding the receive queue
// full is dropped and counted.
func (c *MemConn) push(b []byte, data bool) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	if !data {
		c.ctrl.push(b)
		c.mu.Unlock()
		signal(c.ctrlSig)
		return
	}
	if c.data.len() >= c.t.net.cfg.ReceiveQueue {
		c.mu.Unlock()
		c.stats.receiveDropped.Add(1)
		return
	}
	c.data.push(b)
	c.stats.dataReceived.Add(1)
	c.mu.Unlock()
	signal(c.dataSig)
}

// closeWith ends the connection locally with err, unless it already ended.
func (c *MemConn) closeWith(err error) bool {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return false
	}
	c.err = err
	close(c.done)
	f := c.flow
	c.flow = nil
	c.mu.Unlock()
	if f != nil {
		f.nat.unpin(f)
	}
	c.t.forget(c)
	return true
}

// pin keeps f open while the connection lives (its keep-alives would).
func (c *MemConn) pin(f *memFlow) {
	if f == nil {
		return
	}
	f.nat.pin(f)
	c.mu.Lock()
	if c.err == nil {
		c.flow = f
		f = nil
	}
	c.mu.Unlock()
	if f != nil {
		f.nat.unpin(f)
	}
}

// Send queues one control message; see Conn. It blocks while ControlQueue
// messages are on their way or unread at the peer.
func (c *MemConn) Send(ctx context.Context, msg []byte) error {
	if len(msg) > MaxMessageSize {
		return fmt.Errorf("%w: %d bytes", ErrMessageTooLarge, len(msg))
	}
	b := append(make([]byte, 0, len(msg)), msg...)
	p := c.out
	limit := c.t.net.cfg.ControlQueue
	for {
		if err := c.Err(); err != nil {
			return err
		}
		p.mu.Lock()
		if p.closed {
			// The peer vanished; its end of the connection will tell.
			p.mu.Unlock()
			return nil
		}
		if p.ctrlOut < limit {
			p.ctrlOut++
			more := p.ctrlOut < limit
			p.sendLocked(memMsg{kind: memControl, b: b})
			p.mu.Unlock()
			if more {
				signal(p.space) // pass the wake-up on to another sender
			}
			return nil
		}
		p.mu.Unlock()
		select {
		case <-p.space:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.done:
			return c.Err()
		}
	}
}

// Receive waits for the next control message; see Conn. Messages that
// arrived before the connection closed are returned before its error.
func (c *MemConn) Receive(ctx context.Context) ([]byte, error) {
	return c.receive(ctx, false)
}

// SendData queues one data message, or drops it and returns ErrQueueFull
// when SendQueue messages are waiting for the link's bandwidth.
func (c *MemConn) SendData(msg []byte) error {
	if len(msg) > MaxMessageSize {
		return fmt.Errorf("%w: %d bytes", ErrMessageTooLarge, len(msg))
	}
	if err := c.Err(); err != nil {
		return err
	}
	p := c.out
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	if len(p.departs) > 0 {
		now := time.Now()
		i := 0
		for i < len(p.departs) && !p.departs[i].After(now) {
			i++
		}
		p.departs = p.departs[i:]
		if len(p.departs) >= c.t.net.cfg.SendQueue {
			c.stats.sendDropped.Add(1)
			return ErrQueueFull
		}
		if len(p.departs) == 0 {
			p.departs = nil
		}
	}
	if !c.t.net.cfg.ShareData {
		msg = append(make([]byte, 0, len(msg)), msg...)
	}
	p.sendLocked(memMsg{kind: memData, b: msg})
	c.stats.dataSent.Add(1)
	return nil
}

// SendWait is how long a data message sent now would wait for the link's
// bandwidth before it departs (the queue ahead of it); 0 on a link
// without a bandwidth limit.
func (c *MemConn) SendWait() time.Duration {
	p := c.out
	p.mu.Lock()
	defer p.mu.Unlock()
	return max(0, time.Until(p.busyUntil))
}

// ReceiveData waits for the next data message; see Conn.
func (c *MemConn) ReceiveData(ctx context.Context) ([]byte, error) {
	return c.receive(ctx, true)
}

func (c *MemConn) receive(ctx context.Context, data bool) ([]byte, error) {
	q, sig := &c.ctrl, c.ctrlSig
	if data {
		q, sig = &c.data, c.dataSig
	}
	for {
		c.mu.Lock()
		if q.len() > 0 {
			m := q.pop()
			more := q.len() > 0
			c.mu.Unlock()
			if more {
				signal(sig)
			}
			if !data {
				c.in.ctrlReceived()
			}
			return m, nil
		}
		err := c.err
		c.mu.Unlock()
		if err != nil {
			return nil, err
		}
		select {
		case <-sig:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.done:
		}
	}
}

// RemoteAddr returns the peer's address as this end observes it: at the
// dialer the address it dialed, at the acceptor the dialer's address after
// the dialer's NAT (its mapping, "mem:R:P"), or its Addr when it is public
// or on the acceptor's LAN.
func (c *MemConn) RemoteAddr() string { return c.remoteAddr }

// RemoteKey returns the peer's identity key.
func (c *MemConn) RemoteKey() ed25519.PublicKey { return c.remoteKey }

// RTT returns the round trip of the link: both delays and their mean
// jitter.
func (c *MemConn) RTT() time.Duration {
	var rtt time.Duration
	for _, p := range [...]*memPipe{c.in, c.out} {
		p.mu.Lock()
		rtt += p.link.Delay + p.link.Jitter/2
		p.mu.Unlock()
	}
	return rtt
}

// Done is closed when the connection has closed.
func (c *MemConn) Done() <-chan struct{} { return c.done }

// Err says why the connection closed, or nil while it is open; see
// QUICConn.Err.
func (c *MemConn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection; the peer sees a *CloseError with code and
// reason (clamped as by QUICConn.Close) one link delay later, after the control messages sent before.
func (c *MemConn) Close(code uint64, reason string) error {
	code, reason = clampClose(code, reason)
	if !c.closeWith(&CloseError{Code: code, Reason: reason}) {
		return nil
	}
	p := c.out
	p.mu.Lock()
	if !p.closed {
		p.sendLocked(memMsg{kind: memClose, err: &CloseError{Code: code, Reason: reason, Remote: true}})
	}
	p.mu.Unlock()
	c.in.shutdown()
	return nil
}

// kill ends the connection without telling the peer, whose end dies of the
// idle timeout.
func (c *MemConn) kill() {
	if !c.closeWith(fmt.Errorf("%w: transport killed", ErrClosed)) {
		return
	}
	p := c.out
	p.mu.Lock()
	if !p.closed {
		p.pushLocked(time.Now().Add(c.t.net.cfg.IdleTimeout), memMsg{kind: memClose, err: timeoutError(nil)})
	}
	p.mu.Unlock()
	c.in.shutdown()
}

// Stats returns the connection's counters.
func (c *MemConn) Stats() ConnStats { return c.stats.snapshot() }

// memResend is when a dial's first packet, dropped, is sent again (QUIC's
// first probe timeout with its initial RTT estimate of 100 ms); each later
// one waits twice as long.
const memResend = 300 * time.Millisecond
