package web

import (
	"cmp"
	"slices"
	"time"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/control/portmap"
	"github.com/p2pradio/p2pradio/output"
)

// Status is what /status.json answers: one node's view of the station.
// Durations are in seconds; ids are the first 6 bytes of a node's key, in
// hex.
type Status struct {
	Name        string `json:"name"`
	Station     string `json:"station"` // the station address listeners join
	Broadcaster bool   `json:"broadcaster"`
	ID          string `json:"id"`   // this node
	Addr        string `json:"addr"` // where its transport listens
	// Observed is its address as peers or the rendezvous see it (behind a
	// NAT, the router's mapping); Waiting why it has no parent.
	Observed    string  `json:"observed,omitempty"`
	Waiting     string  `json:"waiting,omitempty"`
	Reach       string  `json:"reach"`         // public, unreachable (behind a NAT) or unknown
	NAT         string  `json:"nat,omitempty"` // when unreachable: port-preserving or port-randomising
	Title       string  `json:"title"`
	BitrateKbps int     `json:"bitrate_kbps"`
	UptimeS     float64 `json:"uptime_s"`         // since Run
	Stream      string  `json:"stream,omitempty"` // the stream's path

	Depth    int          `json:"depth"`   // hops from the broadcaster; -1 while joining
	Parents  []StatusPeer `json:"parents"` // the pushing parent first, then the backups
	Children []StatusPeer `json:"children"`
	Slots    int          `json:"slots"`
	Peers    int          `json:"peers"`
	// Shed counts the children this node closed because it could not
	// keep up with them (its uplink carries less than it claims);
	// Overloaded is true while it therefore offers fewer child slots
	// than its budget allows (one comes back per 10 s healthy).
	Shed       int64 `json:"shed"`
	Overloaded bool  `json:"overloaded"`

	// Playback, when this node plays (null at a broadcaster without Sink;
	// continuity and lag are null until they are known).
	Playing    *bool    `json:"playing"`
	Continuity *float64 `json:"continuity"`
	LagS       *float64 `json:"lag_s"`
	BufferS    *float64 `json:"buffer_s"`
	StartupS   *float64 `json:"startup_s"`
	Frames     struct {
		Played    int64 `json:"played"`
		Concealed int64 `json:"concealed"`
		Muted     int64 `json:"muted"`
	} `json:"frames"`

	Chunks struct {
		Received  int64 `json:"received"`
		Forwarded int64 `json:"forwarded"`
		Dropped   int64 `json:"dropped"`
		Bad       int64 `json:"bad"`
		Repairs   int64 `json:"repairs"`
	} `json:"chunks"`
	Bytes struct {
		Received int64 `json:"received"`
		Sent     int64 `json:"sent"`
	} `json:"bytes"`

	// PortMap is the port mapping on this node's router, when it asks for
	// one (Config.PortMap): Reach says whether the rendezvous's dial-back
	// to it got through.
	PortMap *StatusPortMap `json:"portmap,omitempty"`

	HTTP *output.HTTPStats `json:"http,omitempty"`
	// Swarm is the overlay as the rendezvous sees it: at a broadcaster
	// with the embedded tracker only. The station pages homed at this
	// node are in it too, marked browser, under the parent they reported.
	Swarm []StatusNode `json:"swarm,omitempty"`
	// Browsers are the station pages signalling at this node's /peer, as
	// they report themselves (nothing of it is checked).
	Browsers []StatusBrowser `json:"browsers"`
}

// StatusBrowser is a station page signalling at the node: its
// window.p2pradio.stats() as last reported.
type StatusBrowser struct {
	ID         string   `json:"id"`
	ConnectedS float64  `json:"connected_s"` // since its hello
	Reported   bool     `json:"reported"`    // it sent stats: the fields below are its
	SeenS      float64  `json:"seen_s"`      // since its last stats
	Child      bool     `json:"child"`       // a child of this node
	Playing    bool     `json:"playing"`
	Continuity float64  `json:"continuity"`
	LagMs      *float64 `json:"lag_ms"` // null until the page knows its lag
	Depth      int      `json:"depth"`  // -1 unjoined
	// Parent is its parent's id (this node's for "node"), empty when none.
	Parent     string   `json:"parent,omitempty"`
	Children   []string `json:"children"`
	Received   int64    `json:"received"`
	Relayed    int64    `json:"relayed"`
	Forged     int64    `json:"forged"`
	StartupMs  *float64 `json:"startup_ms"`
	Rebuffers  int64    `json:"rebuffers"`
	Free       int      `json:"free"`
	UploadKbps int      `json:"upload_kbps"`
}

// StatusPeer is a neighbour in Status.
type StatusPeer struct {
	ID      string `json:"id"`
	Addr    string `json:"addr"`
	Depth   int    `json:"depth"`
	Browser bool   `json:"browser,omitempty"` // a station page
}

// StatusPortMap is a port mapping in Status: the one held, or why there
// is none.
type StatusPortMap struct {
	Method   string  `json:"method,omitempty"`    // upnp or nat-pmp
	Proto    string  `json:"proto,omitempty"`     // udp
	External string  `json:"external,omitempty"`  // the router's address and port forwarded to this node
	Internal int     `json:"internal,omitempty"`  // the local port
	RenewedS float64 `json:"renewed_s,omitempty"` // since the router last granted it
	Error    string  `json:"error,omitempty"`     // why there is none
}

// PortMap describes a port mapping's state for Status.
func PortMap(s portmap.State) *StatusPortMap {
	out := &StatusPortMap{}
	if m := s.Mapping; m.External.IsValid() {
		out.Method, out.Proto, out.External, out.Internal = m.Method, m.Proto, m.External.String(), m.Internal
		out.RenewedS = time.Since(s.Renewed).Seconds()
	}
	if s.Err != nil {
		out.Error = s.Err.Error()
	} else if out.External == "" {
		out.Error = "not mapped yet"
	}
	return out
}

// StatusNode is one node of the swarm in Status.
type StatusNode struct {
	ID         string  `json:"id"`
	Addr       string  `json:"addr"`
	Depth      int     `json:"depth"`
	Parent     string  `json:"parent,omitempty"`
	FreeSlots  int     `json:"free_slots"`
	UploadKbps int     `json:"upload_kbps"`
	SeenS      float64 `json:"seen_s"` // since its last registration
	Reach      string  `json:"reach"`
	Self       bool    `json:"self,omitempty"`
	Browser    bool    `json:"browser,omitempty"` // a station page homed at this node
}

// BrowserNodes are the pages in the swarm's tree: those that reported a
// depth.
func BrowserNodes(bs []StatusBrowser) []StatusNode {
	var out []StatusNode
	for _, b := range bs {
		if b.Reported && b.Depth > 0 {
			out = append(out, StatusNode{ID: b.ID, Depth: b.Depth, Parent: b.Parent, FreeSlots: b.Free, UploadKbps: b.UploadKbps, SeenS: b.SeenS, Reach: "browser", Browser: true})
		}
	}
	return out
}

// NAT is the NAT's behaviour, for a node behind one.
func NAT(o control.OverlayStats) string {
	if o.Reach != control.ReachUnreachable {
		return ""
	}
	return o.NAT.String()
}

// Peers describes neighbours for Status.
func Peers(ps []control.PeerState) []StatusPeer {
	out := make([]StatusPeer, 0, len(ps))
	for _, p := range ps {
		out = append(out, StatusPeer{ID: p.ID.String(), Addr: p.Addr, Depth: p.Depth})
	}
	return out
}

// Swarm describes the tracker's nodes, shallowest first.
func Swarm(nodes []control.TrackedNode, self control.NodeID) []StatusNode {
	now := time.Now()
	out := make([]StatusNode, 0, len(nodes))
	for _, t := range nodes {
		sn := StatusNode{
			ID:         t.ID.String(),
			Addr:       t.Addr,
			Depth:      t.Depth,
			FreeSlots:  t.FreeSlots,
			UploadKbps: t.UploadKbps,
			SeenS:      now.Sub(t.Seen).Seconds(),
			Reach:      t.Reach.String(),
			Self:       t.ID == self,
		}
		if !t.Parent.IsZero() {
			sn.Parent = t.Parent.String()
		}
		out = append(out, sn)
	}
	slices.SortFunc(out, func(a, b StatusNode) int {
		return cmp.Or(cmp.Compare(a.Depth, b.Depth), cmp.Compare(a.ID, b.ID))
	})
	return out
}
