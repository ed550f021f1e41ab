//go:build !unix

package cli

import (
	"io"
	"os"
)

// Stdin is standard input (see stdin_unix.go).
func Stdin() io.Reader { return os.Stdin }
