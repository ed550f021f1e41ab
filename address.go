package p2pradio

import (
	"crypto/ed25519"
	"encoding/base32"
	"fmt"
	"net"
	"strings"
)

// Scheme is the URL scheme of a station address.
const Scheme = "p2pradio"

var keyEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Address is everything a listener needs to join a station: the station's
// public key (its identity: only chunks signed by it are played) and the
// rendezvous (tracker) address to ask for parents. Its string form is
// p2pradio://<key>@host:port, the key in lower-case unpadded base32.
type Address struct {
	Station    ed25519.PublicKey
	Rendezvous string // host:port
}

func (a Address) String() string {
	return Scheme + "://" + strings.ToLower(keyEncoding.EncodeToString(a.Station)) + "@" + a.Rendezvous
}

// ParseAddress parses a station address.
func ParseAddress(s string) (Address, error) {
	rest, ok := strings.CutPrefix(s, Scheme+"://")
	if !ok {
		return Address{}, fmt.Errorf("%w: %q does not start with %s://", ErrBadAddress, s, Scheme)
	}
	k, hostport, ok := strings.Cut(rest, "@")
	if !ok {
		return Address{}, fmt.Errorf("%w: %q has no @host:port", ErrBadAddress, s)
	}
	key, err := keyEncoding.DecodeString(strings.ToUpper(k))
	if err != nil || len(key) != ed25519.PublicKeySize {
		return Address{}, fmt.Errorf("%w: bad station key %q", ErrBadAddress, k)
	}
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		return Address{}, fmt.Errorf("%w: %v", ErrBadAddress, err)
	}
	return Address{Station: key, Rendezvous: hostport}, nil
}
