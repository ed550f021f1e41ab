//go:build unix

package cli

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Stdin is standard input, read through Go's poller when it is a pipe or a
// socket (an encoder's output), so that waiting for the next frame holds no
// thread. Read as os.Stdin, each wait (a frame comes every 26 ms) was a
// read(2) blocking a thread that held a processor: the runtime's monitor
// (sysmon) then never slept, took the processor back after 10 ms and
// polled at its shortest interval (20 us) meanwhile, costing a station with
// 100 children a fifth of its CPU (examples/relaycost). On Linux each read
// is a raw system call (stdin_linux.go). Non-blocking mode is set on the
// pipe, which only others reading the same pipe see; a terminal or a file
// is left as it is.
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
	return rawRead(os.NewFile(uintptr(unix.Stdin), "/dev/stdin"))
}
