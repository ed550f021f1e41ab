package p2pradio

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/control/portmap"
	"github.com/p2pradio/p2pradio/input"
	"github.com/p2pradio/p2pradio/internal/netlab"
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

// TestNATLabPortMap: a listener behind a port-randomising router that runs
// miniupnpd maps its QUIC port (UPnP-IGD, or NAT-PMP), the rendezvous
// dials it back at the mapping and calls it public, and it feeds two
// listeners behind port-randomising routers of their own, which could not
// have reached it otherwise (no punch opens such a NAT: see
// TestNATLabRandomPorts), while the broadcaster's one slot is its. When it
// stops, the mapping is gone from the router.
func TestNATLabPortMap(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the examples and a lab of namespaces")
	}
	if err := netlab.Available(); err != nil {
		t.Skip(err)
	}
	if err := netlab.MiniUPnPdAvailable(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	bcast, listen := buildExample(t, dir, "broadcast"), buildExample(t, dir, "listen")
	for _, mode := range []string{"upnp", "natpmp"} {
		t.Run(mode, func(t *testing.T) { testNATLabPortMap(t, bcast, listen, mode) })
	}
}

func testNATLabPortMap(t *testing.T, bcast, listen, mode string) {
	homes := make([]netlab.HomeConfig, 3)
	for i := range homes {
		homes[i] = netlab.HomeConfig{RandomPorts: true}
	}
	lab := netlab.NewForTest(t, netlab.Config{Prefix: "p2pmap", Homes: homes})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	pub := lab.Public[0]
	pa := pub.Addr.String()
	stun, err := pub.ServeSTUN(3478)
	require.NoError(t, err)
	defer stun.Close()
	mdir := t.TempDir()
	mu, err := lab.Homes[0].StartMiniUPnPd(ctx, netlab.MiniUPnPdConfig{UPnP: mode == "upnp", NATPMP: mode == "natpmp", STUN: stun.Addr, Dir: mdir})
	require.NoError(t, err)
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(mu.Log)
			t.Logf("miniupnpd:\n%s", b)
		}
	}()
	station := startLabBroadcaster(t, ctx, pub, bcast, "-listen", pa+":7000", "-upload", "150", "-http", pa+":8000")

	// The listener with the mapping: the broadcaster's one slot is its.
	ha := lab.Homes[0].Hosts[0]
	start := time.Now()
	a, err := ha.Start(ha.Command(ctx, listen, "-discard", "-portmap", mode, "-upload", "1000", "-listen", "0.0.0.0:7001", "-http", "0.0.0.0:8001", station))
	require.NoError(t, err)
	router := lab.Homes[0].Router.Addr.String()
	mapped := router + ":7001"
	var sa Status
	require.Eventually(t, func() bool {
		sa, err = labStatus(ctx, ha, "127.0.0.1:8001")
		return err == nil && sa.PortMap != nil && sa.PortMap.External != "" && sa.Reach == "public" && sa.Depth == 1
	}, 20*time.Second, 200*time.Millisecond, "the listener maps its port and is dialed back there")
	t.Logf("mapped and public %v after its start: %+v, observed %s", time.Since(start).Round(time.Millisecond), *sa.PortMap, sa.Observed)
	require.Equal(t, map[string]string{"upnp": "upnp", "natpmp": "nat-pmp"}[mode], sa.PortMap.Method)
	require.Equal(t, "udp", sa.PortMap.Proto)
	require.Equal(t, mapped, sa.PortMap.External, "the router's address, the same port")
	require.NotEqual(t, mapped, sa.Observed, "its router randomises the ports of its flows")
	rules, err := lab.Homes[0].Router.Run(ctx, "nft", "list", "chain", "inet", "miniupnpd", "prerouting_miniupnpd")
	require.NoError(t, err)
	require.Contains(t, string(rules), "dnat", "miniupnpd forwards the port")

	bs, err := labStatus(ctx, pub, pa+":8000")
	require.NoError(t, err)
	found := false
	for _, n := range bs.Swarm {
		if n.ID == sa.ID {
			found = true
			require.Equal(t, mapped, n.Addr, "the rendezvous knows it at its mapping")
			require.Equal(t, "public", n.Reach)
		}
	}
	require.True(t, found)

	// Two listeners behind port-randomising NATs join: the mapped listener
	// is the only node with a free slot, and only its mapping lets them in.
	var others []*netlab.Host
	for _, home := range lab.Homes[1:] {
		h := home.Hosts[0]
		_, err := h.Start(h.Command(ctx, listen, "-discard", "-listen", "0.0.0.0:7001", "-http", "0.0.0.0:8001", station))
		require.NoError(t, err)
		others = append(others, h)
	}
	joined := time.Now()
	require.Eventually(t, func() bool {
		for _, h := range others {
			st, err := labStatus(ctx, h, "127.0.0.1:8001")
			if err != nil || st.Playing == nil || !*st.Playing || len(st.Parents) == 0 || st.Parents[0].ID != sa.ID {
				return false
			}
		}
		return true
	}, 15*time.Second, 200*time.Millisecond, "both play, fed by the mapped listener")
	t.Logf("both fed by the mapped listener %v after they started", time.Since(joined).Round(time.Millisecond))
	for i, h := range others {
		st, err := labStatus(ctx, h, "127.0.0.1:8001")
		require.NoError(t, err)
		require.Equal(t, mapped, st.Parents[0].Addr)
		// Their own dial-backs fail, and their NAT check says why.
		require.Eventually(t, func() bool {
			st, err = labStatus(ctx, h, "127.0.0.1:8001")
			return err == nil && st.Reach == "unreachable" && st.NAT == "port-randomising"
		}, 8*time.Second, 200*time.Millisecond, "listener %d is unreachable behind a port-randomising NAT: %s %s", i, st.Reach, st.NAT)
	}
	sa, err = labStatus(ctx, ha, "127.0.0.1:8001")
	require.NoError(t, err)
	require.Len(t, sa.Children, 2)

	// It stops: the mapping is removed from the router.
	require.NoError(t, a.Cmd.Process.Signal(os.Interrupt))
	select {
	case <-a.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the listener did not stop")
	}
	rules, err = lab.Homes[0].Router.Run(ctx, "nft", "list", "chain", "inet", "miniupnpd", "prerouting_miniupnpd")
	require.NoError(t, err)
	require.NotContains(t, string(rules), "dnat", "the listener removed its mapping when it stopped")
}

// TestNATPMPMapperAgainstMiniUPnPd drives the NAT-PMP Mapper from inside a
// home of the lab against its router's miniupnpd: a mapping, its renewal
// (the same mapping, one rule), its removal.
func TestNATPMPMapperAgainstMiniUPnPd(t *testing.T) {
	if err := netlab.Available(); err != nil {
		t.Skip(err)
	}
	if err := netlab.MiniUPnPdAvailable(); err != nil {
		t.Skip(err)
	}
	lab := netlab.NewForTest(t, netlab.Config{Prefix: "p2ppmp", Homes: []netlab.HomeConfig{{}}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stun, err := lab.Public[0].ServeSTUN(3478)
	require.NoError(t, err)
	defer stun.Close()
	home := lab.Homes[0]
	_, err = home.StartMiniUPnPd(ctx, netlab.MiniUPnPdConfig{NATPMP: true, STUN: stun.Addr, Dir: t.TempDir()})
	require.NoError(t, err)
	rules := func() string {
		out, err := home.Router.Run(ctx, "nft", "list", "chain", "inet", "miniupnpd", "prerouting_miniupnpd")
		require.NoError(t, err)
		return string(out)
	}
	lan, err := home.Hosts[0].Addr.Prefix(24)
	require.NoError(t, err)
	// /proc/net/route shows the test process's namespace, not the
	// thread's: the gateway is given.
	pm := &portmap.NATPMP{Gateway: lan.Addr().Next()}
	var m, again portmap.Mapping
	require.NoError(t, home.Hosts[0].Do(func() (err error) {
		m, err = pm.Map(ctx, "udp", 7001, time.Minute)
		return err
	}))
	require.Equal(t, portmap.Mapping{Method: "nat-pmp", Proto: "udp", External: netip.AddrPortFrom(home.Router.Addr, 7001),
		Internal: 7001, Lifetime: time.Minute}, m)
	require.Equal(t, 1, strings.Count(rules(), "dnat"))
	require.NoError(t, home.Hosts[0].Do(func() (err error) {
		again, err = pm.Map(ctx, "udp", 7001, time.Minute)
		return err
	}))
	require.Equal(t, m, again, "a renewal")
	require.Equal(t, 1, strings.Count(rules(), "dnat"), "one rule still")
	require.NoError(t, home.Hosts[0].Do(func() error { return pm.Unmap(ctx, m) }))
	require.NotContains(t, rules(), "dnat")
}
