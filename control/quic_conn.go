package control

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
	"unsafe"

	"github.com/quic-go/quic-go"
)

// QUICConn is a connection of a QUICTransport.
type QUICConn struct {
	t          *QUICTransport
	qc         *quic.Conn
	ctrl       *quic.Stream
	remoteKey  ed25519.PublicKey
	remoteAddr string

	ctrlOut chan []byte  // framed control messages to write
	ctrlIn  chan []byte  // each holds its length in ctrlBuf
	dataOut chan outData // framed data messages to write
	dataIn  chan []byte  // each holds its length in dataBuf

	ctrlBuf *budget // control bytes read and not yet returned by Receive
	dataBuf *budget // data bytes being read or waiting for ReceiveData

	// writing is the data message being written, which watchWrites
	// abandons when it is late; a deadline per Write would cost a timer
	// per message.
	writing struct {
		sync.Mutex
		s        *quic.SendStream // nil between messages
		deadline time.Time
	}

	wg    sync.WaitGroup // this connection's goroutines
	stats connCounters
}

// outData is a framed data message and the time by which it must be
// written.
type outData struct {
	b        []byte
	deadline time.Time
}

var _ Conn = (*QUICConn)(nil)

func newQUICConn(t *QUICTransport, qc *quic.Conn, st *quic.Stream) *QUICConn {
	// The handshake verified that the certificate holds an ed25519 key.
	key, _ := peerKey(qc.ConnectionState().TLS)
	return &QUICConn{
		t:          t,
		qc:         qc,
		ctrl:       st,
		remoteKey:  key,
		remoteAddr: qc.RemoteAddr().String(),
		ctrlOut:    make(chan []byte, t.cfg.ControlQueue),
		ctrlIn:     make(chan []byte, t.cfg.ControlQueue),
		dataOut:    make(chan outData, t.cfg.SendQueue),
		dataIn:     make(chan []byte, t.cfg.ReceiveQueue),
		ctrlBuf:    newBudget(controlBuffer, nil),
		dataBuf:    newBudget(t.cfg.ReceiveBuffer, t.recvBuf),
	}
}

// start runs the connection's goroutines; called with t.mu held while the
// transport is open.
func (c *QUICConn) start() {
	context.AfterFunc(c.qc.Context(), c.dataBuf.detach)
	c.spawn(c.readControl)
	c.spawn(c.writeControl)
	c.spawn(c.writeData)
	c.spawn(c.acceptData)
}

// spawn runs f in a goroutine that both the connection's Close and the
// transport's Close wait for. It is called only while the transport is
// open or from another of the connection's goroutines.
func (c *QUICConn) spawn(f func()) {
	c.wg.Add(1)
	c.t.wg.Add(1)
	go func() {
		defer c.t.wg.Done()
		defer c.wg.Done()
		f()
	}()
}

// frame prefixes msg with its length, copying it.
func frame(msg []byte) []byte {
	b := make([]byte, 0, binary.MaxVarintLen32+len(msg))
	b = binary.AppendUvarint(b, uint64(len(msg)))
	return append(b, msg...)
}

// framed is frame(msg), the same bytes as the last call's when msg is the
// same message: a fan-out sends one chunk to every child, and framed each
// time, a chunk was copied once per child (at a station with 100 children
// two fifths of all it allocated). A framed message is never changed, so
// connections share it; msg is compared whole, so that a caller may reuse
// its buffer for another message.
func (t *QUICTransport) framed(msg []byte) []byte {
	l := &t.lastFramed
	l.Lock()
	defer l.Unlock()
	if l.framed == nil || len(msg) != len(l.msg) || unsafe.SliceData(msg) != unsafe.SliceData(l.msg) || !bytes.Equal(l.framed[len(l.framed)-len(msg):], msg) {
		l.msg, l.framed = msg, frame(msg)
	}
	return l.framed
}

// Send queues one control message; see Conn.
func (c *QUICConn) Send(ctx context.Context, msg []byte) error {
	if len(msg) > MaxMessageSize {
		return fmt.Errorf("%w: %d bytes", ErrMessageTooLarge, len(msg))
	}
	if err := c.Err(); err != nil {
		return err
	}
	select {
	case c.ctrlOut <- frame(msg):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.Done():
		return c.Err()
	}
}

// Receive waits for the next control message; see Conn. Messages that
// arrived before the connection closed are returned before its error.
func (c *QUICConn) Receive(ctx context.Context) ([]byte, error) {
	return receive(ctx, c.ctrlIn, c.ctrlBuf, c.Done(), c.Err)
}

// SendData queues one data message, or drops it and returns ErrQueueFull.
func (c *QUICConn) SendData(msg []byte) error {
	if len(msg) > MaxMessageSize {
		return fmt.Errorf("%w: %d bytes", ErrMessageTooLarge, len(msg))
	}
	if err := c.Err(); err != nil {
		return err
	}
	select {
	case c.dataOut <- outData{c.t.framed(msg), time.Now().Add(c.t.cfg.DataTimeout)}:
		return nil
	default:
		c.stats.sendDropped.Add(1)
		return ErrQueueFull
	}
}

// ReceiveData waits for the next data message; see Conn.
func (c *QUICConn) ReceiveData(ctx context.Context) ([]byte, error) {
	return receive(ctx, c.dataIn, c.dataBuf, c.Done(), c.Err)
}

// receive takes the next message from ch and releases its bytes from buf.
func receive(ctx context.Context, ch <-chan []byte, buf *budget, done <-chan struct{}, errf func() error) ([]byte, error) {
	got := func(m []byte) ([]byte, error) {
		buf.release(int64(len(m)))
		return m, nil
	}
	select {
	case m := <-ch:
		return got(m)
	default:
	}
	select {
	case m := <-ch:
		return got(m)
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-done:
		select {
		case m := <-ch:
			return got(m)
		default:
			return nil, errf()
		}
	}
}

// RemoteAddr returns the peer's UDP address. For a connection the peer
// dialed, it is also the address the peer listens on (one socket per node),
// as seen through any NAT.
func (c *QUICConn) RemoteAddr() string { return c.remoteAddr }

// RemoteKey returns the key the peer proved in the TLS handshake.
func (c *QUICConn) RemoteKey() ed25519.PublicKey { return c.remoteKey }

// RTT returns quic-go's smoothed round-trip time estimate.
func (c *QUICConn) RTT() time.Duration { return c.qc.ConnectionStats().SmoothedRTT }

// PacketsReceived counts the packets received on the connection, of any
// kind (acknowledgements too): a sign of the peer's life (packetCounter).
func (c *QUICConn) PacketsReceived() uint64 { return c.qc.ConnectionStats().PacketsReceived }

// Done is closed when the connection has closed.
func (c *QUICConn) Done() <-chan struct{} { return c.qc.Context().Done() }

// Err says why the connection closed, or nil while it is open: a
// *CloseError when either end called Close, an error wrapping ErrTimeout
// when the peer went silent; every one wraps ErrClosed.
func (c *QUICConn) Err() error {
	ctx := c.qc.Context()
	if ctx.Err() == nil {
		return nil
	}
	cause := context.Cause(ctx)
	var appErr *quic.ApplicationError
	var idle *quic.IdleTimeoutError
	var hs *quic.HandshakeTimeoutError
	switch {
	case errors.As(cause, &appErr):
		return &CloseError{Code: uint64(appErr.ErrorCode), Reason: appErr.ErrorMessage, Remote: appErr.Remote}
	case errors.As(cause, &idle), errors.As(cause, &hs):
		return timeoutError(cause)
	}
	return fmt.Errorf("%w: %w", ErrClosed, cause)
}

// Close closes the connection with code and reason (clamped to
// MaxCloseCode and MaxCloseReason), and waits for its goroutines. Messages
// still queued are discarded: tell the peer why with the code and reason.
func (c *QUICConn) Close(code uint64, reason string) error {
	code, reason = clampClose(code, reason)
	c.qc.CloseWithError(quic.ApplicationErrorCode(code), reason)
	c.wg.Wait()
	return nil
}

// Stats returns the connection's counters.
func (c *QUICConn) Stats() ConnStats { return c.stats.snapshot() }

// Buffered returns the bytes of data messages the connection holds (being
// read, or waiting for ReceiveData) and of control messages waiting for
// Receive.
func (c *QUICConn) Buffered() (data, control int64) { return c.dataBuf.held(), c.ctrlBuf.held() }

// Packets returns the packets sent on the connection and those quic-go
// declared lost (a count that may fall when a packet declared lost
// arrives after all).
func (c *QUICConn) Packets() (sent, lost uint64) {
	st := c.qc.ConnectionStats()
	return st.PacketsSent, st.PacketsLost
}

// SendWait is how long the data message being written has waited since
// SendData (in the send queue, then in Write, which blocks while
// congestion control holds the data back); 0 between messages.
func (c *QUICConn) SendWait() time.Duration {
	c.writing.Lock()
	defer c.writing.Unlock()
	if c.writing.s == nil {
		return 0
	}
	return time.Since(c.writing.deadline.Add(-c.t.cfg.DataTimeout))
}

// protocolError cuts off a peer that broke the framing rules.
func (c *QUICConn) protocolError(reason string) {
	c.t.log.Warn("protocol error", "remote", c.remoteAddr, "reason", reason)
	c.qc.CloseWithError(quic.ApplicationErrorCode(CodeProtocol), reason)
}

// readN reads exactly n bytes. Its buffer grows with the data that arrives,
// so that a peer cannot make us allocate by announcing large messages.
func readN(r io.Reader, n uint64) ([]byte, error) {
	const step = 16 << 10
	b := make([]byte, 0, min(n, step))
	for uint64(len(b)) < n {
		if len(b) == cap(b) {
			b = append(b, make([]byte, min(n-uint64(len(b)), uint64(cap(b))))...)[:len(b)]
		}
		k, err := io.ReadFull(r, b[len(b):min(uint64(cap(b)), n)])
		b = b[:len(b)+k]
		if err != nil {
			return nil, err
		}
	}
	return b, nil
}

// byteReader reads one byte at a time, for binary.ReadUvarint.
type byteReader struct{ r io.Reader }

func (b byteReader) ReadByte() (byte, error) {
	var p [1]byte
	_, err := io.ReadFull(b.r, p[:])
	return p[0], err
}

// readControl reads length-prefixed control messages into ctrlIn. A
// message's bytes are taken from ctrlBuf before they are read, so that while
// the node does not call Receive the stream is not read and QUIC's flow
// control holds the peer back. When readControl returns the connection is
// closed; it then drops it from the transport.
func (c *QUICConn) readControl() {
	defer c.t.forget(c)
	done := c.Done()
	for {
		n, err := binary.ReadUvarint(byteReader{c.ctrl})
		if err == nil && n > MaxMessageSize {
			c.protocolError(fmt.Sprintf("control message of %d bytes", n))
			return
		}
		var msg []byte
		if err == nil {
			if !c.ctrlBuf.wait(int64(n), done, nil) {
				return
			}
			msg, err = readN(c.ctrl, n)
			if err != nil {
				c.ctrlBuf.release(int64(n))
			}
		}
		if err != nil {
			// A peer that closes the connection also ends the stream; the
			// connection's own close may be noticed a moment later.
			select {
			case <-c.qc.Context().Done():
			case <-time.After(100 * time.Millisecond):
			}
			if c.qc.Context().Err() == nil {
				// The peer ended or reset the control stream.
				c.protocolError("control stream ended")
			}
			return
		}
		select {
		case c.ctrlIn <- msg:
		case <-done:
			return
		}
	}
}

func (c *QUICConn) writeControl() {
	done := c.Done()
	for {
		select {
		case f := <-c.ctrlOut:
			if _, err := c.ctrl.Write(f); err != nil {
				return
			}
		case <-done:
			return
		}
	}
}

// writeData writes the queued data messages on dataLanes long-lived
// unidirectional streams, taking turns. A message whose deadline
// (DataTimeout after SendData) has passed is dropped whole before any of it
// is written; one whose writing outlasts it is abandoned with its stream,
// which the peer then discards, and that lane's next message opens a new
// stream.
//
// Long-lived streams rather than one per message halve the packets per
// message (no FIN, no stream credit updates) and let a message go out in
// one batch. The price is that a lost packet delays the messages behind it
// on its stream until it is retransmitted (about a round trip); with two
// lanes, the next message goes on the other stream and does not wait.
func (c *QUICConn) writeData() {
	ctx := c.qc.Context()
	var lanes [dataLanes]*quic.SendStream
	defer func() {
		for _, s := range lanes {
			if s != nil {
				s.Close()
			}
		}
	}()
	for next := 0; ; next = (next + 1) % dataLanes {
		var m outData
		select {
		case m = <-c.dataOut:
		case <-ctx.Done():
			return
		}
		if !time.Now().Before(m.deadline) {
			c.stats.dataFailed.Add(1)
			continue
		}
		s := lanes[next]
		if s == nil {
			openCtx, cancel := context.WithDeadline(ctx, m.deadline)
			var err error
			s, err = c.qc.OpenUniStreamSync(openCtx)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				c.stats.dataFailed.Add(1)
				continue
			}
			s.SetPriority(dataUrgency, false)
			lanes[next] = s
		}
		c.writing.Lock()
		c.writing.s, c.writing.deadline = s, m.deadline
		c.writing.Unlock()
		_, err := s.Write(m.b)
		c.writing.Lock()
		c.writing.s = nil
		c.writing.Unlock()
		if err != nil {
			s.CancelWrite(streamErrAbandoned)
			lanes[next] = nil
			if ctx.Err() != nil {
				return
			}
			c.stats.dataFailed.Add(1)
			continue
		}
		c.stats.dataSent.Add(1)
	}
}

// abandonLate cancels the stream of a data message whose deadline has
// passed while it was being written, which makes its Write return.
func (c *QUICConn) abandonLate(now time.Time) {
	c.writing.Lock()
	defer c.writing.Unlock()
	if c.writing.s != nil && now.After(c.writing.deadline) {
		c.writing.s.CancelWrite(streamErrAbandoned)
		c.writing.s = nil
	}
}

func (c *QUICConn) acceptData() {
	ctx := c.qc.Context()
	for {
		s, err := c.qc.AcceptUniStream(ctx)
		if err != nil {
			return
		}
		c.spawn(func() { c.readData(s) })
	}
}

// readData reads length-prefixed data messages from one stream until it
// ends, and queues them. Before a message's bytes are read, its length is
// taken from the connection's receive buffer (and the transport's): while
// it does not fit, the stream is not read. A message that does not fit, or
// is not complete, within DataTimeout of its length prefix is abandoned with
// its stream. When the receive queue is full an arriving message is dropped
// and counted, so that a node that reads slowly never stalls the QUIC side.
func (c *QUICConn) readData(s *quic.ReceiveStream) {
	done := c.Done()
	for {
		n, err := binary.ReadUvarint(byteReader{s})
		if err == io.EOF {
			return // the peer finished the stream between messages
		}
		if err == nil && n > MaxMessageSize {
			c.protocolError(fmt.Sprintf("data message of %d bytes", n))
			return
		}
		var msg []byte
		if err == nil {
			deadline := time.Now().Add(c.t.cfg.DataTimeout)
			if !c.dataBuf.wait(int64(n), done, &deadline) {
				err = errors.New("no room to receive the message in time")
			} else {
				s.SetReadDeadline(deadline)
				msg, err = readN(s, n)
				s.SetReadDeadline(time.Time{})
				if err != nil {
					c.dataBuf.release(int64(n))
				}
			}
		}
		if err != nil {
			// Late, cut short, or abandoned by the sender (which then goes
			// on with a new stream): the message is lost whole.
			s.CancelRead(streamErrAbandoned)
			if c.qc.Context().Err() == nil {
				c.stats.dataFailed.Add(1)
			}
			return
		}
		// Counted before it can be received, so that DataReceived is never
		// behind what ReceiveData returned.
		c.stats.dataReceived.Add(1)
		select {
		case c.dataIn <- msg:
		default:
			c.dataBuf.release(int64(n))
			c.stats.dataReceived.Add(^uint64(0))
			c.stats.receiveDropped.Add(1)
		}
	}
}
