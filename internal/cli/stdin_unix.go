//go:build unix

package cli

import (
	"io"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Stdin is standard input, read through Go's poller when it is a pipe or a
// socket (an encoder's output), so that waiting for the next frame holds no
// thread. Read as os.Stdin, each wait (a frame comes every 26 ms) was a
// read(2) blocking a thread that held a processor: the runtime's monitor
// (sysmon) then never slept, took the processor back after 10 ms and
// polled at its shortest interval (20 us) meanwhile, costing a station with
// 100 children a fifth of its CPU (examples/relaycost). Each read is a raw
// system call, as the socket's in control/mmsg_linux.go are: a
// non-blocking read does not need the runtime told, and when told, the
// first after an idle spell woke sysmon and set it polling again.
// Non-blocking mode is set on the pipe, which only others reading the same
// pipe see; a terminal or a file is left as it is.
func Stdin() io.Reader {
	var st unix.Stat_t
	if err := unix.Fstat(unix.Stdin, &st); err != nil {
		return os.Stdin
	}
	if st.Mode&unix.S_IFMT != unix.S_IFIFO && st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return os.Stdin
	}
	if err := unix.SetNonblock(unix.Stdin, true); err != nil {
		return os.Stdin
	}
	f := os.NewFile(uintptr(unix.Stdin), "/dev/stdin")
	rc, err := f.SyscallConn()
	if err != nil {
		return f
	}
	return &rawReader{f: f, rc: rc}
}

// rawReader reads a non-blocking file with raw read(2) calls, waiting in
// the poller.
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
