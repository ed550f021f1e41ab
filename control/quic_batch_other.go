//go:build !linux

package control

import "net"

// batchConn is the socket itself on systems other than Linux (see
// quic_batch_linux.go).
type batchConn = net.UDPConn

func newBatchConn(udp *net.UDPConn) *batchConn { return udp }
