package portmap

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/huin/goupnp"
	"github.com/huin/goupnp/dcps/internetgateway2"
	"github.com/huin/goupnp/soap"
	"github.com/huin/goupnp/ssdp"
)

// UPnP maps ports with UPnP-IGD: it finds the router by SSDP (a multicast
// search on every interface, about 2 s), keeps its control URL, and asks
// its WANIPConnection (version 2, else 1) or WANPPPConnection service.
type UPnP struct {
	// Description names the mapping on the router; empty means "p2pradio".
	Description string

	igd   igdClient
	local string // our address on the router's LAN
}

// NewUPnP returns a UPnP Mapper; it finds the router at the first Map.
func NewUPnP() *UPnP { return &UPnP{} }

var _ Mapper = (*UPnP)(nil)

// igdClient is what the three services have in common.
type igdClient interface {
	AddPortMappingCtx(ctx context.Context, remoteHost string, externalPort uint16, protocol string,
		internalPort uint16, internalClient string, enabled bool, description string, leaseDuration uint32) error
	DeletePortMappingCtx(ctx context.Context, remoteHost string, externalPort uint16, protocol string) error
	GetExternalIPAddressCtx(ctx context.Context) (string, error)
}

// UPnP error codes (IGD WANIPConnection).
const (
	upnpConflict      = 718 // ConflictInMappingEntry: the port is taken
	upnpOnlyPermanent = 725 // OnlyPermanentLeasesSupported
	upnpSamePorts     = 724 // SamePortValuesRequired
)

// Map implements Mapper.
func (u *UPnP) Map(ctx context.Context, proto string, internalPort int, lifetime time.Duration) (Mapping, error) {
	if internalPort <= 0 || internalPort > 65535 {
		return Mapping{}, fmt.Errorf("portmap: bad port %d", internalPort)
	}
	if u.igd == nil {
		if err := u.discover(ctx); err != nil {
			return Mapping{}, err
		}
	}
	m, err := u.add(ctx, proto, internalPort, lifetime)
	if err != nil {
		u.igd = nil // look for the router again next time
	}
	return m, err
}

func (u *UPnP) add(ctx context.Context, proto string, internalPort int, lifetime time.Duration) (Mapping, error) {
	ipStr, err := u.igd.GetExternalIPAddressCtx(ctx)
	if err != nil {
		return Mapping{}, fmt.Errorf("portmap: upnp: external address: %w", err)
	}
	ip, err := netip.ParseAddr(strings.TrimSpace(ipStr))
	if err != nil || !ip.IsValid() || ip.IsUnspecified() {
		return Mapping{}, fmt.Errorf("portmap: upnp: the router has no external address (%q)", ipStr)
	}
	lease := uint32(lifetime / time.Second)
	desc := u.Description
	if desc == "" {
		desc = "p2pradio"
	}
	ext := internalPort
	for try := 0; ; try++ {
		err = u.igd.AddPortMappingCtx(ctx, "", uint16(ext), strings.ToUpper(proto), uint16(internalPort), u.local, true, desc, lease)
		code := upnpCode(err)
		switch {
		case err == nil:
			return Mapping{Method: methodUPnP, Proto: proto, External: netip.AddrPortFrom(ip.Unmap(), uint16(ext)),
				Internal: internalPort, Lifetime: time.Duration(lease) * time.Second}, nil
		case code == upnpOnlyPermanent && lease != 0:
			lease = 0
		case code == upnpConflict && try < 4:
			ext = 1024 + rand.IntN(65535-1024) // taken by another host: another port
		default:
			return Mapping{}, fmt.Errorf("portmap: upnp: add %s %d: %w", proto, ext, err)
		}
		if ctx.Err() != nil {
			return Mapping{}, ctx.Err()
		}
	}
}

// upnpCode is the UPnP error code in err, or 0.
func upnpCode(err error) int {
	var f *soap.SOAPFaultError
	if errors.As(err, &f) {
		return f.Detail.UPnPError.Errorcode
	}
	return 0
}

// Unmap implements Mapper.
func (u *UPnP) Unmap(ctx context.Context, m Mapping) error {
	if u.igd == nil {
		return errors.New("portmap: upnp: no router")
	}
	return u.igd.DeletePortMappingCtx(ctx, "", m.External.Port(), strings.ToUpper(m.Proto))
}

// discover finds the router: the first root device that offers one of
// the IGD connection services.
func (u *UPnP) discover(ctx context.Context) error {
	roots, err := goupnp.DiscoverDevicesCtx(ctx, ssdp.UPNPRootDevice)
	if err != nil {
		return fmt.Errorf("portmap: upnp: %w", err)
	}
	for _, r := range roots {
		if r.Err != nil || r.Root == nil {
			continue
		}
		igd := igdOf(r.Root, r.Location)
		if igd == nil {
			continue
		}
		local := localTo(r.Location, r.LocalAddr)
		if local == "" {
			continue
		}
		u.igd, u.local = igd, local
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("%w: upnp: no internet gateway among %d devices", ErrNoGateway, len(roots))
}

// igdOf returns the root device's best connection service, or nil. Its
// requests open a connection each: none is left idle (with goroutines of
// its own) after the Mapper's last call.
func igdOf(root *goupnp.RootDevice, loc *url.URL) igdClient {
	if cs, err := internetgateway2.NewWANIPConnection2ClientsFromRootDevice(root, loc); err == nil && len(cs) > 0 {
		noKeepAlive(&cs[0].ServiceClient)
		return cs[0]
	}
	if cs, err := internetgateway2.NewWANIPConnection1ClientsFromRootDevice(root, loc); err == nil && len(cs) > 0 {
		noKeepAlive(&cs[0].ServiceClient)
		return cs[0]
	}
	if cs, err := internetgateway2.NewWANPPPConnection1ClientsFromRootDevice(root, loc); err == nil && len(cs) > 0 {
		noKeepAlive(&cs[0].ServiceClient)
		return cs[0]
	}
	return nil
}

func noKeepAlive(sc *goupnp.ServiceClient) {
	sc.SOAPClient.HTTPClient = http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
}

// localTo is our address towards the device at loc: the one discovery
// found it from, else the one the route to it takes.
func localTo(loc *url.URL, found net.IP) string {
	if found != nil && !found.IsUnspecified() {
		return found.String()
	}
	if loc == nil {
		return ""
	}
	host := loc.Hostname()
	c, err := net.Dial("udp4", net.JoinHostPort(host, "1900")) // no packet is sent
	if err != nil {
		return ""
	}
	defer c.Close()
	if a, ok := c.LocalAddr().(*net.UDPAddr); ok {
		return a.IP.String()
	}
	return ""
}
