package control

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/p2pradio/p2pradio/internal/netlab"
	"github.com/stretchr/testify/require"
)

// Punch packets arrive as non-QUIC packets on the far transport's socket,
// and QUIC goes on working beside them.
func TestQUICPunchSendsNonQUICPackets(t *testing.T) {
	a, b := newQUICPair(t, QUICConfig{})
	// quic-go drops non-QUIC packets until the first read asks for them.
	done, cancel := context.WithCancel(t.Context())
	cancel()
	_, _, err := b.tr.ReadNonQUICPacket(done, nil)
	require.ErrorIs(t, err, context.Canceled)
	for _, ttl := range []int{0, 5} {
		require.NoError(t, a.Punch(t.Context(), b.Addr(), ttl))
		for range punchPackets {
			buf := make([]byte, 100)
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			n, from, err := b.tr.ReadNonQUICPacket(ctx, buf)
			cancel()
			require.NoError(t, err)
			require.Equal(t, punchPayload, buf[:n])
			require.Equal(t, a.Addr(), from.String())
		}
	}
	connect(t, a, b)
}

func TestQUICPunchErrors(t *testing.T) {
	a, b := newQUICPair(t, QUICConfig{})
	require.Error(t, a.Punch(t.Context(), "no such host:x", 0))
	require.Error(t, a.Punch(t.Context(), b.Addr(), 256))
	require.Error(t, a.Punch(t.Context(), b.Addr(), -1))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	require.ErrorIs(t, a.Punch(ctx, b.Addr(), 0), context.Canceled)
	// A lossy socket still takes a TTL: its UDP socket is underneath.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	lossy, err := NewQUIC(QUICConfig{PacketConn: NewLossyPacketConn(pc, LinkConfig{Delay: time.Millisecond})})
	require.NoError(t, err)
	require.NoError(t, lossy.Punch(t.Context(), b.Addr(), 2))
	lossy.Close()
	require.ErrorIs(t, lossy.Punch(t.Context(), b.Addr(), 2), ErrClosed)
	// A socket that is no UDP socket cannot take a TTL.
	odd, err := NewQUIC(QUICConfig{PacketConn: struct{ net.PacketConn }{quietOnly(t)}})
	require.NoError(t, err)
	defer odd.Close()
	require.ErrorIs(t, odd.Punch(t.Context(), b.Addr(), 2), errors.ErrUnsupported)
	require.NoError(t, odd.Punch(t.Context(), b.Addr(), 0))
}

func quietOnly(t *testing.T) net.PacketConn {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	return pc
}

// natQUIC starts a QUIC transport on a lab host.
func natQUIC(t *testing.T, h *netlab.Host, port int) *QUICTransport {
	t.Helper()
	pc, err := h.ListenUDP(netip.AddrPortFrom(h.Addr, uint16(port)).String())
	require.NoError(t, err)
	tr, err := NewQUIC(QUICConfig{PacketConn: pc, HandshakeTimeout: 2 * time.Second, IdleTimeout: 10 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { tr.Close() })
	return tr
}

// observedAt registers tr at the rendezvous rv and returns the address rv
// saw; the connection stays open, as a registration would.
func observedAt(t *testing.T, tr, rv *QUICTransport) string {
	t.Helper()
	_, in := connect(t, tr, rv)
	return in.RemoteAddr()
}

// Through real Linux NATs: the accepting node punches the dialer's observed
// address with TTL 2, then the dialer dials the acceptor's observed address.
func TestQUICPunchThroughNAT(t *testing.T) {
	for _, tc := range []struct {
		name   string
		random bool
		ttl    int // of the punch; -1: no punch
		ok     bool
	}{
		{"PortPreserving", false, 2, true},
		{"PortPreservingWithoutPunch", false, -1, false},
		// The punch reaches a's router before a sent anything to b; the
		// router's conntrack entry for it moves a's dial to another port.
		{"PortPreservingFullTTL", false, 0, false},
		{"RandomFully", true, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			lab := netlab.NewForTest(t, netlab.Config{Homes: []netlab.HomeConfig{{RandomPorts: tc.random}, {RandomPorts: tc.random}}})
			rv := natQUIC(t, lab.Public[0], 7000)
			a := natQUIC(t, lab.Homes[0].Hosts[0], 7001)
			b := natQUIC(t, lab.Homes[1].Hosts[0], 7002)
			seenA, seenB := observedAt(t, a, rv), observedAt(t, b, rv)
			if !tc.random {
				require.Equal(t, lab.Homes[0].Router.Addr.String()+":7001", seenA)
			}
			if tc.ttl >= 0 {
				require.NoError(t, b.Punch(t.Context(), seenA, tc.ttl))
				time.Sleep(20 * time.Millisecond)
			}
			accepted := make(chan Conn, 1)
			go func() {
				c, err := b.Accept(testCtx(t))
				if err == nil {
					accepted <- c
				}
			}()
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
			defer cancel()
			ca, err := a.Dial(ctx, seenB, b.Key())
			if !tc.ok {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			cb := <-accepted
			require.Equal(t, seenA, cb.RemoteAddr(), "b sees a at the address the rendezvous saw")
			require.NoError(t, ca.Send(t.Context(), []byte("through")))
			m, err := cb.Receive(testCtx(t))
			require.NoError(t, err)
			require.Equal(t, "through", string(m))
		})
	}
}
