// Package control is the CONTROL block of p2pradio: the transport seam
// between nodes and the overlay's wire protocol.
//
// A Transport connects nodes; a Conn to one peer carries two kinds of
// traffic: an ordered, reliable control channel for overlay messages (see
// the Message types in wire.go), and data messages (signed chunks), each
// delivered reliably but independently of the others.
//
// Two Transports pass one contract suite:
//
//   - QUICTransport (NewQUIC), the default: one UDP socket per node, used
//     both to listen and to dial (the precondition for NAT hole punching).
//     Each node's identity is an ed25519 key, proven in the TLS 1.3
//     handshake by a self-signed certificate; the control channel is one
//     bidirectional QUIC stream opened by the dialer, and data messages are
//     framed on two long-lived unidirectional streams in turn, so a lost
//     packet delays only the messages behind it on its stream, until it is
//     retransmitted (about a round trip).
//   - MemTransport (MemNetwork.NewTransport): in-process, with per-link
//     delay, jitter, loss and bandwidth, driven by timers so that it runs
//     under testing/synctest and scales to many thousands of nodes.
//
// NewLossyPacketConn wraps a net.PacketConn to add delay, jitter and loss
// under the QUIC transport, for tests on one machine.
//
// The overlay's control messages (wire.go) are [type u8][payload], one per
// Conn.Send: Hello, Welcome, Refuse, Subscribe, Unsubscribe, Have, Request,
// PeerList, Register, Candidates, Ping, Pong and Status. AppendMessage
// encodes (clamping fields to the wire's ranges), ParseMessage decodes with
// bounds checks and hard maxima; its errors wrap ErrBadMessage.
//
// Every queue is bounded. Control sends block while the control queue is
// full (the channel is reliable and ordered); data sends never block: a full
// send queue drops the message and returns ErrQueueFull, and a full receive
// queue drops the arriving message and counts it (see ConnStats).
package control
