package portmap

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/jackpal/gateway"
	natpmp "github.com/jackpal/go-nat-pmp"
)

// NATPMP maps ports with NAT-PMP (RFC 6886), which the router answers on
// UDP port 5351 of its LAN address.
type NATPMP struct {
	// Gateway is the router's LAN address; the zero value means the
	// default route's gateway.
	Gateway netip.Addr
}

// NewNATPMP returns a NAT-PMP Mapper that asks the default route's
// gateway.
func NewNATPMP() *NATPMP { return &NATPMP{} }

var _ Mapper = (*NATPMP)(nil)

// natpmpTimeout bounds one request when ctx has no deadline (the library
// retries with a doubling wait from 250 ms within it).
const natpmpTimeout = 2 * time.Second

func (p *NATPMP) client(ctx context.Context) (*natpmp.Client, error) {
	gw := p.Gateway
	if !gw.IsValid() {
		ip, err := gateway.DiscoverGateway()
		if err != nil {
			return nil, fmt.Errorf("%w: nat-pmp: %w", ErrNoGateway, err)
		}
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			return nil, fmt.Errorf("%w: nat-pmp: gateway %v", ErrNoGateway, ip)
		}
		gw = a.Unmap()
	}
	timeout := natpmpTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	if timeout <= 0 {
		return nil, context.DeadlineExceeded
	}
	return natpmp.NewClientWithTimeout(net.IP(gw.AsSlice()), timeout), nil
}

// Map implements Mapper. The library's calls cannot be cancelled: ctx's
// deadline bounds each.
func (p *NATPMP) Map(ctx context.Context, proto string, internalPort int, lifetime time.Duration) (Mapping, error) {
	if internalPort <= 0 || internalPort > 65535 {
		return Mapping{}, fmt.Errorf("portmap: bad port %d", internalPort)
	}
	c, err := p.client(ctx)
	if err != nil {
		return Mapping{}, err
	}
	ext, err := c.GetExternalAddress()
	if err != nil {
		return Mapping{}, fmt.Errorf("%w: nat-pmp: external address: %w", ErrNoGateway, err)
	}
	secs := max(1, int(lifetime/time.Second))
	r, err := c.AddPortMapping(proto, internalPort, internalPort, secs)
	if err != nil {
		return Mapping{}, fmt.Errorf("portmap: nat-pmp: add %s %d: %w", proto, internalPort, err)
	}
	ip := netip.AddrFrom4(ext.ExternalIPAddress)
	if ip.IsUnspecified() {
		return Mapping{}, fmt.Errorf("portmap: nat-pmp: the router has no external address")
	}
	return Mapping{Method: methodNATPMP, Proto: proto, External: netip.AddrPortFrom(ip, r.MappedExternalPort),
		Internal: int(r.InternalPort), Lifetime: time.Duration(r.PortMappingLifetimeInSeconds) * time.Second}, nil
}

// Unmap implements Mapper: a request with lifetime 0.
func (p *NATPMP) Unmap(ctx context.Context, m Mapping) error {
	c, err := p.client(ctx)
	if err != nil {
		return err
	}
	_, err = c.AddPortMapping(m.Proto, m.Internal, 0, 0)
	return err
}
