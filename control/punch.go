package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// Puncher is implemented by transports that can open the NAT in front of
// them for one remote address before that remote dials in (hole punching).
// QUICTransport and MemTransport implement it; the overlay asks for it with
// a type assertion on its Transport.
//
// Punch sends a few small packets from the transport's own socket (the one
// it listens and dials on) to addr and returns once they are sent; it waits
// for no answer. A NAT in front of this node then admits packets from addr
// for a while (about 30 s on Linux), so that addr's Dial to this node's
// public address gets through, provided addr's own NAT sends that dial from
// the address this node punched (it does when it keeps the port it showed
// before; it does not when it randomises ports).
//
// ttl > 0 sets the packets' IP TTL; 0 means the system's default. A low TTL
// (2 when each side sits behind one router and one more router lies between
// them) lets the packets out of this node's NAT but drops them before the
// far NAT: a packet the far NAT drops leaves a conntrack entry there that
// makes it send the dial from another port, which this node's NAT then
// refuses. The remote's Dial should leave after the punch has left (about
// half a round trip later when both act on one signal).
//
// Punch may be called from many goroutines; it fails with ErrClosed after
// Close and with an error wrapping errors.ErrUnsupported when ttl > 0 and
// the socket's TTL cannot be set.
type Puncher interface {
	Punch(ctx context.Context, addr string, ttl int) error
}

var (
	_ Puncher = (*QUICTransport)(nil)
	_ Puncher = (*MemTransport)(nil)
)

// Punch packets: a few, a little apart, so that one lost packet does not
// lose the punch.
const (
	punchPackets = 3
	punchGap     = 5 * time.Millisecond
)

// punchPayload is what a punch packet carries. Its first byte is below 0x40,
// so a quic.Transport at the far end takes it for a non-QUIC packet and
// drops it unless it reads such packets; it is also no STUN message (0x00
// or 0x01).
var punchPayload = []byte("\x1fp2pradio punch")

// Punch sends punch packets to addr from the transport's UDP socket; see
// Puncher. Packets with the default TTL go through the quic.Transport
// (Transport.WriteTo); packets with a TTL go straight to the UDP socket with
// the TTL as ancillary data, so that QUIC's own packets, sent meanwhile
// from the same socket, keep the default.
func (t *QUICTransport) Punch(ctx context.Context, addr string, ttl int) error {
	if ttl < 0 || ttl > 255 {
		return fmt.Errorf("control: punch TTL %d out of range", ttl)
	}
	select {
	case <-t.ctx.Done():
		return ErrClosed
	default:
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return fmt.Errorf("control: punch %s: %w", addr, err)
	}
	write := func() error {
		_, err := t.tr.WriteTo(punchPayload, ua)
		return err
	}
	if ttl > 0 {
		udp := udpSocket(t.pc)
		if udp == nil {
			return fmt.Errorf("control: punch with TTL on a %T: %w", t.pc, errors.ErrUnsupported)
		}
		oob := ttlControl(ua, ttl)
		if oob == nil {
			return fmt.Errorf("control: punch with TTL: %w", errors.ErrUnsupported)
		}
		write = func() error {
			_, _, err := udp.WriteMsgUDP(punchPayload, oob, ua)
			return err
		}
	}
	for i := range punchPackets {
		if i > 0 {
			timer := time.NewTimer(punchGap)
			select {
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				return ctx.Err()
			case <-t.ctx.Done():
				timer.Stop()
				return ErrClosed
			}
		}
		if err := write(); err != nil {
			select {
			case <-t.ctx.Done():
				return ErrClosed
			default:
			}
			return fmt.Errorf("control: punch %s: %w", addr, err)
		}
	}
	return nil
}

// udpSocket returns the UDP socket under pc (a NewLossyPacketConn's too),
// or nil.
func udpSocket(pc net.PacketConn) *net.UDPConn {
	if l, ok := pc.(*lossyConn); ok {
		pc = l.PacketConn
	}
	udp, _ := pc.(*net.UDPConn)
	return udp
}
