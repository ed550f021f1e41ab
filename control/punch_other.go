//go:build !linux

package control

import "net"

// ttlControl returns nil: setting one datagram's TTL is implemented on
// Linux only.
func ttlControl(*net.UDPAddr, int) []byte { return nil }
