// Package control is the CONTROL block of p2pradio: the overlay, the
// rendezvous, the wire protocol and the transport seam between nodes.
//
// An Overlay is one node's part of the overlay: its links to other nodes,
// the parent that pushes the stream to it, warm backups and children;
// joining through the rendezvous, stall detection, repair, the bridge,
// climbing, displacement, peer exchange and NAT traversal. It hands the
// chunks it checked to its Host (p2pradio.Node) and reads the Host's
// recent Window; its policies are functions of snapshots (policy.go). A
// Tracker is the rendezvous (embedded in a broadcaster, or alone; its
// client is rendezvous.go): it dials nodes back to learn which are
// reachable, offers parents, and coordinates punches through NATs
// (traverse.go, nat.go).
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
// MemNetwork also models NATs (NewNAT: port-preserving or port-randomising
// mappings, address-and-port filtering, hairpin), and both transports can
// Punch (Puncher): a few packets from the node's one socket that open its
// NAT to a peer about to dial it.
//
// The overlay's control messages (wire.go, wire_rendezvous.go) are
// [type u8][payload], one per Conn.Send: Hello, Welcome, Refuse, Subscribe,
// Unsubscribe, Have, Request, PeerList, Status between peers; Register,
// Candidates, Connect and Punch with the rendezvous. Every field is
// mandatory (WireVersion 3): AppendMessage encodes (clamping fields to the
// wire's ranges), ParseMessage decodes with bounds checks and hard maxima;
// its errors wrap ErrBadMessage. A change of the transport's framing changes
// ALPN instead (the handshake then fails).
//
// Every queue is bounded. Control sends block while the control queue is
// full (the channel is reliable and ordered); data sends never block: a full
// send queue drops the message and returns ErrQueueFull, and a full receive
// queue drops the arriving message and counts it (see ConnStats).
package control
