package rtc

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/mux"
)

// Bounds of one link (docs/browser-peers.md).
const (
	// MaxControl bounds a "ctl" message; a larger one closes the link.
	MaxControl = 64 << 10
	// MaxData bounds a "data" message (a chunk); a larger one closes the
	// link.
	MaxData = mux.MaxChunkSize
	// DataQueue is how many data messages wait to be sent; SendData refuses
	// more with control.ErrQueueFull.
	DataQueue = 64

	// controlQueue is how many received control messages wait for
	// Receive before the channel stops reading (and the peer's sending
	// waits).
	controlQueue = 256
	// sendBuffered is how many bytes a channel may hold in SCTP's send
	// buffer before Send waits and the data queue stops draining: a few
	// chunks, so that a slow peer's backlog is in our bounded queue.
	sendBuffered = 256 << 10
	// proofTimeout bounds the time from the exchange of SDPs (the offer
	// answered) to the peer's verified key proof.
	proofTimeout = 5 * time.Second
	// disconnectedFor is how long a link may stay "disconnected".
	disconnectedFor = 3 * time.Second
	// closeFlush bounds the wait for the close message to leave.
	closeFlush = time.Second
)

// Conn is one WebRTC link: a control.Conn.
type Conn struct {
	t    *Transport
	pc   *webrtc.PeerConnection
	ctl  *webrtc.DataChannel
	data *webrtc.DataChannel

	ctlOpen   chan struct{} // closed when "ctl" opens
	proven    chan struct{} // closed when the peer's key proof verified
	key       ed25519.PublicKey
	gotProof  bool // owned by ctl's message callback
	proofSent atomic.Bool

	ctlIn   chan []byte
	dataIn  chan []byte
	dataOut chan []byte
	ctlLow  chan struct{} // signalled when ctl's buffer drains
	dataLow chan struct{}
	sendMu  sync.Mutex // one Send at a time

	mu         sync.Mutex
	remoteAddr string
	err        error
	disconnect *time.Timer

	done      chan struct{}
	gone      chan struct{} // closed when the peer's end closed
	goneOnce  sync.Once
	closeOnce sync.Once
	closed    chan struct{} // closed when teardown finished
	counters  counters
}

var _ control.Conn = (*Conn)(nil)

type counters struct {
	dataSent, dataReceived, sendDropped, receiveDropped, dataFailed atomic.Uint64
}

// newConn creates a PeerConnection with the two negotiated channels.
func (t *Transport) newConn() (*Conn, error) {
	pc, err := t.api.NewPeerConnection(t.pcConfig)
	if err != nil {
		return nil, err
	}
	c := &Conn{
		t:       t,
		pc:      pc,
		ctlOpen: make(chan struct{}),
		proven:  make(chan struct{}),
		ctlIn:   make(chan []byte, controlQueue),
		dataIn:  make(chan []byte, DataQueue),
		dataOut: make(chan []byte, DataQueue),
		ctlLow:  make(chan struct{}, 1),
		dataLow: make(chan struct{}, 1),
		done:    make(chan struct{}),
		gone:    make(chan struct{}),
		closed:  make(chan struct{}),
	}
	yes, no := true, false
	var ctlID, dataID uint16 = 0, 1
	c.ctl, err = pc.CreateDataChannel("ctl", &webrtc.DataChannelInit{Negotiated: &yes, ID: &ctlID, Ordered: &yes})
	if err == nil {
		c.data, err = pc.CreateDataChannel("data", &webrtc.DataChannelInit{Negotiated: &yes, ID: &dataID, Ordered: &no})
	}
	if err != nil {
		pc.Close()
		return nil, err
	}
	for _, ch := range []struct {
		dc  *webrtc.DataChannel
		low chan struct{}
	}{{c.ctl, c.ctlLow}, {c.data, c.dataLow}} {
		ch.dc.SetBufferedAmountLowThreshold(sendBuffered / 2)
		ch.dc.OnBufferedAmountLow(func() { signal(ch.low) })
		ch.dc.OnClose(func() {
			c.peerGone()
			go c.fail(fmt.Errorf("%w: channel %q closed", control.ErrClosed, ch.dc.Label()))
		})
	}
	c.ctl.OnOpen(func() { close(c.ctlOpen) })
	c.ctl.OnMessage(c.onControl)
	c.data.OnMessage(c.onData)
	pc.OnConnectionStateChange(c.onState)
	pc.SCTP().Transport().ICETransport().OnSelectedCandidatePairChange(func(p *webrtc.ICECandidatePair) {
		c.mu.Lock()
		c.remoteAddr = net.JoinHostPort(p.Remote.Address, strconv.Itoa(int(p.Remote.Port)))
		c.mu.Unlock()
	})
	return c, nil
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (c *Conn) peerGone() { c.goneOnce.Do(func() { close(c.gone) }) }

// onState watches the PeerConnection: a failed or closed one ends the
// link, and so does one "disconnected" for disconnectedFor.
func (c *Conn) onState(s webrtc.PeerConnectionState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.disconnect != nil {
		c.disconnect.Stop()
		c.disconnect = nil
	}
	switch s {
	case webrtc.PeerConnectionStateDisconnected:
		c.disconnect = time.AfterFunc(disconnectedFor, func() {
			c.fail(fmt.Errorf("%w: %w: disconnected for %v", control.ErrClosed, control.ErrTimeout, disconnectedFor))
		})
	case webrtc.PeerConnectionStateFailed:
		c.peerGone()
		go c.fail(fmt.Errorf("%w: %w: the peer connection failed", control.ErrClosed, control.ErrTimeout))
	case webrtc.PeerConnectionStateClosed:
		c.peerGone()
		go c.fail(fmt.Errorf("%w: the peer connection closed", control.ErrClosed))
	}
}

// onControl takes a "ctl" message: the peer's key proof first, then
// control messages, the last of which may be a close.
func (c *Conn) onControl(m webrtc.DataChannelMessage) {
	if len(m.Data) > MaxControl {
		go c.closeWith(control.CodeProtocol, fmt.Sprintf("control message of %d bytes", len(m.Data)), false)
		return
	}
	if !c.gotProof {
		c.gotProof = true
		key, err := c.checkProof(m.Data)
		if err != nil {
			go c.closeWith(control.CodeProtocol, err.Error(), false)
			return
		}
		c.key = key
		close(c.proven)
		return
	}
	if code, reason, ok := parseClose(m.Data); ok {
		go c.fail(&control.CloseError{Code: code, Reason: reason, Remote: true})
		return
	}
	select {
	case c.ctlIn <- m.Data:
	case <-c.done:
	}
}

func (c *Conn) checkProof(msg []byte) (ed25519.PublicKey, error) {
	own, err := fingerprint(c.pc.LocalDescription().SDP)
	if err != nil {
		return nil, err
	}
	peer, err := fingerprint(c.pc.RemoteDescription().SDP)
	if err != nil {
		return nil, err
	}
	return checkProof(msg, own, peer)
}

// sendProof sends this side's key proof on "ctl".
func (c *Conn) sendProof() error {
	own, err := fingerprint(c.pc.LocalDescription().SDP)
	if err != nil {
		return err
	}
	peer, err := fingerprint(c.pc.RemoteDescription().SDP)
	if err != nil {
		return err
	}
	proof := appendProof(nil, c.t.cfg.Key, own, peer)
	if c.t.proof != nil { // tests
		if proof = c.t.proof(own, peer); proof == nil {
			return nil
		}
	}
	if err := c.ctl.Send(proof); err != nil {
		return err
	}
	c.proofSent.Store(true)
	return nil
}

func (c *Conn) onData(m webrtc.DataChannelMessage) {
	if len(m.Data) > MaxData {
		go c.closeWith(control.CodeProtocol, fmt.Sprintf("data message of %d bytes", len(m.Data)), false)
		return
	}
	c.counters.dataReceived.Add(1) // before the reader can see it
	select {
	case c.dataIn <- m.Data:
	default:
		c.counters.dataReceived.Add(^uint64(0))
		c.counters.receiveDropped.Add(1)
	}
}

// handshake waits for "ctl" to open, sends the key proof and waits for
// the peer's, all within proofTimeout of started (when the SDPs were
// exchanged).
func (c *Conn) handshake(ctx context.Context, started time.Time) error {
	timer := time.NewTimer(time.Until(started.Add(c.t.proofTimeout)))
	defer timer.Stop()
	wait := func(ch <-chan struct{}) error {
		select {
		case <-ch:
			return nil
		case <-c.done:
			return c.Err()
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			return fmt.Errorf("%w: no key proof within %v", control.ErrTimeout, c.t.proofTimeout)
		}
	}
	if err := wait(c.ctlOpen); err != nil {
		return err
	}
	if err := c.sendProof(); err != nil {
		if c.isDone() { // the peer's bad proof, say, closed it meanwhile
			return c.Err()
		}
		return fmt.Errorf("%w: sending the key proof: %w", control.ErrClosed, err)
	}
	if err := wait(c.proven); err != nil {
		return err
	}
	c.mu.Lock()
	if c.remoteAddr == "" {
		if p, err := c.pc.SCTP().Transport().ICETransport().GetSelectedCandidatePair(); err == nil && p != nil {
			c.remoteAddr = net.JoinHostPort(p.Remote.Address, strconv.Itoa(int(p.Remote.Port)))
		}
	}
	c.mu.Unlock()
	c.t.goFunc(c.sendLoop)
	return nil
}

// sendLoop sends the queued data messages while SCTP's buffer has room.
func (c *Conn) sendLoop() {
	for {
		select {
		case m := <-c.dataOut:
			if err := c.waitBuffer(context.Background(), c.data, c.dataLow); err != nil {
				return
			}
			if err := c.data.Send(m); err != nil {
				c.counters.dataFailed.Add(1)
				continue
			}
			c.counters.dataSent.Add(1)
		case <-c.done:
			return
		}
	}
}

// waitBuffer waits until dc's send buffer is below sendBuffered.
func (c *Conn) waitBuffer(ctx context.Context, dc *webrtc.DataChannel, low chan struct{}) error {
	for dc.BufferedAmount() > sendBuffered {
		select {
		case <-low:
		case <-time.After(50 * time.Millisecond): // in case the signal came early
		case <-ctx.Done():
			return ctx.Err()
		case <-c.done:
			return c.Err()
		}
	}
	return nil
}

// Send queues one control message; it waits while SCTP holds
// sendBuffered bytes of control messages.
func (c *Conn) Send(ctx context.Context, msg []byte) error {
	if len(msg) > MaxControl {
		return fmt.Errorf("%w: %d bytes", control.ErrMessageTooLarge, len(msg))
	}
	if c.isDone() {
		return c.Err()
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if err := c.waitBuffer(ctx, c.ctl, c.ctlLow); err != nil {
		return err
	}
	if c.isDone() {
		return c.Err()
	}
	if err := c.ctl.Send(bytes.Clone(msg)); err != nil {
		if c.isDone() {
			return c.Err()
		}
		return fmt.Errorf("%w: %w", control.ErrClosed, err)
	}
	return nil
}

// Receive waits for the next control message.
func (c *Conn) Receive(ctx context.Context) ([]byte, error) {
	return c.receive(ctx, c.ctlIn)
}

// SendData queues one data message; it never blocks.
func (c *Conn) SendData(msg []byte) error {
	if len(msg) > MaxData {
		return fmt.Errorf("%w: %d bytes", control.ErrMessageTooLarge, len(msg))
	}
	if c.isDone() {
		return c.Err()
	}
	select {
	case c.dataOut <- bytes.Clone(msg):
		return nil
	default:
		c.counters.sendDropped.Add(1)
		return control.ErrQueueFull
	}
}

// ReceiveData waits for the next data message.
func (c *Conn) ReceiveData(ctx context.Context) ([]byte, error) {
	return c.receive(ctx, c.dataIn)
}

// receive returns the next message of in; those that arrived before the
// link closed are still returned.
func (c *Conn) receive(ctx context.Context, in chan []byte) ([]byte, error) {
	select {
	case m := <-in:
		return m, nil
	default:
	}
	select {
	case m := <-in:
		return m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.done:
		select {
		case m := <-in:
			return m, nil
		default:
			return nil, c.Err()
		}
	}
}

// RemoteAddr is the remote address of the selected ICE candidate pair.
func (c *Conn) RemoteAddr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.remoteAddr
}

// RemoteKey is the key the peer proved.
func (c *Conn) RemoteKey() ed25519.PublicKey {
	select {
	case <-c.proven:
		return c.key
	default:
		return nil
	}
}

// RTT is the selected candidate pair's current round-trip time (STUN
// consent checks), 0 while unknown.
func (c *Conn) RTT() time.Duration {
	s, ok := c.pc.SCTP().Transport().ICETransport().GetSelectedCandidatePairStats()
	if !ok {
		return 0
	}
	return time.Duration(s.CurrentRoundTripTime * float64(time.Second))
}

// Done is closed when the link has closed.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err says why the link closed; nil while it is open.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

func (c *Conn) isDone() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Browser reports true: the peer of a WebRTC link cannot be dialed back,
// so the overlay serves it as a peer only (never as a session at the
// rendezvous) and never offers it to other nodes.
func (c *Conn) Browser() bool { return true }

// Stats counts the link's data messages.
func (c *Conn) Stats() control.ConnStats {
	return control.ConnStats{
		DataSent:       c.counters.dataSent.Load(),
		DataReceived:   c.counters.dataReceived.Load(),
		SendDropped:    c.counters.sendDropped.Load(),
		ReceiveDropped: c.counters.receiveDropped.Load(),
		DataFailed:     c.counters.dataFailed.Load(),
	}
}

// Close sends the code and reason in a close message (clamped to
// control.MaxCloseCode and control.MaxCloseReason), waits up to a second
// for it to leave and closes the PeerConnection. It is idempotent.
func (c *Conn) Close(code uint64, reason string) error {
	c.closeWith(code, reason, true)
	<-c.closed
	return nil
}

// closeWith ends the link with a local close: the first reason stays.
func (c *Conn) closeWith(code uint64, reason string, wait bool) {
	code = min(code, control.MaxCloseCode)
	reason = reason[:min(len(reason), control.MaxCloseReason)]
	if !c.finish(&control.CloseError{Code: code, Reason: reason}) {
		return
	}
	c.teardown(appendClose(nil, code, reason))
}

// fail ends the link for err (a remote close or a dead connection).
func (c *Conn) fail(err error) {
	if c.finish(err) {
		c.teardown(nil)
	}
}

// finish records why the link ends; false if it had ended already.
func (c *Conn) finish(err error) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return false
	}
	c.err = err
	if c.disconnect != nil {
		c.disconnect.Stop()
	}
	close(c.done)
	return true
}

// teardown sends last (if any, and if "ctl" is open), waits for it to
// leave and closes the PeerConnection.
func (c *Conn) teardown(last []byte) {
	c.closeOnce.Do(func() {
		defer close(c.closed)
		defer c.t.forget(c)
		// Before our key proof, a close message would be taken for a bad
		// proof: then the peer only sees the link fail.
		if last != nil && c.proofSent.Load() && c.ctl.ReadyState() == webrtc.DataChannelStateOpen {
			if c.ctl.Send(last) == nil {
				// The peer closes its end when the message arrives (it may
				// not acknowledge it first): wait for that.
				select {
				case <-c.gone:
				case <-time.After(closeFlush):
				}
			}
		}
		if err := c.pc.Close(); err != nil && !errors.Is(err, webrtc.ErrConnectionClosed) {
			c.t.log.Debug("closing a peer connection", "err", err)
		}
	})
}
