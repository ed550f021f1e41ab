package output

import (
	"net"

	"golang.org/x/sys/unix"
)

// tcpQueue returns the bytes c's kernel holds that the peer has not
// acknowledged (SIOCOUTQ) and the peer's receive window (tcpi_snd_wnd,
// since Linux 5.4; an older kernel leaves it 0, which sockState.unread
// reads as never advertised, the same as not reported).
func tcpQueue(c *net.TCPConn) (unsent, window int64, ok bool) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	window = -1
	cerr := raw.Control(func(fd uintptr) {
		q, err := unix.IoctlGetInt(int(fd), unix.TIOCOUTQ)
		if err != nil {
			return
		}
		unsent, ok = int64(q), true
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			window = int64(info.Snd_wnd)
		}
	})
	if cerr != nil {
		return 0, 0, false
	}
	return unsent, window, ok
}
