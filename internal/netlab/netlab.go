// Package netlab builds a small internet out of Linux network namespaces,
// for tests and lab programs: an internet router, public hosts, and homes,
// each a LAN of one or more hosts behind a router doing iptables MASQUERADE
// (port-preserving, as Linux does by default, or --random-fully).
//
// Everything lives in namespaces the lab creates: the addresses below are
// used only inside them, and nothing is sent anywhere else. Close deletes
// the namespaces, and with them their links, iptables rules and conntrack
// tables.
//
// Topology, for public host i and home j (each /24 is one link), with each
// namespace's Role:
//
//	public host i (p<i>)  eth0 172.16.i.2 ---- 172.16.i.1 p<i>  \
//	                                                            inet (router)
//	home j router (h<j>r) wan  172.17.j.2 ---- 172.17.j.1 h<j>  /
//	                      lan  10.j.0.1 (a bridge)
//	home j host k (h<j>a, h<j>b, ...) eth0 10.j.0.(k+1)
//
// The router's firewall admits from outside only packets of flows its hosts
// opened (conntrack ESTABLISHED,RELATED). A home can lose packets (Loss),
// be rate-limited (RateKbit, tc tbf) and delay packets (Delay: this kernel
// has no netem, so an NFQUEUE rule hands them to the lab's process, which
// releases them later).
//
// A packet from a home host to another home passes its own router (hop 1),
// the internet router (hop 2) and the far router: a TTL of 2 leaves the home
// but dies before the far router.
//
// Go code reaches a namespace in two ways: Host.Command and Host.Start run a
// program there (any program, the test binary itself, an example), and
// Host.Do, Host.ListenUDP, Host.Listen and Host.Dial create sockets there
// from the calling process: a socket stays in the namespace it was made in,
// so one test process can drive nodes in every home.
//
// The lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), ip (iproute2) and
// iptables; Home.Conntrack needs conntrack. New returns an error wrapping
// ErrUnavailable when the machine cannot run it; NewForTest turns that into
// t.Skip.
package netlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ErrUnavailable is wrapped by New's error when this machine cannot build a
// lab (not Linux, not root, a missing tool, namespaces refused).
var ErrUnavailable = errors.New("netlab: unavailable")

// DefaultPrefix is Config.Prefix's default.
const DefaultPrefix = "netlab"

// Config describes a lab. A zero field means its default.
type Config struct {
	// Prefix starts the name of every namespace the lab makes:
	// "<Prefix>-<pid>-<n>-<role>", unique per process and lab. New
	// deletes namespaces left with this prefix by processes that no longer
	// run (a crashed earlier run). Default DefaultPrefix; it must not
	// contain '/' or spaces.
	Prefix string
	// Public is the number of public hosts (at most 250); 0 means 1, a
	// negative number none.
	Public int
	// Homes are the homes, one router each (at most 250).
	Homes []HomeConfig
	// Logf, when set, receives every command the lab runs to build itself.
	Logf func(format string, args ...any)
}

// HomeConfig describes one home.
type HomeConfig struct {
	// RandomPorts makes the router's MASQUERADE --random-fully: a random
	// public port for every new flow, instead of keeping the host's port.
	RandomPorts bool
	// Hosts is the number of hosts on the home's LAN (at most 250);
	// default 1.
	Hosts int
	// RateKbit, when positive, limits the home's uplink and downlink each
	// to this many kbit/s (tc tbf on both ends of the router's WAN link).
	RateKbit int
	// Loss, when positive, drops this fraction of the packets the router
	// forwards, in both directions (iptables statistic).
	Loss float64
	// Delay, when positive, holds every packet the router forwards, in
	// both directions, this long: a home-to-public round trip takes
	// 2*Delay more, a home-to-home one the sum of both homes' 2*Delay.
	// This kernel has no netem: the lab queues the packets with an
	// iptables NFQUEUE rule and releases them from the process that built
	// the lab (the packets stay in the kernel; only their ids cross). The
	// delay is exact to a millisecond or so, and ends with that process.
	Delay time.Duration
}

// Lab is a running lab. Its fields describe it and must not be changed.
type Lab struct {
	// Inet is the internet's router.
	Inet *Host
	// Public are the public hosts.
	Public []*Host
	// Homes are the homes, in Config.Homes' order.
	Homes []*Home

	cfg    Config
	prefix string // "<Prefix>-<pid>-<n>-"

	mu       sync.Mutex
	ns       []string // created, in order
	procs    map[*Proc]struct{}
	delayers []*delayer
	closed   bool
}

// Home is one home: a router and the hosts of its LAN.
type Home struct {
	// Router is the home's router; its Addr is the home's public
	// address, the one peers outside see its hosts' packets come from.
	Router *Host
	// Hosts are the hosts on the LAN.
	Hosts  []*Host
	Config HomeConfig
}

// Host is one namespace of a lab.
type Host struct {
	// Role names the host within its lab: "inet", "p1", "p2" ... for
	// public hosts, "h1r" for home 1's router, "h1a", "h1b" ... for its
	// hosts.
	Role string
	// Name is the namespace's name (ip netns): the lab's prefix and Role.
	Name string
	// Addr is the host's address: public for public hosts, the LAN address
	// for home hosts, the WAN (public) address for a home's router.
	Addr netip.Addr
	lab  *Lab
}

func (h *Host) String() string { return h.Name }

var labSeq atomic.Uint64

// Available reports why this machine cannot build a lab, or nil.
func Available() error {
	if err := platformOK(); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: needs root (uid %d)", ErrUnavailable, os.Geteuid())
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%w: %s not installed (.ci/setup installs it)", ErrUnavailable, tool)
		}
	}
	return nil
}

// New builds a lab. On error it removes whatever it had made.
func New(cfg Config) (*Lab, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(cfg.Prefix, "/ \t\n") {
		return nil, fmt.Errorf("netlab: bad prefix %q", cfg.Prefix)
	}
	if cfg.Public == 0 {
		cfg.Public = 1
	}
	if cfg.Public > 250 || len(cfg.Homes) > 250 {
		return nil, errors.New("netlab: at most 250 public hosts and 250 homes")
	}
	for i, hc := range cfg.Homes {
		if hc.Hosts == 0 {
			cfg.Homes[i].Hosts = 1
		}
		if hc.Hosts < 0 || hc.Hosts > 250 || hc.Loss < 0 || hc.Loss >= 1 || hc.RateKbit < 0 || hc.Delay < 0 {
			return nil, fmt.Errorf("netlab: home %d: bad config %+v", i+1, hc)
		}
	}
	removeStale(cfg.Prefix)
	l := &Lab{
		cfg:    cfg,
		prefix: fmt.Sprintf("%s-%d-%d-", cfg.Prefix, os.Getpid(), labSeq.Add(1)),
		procs:  make(map[*Proc]struct{}),
	}
	if err := l.build(); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// NewForTest builds a lab for a test, skips the test when the machine
// cannot (see ErrUnavailable), fails it on any other error, and closes the
// lab when the test ends, failed or not.
func NewForTest(t testing.TB, cfg Config) *Lab {
	t.Helper()
	l, err := New(cfg)
	if errors.Is(err, ErrUnavailable) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("netlab: close: %v", err)
		}
	})
	return l
}

// run runs one command of the lab's own making.
func (l *Lab) run(args ...string) error {
	if l.cfg.Logf != nil {
		l.cfg.Logf("netlab: %s", strings.Join(args, " "))
	}
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netlab: %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// addNS creates a namespace with its loopback up and records it for Close.
func (l *Lab) addNS(role string, addr netip.Addr) (*Host, error) {
	name := l.prefix + role
	if err := l.run("ip", "netns", "add", name); err != nil {
		if len(l.ns) == 0 {
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return nil, err
	}
	l.mu.Lock()
	l.ns = append(l.ns, name)
	l.mu.Unlock()
	if err := l.run("ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	return &Host{Role: role, Name: name, Addr: addr, lab: l}, nil
}

// in runs a command inside a namespace (built-in steps, not tracked).
func (l *Lab) in(h *Host, args ...string) error {
	return l.run(append([]string{"ip", "netns", "exec", h.Name}, args...)...)
}

// link makes a veth pair from a's ifA (with addrA/24) to b's ifB (addrB/24)
// and brings both ends up.
func (l *Lab) link(a *Host, ifA, addrA string, b *Host, ifB, addrB string) error {
	steps := [][]string{
		{"ip", "-n", a.Name, "link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", b.Name},
		{"ip", "-n", a.Name, "addr", "add", addrA + "/24", "dev", ifA},
		{"ip", "-n", b.Name, "addr", "add", addrB + "/24", "dev", ifB},
		{"ip", "-n", a.Name, "link", "set", ifA, "up"},
		{"ip", "-n", b.Name, "link", "set", ifB, "up"},
	}
	for _, s := range steps {
		if err := l.run(s...); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) build() error {
	var err error
	if l.Inet, err = l.addNS("inet", netip.Addr{}); err != nil {
		return err
	}
	if err := l.in(l.Inet, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	for i := 1; i <= l.cfg.Public; i++ {
		addr := fmt.Sprintf("172.16.%d.2", i)
		h, err := l.addNS(fmt.Sprintf("p%d", i), netip.MustParseAddr(addr))
		if err != nil {
			return err
		}
		if err := l.link(h, "eth0", addr, l.Inet, fmt.Sprintf("p%d", i), fmt.Sprintf("172.16.%d.1", i)); err != nil {
			return err
		}
		if err := l.run("ip", "-n", h.Name, "route", "add", "default", "via", fmt.Sprintf("172.16.%d.1", i)); err != nil {
			return err
		}
		l.Public = append(l.Public, h)
	}
	for j, hc := range l.cfg.Homes {
		home, err := l.buildHome(j+1, hc)
		if err != nil {
			return err
		}
		l.Homes = append(l.Homes, home)
	}
	return nil
}

func (l *Lab) buildHome(j int, hc HomeConfig) (*Home, error) {
	wan := fmt.Sprintf("172.17.%d.2", j)
	gw := fmt.Sprintf("172.17.%d.1", j)
	lan := fmt.Sprintf("10.%d.0.1", j)
	r, err := l.addNS(fmt.Sprintf("h%dr", j), netip.MustParseAddr(wan))
	if err != nil {
		return nil, err
	}
	home := &Home{Router: r, Config: hc}
	inetIf := fmt.Sprintf("h%d", j)
	if err := l.link(r, "wan", wan, l.Inet, inetIf, gw); err != nil {
		return nil, err
	}
	masq := []string{"ip", "netns", "exec", r.Name, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"}
	if hc.RandomPorts {
		masq = append(masq, "--random-fully")
	}
	steps := [][]string{
		{"ip", "-n", r.Name, "route", "add", "default", "via", gw},
		{"ip", "-n", r.Name, "link", "add", "lan", "type", "bridge"},
		{"ip", "-n", r.Name, "addr", "add", lan + "/24", "dev", "lan"},
		{"ip", "-n", r.Name, "link", "set", "lan", "up"},
		{"ip", "netns", "exec", r.Name, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
		masq,
		// A home router's firewall: nothing new comes in from outside.
		{"ip", "netns", "exec", r.Name, "iptables", "-A", "FORWARD", "-i", "wan", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
		{"ip", "netns", "exec", r.Name, "iptables", "-A", "FORWARD", "-i", "wan", "-j", "DROP"},
	}
	if hc.Loss > 0 {
		steps = append(steps, []string{"ip", "netns", "exec", r.Name, "iptables", "-I", "FORWARD", "1",
			"-m", "statistic", "--mode", "random", "--probability", strconv.FormatFloat(hc.Loss, 'f', -1, 64), "-j", "DROP"})
	}
	if hc.RateKbit > 0 {
		for _, end := range [][2]string{{r.Name, "wan"}, {l.Inet.Name, inetIf}} {
			steps = append(steps, []string{"ip", "netns", "exec", end[0], "tc", "qdisc", "add", "dev", end[1], "root",
				"tbf", "rate", fmt.Sprintf("%dkbit", hc.RateKbit), "burst", "16kb", "latency", "400ms"})
		}
	}
	if hc.Delay > 0 {
		q, err := startDelay(r, 0, hc.Delay)
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		l.delayers = append(l.delayers, q)
		l.mu.Unlock()
		// In mangle, before the filter table's firewall, after conntrack.
		steps = append(steps, []string{"ip", "netns", "exec", r.Name, "iptables", "-t", "mangle", "-A", "FORWARD",
			"-j", "NFQUEUE", "--queue-num", "0"})
	}
	for _, s := range steps {
		if err := l.run(s...); err != nil {
			return nil, err
		}
	}
	for k := 1; k <= hc.Hosts; k++ {
		addr := fmt.Sprintf("10.%d.0.%d", j, k+1)
		role := fmt.Sprintf("h%d%c", j, 'a'+k-1) // h1a, h1b, ...
		if k > 26 {
			role = fmt.Sprintf("h%dx%d", j, k)
		}
		h, err := l.addNS(role, netip.MustParseAddr(addr))
		if err != nil {
			return nil, err
		}
		port := fmt.Sprintf("l%d", k)
		steps := [][]string{
			{"ip", "-n", h.Name, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", r.Name},
			{"ip", "-n", h.Name, "addr", "add", addr + "/24", "dev", "eth0"},
			{"ip", "-n", h.Name, "link", "set", "eth0", "up"},
			{"ip", "-n", r.Name, "link", "set", port, "master", "lan"},
			{"ip", "-n", r.Name, "link", "set", port, "up"},
			{"ip", "-n", h.Name, "route", "add", "default", "via", lan},
		}
		for _, s := range steps {
			if err := l.run(s...); err != nil {
				return nil, err
			}
		}
		home.Hosts = append(home.Hosts, h)
	}
	return home, nil
}

// Close kills the processes started with Host.Start that still run and
// deletes every namespace of the lab. It is idempotent and returns the
// first error.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs := make([]*Proc, 0, len(l.procs))
	for p := range l.procs {
		procs = append(procs, p)
	}
	ns, delayers := l.ns, l.delayers
	l.mu.Unlock()
	for _, p := range procs {
		p.Kill()
	}
	for _, q := range delayers {
		q.close()
	}
	var first error
	for i := len(ns) - 1; i >= 0; i-- {
		if err := l.run("ip", "netns", "del", ns[i]); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// removeStale deletes the namespaces named by prefix whose creating process
// no longer runs.
func removeStale(prefix string) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		name := f[0]
		rest, ok := strings.CutPrefix(name, prefix+"-")
		if !ok {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		_ = exec.Command("ip", "netns", "del", name).Run()
	}
}

// Hosts returns every namespace of the lab: the internet router, the public
// hosts, then each home's router and hosts.
func (l *Lab) Hosts() []*Host {
	hosts := append([]*Host{l.Inet}, l.Public...)
	for _, home := range l.Homes {
		hosts = append(hosts, home.Router)
		hosts = append(hosts, home.Hosts...)
	}
	return hosts
}

// Host returns the host with the role ("p1", "h2a", ...), or nil.
func (l *Lab) Host(role string) *Host {
	for _, h := range l.Hosts() {
		if h.Role == role {
			return h
		}
	}
	return nil
}

// Names returns the names of the lab's namespaces (all of them are deleted
// by Close).
func (l *Lab) Names() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.ns...)
}

// Command returns a command that runs name with args inside the host's
// namespace (through ip netns exec, which then becomes the program), in its
// own process group; ctx's end kills the group. Run it with Host.Start to
// have Close kill it, or with the exec.Cmd methods.
//
// The test binary runs one of its own tests inside a namespace with
//
//	cmd := h.Command(ctx, os.Args[0], "-test.run=^TestHelper$")
//	cmd.Env = append(os.Environ(), "ROLE=listener")
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.Name, name}, args...)...)
	ownGroup(cmd)
	return cmd
}

// Run runs name with args inside the namespace and returns its combined
// output; the error carries the output too.
func (h *Host) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := h.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("netlab: %s: %s %s: %w: %s", h.Name, name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// Proc is a process started by Host.Start.
type Proc struct {
	Cmd  *exec.Cmd
	lab  *Lab
	done chan struct{}
	err  error
}

// Start starts cmd (made by Command) and keeps track of it: Close kills it
// if it still runs.
func (h *Host) Start(cmd *exec.Cmd) (*Proc, error) {
	l := h.lab
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("netlab: lab closed")
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{Cmd: cmd, lab: l, done: make(chan struct{})}
	l.procs[p] = struct{}{}
	go func() {
		p.err = cmd.Wait()
		l.mu.Lock()
		delete(l.procs, p)
		l.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// Done is closed when the process has exited and its output is copied.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns exec.Cmd.Wait's error.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// Kill kills the process's group and waits for it to exit. Killing an
// exited process does nothing.
func (p *Proc) Kill() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	killGroup(p.Cmd.Process.Pid)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("netlab: process %d did not exit", p.Cmd.Process.Pid)
	}
}

// Do calls f on an OS thread that is inside the host's namespace: sockets
// that f creates belong to the namespace for their whole life, whichever
// goroutine uses them later. Goroutines that f starts do not run inside it.
func (h *Host) Do(f func() error) error {
	return doInNamespace(h.Name, f)
}

// ListenUDP opens a UDP socket inside the namespace; addr is as for
// net.ListenPacket ("0.0.0.0:7000", ":0").
func (h *Host) ListenUDP(addr string) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := h.Do(func() error {
		pc, err := net.ListenPacket("udp4", addr)
		if err != nil {
			return err
		}
		c = pc.(*net.UDPConn)
		return nil
	})
	return c, err
}

// Listen opens a listener (for example TCP) inside the namespace.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// Dial connects from inside the namespace; the connection attempt gives up
// at ctx's end.
func (h *Host) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Conntrack lists the router's conntrack table for UDP (conntrack -L).
func (home *Home) Conntrack(ctx context.Context) (string, error) {
	out, err := home.Router.Run(ctx, "conntrack", "-L", "-p", "udp")
	return string(out), err
}

// FlushConntrack empties the router's conntrack table, as if every flow had
// timed out (conntrack -F).
func (home *Home) FlushConntrack(ctx context.Context) error {
	_, err := home.Router.Run(ctx, "conntrack", "-F")
	return err
}
