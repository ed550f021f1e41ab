package p2pradio

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/control/portmap"
	"github.com/p2pradio/p2pradio/input"
	"github.com/p2pradio/p2pradio/playout"
)

// udpForward is a router's port mapping on loopback: datagrams to its
// socket go to target from a socket of their own per sender, and the
// answers go back.
type udpForward struct {
	pc     *net.UDPConn
	target *net.UDPAddr
	mu     sync.Mutex
	flows  map[string]*net.UDPConn
	wg     sync.WaitGroup
}

func newUDPForward(t *testing.T, target string) *udpForward {
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	ta, err := net.ResolveUDPAddr("udp4", target)
	require.NoError(t, err)
	f := &udpForward{pc: pc, target: ta, flows: make(map[string]*net.UDPConn)}
	f.wg.Go(f.run)
	t.Cleanup(f.close)
	return f
}

func (f *udpForward) addr() string { return f.pc.LocalAddr().String() }

func (f *udpForward) run() {
	buf := make([]byte, 2048)
	for {
		n, from, err := f.pc.ReadFromUDP(buf)
		if err != nil {
			return
		}
		f.mu.Lock()
		c := f.flows[from.String()]
		if c == nil {
			if c, err = net.DialUDP("udp4", nil, f.target); err != nil {
				f.mu.Unlock()
				continue
			}
			f.flows[from.String()] = c
			f.wg.Go(func() {
				b := make([]byte, 2048)
				for {
					n, err := c.Read(b)
					if err != nil {
						return
					}
					f.pc.WriteToUDP(b[:n], from)
				}
			})
		}
		f.mu.Unlock()
		c.Write(buf[:n])
	}
}

// senders is how many remote addresses used the mapping.
func (f *udpForward) senders() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.flows)
}

func (f *udpForward) close() {
	f.pc.Close()
	f.mu.Lock()
	for _, c := range f.flows {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// fakeRouter grants the mapping of a udpForward, or fails.
type fakeRouter struct {
	mu     sync.Mutex
	ext    string
	err    error
	maps   int
	unmaps int
}

func (r *fakeRouter) Map(ctx context.Context, proto string, port int, lifetime time.Duration) (portmap.Mapping, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.maps++
	if r.err != nil {
		return portmap.Mapping{}, r.err
	}
	return portmap.Mapping{Method: "fake", Proto: proto, External: netip.MustParseAddrPort(r.ext), Internal: port, Lifetime: lifetime}, nil
}

func (r *fakeRouter) Unmap(ctx context.Context, m portmap.Mapping) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unmaps++
	return nil
}

// A listener with a port mapping registers the mapped address; the
// rendezvous dials it back there (through the mapping) before calling it
// public, offers it there, and the listener removes the mapping when it
// closes. The status shows the mapping.
func TestPortMappedListenerIsDialedBackAtItsMapping(t *testing.T) {
	src, err := input.OpenFile("testdata/cbr128.mp3", input.FileConfig{Loop: true})
	require.NoError(t, err)
	b, err := New(Config{Source: src, Logger: testLogger(t, "b")})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait(); b.Close() }()
	wg.Go(func() { b.Run(ctx) })

	router := &fakeRouter{}
	l, err := New(Config{Station: b.Address().String(), Sink: &playout.Discard{}, PortMap: router, Logger: testLogger(t, "l")})
	require.NoError(t, err)
	fwd := newUDPForward(t, l.LocalAddr())
	router.ext = fwd.addr()
	lh, bh := l.Handler(HTTPConfig{}), b.Handler(HTTPConfig{})
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()

	require.Eventually(t, func() bool {
		for _, n := range bh.Status().Swarm {
			if n.ID == lh.Status().ID {
				return n.Addr == fwd.addr() && n.Reach == "public"
			}
		}
		return false
	}, 10*time.Second, 50*time.Millisecond, "the rendezvous knows the listener at its mapping, dialed back")
	require.Equal(t, 1, fwd.senders(), "one dial came through the mapping: the dial-back")
	require.Eventually(t, func() bool { return lh.Status().Reach == "public" }, 5*time.Second, 50*time.Millisecond,
		"the listener was told at its next registration")
	st := lh.Status()
	require.NotNil(t, st.PortMap)
	require.Equal(t, &StatusPortMap{Method: "fake", Proto: "udp", External: fwd.addr(), Internal: st.PortMap.Internal, RenewedS: st.PortMap.RenewedS}, st.PortMap)
	require.Equal(t, l.LocalAddr(), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(st.PortMap.Internal)).String())

	require.NoError(t, l.Close())
	<-done
	router.mu.Lock()
	defer router.mu.Unlock()
	require.Equal(t, 1, router.maps)
	require.Equal(t, 1, router.unmaps, "Close removed the mapping")
}

// A router that refuses: the status says why, and the node works as
// without a mapping.
func TestPortMapFailureIsShown(t *testing.T) {
	src, err := input.OpenFile("testdata/cbr128.mp3", input.FileConfig{Loop: true})
	require.NoError(t, err)
	b, err := New(Config{Source: src})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait(); b.Close() }()
	wg.Go(func() { b.Run(ctx) })
	router := &fakeRouter{err: errors.New("no router here")}
	l, err := New(Config{Station: b.Address().String(), Sink: &playout.Discard{}, PortMap: router})
	require.NoError(t, err)
	defer l.Close()
	wg.Go(func() { l.Run(ctx) })
	h := l.Handler(HTTPConfig{})
	require.Eventually(t, func() bool {
		st := h.Status()
		return st.PortMap != nil && st.PortMap.Error == "no router here" && st.Reach == "public" && st.Playing != nil && *st.Playing
	}, 10*time.Second, 50*time.Millisecond)
	require.Empty(t, h.Status().PortMap.External)

}
