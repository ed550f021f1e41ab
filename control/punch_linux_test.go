package control

import (
	"encoding/binary"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The TTL reaches the wire on the punch packets only.
func TestQUICPunchTTLOnTheWire(t *testing.T) {
	a, _ := newQUICPair(t, QUICConfig{})
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer pc.Close()
	raw, err := pc.SyscallConn()
	require.NoError(t, err)
	var serr error
	require.NoError(t, raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_RECVTTL, 1)
	}))
	require.NoError(t, serr)
	ttlOf := func() int {
		buf, oob := make([]byte, 100), make([]byte, 100)
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, oobn, _, _, err := pc.ReadMsgUDP(buf, oob)
		require.NoError(t, err)
		msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
		require.NoError(t, err)
		for _, m := range msgs {
			if m.Header.Level == syscall.IPPROTO_IP && m.Header.Type == syscall.IP_TTL {
				return int(binary.NativeEndian.Uint32(m.Data))
			}
		}
		t.Fatal("no TTL received")
		return 0
	}
	for _, ttl := range []int{2, 0, 7} {
		require.NoError(t, a.Punch(t.Context(), pc.LocalAddr().String(), ttl))
		for range punchPackets {
			got := ttlOf()
			if ttl == 0 {
				require.Greater(t, got, 7, "the system default")
			} else {
				require.Equal(t, ttl, got)
			}
		}
	}
}
