package netlab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// This kernel has no netem, so a router delays packets itself: an iptables
// NFQUEUE rule hands every forwarded packet to a netlink socket held by the
// test process, which accepts each one Delay after it came. The packets
// wait in the kernel (only their ids cross), in order.

// nfnetlink_queue's messages and attributes (linux/netfilter/nfnetlink_queue.h).
const (
	nfqMsgPacket   = 0
	nfqMsgVerdict  = 1
	nfqMsgConfig   = 2
	nfqaPacketHdr  = 1
	nfqaVerdictHdr = 2
	nfqaCfgCmd     = 1
	nfqaCfgParams  = 2
	nfqaCfgMaxLen  = 3
	nfqCmdBind     = 1
	nfqCopyMeta    = 1
	nfAccept       = 1
	delayQueueLen  = 4096
)

// delayer holds one namespace's queue.
type delayer struct {
	f     *os.File
	queue uint16
	delay time.Duration

	mu     sync.Mutex // serialises writes and guards closed
	closed bool
	timers map[*time.Timer]struct{}
	done   chan struct{}
}

// startDelay binds NFQUEUE queue in the host's namespace and starts
// accepting its packets after d.
func startDelay(h *Host, queue uint16, d time.Duration) (*delayer, error) {
	var fd int
	err := h.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlab: nfqueue socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlab: nfqueue bind: %w", err)
	}
	q := &delayer{
		f:      os.NewFile(uintptr(fd), "nfqueue"),
		queue:  queue,
		delay:  d,
		timers: make(map[*time.Timer]struct{}),
		done:   make(chan struct{}),
	}
	cmd := []byte{nfqCmdBind, 0, 0, unix.AF_INET}
	params := binary.BigEndian.AppendUint32(nil, 0) // copy range
	params = append(params, nfqCopyMeta)
	maxLen := binary.BigEndian.AppendUint32(nil, delayQueueLen)
	if err := q.send(nfqMsgConfig, attr(nfqaCfgCmd, cmd)); err != nil {
		q.f.Close()
		return nil, err
	}
	if err := q.send(nfqMsgConfig, append(attr(nfqaCfgParams, params), attr(nfqaCfgMaxLen, maxLen)...)); err != nil {
		q.f.Close()
		return nil, err
	}
	go q.run()
	return q, nil
}

// attr is one netlink attribute, padded to 4 bytes.
func attr(typ uint16, data []byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(data)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// send writes one nfnetlink_queue message to the kernel.
func (q *delayer) send(msg uint16, attrs []byte) error {
	b := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+4+len(attrs))
	binary.NativeEndian.PutUint32(b[0:4], uint32(cap(b)))
	binary.NativeEndian.PutUint16(b[4:6], unix.NFNL_SUBSYS_QUEUE<<8|msg)
	binary.NativeEndian.PutUint16(b[6:8], unix.NLM_F_REQUEST)
	b = append(b, unix.AF_UNSPEC, unix.NFNETLINK_V0)
	b = binary.BigEndian.AppendUint16(b, q.queue)
	b = append(b, attrs...)
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return os.ErrClosed
	}
	_, err := q.f.Write(b)
	return err
}

// run reads queued packets and schedules their verdicts.
func (q *delayer) run() {
	defer close(q.done)
	buf := make([]byte, 1<<16)
	for {
		n, err := q.f.Read(buf)
		if errors.Is(err, os.ErrClosed) {
			return
		}
		if err != nil {
			continue // ENOBUFS: the kernel dropped messages; carry on
		}
		for b := buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			l := int(binary.NativeEndian.Uint32(b[0:4]))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				break
			}
			typ := binary.NativeEndian.Uint16(b[4:6])
			if typ == unix.NFNL_SUBSYS_QUEUE<<8|nfqMsgPacket {
				if id, ok := packetID(b[unix.NLMSG_HDRLEN+4 : l]); ok {
					q.later(id)
				}
			}
			b = b[min(len(b), (l+3)&^3):]
		}
	}
}

// packetID finds NFQA_PACKET_HDR's packet id among a message's attributes.
func packetID(attrs []byte) (uint32, bool) {
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs[0:2]))
		typ := binary.NativeEndian.Uint16(attrs[2:4]) & 0x3fff
		if l < 4 || l > len(attrs) {
			return 0, false
		}
		if typ == nfqaPacketHdr && l >= 8 {
			return binary.BigEndian.Uint32(attrs[4:8]), true
		}
		attrs = attrs[min(len(attrs), (l+3)&^3):]
	}
	return 0, false
}

// later accepts packet id after the delay.
func (q *delayer) later(id uint32) {
	v := binary.BigEndian.AppendUint32(nil, nfAccept)
	v = binary.BigEndian.AppendUint32(v, id)
	msg := attr(nfqaVerdictHdr, v)
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(q.delay, func() {
		q.mu.Lock()
		delete(q.timers, t)
		q.mu.Unlock()
		_ = q.send(nfqMsgVerdict, msg)
	})
	q.timers[t] = struct{}{}
}

// close stops the queue; packets still waiting are dropped by the kernel
// when the namespace goes.
func (q *delayer) close() {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.closed = true
	for t := range q.timers {
		t.Stop()
	}
	q.mu.Unlock()
	q.f.Close()
	<-q.done
}
