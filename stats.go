package p2pradio

import (
	"time"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/playout"
)

// Stats is a snapshot of a node's figures, with DESIGN.md's definitions.
type Stats struct {
	Broadcaster bool
	Station     string
	// Depth is the hops from the broadcaster (0 for it; -1 while joining).
	Depth    int
	Parents  []string // addresses: the pushing parent first, then the backups
	Children int
	Slots    int
	Peers    int
	Title    string
	// Observed is this node's address as its peers or the rendezvous see
	// it (its public address behind a NAT); empty until one said.
	Observed string
	// Waiting says why a listener has no parent; empty when it has one.
	Waiting string

	ChunksReceived  int64 // accepted (verified, new)
	ChunksForwarded int64 // sent to children
	ChunksDropped   int64 // not sent to a child whose queue was full
	BytesReceived   int64
	BytesSent       int64 // chunk bytes sent to other nodes
	BadChunks       int64 // malformed or forged; their senders were cut off
	Repairs         int64 // chunks requested from neighbours to fill gaps
	// Shed counts children this node closed because it could not keep up
	// (control.CodeOverloaded); Overloaded is true while it advertises
	// fewer free slots than its budget allows for that reason.
	Shed       int64
	Overloaded bool

	Playout playout.Stats
	// Continuity is frames played from received audio / frames due since
	// playback began.
	Continuity float64
	// Startup is from Run to the first PCM handed to the sink (0 before).
	Startup time.Duration
	// Lag is when a frame was handed to the sink minus when the
	// broadcaster's input produced it: quantiles over the chunks received.
	LagP50, LagP95, LagMax time.Duration
	// HopP50 and HopP99 are per-hop delays: a chunk's arrival to its send
	// to the children.
	HopP50, HopP99 time.Duration
	// Recoveries counts parent changes that were followed by audio;
	// RecoveryMax is the longest gap between the last chunk before and the
	// first after such a change.
	Recoveries  uint64
	RecoveryP50 time.Duration
	RecoveryMax time.Duration

	// Browser pages signalling at this node's /peer, how many of them say
	// they play, and the mean continuity they report (1 with none): their
	// word, not checked.
	BrowserPages, BrowsersPlaying int
	BrowserContinuity             float64
}

// Stats returns the node's figures. It is safe from any goroutine.
func (n *Node) Stats() Stats {
	s, _ := n.stats()
	return s
}

// stats returns the node's figures and its overlay's, which they include.
func (n *Node) stats() (Stats, control.OverlayStats) {
	o := n.ov.Stats()
	n.mu.Lock()
	s := Stats{
		Broadcaster: n.Broadcaster(),
		Station:     n.addr.String(),
		Depth:       o.Depth,
		Slots:       o.Slots,
		Peers:       o.Peers,
		Observed:    o.Observed,
		Waiting:     o.Waiting,
		Title:       n.title,
	}
	started := n.started
	n.mu.Unlock()
	for _, p := range o.Parents {
		s.Parents = append(s.Parents, p.Addr)
	}
	if s.Title == "" && n.Broadcaster() {
		s.Title = n.cfg.Source.Title()
	}
	fs := n.fanout.Stats()
	s.Children = fs.Children
	s.ChunksForwarded, s.ChunksDropped = fs.Sent, fs.Dropped
	s.ChunksReceived, s.BytesReceived = n.chunksIn.Load(), n.bytesIn.Load()
	s.BytesSent = fs.SentBytes + o.BytesSent + n.burst.Load()
	s.BadChunks, s.Repairs = o.BadChunks, o.Repairs
	s.Shed, s.Overloaded = o.Shed, o.Overloaded
	if n.player != nil {
		s.Playout = n.player.Stats()
		s.Continuity = s.Playout.Continuity()
		if !s.Playout.Started.IsZero() && !started.IsZero() {
			s.Startup = s.Playout.Started.Sub(started)
		}
		s.LagP50, s.LagP95, s.LagMax = s.Playout.LagP50, s.Playout.LagP95, s.Playout.MaxLag
	}
	s.HopP50, s.HopP99 = n.hop.Quantile(0.5), n.hop.Quantile(0.99)
	s.Recoveries, s.RecoveryP50, s.RecoveryMax = o.Recoveries, o.RecoveryP50, o.RecoveryMax
	s.BrowserContinuity = 1
	if n.hub != nil {
		s.BrowserPages, s.BrowsersPlaying, s.BrowserContinuity = n.hub.figures()
	}
	return s, o
}
