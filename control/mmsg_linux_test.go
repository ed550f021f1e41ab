package control

import (
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// mmsgPair is two sockets of one kind on loopback, each an mmsgConn.
func mmsgPair(t *testing.T, network string, ip net.IP) (tx, rx *mmsgConn, txAddr, rxAddr *net.UDPAddr, rxUDP *net.UDPConn) {
	t.Helper()
	var udp [2]*net.UDPConn
	var mc [2]*mmsgConn
	for i := range udp {
		u, err := net.ListenUDP(network, &net.UDPAddr{IP: ip})
		require.NoError(t, err)
		t.Cleanup(func() { u.Close() })
		c, ok := newMMsgConn(u)
		require.True(t, ok)
		udp[i], mc[i] = u, c
	}
	rxAddr = udp[1].LocalAddr().(*net.UDPAddr)
	if ip.IsUnspecified() {
		rxAddr = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: rxAddr.Port}
	}
	return mc[0], mc[1], udp[0].LocalAddr().(*net.UDPAddr), rxAddr, udp[1]
}

func TestMMsgConnSendsAndReceivesBatches(t *testing.T) {
	for _, tc := range []struct {
		name    string
		network string
		ip      net.IP
		inet6   bool
	}{
		{"IPv4", "udp4", net.IPv4(127, 0, 0, 1), false},
		{"dual stack, IPv4 peers", "udp", net.IPv4zero, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tx, rx, txAddr, rxAddr, rxUDP := mmsgPair(t, tc.network, tc.ip)
			require.Equal(t, tc.inet6, tx.inet6)
			out := []ipv4.Message{
				{Buffers: [][]byte{[]byte("one")}, Addr: rxAddr},
				{Buffers: [][]byte{[]byte("two"), []byte(" and more")}, Addr: rxAddr},
				{Buffers: [][]byte{make([]byte, 1400)}, Addr: rxAddr},
			}
			n, err := tx.WriteBatch(out)
			require.NoError(t, err)
			require.Equal(t, 3, n)

			in := make([]ipv4.Message, 8)
			for i := range in {
				in[i].Buffers = [][]byte{make([]byte, 2000)}
				in[i].OOB = make([]byte, 64)
			}
			rxUDP.SetReadDeadline(time.Now().Add(5 * time.Second))
			var got []ipv4.Message
			for len(got) < 3 {
				n, err := rx.ReadBatch(in[len(got):], 0)
				require.NoError(t, err)
				got = append(got, in[len(got):len(got)+n]...)
			}
			for i, want := range []string{"one", "two and more", string(make([]byte, 1400))} {
				require.Equal(t, want, string(got[i].Buffers[0][:got[i].N]), "packet %d", i)
				ua := got[i].Addr.(*net.UDPAddr)
				require.True(t, ua.IP.To4().Equal(net.IPv4(127, 0, 0, 1)), "from %v", ua)
				require.Equal(t, txAddr.Port, ua.Port)
			}
		})
	}
}

func TestMMsgConnRefusesAnAddressOfAnotherFamily(t *testing.T) {
	tx, _, _, _, _ := mmsgPair(t, "udp4", net.IPv4(127, 0, 0, 1))
	n, err := tx.WriteBatch([]ipv4.Message{{Buffers: [][]byte{[]byte("x")}, Addr: &net.UDPAddr{IP: net.IPv6loopback, Port: 9}}})
	require.Zero(t, n)
	require.ErrorIs(t, err, unix.EINVAL)
}

// TestMMsgConnReadWaitsInThePoller: a read with nothing to read waits (in
// the poller, not the kernel) until a packet comes or the deadline passes.
func TestMMsgConnReadWaitsInThePoller(t *testing.T) {
	tx, rx, _, rxAddr, rxUDP := mmsgPair(t, "udp4", net.IPv4(127, 0, 0, 1))
	in := []ipv4.Message{{Buffers: [][]byte{make([]byte, 100)}}}
	rxUDP.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := rx.ReadBatch(in, 0)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)

	rxUDP.SetReadDeadline(time.Now().Add(5 * time.Second))
	go func() {
		time.Sleep(50 * time.Millisecond)
		tx.WriteBatch([]ipv4.Message{{Buffers: [][]byte{[]byte("late")}, Addr: rxAddr}})
	}()
	n, err := rx.ReadBatch(in, 0)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, "late", string(in[0].Buffers[0][:in[0].N]))
}
