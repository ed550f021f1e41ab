package output

import (
	"sync"

	"github.com/p2pradio/p2pradio/mux"
)

// Output takes every verified chunk of the stream, in the order the node
// accepts them (not always sequence order). WriteChunk is called from one
// goroutine, must not block on a slow consumer, and may keep the chunk (it
// is never modified after it is handed over).
type Output interface {
	WriteChunk(c *mux.Chunk)
}

// OutputFunc adapts a function to Output.
type OutputFunc func(c *mux.Chunk)

// WriteChunk calls f(c).
func (f OutputFunc) WriteChunk(c *mux.Chunk) { f(c) }

// Multi returns an Output that writes to each of outs in turn.
func Multi(outs ...Output) Output {
	return OutputFunc(func(c *mux.Chunk) {
		for _, o := range outs {
			o.WriteChunk(c)
		}
	})
}

// Window keeps the most recent chunks of the stream by sequence number, for
// joiners (a burst that starts them fast and carries their bit reservoir)
// and for repair requests. It is safe for use by many goroutines.
type Window struct {
	mu     sync.Mutex
	size   int
	ring   []windowSlot // indexed by Seq % size
	newest uint64
	any    bool
}

// windowSlot keeps a chunk's sequence number beside it, so that a lookup
// (a listener checks dozens for repairs and buffer maps every tick) reads
// the ring only, not each chunk.
type windowSlot struct {
	seq uint64
	c   *mux.Chunk // nil: empty
}

var _ Output = (*Window)(nil)

// NewWindow returns a Window that holds the last size chunks; size below 1
// means 50 (10 s of the default 200 ms chunks).
func NewWindow(size int) *Window {
	if size < 1 {
		size = 50
	}
	return &Window{size: size, ring: make([]windowSlot, size)}
}

// WriteChunk adds c, replacing the chunk size sequence numbers older.
func (w *Window) WriteChunk(c *mux.Chunk) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.any && c.Seq+uint64(w.size) <= w.newest {
		return // older than anything the window holds
	}
	w.ring[c.Seq%uint64(w.size)] = windowSlot{seq: c.Seq, c: c}
	if !w.any || c.Seq > w.newest {
		w.newest, w.any = c.Seq, true
	}
}

// Get returns the chunk with sequence number seq, or nil.
func (w *Window) Get(seq uint64) *mux.Chunk {
	w.mu.Lock()
	defer w.mu.Unlock()
	if e := w.ring[seq%uint64(w.size)]; e.seq == seq {
		return e.c
	}
	return nil
}

// Newest returns the highest sequence number held and whether any is.
func (w *Window) Newest() (uint64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.newest, w.any
}

// Since returns the chunks held with sequence numbers from seq on, oldest
// first, skipping those it does not hold.
func (w *Window) Since(seq uint64) []*mux.Chunk {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.any {
		return nil
	}
	if w.newest >= uint64(w.size) && seq < w.newest-uint64(w.size)+1 {
		seq = w.newest - uint64(w.size) + 1
	}
	var out []*mux.Chunk
	for s := seq; s <= w.newest; s++ {
		if e := w.ring[s%uint64(w.size)]; e.c != nil && e.seq == s {
			out = append(out, e.c)
		}
	}
	return out
}

// Last returns up to n of the newest chunks held, oldest first.
func (w *Window) Last(n int) []*mux.Chunk {
	newest, ok := w.Newest()
	if !ok {
		return nil
	}
	from := uint64(0)
	if newest+1 > uint64(n) {
		from = newest + 1 - uint64(n)
	}
	return w.Since(from)
}
