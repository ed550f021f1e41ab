// Package portmap asks a home router to forward a port of its public
// address to this host, so that a node behind the router's NAT can be
// dialed by anyone: UPnP-IGD (github.com/huin/goupnp) and NAT-PMP
// (github.com/jackpal/go-nat-pmp).
//
// A Mapper asks once; a Keeper holds a mapping for as long as it runs:
// it maps at its start, renews before the lifetime the router granted
// runs out, maps again after a failure, and removes the mapping when it
// stops. Routers often claim mappings that do not work: a node takes its
// mapping for a hint, and calls itself reachable only once a dial-back from
// outside got through (the rendezvous's, see control.Register.Mapped).
package portmap

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// Mapping is a port mapping a router granted.
type Mapping struct {
	// Method is who granted it: "upnp" or "nat-pmp".
	Method string
	// Proto is "udp" or "tcp".
	Proto string
	// External is the router's external address and the port it forwards.
	External netip.AddrPort
	// Internal is the local port it forwards to.
	Internal int
	// Lifetime is how long the router keeps it from when it was granted;
	// 0: until removed.
	Lifetime time.Duration
}

func (m Mapping) String() string {
	if !m.External.IsValid() {
		return "none"
	}
	return m.Method + " " + m.Proto + " " + m.External.String()
}

// Mapper asks a gateway for port mappings. A Mapper is used by one
// goroutine at a time. Map and Unmap may block for a few seconds (finding
// the gateway, waiting for its answer) and give up at ctx's end.
type Mapper interface {
	// Map asks for proto ("udp" or "tcp") port internalPort of this host
	// to be forwarded from the gateway's external address, for lifetime
	// (the gateway may grant less, or a permanent mapping). It asks for the
	// same port outside and takes another if the gateway offers one.
	// Asking again for a port already mapped renews the mapping.
	Map(ctx context.Context, proto string, internalPort int, lifetime time.Duration) (Mapping, error)
	// Unmap removes a mapping Map returned.
	Unmap(ctx context.Context, m Mapping) error
}

// ErrNoGateway is wrapped by Map's error when no gateway answered.
var ErrNoGateway = errors.New("portmap: no gateway answered")

// Auto returns a Mapper that tries UPnP-IGD, then NAT-PMP, and keeps to
// the first that worked.
func Auto() Mapper { return &auto{ms: []Mapper{NewUPnP(), NewNATPMP()}} }

type auto struct {
	ms   []Mapper
	last Mapper // the one that worked
}

func (a *auto) Map(ctx context.Context, proto string, internalPort int, lifetime time.Duration) (Mapping, error) {
	if a.last != nil {
		m, err := a.last.Map(ctx, proto, internalPort, lifetime)
		if err == nil {
			return m, nil
		}
		a.last = nil
	}
	var errs []error
	for _, mp := range a.ms {
		m, err := mp.Map(ctx, proto, internalPort, lifetime)
		if err == nil {
			a.last = mp
			return m, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return Mapping{}, errors.Join(errs...)
}

func (a *auto) Unmap(ctx context.Context, m Mapping) error {
	for _, mp := range a.ms {
		if method(mp) == m.Method {
			return mp.Unmap(ctx, m)
		}
	}
	return errors.New("portmap: unmap: unknown method " + m.Method)
}

func method(m Mapper) string {
	switch m.(type) {
	case *UPnP:
		return methodUPnP
	case *NATPMP:
		return methodNATPMP
	}
	return ""
}

const (
	methodUPnP   = "upnp"
	methodNATPMP = "nat-pmp"
)

var _ Mapper = (*auto)(nil)
