package netlab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// udp opens a UDP socket on h at port.
func udp(t *testing.T, h *Host, port int) *net.UDPConn {
	t.Helper()
	c, err := h.ListenUDP(netip.AddrPortFrom(h.Addr, uint16(port)).String())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// recv waits up to d for a datagram on c.
func recv(c *net.UDPConn, d time.Duration) (string, netip.AddrPort, error) {
	buf := make([]byte, 1500)
	c.SetReadDeadline(time.Now().Add(d))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	return string(buf[:n]), netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), err
}

// observe sends a datagram from c to the public rendezvous and returns the
// address it saw.
func observe(t *testing.T, c *net.UDPConn, rv *net.UDPConn) netip.AddrPort {
	t.Helper()
	to := rv.LocalAddr().(*net.UDPAddr).AddrPort()
	_, err := c.WriteToUDPAddrPort([]byte("register"), to)
	require.NoError(t, err)
	msg, from, err := recv(rv, 2*time.Second)
	require.NoError(t, err)
	require.Equal(t, "register", msg)
	return from
}

// sendTTL sends one datagram with the given TTL.
func sendTTL(t *testing.T, c *net.UDPConn, msg string, to netip.AddrPort, ttl int) {
	t.Helper()
	raw, err := c.SyscallConn()
	require.NoError(t, err)
	set := func(v int) {
		var serr error
		require.NoError(t, raw.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TTL, v)
		}))
		require.NoError(t, serr)
	}
	set(ttl)
	defer set(64)
	_, err = c.WriteToUDPAddrPort([]byte(msg), to)
	require.NoError(t, err)
}

func TestHomesReachThePublicHostButNotTheReverse(t *testing.T) {
	lab := NewForTest(t, Config{Homes: []HomeConfig{{Hosts: 2}, {}}})
	pub, home := lab.Public[0], lab.Homes[0]
	a := home.Hosts[0]
	require.Equal(t, "10.1.0.2", a.Addr.String())
	require.Equal(t, "10.1.0.3", home.Hosts[1].Addr.String())
	require.Equal(t, "172.17.1.2", home.Router.Addr.String())
	require.Equal(t, "172.16.1.2", pub.Addr.String())

	// UDP out and the answer back; the public host sees the router's
	// address and, as MASQUERADE keeps ports, the host's port.
	rv := udp(t, pub, 3478)
	ca := udp(t, a, 4001)
	seen := observe(t, ca, rv)
	require.Equal(t, netip.AddrPortFrom(home.Router.Addr, 4001), seen)
	_, err := rv.WriteToUDPAddrPort([]byte("back"), seen)
	require.NoError(t, err)
	msg, _, err := recv(ca, 2*time.Second)
	require.NoError(t, err)
	require.Equal(t, "back", msg)

	// Another socket of the public host is not admitted to that mapping.
	other := udp(t, pub, 5000)
	_, err = other.WriteToUDPAddrPort([]byte("intruder"), seen)
	require.NoError(t, err)
	_, _, err = recv(ca, 300*time.Millisecond)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "a packet from an address the host never sent to came in")

	// TCP: out works; in, neither to the router's address nor to the LAN
	// address.
	ln, err := pub.Listen("tcp4", pub.Addr.String()+":80")
	require.NoError(t, err)
	defer ln.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	c, err := a.Dial(ctx, "tcp4", pub.Addr.String()+":80")
	require.NoError(t, err)
	c.Close()
	homeLn, err := a.Listen("tcp4", ":8080")
	require.NoError(t, err)
	defer homeLn.Close()
	for _, to := range []string{home.Router.Addr.String() + ":8080", a.Addr.String() + ":8080"} {
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		_, err := pub.Dial(ctx, "tcp4", to)
		cancel()
		require.Error(t, err, "the public host opened a connection into the home at %s", to)
	}

	// Hosts of one home reach each other on the LAN, and see LAN addresses.
	cb := udp(t, home.Hosts[1], 4001)
	_, err = cb.WriteToUDPAddrPort([]byte("neighbour"), netip.AddrPortFrom(a.Addr, 4001))
	require.NoError(t, err)
	msg, from, err := recv(ca, 2*time.Second)
	require.NoError(t, err)
	require.Equal(t, "neighbour", msg)
	require.Equal(t, netip.AddrPortFrom(home.Hosts[1].Addr, 4001), from)

	// Commands run inside a namespace.
	out, err := a.Run(t.Context(), "ip", "-4", "-o", "addr", "show", "dev", "eth0")
	require.NoError(t, err)
	require.Contains(t, string(out), "10.1.0.2/24")
	conntrack, err := home.Conntrack(t.Context())
	if _, lookErr := exec.LookPath("conntrack"); lookErr == nil {
		require.NoError(t, err)
		require.Contains(t, conntrack, "dport=3478")
		require.NoError(t, home.FlushConntrack(t.Context()))
	}
}

// punch runs one hole punch between b (accepting, in the second home) and
// a (in the first), each registered at the rendezvous: b sends one packet
// with ttl to a's observed address, then a, lead later, sends to b's until
// b answers or a second has passed. It reports whether a heard b's answer.
func punch(t *testing.T, lab *Lab, port, ttl int, lead time.Duration) bool {
	rv := udp(t, lab.Public[0], 3478+port)
	a := udp(t, lab.Homes[0].Hosts[0], port)
	b := udp(t, lab.Homes[1].Hosts[0], port+1)
	seenA, seenB := observe(t, a, rv), observe(t, b, rv)
	if !lab.Homes[0].Config.RandomPorts {
		require.Equal(t, uint16(port), seenA.Port(), "MASQUERADE keeps the port")
	}

	answered := make(chan error, 1)
	go func() {
		// b answers the first packet that comes from a's observed address.
		for {
			msg, from, err := recv(b, 1500*time.Millisecond)
			if err != nil {
				answered <- err
				return
			}
			if msg == "ping" && from == seenA {
				_, err := b.WriteToUDPAddrPort([]byte("pong"), from)
				answered <- err
				return
			}
		}
	}()
	sendTTL(t, b, "punch", seenA, ttl)
	time.Sleep(lead)
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		_, err := a.WriteToUDPAddrPort([]byte("ping"), seenB)
		require.NoError(t, err)
		msg, from, err := recv(a, 50*time.Millisecond)
		if err == nil && msg == "pong" && from == seenB {
			<-answered
			return true
		}
	}
	<-answered
	return false
}

func TestUDPPunch(t *testing.T) {
	for _, tc := range []struct {
		name   string
		random [2]bool
		ttl    int
		ok     bool
	}{
		// The accepting side's low-TTL packet opens its own router for a's
		// address and dies in the internet before a's router.
		{"PortPreservingLowTTL", [2]bool{false, false}, 2, true},
		// With a full TTL that packet reaches a's router first, which
		// drops it and keeps its conntrack entry: a's packets to b then
		// leave from another port, which b's router refuses.
		{"PortPreservingFullTTL", [2]bool{false, false}, 64, false},
		// a's packets leave from a port nobody could predict.
		{"DialerRandomFully", [2]bool{true, false}, 2, false},
		// b's punch leaves from a new random port, not the one a sends to.
		{"AcceptorRandomFully", [2]bool{false, true}, 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			lab := NewForTest(t, Config{Homes: []HomeConfig{{RandomPorts: tc.random[0]}, {RandomPorts: tc.random[1]}}})
			tries := 1
			if tc.ok {
				tries = 3 // it works every time
			}
			for i := range tries {
				got := punch(t, lab, 4000+10*i, tc.ttl, 20*time.Millisecond)
				require.Equal(t, tc.ok, got, "try %d", i+1)
			}
		})
	}
}

func TestCloseRemovesEverything(t *testing.T) {
	lab := NewForTest(t, Config{Public: 2, Homes: []HomeConfig{{Hosts: 2, RateKbit: 1000, Loss: 0.01}, {RandomPorts: true}}})
	names := lab.Names()
	require.Len(t, names, 1+2+(1+2)+(1+1)) // inet, public hosts, homes with their routers
	p, err := lab.Homes[0].Hosts[0].Start(lab.Homes[0].Hosts[0].Command(context.Background(), "sleep", "600"))
	require.NoError(t, err)
	require.NoError(t, lab.Close())
	require.NoError(t, lab.Close(), "idempotent")
	<-p.Done()
	out, err := exec.Command("ip", "netns", "list").Output()
	require.NoError(t, err)
	for _, n := range names {
		require.NotContains(t, string(out), n)
	}
}

// A namespace left behind by a process that is gone is deleted by the next
// lab of the same prefix; one of a running process is not.
func TestNewRemovesStaleNamespaces(t *testing.T) {
	if err := Available(); err != nil {
		t.Skip(err)
	}
	const prefix = "netlabstale"
	// A pid that runs no process: the highest possible is above pid_max.
	stale := fmt.Sprintf("%s-%d-1-inet", prefix, 1<<22+1)
	live := fmt.Sprintf("%s-1-1-inet", prefix) // pid 1 runs
	for _, n := range []string{stale, live} {
		require.NoError(t, exec.Command("ip", "netns", "add", n).Run())
		t.Cleanup(func() { exec.Command("ip", "netns", "del", n).Run() })
	}
	NewForTest(t, Config{Prefix: prefix, Public: -1})
	out, err := exec.Command("ip", "netns", "list").Output()
	require.NoError(t, err)
	require.NotContains(t, string(out), stale)
	require.True(t, strings.Contains(string(out), live))
}

// A home's Delay holds each packet its router forwards, each way.
func TestDelay(t *testing.T) {
	const delay = 25 * time.Millisecond
	lab := NewForTest(t, Config{Homes: []HomeConfig{{Delay: delay}, {Delay: delay}}})
	rv := udp(t, lab.Public[0], 3478)
	a := udp(t, lab.Homes[0].Hosts[0], 4001)
	b := udp(t, lab.Homes[1].Hosts[0], 4001)
	rtt := func(from *net.UDPConn, to *net.UDPConn) time.Duration {
		best := time.Hour
		for range 5 {
			start := time.Now()
			_, err := from.WriteToUDPAddrPort([]byte("ping"), to.LocalAddr().(*net.UDPAddr).AddrPort())
			require.NoError(t, err)
			_, seen, err := recv(to, 2*time.Second)
			require.NoError(t, err)
			_, err = to.WriteToUDPAddrPort([]byte("pong"), seen)
			require.NoError(t, err)
			_, _, err = recv(from, 2*time.Second)
			require.NoError(t, err)
			best = min(best, time.Since(start))
		}
		return best
	}
	got := rtt(a, rv)
	t.Logf("home to public: %v", got)
	require.GreaterOrEqual(t, got, 2*delay)
	require.Less(t, got, 2*delay+20*time.Millisecond)
	// Home to home: a punch lets a's packets into b's home.
	seenA, seenB := observe(t, a, rv), observe(t, b, rv)
	sendTTL(t, b, "punch", seenA, 2)
	time.Sleep(delay + 10*time.Millisecond)
	start := time.Now()
	_, err := a.WriteToUDPAddrPort([]byte("ping"), seenB)
	require.NoError(t, err)
	_, _, err = recv(b, 2*time.Second)
	require.NoError(t, err)
	oneWay := time.Since(start)
	t.Logf("home to home, one way: %v", oneWay)
	require.GreaterOrEqual(t, oneWay, 2*delay)
	require.Less(t, oneWay, 2*delay+20*time.Millisecond)
}

// The test binary runs one of its own tests inside a namespace, and Close
// kills what is still running there.
func TestCommandRunsTheTestBinaryInside(t *testing.T) {
	if os.Getenv("NETLAB_HELPER") != "" {
		ifs, err := net.InterfaceAddrs()
		require.NoError(t, err)
		fmt.Println("inside:", ifs)
		if os.Getenv("NETLAB_HELPER") == "wait" {
			time.Sleep(time.Minute)
		}
		return
	}
	lab := NewForTest(t, Config{Public: -1, Homes: []HomeConfig{{}}})
	h := lab.Host("h1a")
	require.Same(t, lab.Homes[0].Hosts[0], h)
	t0 := time.Now()
	cmd := h.Command(t.Context(), os.Args[0], "-test.run=^TestCommandRunsTheTestBinaryInside$", "-test.v")
	cmd.Env = append(os.Environ(), "NETLAB_HELPER=1")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "10.1.0.2/24")
	t.Logf("helper ran in %v", time.Since(t0))

	cmd = h.Command(context.Background(), os.Args[0], "-test.run=^TestCommandRunsTheTestBinaryInside$")
	cmd.Env = append(os.Environ(), "NETLAB_HELPER=wait")
	p, err := h.Start(cmd)
	require.NoError(t, err)
	start := time.Now()
	require.NoError(t, lab.Close())
	<-p.Done()
	t.Logf("killed in %v", time.Since(start))
	require.Less(t, time.Since(start), 10*time.Second)
	require.Error(t, p.Wait(), "killed")
}
