// Package p2pradio is live MP3 radio relayed peer to peer over QUIC.
//
// A broadcaster's Node reads an MP3 stream from an input.Source, cuts it
// into chunks signed with the station's ed25519 key and feeds a few
// listeners; every listener's Node plays the stream and relays it to others,
// so one small uplink serves many. The station's identity is its public key,
// carried in its Address (p2pradio://<key>@host:port): only audio signed by
// that key is ever played or relayed.
//
// A Node composes five blocks, each a package with small interfaces and
// default implementations: input (where MP3 bytes come from), mux (MP3
// framing, signed chunks, reassembly), playout (decoder, sinks, the playout
// clock), output (fan-out to children, the recent window, HTTP streams) and
// control (the overlay: links to peers, parents, backups, repair, the
// rendezvous; the wire protocol; the transport seam). The Node is the one
// junction: input -> mux -> accept -> output and playout, with the overlay
// beside it handing over the chunks it received and checked.
package p2pradio

import (
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"time"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/control/portmap"
	"github.com/p2pradio/p2pradio/input"
	"github.com/p2pradio/p2pradio/mux"
	"github.com/p2pradio/p2pradio/output"
	"github.com/p2pradio/p2pradio/playout"
)

// Config configures a Node. Set Source for a broadcaster or Station for a
// listener; every other zero field means its documented default.
type Config struct {
	// Source makes the node a broadcaster of the MP3 stream it reads.
	Source input.Source
	// Station makes the node a listener of the station at this address
	// (see Address).
	Station string

	// Key is the node's identity; a broadcaster's key is the station's.
	// Nil means a new random key.
	Key ed25519.PrivateKey
	// Transport carries the node's links. Nil means QUIC on one UDP socket
	// bound to ListenAddr; the Node then owns and closes it. A
	// broadcaster's Transport must have its Key: peers take a node that
	// claims depth 0 for the station only if it proves the station's key.
	Transport control.Transport
	// ListenAddr is where the default QUIC transport listens. Empty means
	// "127.0.0.1:0" (loopback, any free port).
	ListenAddr string
	// UploadKbps is the upload budget for relaying to children. The number
	// of child slots is the budget divided by the stream's bitrate; a node
	// with less than one slot is a leaf. Zero means 512 for a broadcaster
	// and 400 for a listener; negative means no children at all.
	UploadKbps int

	// Sink is where the node plays the stream: the same as Playout.Sink,
	// which it overrides. Nil in both means a listener plays into
	// playout.Discard (the figures are still counted) and a broadcaster
	// does not decode at all.
	Sink playout.Sink
	// Playout tunes the player. The zero value starts after 1 s of audio.
	// Its OnTitle is called after the node's own; a nil Logger means
	// Config.Logger.
	Playout playout.Config
	// Outputs also receive every verified chunk. (An HTTP stream given to
	// Handler in HTTPConfig.Stream is fed without being listed here.)
	Outputs []output.Output

	// ChunkDuration is the broadcaster's chunk length. Zero means
	// DefaultChunkDuration (200 ms).
	ChunkDuration time.Duration
	// Window is how many recent chunks a node keeps for joiners and
	// repair. Zero means 50 (about 10 s of 200 ms chunks).
	Window int
	// Burst is how many chunks from its window a parent sends a new child
	// at once, so it starts fast with its bit reservoir. Zero means those
	// of the last 1.2 s (6 of 200 ms, 12 of 100 ms), a little more than
	// the default playout target: the buffer a listener plays with, and so
	// most of its lag.
	Burst int
	// StallTimeout is how long without a chunk from the parent before the
	// node switches to a backup; a parent is kept four times as long while
	// every backup that answers says it has nothing newer either (the
	// source is late). Zero means 1 s, which finds a dead parent soon under
	// churn. When many nodes of a tree are starved of CPU at
	// once for seconds (examples/swarm/starve.sh: 300 or more listeners in
	// one process, 3 s), 3 s rides the hiccup out where 1 s tears the tree
	// apart, at the price of audio lost to each parent that dies.
	StallTimeout time.Duration
	// Backups is how many warm backups a listener keeps besides its
	// pushing parent: neighbours fed by none of its ancestors, which it
	// pulls missing chunks from (each asked in turn, by what their buffer
	// maps say they hold) and switches to when the parent dies. Zero means
	// 2; negative means none.
	Backups int
	// NoTracker keeps a broadcaster from running the embedded rendezvous
	// (it must then register with an external one, see Rendezvous).
	NoTracker bool
	// Rendezvous is the tracker a broadcaster registers with when
	// NoTracker is set. A listener uses the one in its station address.
	Rendezvous string
	// Tracker configures a broadcaster's embedded rendezvous. Its Station
	// is always the station's key. With the default transport, nil Prober
	// and Echo mean two more sockets on ListenAddr's host, which the Node
	// owns (dial-backs that tell reachable listeners from those behind
	// NATs, and the echo that tells a listener how its NAT maps); with a
	// Transport of the caller's, nil means none (every node is offered as
	// it claims).
	Tracker control.TrackerConfig
	// PortMap, when set, asks the router in front of a listener to forward
	// the port of its transport's socket (UDP for the default QUIC
	// transport) from its public address: portmap.Auto() tries UPnP-IGD,
	// then NAT-PMP. The node keeps the mapping while it runs (renewing it)
	// and removes it when it stops. It registers the mapped address with the
	// rendezvous, which dials it back: only when that got through does the
	// node count as reachable and take children it has not contacted. Nil:
	// no port mapping. A broadcaster ignores it.
	PortMap portmap.Mapper

	// Browsers configures browser peers: station pages served by Handler
	// that join the overlay over WebRTC, signalling at /peer. The zero
	// value turns them on (see BrowserConfig).
	Browsers BrowserConfig

	// SignatureCache, when set, is shared by the nodes of one process (a
	// simulation) so that each chunk's signature is checked once; see
	// mux.SignatureCache. Nil: every chunk is verified.
	SignatureCache *mux.SignatureCache

	// Logger receives structured logs. Nil means silent.
	Logger *slog.Logger
}

func (c *Config) validate() error {
	if (c.Source == nil) == (c.Station == "") {
		return fmt.Errorf("%w: set exactly one of Source (broadcaster) and Station (listener)", ErrBadConfig)
	}
	if c.Key != nil && len(c.Key) != ed25519.PrivateKeySize {
		return fmt.Errorf("%w: Key of %d bytes", ErrBadConfig, len(c.Key))
	}
	if c.Source != nil && c.Transport != nil && (c.Key == nil || !c.Transport.Key().Equal(c.Key.Public())) {
		return fmt.Errorf("%w: a broadcaster's Transport must have its Key (the station's identity)", ErrBadConfig)
	}
	if c.NoTracker && c.Source != nil && c.Rendezvous == "" {
		return fmt.Errorf("%w: NoTracker needs Rendezvous", ErrBadConfig)
	}
	return nil
}

// sink is the player's sink: Sink, else Playout.Sink.
func (c *Config) sink() playout.Sink {
	if c.Sink != nil {
		return c.Sink
	}
	return c.Playout.Sink
}

// DefaultChunkDuration is a broadcaster's chunk length unless
// Config.ChunkDuration says otherwise. Each chunk costs every node that
// relays it a send per child, with its QUIC packets and acknowledgements:
// a station feeding 100 children spends about 0.77 of the CPU with 200 ms
// chunks that it spends with 100 ms (examples/relaycost, side by side).
// The price is lag: a chunk's first frame waits for its last before it is
// sent, about 40 ms more at the median in the swarm example (fake time),
// 100 ms at most, and the buffer left for repairs is that much shorter.
const DefaultChunkDuration = 200 * time.Millisecond

func (c *Config) setDefaults() {
	if c.ListenAddr == "" {
		c.ListenAddr = "127.0.0.1:0"
	}
	if c.UploadKbps == 0 {
		c.UploadKbps = 400
		if c.Source != nil {
			c.UploadKbps = 512
		}
	}
	if c.ChunkDuration == 0 {
		c.ChunkDuration = DefaultChunkDuration
	}
	// Window, Burst, StallTimeout and Backups keep their zero values: the
	// blocks that use them (output, control) apply the defaults documented
	// above.
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}
