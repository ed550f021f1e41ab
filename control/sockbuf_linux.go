package control

import (
	"net"
	"syscall"
)

// wantSocketBuffer is the buffer size quic-go asks for (7 MiB on Linux).
const wantSocketBuffer = 7 << 20

// socketBuffersOK sizes the socket's receive and send buffers the way quic-go
// would, and reports whether they reached the size quic-go checks for, in
// which case quic-go prints no warning.
func socketBuffersOK(c *net.UDPConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	ok := true
	for _, o := range [...]struct{ opt, force int }{
		{syscall.SO_RCVBUF, syscall.SO_RCVBUFFORCE},
		{syscall.SO_SNDBUF, syscall.SO_SNDBUFFORCE},
	} {
		var size int
		var serr error
		err := raw.Control(func(fd uintptr) {
			size, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, o.opt)
			if serr != nil || size >= wantSocketBuffer {
				return
			}
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, o.opt, wantSocketBuffer)
			size, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, o.opt)
			if serr != nil || size >= wantSocketBuffer {
				return
			}
			// Needs CAP_NET_ADMIN; quic-go tries it too.
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, o.force, wantSocketBuffer)
			size, serr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, o.opt)
		})
		if err != nil || serr != nil || size < wantSocketBuffer {
			ok = false
		}
	}
	return ok
}
