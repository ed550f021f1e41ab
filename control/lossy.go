package control

import (
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// LinkConfig describes one direction of an emulated link: MemNetwork applies
// it to messages, NewLossyPacketConn to UDP datagrams.
type LinkConfig struct {
	// Delay is the one-way propagation delay.
	Delay time.Duration
	// Jitter adds a uniformly random delay in [0, Jitter) to each packet or
	// message (datagrams may then be reordered; control messages never
	// are).
	Jitter time.Duration
	// Loss is the probability in [0, 1] that a packet is lost. A lossy
	// PacketConn drops the datagram; MemNetwork, modelling QUIC's
	// retransmission, delays the message by a further 1.5 round trips.
	Loss float64
	// Bandwidth is the link rate in bytes per second; 0 means unlimited.
	// Packets queue behind it and depart one after another.
	Bandwidth int64
	// Seed seeds the link's random numbers (jitter, loss): equal seeds give
	// equal runs. In a MemNetwork only MemConfig.Link.Seed is used.
	Seed uint64
}

// extraDelay draws a packet's jitter (and, when lost and retransmit is set,
// its retransmission delay).
func (l LinkConfig) extraDelay(rng *rand.Rand, lost bool) time.Duration {
	var d time.Duration
	if l.Jitter > 0 {
		d = time.Duration(rng.Int64N(int64(l.Jitter)))
	}
	if lost {
		d += 3 * l.Delay // 1.5 round trips
	}
	return d
}

// serialization is the time a packet of n bytes occupies the link.
func (l LinkConfig) serialization(n int) time.Duration {
	if l.Bandwidth <= 0 {
		return 0
	}
	return time.Duration(int64(n) * int64(time.Second) / l.Bandwidth)
}

// maxLossyQueue bounds the datagrams a lossy PacketConn holds; more are
// dropped, like a router's full queue.
const maxLossyQueue = 4096

// lossyConn delays and drops the datagrams written to a net.PacketConn.
type lossyConn struct {
	net.PacketConn
	cfg LinkConfig

	mu        sync.Mutex
	rng       *rand.Rand
	queue     delayHeap[[]byte]
	busyUntil time.Time
	outage    time.Time // datagrams written before then are lost
	closed    bool

	wake chan struct{} // cap 1: a new earliest packet, or Close
	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// NewLossyPacketConn wraps pc so that every datagram written to it is delayed
// by cfg.Delay plus jitter, queued behind cfg.Bandwidth, or lost with
// probability cfg.Loss, each drawn from a random source seeded with
// cfg.Seed. Reads pass through. The delayed datagrams wait in a queue served
// by one goroutine, which Close stops (pending datagrams are discarded)
// before closing pc. Use it as QUICConfig.PacketConn.
func NewLossyPacketConn(pc net.PacketConn, cfg LinkConfig) net.PacketConn {
	c := &lossyConn{
		PacketConn: pc,
		cfg:        cfg,
		rng:        rand.New(rand.NewPCG(cfg.Seed, 0x6c6f737379)),
		wake:       make(chan struct{}, 1),
		done:       make(chan struct{}),
	}
	c.wg.Go(c.run)
	return c
}

// WriteTo queues, delays or drops one datagram; it never blocks on the
// emulated link. A dropped datagram still counts as written.
func (c *lossyConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	if (c.cfg.Loss > 0 && c.rng.Float64() < c.cfg.Loss) || time.Now().Before(c.outage) {
		c.mu.Unlock()
		return len(b), nil
	}
	if c.cfg.Delay <= 0 && c.cfg.Jitter <= 0 && c.cfg.Bandwidth <= 0 {
		c.mu.Unlock()
		return c.PacketConn.WriteTo(b, addr)
	}
	if c.queue.Len() >= maxLossyQueue {
		c.mu.Unlock()
		return len(b), nil
	}
	now := time.Now()
	depart := now
	if c.cfg.Bandwidth > 0 {
		if c.busyUntil.After(depart) {
			depart = c.busyUntil
		}
		depart = depart.Add(c.cfg.serialization(len(b)))
		c.busyUntil = depart
	}
	at := depart.Add(c.cfg.Delay + c.cfg.extraDelay(c.rng, false))
	earliest := c.queue.push(at, append([]byte(nil), b...), addr)
	c.mu.Unlock()
	if earliest {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	return len(b), nil
}

// cut loses every datagram written in the next d, like a link that goes
// down for a while (a hiccup).
func (c *lossyConn) cut(d time.Duration) {
	c.mu.Lock()
	c.outage = time.Now().Add(d)
	c.mu.Unlock()
}

// run writes each queued datagram when it is due.
func (c *lossyConn) run() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		c.mu.Lock()
		now := time.Now()
		var due []delayItem[[]byte]
		for c.queue.Len() > 0 && !c.queue.items[0].at.After(now) {
			due = append(due, c.queue.pop())
		}
		wait := time.Hour
		if c.queue.Len() > 0 {
			wait = c.queue.items[0].at.Sub(now)
		}
		c.mu.Unlock()
		for _, it := range due {
			_, _ = c.PacketConn.WriteTo(it.v, it.addr)
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-c.wake:
		case <-c.done:
			return
		}
	}
}

// Close stops the queue, discarding what it holds, and closes the wrapped
// PacketConn.
func (c *lossyConn) Close() error {
	var err error
	c.once.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.queue = delayHeap[[]byte]{}
		c.mu.Unlock()
		close(c.done)
		c.wg.Wait()
		err = c.PacketConn.Close()
	})
	return err
}

// SetReadBuffer passes the size on when the wrapped conn can take it, and
// never fails (which keeps quic-go's buffer warning quiet).
func (c *lossyConn) SetReadBuffer(n int) error {
	return bufferlessConn{c.PacketConn}.SetReadBuffer(n)
}

// SetWriteBuffer is like SetReadBuffer.
func (c *lossyConn) SetWriteBuffer(n int) error {
	return bufferlessConn{c.PacketConn}.SetWriteBuffer(n)
}

// delayItem is one packet or message waiting in a delayHeap.
type delayItem[T any] struct {
	at   time.Time
	seq  uint64 // ties keep their order of arrival
	v    T
	addr net.Addr
}

// delayHeap is a min-heap of items by due time, then arrival.
type delayHeap[T any] struct {
	items []delayItem[T]
	seq   uint64
}

func (h *delayHeap[T]) Len() int { return len(h.items) }

func (h *delayHeap[T]) less(i, j int) bool {
	a, b := &h.items[i], &h.items[j]
	if a.at.Equal(b.at) {
		return a.seq < b.seq
	}
	return a.at.Before(b.at)
}

// push adds v, due at at, and reports whether it is now the earliest.
func (h *delayHeap[T]) push(at time.Time, v T, addr net.Addr) bool {
	h.seq++
	h.items = append(h.items, delayItem[T]{at: at, seq: h.seq, v: v, addr: addr})
	i := len(h.items) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(i, p) {
			break
		}
		h.items[i], h.items[p] = h.items[p], h.items[i]
		i = p
	}
	return i == 0
}

// pop removes and returns the earliest item; the heap must not be empty.
func (h *delayHeap[T]) pop() delayItem[T] {
	top := h.items[0]
	n := len(h.items) - 1
	h.items[0] = h.items[n]
	h.items[n] = delayItem[T]{}
	h.items = h.items[:n]
	i := 0
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && h.less(l, m) {
			m = l
		}
		if r < n && h.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		h.items[i], h.items[m] = h.items[m], h.items[i]
		i = m
	}
	if n == 0 {
		h.items = nil // let a drained queue's memory go
	}
	return top
}
