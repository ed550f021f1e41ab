package control

import (
	"net"
	"sync"
	"time"
)

// budget counts bytes held against a limit, and against a parent budget
// shared with others (the transport's) when there is one.
type budget struct {
	parent *budget

	mu    sync.Mutex
	used  int64
	limit int64
	freed chan struct{} // closed when bytes are released; nil until waited on
}

func newBudget(limit int64, parent *budget) *budget {
	return &budget{limit: limit, parent: parent}
}

// take takes n bytes if they fit here and in the parent.
func (b *budget) take(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.limit {
		return false
	}
	if b.parent != nil && !b.parent.take(n) {
		return false
	}
	b.used += n
	return true
}

// release gives n bytes back.
func (b *budget) release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	parent, freed := b.parent, b.freed
	b.freed = nil
	b.mu.Unlock()
	if parent != nil {
		parent.release(n)
	}
	if freed != nil {
		close(freed)
	}
}

// detach gives the parent back everything held here and leaves it: the
// bytes of a closed connection's unread messages no longer count against
// the transport.
func (b *budget) detach() {
	b.mu.Lock()
	parent, used := b.parent, b.used
	b.parent = nil
	b.mu.Unlock()
	if parent != nil {
		parent.release(used)
	}
}

// changed returns a channel closed at the next release.
func (b *budget) changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.freed == nil {
		b.freed = make(chan struct{})
	}
	return b.freed
}

func (b *budget) held() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// wait takes n bytes, waiting for them until done is closed or the
// deadline (if any) passes; it reports whether it took them.
func (b *budget) wait(n int64, done <-chan struct{}, deadline *time.Time) bool {
	if b.take(n) {
		return true
	}
	var timeout <-chan time.Time
	if deadline != nil {
		tm := time.NewTimer(time.Until(*deadline))
		defer tm.Stop()
		timeout = tm.C
	}
	for {
		var parent <-chan struct{}
		b.mu.Lock()
		p := b.parent
		b.mu.Unlock()
		if p != nil {
			parent = p.changed()
		}
		mine := b.changed()
		if b.take(n) {
			return true
		}
		select {
		case <-mine:
		case <-parent:
		case <-done:
			return false
		case <-timeout:
			return false
		}
	}
}

// quietPacketConn prepares the socket for quic-go so that quic-go's buffer
// warning (printed through the standard logger) does not fire; see NewQUIC.
// A UDP socket whose buffers could be sized goes to quic-go as a batchConn,
// which the transport closes instead of the socket.
func quietPacketConn(pc net.PacketConn) net.PacketConn {
	if udp, ok := pc.(*net.UDPConn); ok {
		if socketBuffersOK(udp) {
			return newBatchConn(udp)
		}
		return bufferlessConn{udp}
	}
	if _, ok := pc.(interface{ SetReadBuffer(int) error }); ok {
		return pc
	}
	return bufferlessConn{pc}
}

// bufferlessConn shows quic-go only the net.PacketConn methods, plus buffer
// setters that never fail.
type bufferlessConn struct{ net.PacketConn }

func (c bufferlessConn) SetReadBuffer(n int) error {
	if s, ok := c.PacketConn.(interface{ SetReadBuffer(int) error }); ok {
		_ = s.SetReadBuffer(n)
	}
	return nil
}

func (c bufferlessConn) SetWriteBuffer(n int) error {
	if s, ok := c.PacketConn.(interface{ SetWriteBuffer(int) error }); ok {
		_ = s.SetWriteBuffer(n)
	}
	return nil
}
