package control

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// cmsg builds one control message.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func TestGSOBatchesSplitIntoTheirPackets(t *testing.T) {
	seg := make([]byte, 2)
	binary.NativeEndian.PutUint16(seg, 1000)
	tos := cmsg(unix.IPPROTO_IP, unix.IP_TOS, []byte{2, 0, 0, 0})
	oob := append(append([]byte(nil), tos...), cmsg(unix.SOL_UDP, unix.UDP_SEGMENT, seg)...)

	size, rest, ok := gsoSegment(oob)
	require.True(t, ok)
	require.Equal(t, 1000, size)
	require.Equal(t, tos, rest, "the other control messages stay")
	_, _, ok = gsoSegment(tos)
	require.False(t, ok)

	addr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
	ms := splitAll([]ipv4.Message{{Buffers: [][]byte{make([]byte, 2500)}, OOB: oob, Addr: addr}})
	require.Len(t, ms, 3)
	for i, want := range []int{1000, 1000, 500} {
		require.Len(t, ms[i].Buffers[0], want)
		require.Equal(t, tos, ms[i].OOB)
		require.Equal(t, addr, ms[i].Addr)
	}
}

func TestBatchConnSendsWhatIsQueuedAndFlushesOnClose(t *testing.T) {
	rx, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer rx.Close()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	c := newBatchConn(udp)
	to := rx.LocalAddr().(*net.UDPAddr)
	const n = 50
	for i := range n {
		b := []byte{byte(i), 1, 2, 3}
		k, _, err := c.WriteMsgUDP(b, nil, to)
		require.NoError(t, err)
		require.Equal(t, len(b), k)
		b[0] = 0xff // the queue holds a copy
	}
	require.NoError(t, c.Close())
	_, _, err = c.WriteMsgUDP([]byte{1}, nil, to)
	require.ErrorIs(t, err, net.ErrClosed)

	rx.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	for i := range n {
		k, _, err := rx.ReadFromUDP(buf)
		require.NoError(t, err)
		require.Equal(t, []byte{byte(i), 1, 2, 3}, buf[:k], "packet %d", i)
	}
}

// A socket bound to 0.0.0.0 is an IPv6 one that also carries IPv4 (Go's
// choice for "udp"): IPv4 destinations go out through it too.
func TestBatchConnOnADualStackSocket(t *testing.T) {
	rx, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer rx.Close()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4zero})
	require.NoError(t, err)
	c := newBatchConn(udp)
	defer c.Close()
	to := rx.LocalAddr().(*net.UDPAddr)
	for _, dst := range []*net.UDPAddr{to, {IP: to.IP.To16(), Port: to.Port}} {
		_, _, err := c.WriteMsgUDP([]byte("hello"), nil, dst)
		require.NoError(t, err)
		rx.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 16)
		k, _, err := rx.ReadFromUDP(buf)
		require.NoError(t, err, "to %v", dst)
		require.Equal(t, "hello", string(buf[:k]))
	}
}

func TestQUICOnADualStackSocket(t *testing.T) {
	a, err := NewQUIC(QUICConfig{ListenAddr: "0.0.0.0:0"})
	require.NoError(t, err)
	defer a.Close()
	b, err := NewQUIC(QUICConfig{ListenAddr: "127.0.0.1:0"})
	require.NoError(t, err)
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		if c, err := b.Accept(ctx); err == nil {
			if m, err := c.Receive(ctx); err == nil {
				c.Send(ctx, m)
			}
		}
	}()
	c, err := a.Dial(ctx, b.Addr(), b.Key())
	require.NoError(t, err)
	require.NoError(t, c.Send(ctx, []byte("ping")))
	m, err := c.Receive(ctx)
	require.NoError(t, err)
	require.Equal(t, "ping", string(m))
}
