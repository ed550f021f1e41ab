package control

import (
	"encoding/binary"
	"net"
	"syscall"
	"unsafe"
)

// ttlControl is the ancillary data that sets one datagram's TTL (IPv4) or
// hop limit (IPv6) in sendmsg.
func ttlControl(to *net.UDPAddr, ttl int) []byte {
	b := make([]byte, syscall.CmsgSpace(4))
	h := (*syscall.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = syscall.IPPROTO_IP, syscall.IP_TTL
	if to.IP.To4() == nil {
		h.Level, h.Type = syscall.IPPROTO_IPV6, syscall.IPV6_HOPLIMIT
	}
	h.SetLen(syscall.CmsgLen(4))
	binary.NativeEndian.PutUint32(b[syscall.CmsgLen(0):], uint32(ttl))
	return b
}
