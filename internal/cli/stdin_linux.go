package cli

import (
	"io"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawRead reads f, a non-blocking pipe or socket, with raw read(2) calls
// through the poller, as control/mmsg_linux.go does the QUIC socket's: a
// non-blocking read does not need the runtime told, and when told, the
// first read after an idle spell woke its monitor (sysmon) and set it
// polling every 20 us again.
func rawRead(f *os.File) io.Reader {
	rc, err := f.SyscallConn()
	if err != nil {
		return f
	}
	return &rawReader{f: f, rc: rc}
}

type rawReader struct {
	f  *os.File // kept: its finalizer would close the descriptor
	rc syscall.RawConn
}

func (r *rawReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n uintptr
	var errno syscall.Errno
	err := r.rc.Read(func(fd uintptr) bool {
		for {
			n, _, errno = unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			if errno != unix.EINTR {
				return errno != unix.EAGAIN
			}
		}
	})
	runtime.KeepAlive(p)
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, &os.PathError{Op: "read", Path: r.f.Name(), Err: errno}
	case n == 0:
		return 0, io.EOF
	}
	return int(n), nil
}
