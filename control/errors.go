package control

import (
	"errors"
	"fmt"
)

var (
	// ErrClosed is returned by calls on a closed Transport or Conn. Every
	// error that Conn.Err returns wraps it, whatever ended the connection.
	ErrClosed = errors.New("control: closed")
	// ErrQueueFull is returned by Conn.SendData when the connection's data
	// send queue is full; the message was dropped.
	ErrQueueFull = errors.New("control: send queue full")
	// ErrMessageTooLarge is returned for a message longer than
	// MaxMessageSize.
	ErrMessageTooLarge = errors.New("control: message too large")
	// ErrKeyMismatch is returned by Dial when the remote node does not prove
	// the key the caller asked for.
	ErrKeyMismatch = errors.New("control: remote key mismatch")
	// ErrTimeout means the peer went silent: the idle timeout or the
	// handshake timeout expired.
	ErrTimeout = errors.New("control: peer timed out")
	// ErrRefused is returned by Dial when the remote transport turns the
	// connection away (it is at MaxConns or its accept backlog is full).
	ErrRefused = errors.New("control: connection refused")
	// ErrBadMessage is wrapped by every error about a malformed wire
	// message.
	ErrBadMessage = errors.New("control: bad message")
)

// Close codes that the transports use themselves. Callers of Conn.Close may
// use any code; codes below 16 are reserved for the transport.
const (
	// CodeNormal is an ordinary close with nothing wrong.
	CodeNormal uint64 = 0
	// CodeShutdown means the closing node's transport was closed.
	CodeShutdown uint64 = 1
	// CodeProtocol means the peer broke the transport's framing rules, for
	// example by sending a message longer than MaxMessageSize.
	CodeProtocol uint64 = 2
	// CodeRefused means the acceptor turned the connection away.
	CodeRefused uint64 = 3
	// CodeCanceled means the dialer gave up before the connection was set
	// up.
	CodeCanceled uint64 = 4
)

// Limits of Conn.Close: larger codes are sent as MaxCloseCode and longer
// reasons are cut to MaxCloseReason bytes (QUIC encodes the code as a 62-bit
// varint and the reason must fit in one packet).
const (
	MaxCloseCode   uint64 = 1<<62 - 1
	MaxCloseReason        = 256
)

func clampClose(code uint64, reason string) (uint64, string) {
	return min(code, MaxCloseCode), reason[:min(len(reason), MaxCloseReason)]
}

// CloseError is the reason a connection closed because one of its ends
// called Close (or its transport closed it). It unwraps to ErrClosed.
type CloseError struct {
	Code   uint64
	Reason string
	// Remote is true when the peer closed the connection.
	Remote bool
}

func (e *CloseError) Error() string {
	side := "local"
	if e.Remote {
		side = "remote"
	}
	if e.Reason == "" {
		return fmt.Sprintf("control: connection closed (%s, code %d)", side, e.Code)
	}
	return fmt.Sprintf("control: connection closed (%s, code %d): %s", side, e.Code, e.Reason)
}

// Unwrap returns ErrClosed.
func (e *CloseError) Unwrap() error { return ErrClosed }

// timeoutError is the reason for a connection whose peer went silent.
func timeoutError(cause error) error {
	if cause == nil {
		return fmt.Errorf("%w: %w", ErrClosed, ErrTimeout)
	}
	return fmt.Errorf("%w: %w: %v", ErrClosed, ErrTimeout, cause)
}
