package output

import (
	"encoding/binary"
	"net"
	"syscall"
	"unsafe"
)

// tcpInfoSndWnd is the offset of tcpi_snd_wnd in Linux's struct tcp_info
// (since Linux 5.4): the receive window the peer last advertised.
const tcpInfoSndWnd = 228

// tcpQueue returns the bytes c's kernel holds that the peer has not
// acknowledged (SIOCOUTQ) and the peer's receive window (-1 on a kernel
// that does not report it).
func tcpQueue(c *net.TCPConn) (unsent, window int64, ok bool) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	window = -1
	cerr := raw.Control(func(fd uintptr) {
		var q int32
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCOUTQ, uintptr(unsafe.Pointer(&q))); e != 0 {
			return
		}
		unsent, ok = int64(q), true
		var info [256]byte
		n := uint32(len(info))
		if _, _, e := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&n)), 0); e == 0 && n >= tcpInfoSndWnd+4 {
			window = int64(binary.NativeEndian.Uint32(info[tcpInfoSndWnd:]))
		}
	})
	if cerr != nil {
		return 0, 0, false
	}
	return unsent, window, ok
}
