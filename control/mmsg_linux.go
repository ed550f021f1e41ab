package control

import (
	"net"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// mmsgConn sends and receives batches of UDP packets with sendmmsg and
// recvmmsg made as raw system calls, through the socket's poller.
//
// Go's own calls (syscall.Syscall, which x/net's WriteBatch and ReadBatch
// use) tell the runtime that the thread enters the kernel. The first one
// after the process was idle wakes the runtime's monitor thread (sysmon)
// from its deep sleep and sets it polling every 20 us, doubling only after
// 50 polls: a station that wakes for every chunk, every wave of
// acknowledgements and every frame of its input paid a context switch per
// poll, a fifth of its CPU (perf). On a non-blocking socket neither call
// blocks, so the bookkeeping buys nothing: made raw, they keep the
// processor, and sysmon sleeps.
type mmsgConn struct {
	rc    syscall.RawConn
	inet6 bool // the socket is AF_INET6 (IPv4 peers as ::ffff:a.b.c.d)

	w, r mmsgBuf // the sender's, the reader's: each used by one goroutine
}

// mmsghdr is the kernel's struct mmsghdr.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// mmsgBuf holds the kernel's view of one batch, reused.
type mmsgBuf struct {
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for either family
}

// newMMsgConn reports false when udp's socket cannot be used this way.
func newMMsgConn(udp *net.UDPConn) (*mmsgConn, bool) {
	rc, err := udp.SyscallConn()
	if err != nil {
		return nil, false
	}
	var sa unix.Sockaddr
	if cerr := rc.Control(func(fd uintptr) { sa, err = unix.Getsockname(int(fd)) }); cerr != nil || err != nil {
		return nil, false
	}
	switch sa.(type) {
	case *unix.SockaddrInet4:
		return &mmsgConn{rc: rc}, true
	case *unix.SockaddrInet6:
		return &mmsgConn{rc: rc, inet6: true}, true
	}
	return nil, false
}

// prepare lays ms out in b for the kernel: for sending with their
// addresses, for receiving with room for them.
func (c *mmsgConn) prepare(b *mmsgBuf, ms []ipv4.Message, send bool) bool {
	niov := 0
	for _, m := range ms {
		niov += len(m.Buffers)
	}
	b.hdrs = grow(b.hdrs, len(ms))
	b.iovs = grow(b.iovs, niov)
	b.names = grow(b.names, len(ms))
	iov := b.iovs
	for i, m := range ms {
		h := &b.hdrs[i]
		*h = mmsghdr{}
		for j, buf := range m.Buffers {
			iov[j] = unix.Iovec{}
			if len(buf) > 0 {
				iov[j].Base = &buf[0]
			}
			iov[j].SetLen(len(buf))
		}
		if len(m.Buffers) > 0 {
			h.hdr.Iov = &iov[0]
			h.hdr.SetIovlen(len(m.Buffers))
		}
		iov = iov[len(m.Buffers):]
		if len(m.OOB) > 0 {
			h.hdr.Control = &m.OOB[0]
			h.hdr.SetControllen(len(m.OOB))
		}
		name := &b.names[i]
		h.hdr.Name = (*byte)(unsafe.Pointer(name))
		if !send {
			h.hdr.Namelen = uint32(unsafe.Sizeof(*name))
			continue
		}
		ua, ok := m.Addr.(*net.UDPAddr)
		if !ok {
			return false
		}
		if h.hdr.Namelen = c.putAddr(name, ua); h.hdr.Namelen == 0 {
			return false
		}
	}
	return true
}

// putAddr writes a as a sockaddr of the socket's family into name and
// returns its length (0: a does not fit the family).
func (c *mmsgConn) putAddr(name *unix.RawSockaddrInet6, a *net.UDPAddr) uint32 {
	port := [2]byte{byte(a.Port >> 8), byte(a.Port)}
	if !c.inet6 {
		ip4 := a.IP.To4()
		if ip4 == nil {
			return 0
		}
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(name))
		*sa = unix.RawSockaddrInet4{Family: unix.AF_INET}
		*(*[2]byte)(unsafe.Pointer(&sa.Port)) = port
		copy(sa.Addr[:], ip4)
		return unix.SizeofSockaddrInet4
	}
	ip := a.IP.To16()
	if ip == nil {
		return 0
	}
	*name = unix.RawSockaddrInet6{Family: unix.AF_INET6}
	*(*[2]byte)(unsafe.Pointer(&name.Port)) = port
	copy(name.Addr[:], ip)
	if a.Zone != "" {
		if ifi, err := net.InterfaceByName(a.Zone); err == nil {
			name.Scope_id = uint32(ifi.Index)
		}
	}
	return unix.SizeofSockaddrInet6
}

// addr reads the sockaddr the kernel wrote into name.
func addr(name *unix.RawSockaddrInet6) *net.UDPAddr {
	switch name.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(name))
		p := (*[2]byte)(unsafe.Pointer(&sa.Port))
		return &net.UDPAddr{IP: net.IPv4(sa.Addr[0], sa.Addr[1], sa.Addr[2], sa.Addr[3]), Port: int(p[0])<<8 | int(p[1])}
	case unix.AF_INET6:
		p := (*[2]byte)(unsafe.Pointer(&name.Port))
		a := &net.UDPAddr{IP: append(net.IP(nil), name.Addr[:]...), Port: int(p[0])<<8 | int(p[1])}
		if name.Scope_id != 0 {
			if ifi, err := net.InterfaceByIndex(int(name.Scope_id)); err == nil {
				a.Zone = ifi.Name
			}
		}
		return a
	}
	return nil
}

// WriteBatch sends ms with sendmmsg: it returns how many were sent, and
// the error of the first that was not.
func (c *mmsgConn) WriteBatch(ms []ipv4.Message) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	if !c.prepare(&c.w, ms, true) {
		return 0, unix.EINVAL // an address of another family: as the kernel says
	}
	n, err := mmsg(c.rc.Write, unix.SYS_SENDMMSG, c.w.hdrs[:len(ms)], 0)
	runtime.KeepAlive(ms)
	return n, err
}

// mmsg makes the system call trap (sendmmsg or recvmmsg) on hdrs through
// the poller: wait is the raw conn's Read or Write, which parks the
// goroutine while the socket would block. It returns how many messages
// went.
func mmsg(wait func(func(fd uintptr) bool) error, trap uintptr, hdrs []mmsghdr, flags int) (int, error) {
	var n uintptr
	var errno syscall.Errno
	err := wait(func(fd uintptr) bool {
		for {
			n, _, errno = unix.RawSyscall6(trap, fd, uintptr(unsafe.Pointer(&hdrs[0])), uintptr(len(hdrs)), uintptr(flags), 0, 0)
			if errno != unix.EINTR {
				return errno != unix.EAGAIN
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, errno
	}
	return int(n), nil
}

// ReadBatch receives up to len(ms) packets with recvmmsg, waiting for the
// first; see ipv4.PacketConn.ReadBatch.
func (c *mmsgConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	c.prepare(&c.r, ms, false)
	n, err := mmsg(c.rc.Read, unix.SYS_RECVMMSG, c.r.hdrs[:len(ms)], flags)
	runtime.KeepAlive(ms)
	if err != nil {
		return 0, err
	}
	for i := range n {
		h := &c.r.hdrs[i]
		ms[i].N = int(h.n)
		ms[i].NN = int(h.hdr.Controllen)
		ms[i].Flags = int(h.hdr.Flags)
		ms[i].Addr = addr(&c.r.names[i])
	}
	return n, nil
}

// grow returns s with length n, reallocated only when it is too short.
func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}
