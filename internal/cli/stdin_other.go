//go:build !unix

package cli

import "os"

// Stdin is standard input (see stdin_unix.go).
func Stdin() *os.File { return os.Stdin }
