package output

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pradio/p2pradio/mux"
)

// Peer is where Fanout sends a child's chunks: control.Conn satisfies it.
// SendData must not block: when its bounded queue is full it returns an
// error and drops the message.
type Peer interface {
	SendData(msg []byte) error
}

// FanoutConfig configures a Fanout. The zero value is usable.
type FanoutConfig struct {
	// MaxDrops is how many chunks in a row a child may fail to take before
	// OnSlow is called for it. Zero means those of 2 s of audio
	// (maxDropAudio), whatever the chunks' length.
	MaxDrops int
	// OnSlow is called (from WriteChunk's goroutine) for a child that
	// cannot keep up; the node usually disconnects it. Nil does nothing.
	OnSlow func(child Peer)
}

// Fanout sends every chunk to every child as soon as it is written. A child
// that cannot keep up loses whole chunks and never slows the others.
// WriteChunk is called from one goroutine; Add, Remove and Stats from any.
type Fanout struct {
	cfg FanoutConfig

	mu       sync.Mutex
	children map[Peer]*child

	sent, dropped, bytes atomic.Int64
}

type child struct {
	drops     int           // in a row
	dropAudio time.Duration // their audio
}

var _ Output = (*Fanout)(nil)

// NewFanout returns a Fanout with no children.
func NewFanout(cfg FanoutConfig) *Fanout {
	cfg.MaxDrops = max(cfg.MaxDrops, 0)
	return &Fanout{cfg: cfg, children: make(map[Peer]*child)}
}

// Add makes p a child: it gets every chunk written from now on.
func (f *Fanout) Add(p Peer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.children[p] == nil {
		f.children[p] = &child{}
	}
}

// Remove stops sending to p.
func (f *Fanout) Remove(p Peer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.children, p)
}

// Len is the number of children.
func (f *Fanout) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.children)
}

// Send sends c to one peer, outside the set of children (a joiner's burst or
// a repair). It reports whether the peer's queue took it.
func Send(p Peer, c *mux.Chunk) bool { return p.SendData(c.Bytes()) == nil }

// WriteChunk sends c to every child.
func (f *Fanout) WriteChunk(c *mux.Chunk) {
	b, d := c.Bytes(), c.Duration()
	var slow []Peer
	f.mu.Lock()
	for p, ch := range f.children {
		if err := p.SendData(b); err != nil {
			f.dropped.Add(1)
			ch.drops++
			ch.dropAudio += d
			if f.cfg.MaxDrops > 0 && ch.drops == f.cfg.MaxDrops ||
				f.cfg.MaxDrops == 0 && ch.dropAudio >= maxDropAudio && ch.dropAudio-d < maxDropAudio {
				slow = append(slow, p)
			}
			continue
		}
		ch.drops, ch.dropAudio = 0, 0
		f.sent.Add(1)
		f.bytes.Add(int64(len(b)))
	}
	f.mu.Unlock()
	if f.cfg.OnSlow != nil {
		for _, p := range slow {
			f.cfg.OnSlow(p)
		}
	}
}

// FanoutStats counts chunks sent and dropped across all children.
type FanoutStats struct {
	Children      int
	Sent, Dropped int64 // chunks
	SentBytes     int64
}

// Stats returns the counters.
func (f *Fanout) Stats() FanoutStats {
	return FanoutStats{Children: f.Len(), Sent: f.sent.Load(), Dropped: f.dropped.Load(), SentBytes: f.bytes.Load()}
}

// ErrSlow is the reason a node gives a child it disconnects for not keeping
// up.
var ErrSlow = errors.New("output: child too slow")
