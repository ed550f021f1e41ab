package netlab

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// A home router that maps ports on request: miniupnpd (Debian's, with its
// nftables backend) answering UPnP-IGD and NAT-PMP on the home's LAN.
//
// miniupnpd refuses to map ports when its WAN address is private, as the
// lab's are, unless a STUN server says that the router is reachable
// there: the lab serves one (Host.ServeSTUN) on a public host, which
// answers every Binding request with the address it came from.

// STUN is a STUN responder (RFC 5389 Binding requests, answered with a
// MAPPED-ADDRESS) on a host of the lab.
type STUN struct {
	// Addr is where it answers.
	Addr netip.AddrPort
	pc   *net.UDPConn
	done chan struct{}
}

// ServeSTUN answers STUN Binding requests on port of the host's address
// until Close.
func (h *Host) ServeSTUN(port int) (*STUN, error) {
	pc, err := h.ListenUDP(netip.AddrPortFrom(h.Addr, uint16(port)).String())
	if err != nil {
		return nil, err
	}
	s := &STUN{Addr: netip.AddrPortFrom(h.Addr, uint16(port)), pc: pc, done: make(chan struct{})}
	go s.serve()
	return s, nil
}

func (s *STUN) serve() {
	defer close(s.done)
	buf := make([]byte, 1500)
	for {
		n, from, err := s.pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if resp := stunAnswer(buf[:n], from); resp != nil {
			s.pc.WriteToUDPAddrPort(resp, from)
		}
	}
}

// stunAnswer is the Binding success response to req from from, or nil
// when req is not a Binding request.
func stunAnswer(req []byte, from netip.AddrPort) []byte {
	if len(req) < 20 || req[0] != 0x00 || req[1] != 0x01 || !from.Addr().Unmap().Is4() {
		return nil
	}
	resp := make([]byte, 20, 32)
	resp[0], resp[1] = 0x01, 0x01                      // Binding success response
	binary.BigEndian.PutUint16(resp[2:], 12)           // one attribute of 8 bytes
	copy(resp[4:20], req[4:20])                        // the magic cookie and transaction id
	resp = binary.BigEndian.AppendUint16(resp, 0x0001) // MAPPED-ADDRESS
	resp = binary.BigEndian.AppendUint16(resp, 8)
	resp = append(resp, 0, 1) // IPv4
	resp = binary.BigEndian.AppendUint16(resp, from.Port())
	ip := from.Addr().Unmap().As4()
	return append(resp, ip[:]...)
}

// Close stops the responder.
func (s *STUN) Close() error {
	err := s.pc.Close()
	<-s.done
	return err
}

// MiniUPnPdConfig configures a home's miniupnpd.
type MiniUPnPdConfig struct {
	// UPnP and NATPMP turn the protocols on (at least one).
	UPnP, NATPMP bool
	// STUN is a STUN server the router can reach (ServeSTUN on a public
	// host). Required.
	STUN netip.AddrPort
	// Dir holds its configuration, pid file and log (miniupnpd.log).
	// Required.
	Dir string
}

// MiniUPnPdAvailable reports why miniupnpd cannot run here, or nil.
func MiniUPnPdAvailable() error {
	for _, tool := range []string{"miniupnpd", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%w: %s not installed (.ci/setup installs it: miniupnpd, nftables)", ErrUnavailable, tool)
		}
	}
	return nil
}

// MiniUPnPd is a running miniupnpd.
type MiniUPnPd struct {
	*Proc
	// Log is the path of its log.
	Log string
}

// StartMiniUPnPd makes the home's router a port-mapping gateway: it adds
// the nftables chains miniupnpd fills (in a table "miniupnpd" of the
// router's namespace), lets packets it forwards through the firewall (an
// iptables rule for connections it DNATed), and starts miniupnpd there
// for the LAN's hosts. It returns once miniupnpd serves, and stops with
// the lab (Close kills it; its rules go with the namespace).
func (home *Home) StartMiniUPnPd(ctx context.Context, cfg MiniUPnPdConfig) (*MiniUPnPd, error) {
	if err := MiniUPnPdAvailable(); err != nil {
		return nil, err
	}
	if !cfg.UPnP && !cfg.NATPMP {
		return nil, errors.New("netlab: miniupnpd with neither UPnP nor NAT-PMP")
	}
	if !cfg.STUN.IsValid() || cfg.Dir == "" {
		return nil, errors.New("netlab: miniupnpd needs STUN and Dir")
	}
	r := home.Router
	nft := `table inet miniupnpd {
	chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
	chain miniupnpd { }
	chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
	chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }
	chain prerouting_miniupnpd { }
	chain postrouting_miniupnpd { }
}
`
	nftFile := filepath.Join(cfg.Dir, "miniupnpd.nft")
	if err := os.WriteFile(nftFile, []byte(nft), 0o644); err != nil {
		return nil, err
	}
	if _, err := r.Run(ctx, "nft", "-f", nftFile); err != nil {
		return nil, err
	}
	steps := [][]string{
		// Before the firewall's DROP: what miniupnpd's DNAT lets in.
		{"iptables", "-I", "FORWARD", "1", "-i", "wan", "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"},
		// The router's own packets keep their ports (a --random-fully
		// MASQUERADE would change them): miniupnpd's STUN check takes a
		// changed port for a NAT upstream and maps nothing.
		{"iptables", "-t", "nat", "-I", "POSTROUTING", "1", "-o", "wan", "-s", r.Addr.String(), "-j", "ACCEPT"},
	}
	for _, s := range steps {
		if _, err := r.Run(ctx, s[0], s[1:]...); err != nil {
			return nil, err
		}
	}
	lan, err := home.Hosts[0].Addr.Prefix(24)
	if err != nil {
		return nil, err
	}
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	conf := fmt.Sprintf(`ext_ifname=wan
listening_ip=lan
http_port=0
enable_upnp=%s
enable_natpmp=%s
ext_perform_stun=yes
ext_stun_host=%s
ext_stun_port=%d
upnp_table_name=miniupnpd
upnp_nat_table_name=miniupnpd
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
secure_mode=yes
system_uptime=no
notify_interval=60
clean_ruleset_interval=600
uuid=3d3cec3a-8cf0-11e0-98ee-001a6b%06x
allow 1024-65535 %s 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
`, yes(cfg.UPnP), yes(cfg.NATPMP), cfg.STUN.Addr(), cfg.STUN.Port(), os.Getpid()&0xffffff, lan)
	confFile := filepath.Join(cfg.Dir, "miniupnpd.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	logPath := filepath.Join(cfg.Dir, "miniupnpd.log")
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	lw := &readyWriter{w: log, want: []string{"Port forwarding is now enabled"}}
	if cfg.UPnP {
		lw.want = append(lw.want, "HTTP listening on port")
	}
	if cfg.NATPMP {
		lw.want = append(lw.want, "Listening for NAT-PMP")
	}
	lw.ready = make(chan struct{})
	// -d: in the foreground, logging to stderr.
	cmd := r.Command(ctx, "miniupnpd", "-d", "-f", confFile, "-P", filepath.Join(cfg.Dir, "miniupnpd.pid"))
	cmd.Stdout, cmd.Stderr = lw, lw
	p, err := r.Start(cmd)
	if err != nil {
		log.Close()
		return nil, err
	}
	go func() { <-p.Done(); log.Close() }()
	m := &MiniUPnPd{Proc: p, Log: logPath}
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-lw.ready:
		return m, nil
	case <-p.Done():
		err = errors.New("exited")
	case <-t.C:
		p.Kill()
		err = errors.New("not ready after 10 s")
	case <-ctx.Done():
		p.Kill()
		err = ctx.Err()
	}
	b, _ := os.ReadFile(logPath)
	return nil, fmt.Errorf("netlab: miniupnpd in %s: %w: %s", r.Name, err, bytes.TrimSpace(b))
}

// readyWriter copies a log and closes ready once every string of want
// has appeared in it.
type readyWriter struct {
	mu    sync.Mutex
	w     *os.File
	want  []string
	seen  strings.Builder
	ready chan struct{}
	done  bool
}

func (r *readyWriter) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.done {
		r.seen.Write(p)
		all := true
		for _, s := range r.want {
			all = all && strings.Contains(r.seen.String(), s)
		}
		if all {
			r.done = true
			r.seen.Reset()
			close(r.ready)
		}
	}
	return r.w.Write(p)
}
