package control

import (
	"context"
	"crypto/ed25519"
	"sync/atomic"
	"time"
)

// Transport carries messages between nodes. Two implementations pass one
// contract suite: QUIC (the default; one UDP socket per node for listening
// and dialing) and in-memory (tests and the simulator).
//
// A Transport is safe for use by many goroutines.
type Transport interface {
	// Addr is the address peers dial to reach this node (the port actually
	// bound).
	Addr() string
	// Key is this node's identity key, which peers see as Conn.RemoteKey.
	Key() ed25519.PublicKey
	// Dial connects to the node at addr. When wantKey is not nil, the
	// connection fails unless the remote node proves that key.
	Dial(ctx context.Context, addr string, wantKey ed25519.PublicKey) (Conn, error)
	// Accept waits for the next incoming connection.
	Accept(ctx context.Context) (Conn, error)
	// Close closes every connection and the transport; it is idempotent.
	// Blocked Accept and Dial calls return ErrClosed.
	Close() error
}

// Conn is a connection to one peer with two kinds of delivery: an ordered,
// reliable control channel, and data messages (chunks) that are each
// delivered reliably, whole or not at all, and not in a fixed order: the
// loss of one packet delays at most the messages behind it on its stream,
// for about a round trip (QUIC: two streams take turns), never the control
// channel.
//
// Send and SendData may be called from many goroutines; so may Receive and
// ReceiveData, though the node calls each from one. None of them keeps the
// buffer it is given after it returns; received buffers belong to the
// caller.
type Conn interface {
	// Send queues one control message. It blocks while the control queue
	// is full, until ctx is done or the connection closes.
	Send(ctx context.Context, msg []byte) error
	// Receive waits for the next control message.
	Receive(ctx context.Context) ([]byte, error)
	// SendData queues one data message and never blocks: when the bounded
	// send queue is full it returns ErrQueueFull and the message is dropped.
	SendData(msg []byte) error
	// ReceiveData waits for the next data message.
	ReceiveData(ctx context.Context) ([]byte, error)
	// RemoteAddr is the peer's address as this side observes it.
	RemoteAddr() string
	// RemoteKey is the peer's identity key, proven in the handshake.
	RemoteKey() ed25519.PublicKey
	// RTT is the current smoothed round-trip time estimate (0 if unknown).
	RTT() time.Duration
	// Done is closed when the connection has closed, from either side or
	// by the idle timeout; Err then says why.
	Done() <-chan struct{}
	Err() error
	// Close closes the connection with an application error code and
	// reason that the peer sees (clamped to MaxCloseCode and
	// MaxCloseReason); it is idempotent.
	Close(code uint64, reason string) error
}

// ConnStats counts one connection's data messages. QUICConn and MemConn
// return it from their Stats methods.
type ConnStats struct {
	// DataSent counts data messages handed to the network.
	DataSent uint64
	// DataReceived counts data messages queued for ReceiveData.
	DataReceived uint64
	// SendDropped counts data messages refused with ErrQueueFull.
	SendDropped uint64
	// ReceiveDropped counts data messages that arrived to a full receive
	// queue and were dropped.
	ReceiveDropped uint64
	// DataFailed counts data messages abandoned on the way: not written or
	// not read within the data timeout, or reset by the other end.
	DataFailed uint64
}

// connCounters are the live counters behind ConnStats.
type connCounters struct {
	dataSent, dataReceived, sendDropped, receiveDropped, dataFailed atomic.Uint64
}

func (c *connCounters) snapshot() ConnStats {
	return ConnStats{
		DataSent:       c.dataSent.Load(),
		DataReceived:   c.dataReceived.Load(),
		SendDropped:    c.sendDropped.Load(),
		ReceiveDropped: c.receiveDropped.Load(),
		DataFailed:     c.dataFailed.Load(),
	}
}
