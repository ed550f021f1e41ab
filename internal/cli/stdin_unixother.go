//go:build unix && !linux

package cli

import (
	"io"
	"os"
)

// rawRead is f itself here (see stdin_linux.go).
func rawRead(f *os.File) io.Reader { return f }
