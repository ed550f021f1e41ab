package control

import (
	"cmp"
	"encoding/binary"
)

// The rendezvous's messages: Register and Candidates (a node's session
// with the tracker), Connect and Punch (a coordinated NAT punch).

// Register tells the tracker about the sender; the tracker answers with
// Candidates. The tracker takes the sender's address from the connection
// (its observed address) and its ID from the connection's key.
type Register struct {
	// Version is the sender's WireVersion; AppendMessage writes
	// WireVersion when it is zero.
	Version    uint8
	ListenAddr string // where the sender accepts, as it sees it
	UploadKbps int
	Depth      int // -1 when not joined
	FreeSlots  int
	Parent     NodeID // the pushing parent; zero when none
	// Want asks for candidate parents; without it the answer is an empty
	// Candidates (a cheap keep-alive that spares the tracker a search).
	Want bool
	// Leaf says the sender can take no children (its upload budget is
	// less than one stream). A node that can may displace a leaf.
	Leaf bool
	// Failed lists candidates the sender could not reach or that did not
	// feed it (at most MaxFailed): the tracker offers them to it no more
	// and checks them again.
	Failed []NodeID
	// NAT is what the sender found out about the NAT in front of it (see
	// Candidates.Echo).
	NAT NATBehaviour
	// Mapped is the address that a port mapping on the sender's router
	// forwards to its socket (UPnP-IGD or NAT-PMP, see control/portmap),
	// empty when none. The tracker dials it back, and offers it, instead
	// of the observed address when its IP is the observed one (a router
	// behind another NAT maps a port of an address nobody outside sees).
	// Since WireVersion 3.
	Mapped string
}

// NATBehaviour is how a node's NAT maps its socket, as the node found by
// comparing the address two destinations saw: the same port for both
// (endpoint-independent mapping: a coordinated punch can open it) or not.
type NATBehaviour uint8

// The values of NATBehaviour.
const (
	NATUnknown    NATBehaviour = iota // not found out (or no NAT: see Reach)
	NATPreserves                      // one mapping for every destination: punchable
	NATRandomises                     // a mapping per destination: only relays reach it
)

func (b NATBehaviour) String() string {
	switch b {
	case NATPreserves:
		return "port-preserving"
	case NATRandomises:
		return "port-randomising"
	}
	return "unknown"
}

// MaxFailed is how many failed candidates one Register reports.
const MaxFailed = 8

// Type returns TypeRegister.
func (*Register) Type() MessageType { return TypeRegister }

func (m *Register) appendPayload(b []byte) []byte {
	b = append(b, cmp.Or(m.Version, WireVersion))
	b = appendString(b, m.ListenAddr)
	b = appendU32(b, m.UploadKbps)
	b = appendDepth(b, m.Depth)
	b = appendU16(b, m.FreeSlots)
	b = append(b, m.Parent[:]...)
	b = append(b, boolByte(m.Want), boolByte(m.Leaf))
	b = appendIDs(b, m.Failed, MaxFailed)
	b = append(b, byte(min(m.NAT, NATRandomises)))
	return appendString(b, m.Mapped)
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

func (m *Register) parsePayload(r *wireReader) {
	m.Version = r.version()
	m.ListenAddr = r.str()
	m.UploadKbps = int(r.u32())
	m.Depth = r.depth()
	m.FreeSlots = int(r.u16())
	m.Parent = r.id()
	m.Want = r.bool()
	m.Leaf = r.bool()
	m.Failed = r.ids(MaxFailed)
	if m.NAT = NATBehaviour(r.u8()); m.NAT > NATRandomises {
		r.fail("NAT behaviour %d", m.NAT)
	}
	m.Mapped = r.str()
}

// Candidates is the tracker's answer to Register: possible parents.
type Candidates struct {
	Peers []PeerInfo // at most MaxPeers
	// Displace lists full parents, shallow first, with a leaf child that a
	// sender who is not a leaf may take the place of (the parent then
	// moves the leaf away). At most MaxPeers; sent only to non-leaves.
	Displace []PeerInfo
	// Observed is the sender's address as the tracker sees it.
	Observed string
	// Reach is what the tracker's dial-back to Observed found.
	Reach Reach
	// Live is one more than the newest chunk the station has made, as the
	// tracker knows it (0: unknown): chunks older than a window behind it
	// are stale, whoever sends them.
	Live uint64
	// Punch lists parents behind port-preserving NATs with free slots:
	// reach one by sending the tracker a Connect for it and then dialing
	// it; the tracker has it open its NAT to the sender meanwhile.
	Punch []PeerInfo
	// Echo is an address of the tracker's other socket: a node that dials
	// it is told (Hello.Observed) the address it saw, and compares it with
	// Observed to learn its NAT's behaviour. Empty: none.
	Echo string
}

// Connect asks the tracker to have Target (listed in Candidates.Punch)
// open its NAT to the sender, which dials it next.
type Connect struct {
	Target NodeID
}

// Type returns TypeConnect.
func (*Connect) Type() MessageType { return TypeConnect }

func (m *Connect) appendPayload(b []byte) []byte { return append(b, m.Target[:]...) }

func (m *Connect) parsePayload(r *wireReader) { m.Target = r.id() }

// Punch tells a node, from the tracker, that Peer is about to dial it:
// it sends a few packets to Peer.Addr from its socket (with a low TTL), so
// that its NAT lets Peer's dial in.
type Punch struct {
	Peer PeerInfo
}

// Type returns TypePunch.
func (*Punch) Type() MessageType { return TypePunch }

func (m *Punch) appendPayload(b []byte) []byte { return appendPeers(b, []PeerInfo{m.Peer}) }

func (m *Punch) parsePayload(r *wireReader) {
	ps := r.peers()
	if len(ps) != 1 {
		r.fail("punch for %d peers", len(ps))
		return
	}
	m.Peer = ps[0]
}

// Reach is whether a node can be dialed by nodes it has not contacted:
// what the rendezvous found when it dialed the node back from an address
// the node had never sent to.
type Reach uint8

// The values of Reach.
const (
	ReachUnknown     Reach = iota // not checked yet
	ReachPublic                   // the dial-back got through
	ReachUnreachable              // it did not: a NAT or firewall filters
)

func (r Reach) String() string {
	switch r {
	case ReachPublic:
		return "public"
	case ReachUnreachable:
		return "unreachable"
	}
	return "unknown"
}

// Type returns TypeCandidates.
func (*Candidates) Type() MessageType { return TypeCandidates }

func (m *Candidates) appendPayload(b []byte) []byte {
	b = appendString(appendPeers(appendPeers(b, m.Peers), m.Displace), m.Observed)
	b = append(b, byte(min(m.Reach, ReachUnreachable)))
	b = binary.BigEndian.AppendUint64(b, m.Live)
	return appendString(appendPeers(b, m.Punch), m.Echo)
}

func (m *Candidates) parsePayload(r *wireReader) {
	m.Peers = r.peers()
	m.Displace = r.peers()
	m.Observed = r.str()
	if m.Reach = Reach(r.u8()); m.Reach > ReachUnreachable {
		r.fail("reach %d", m.Reach)
	}
	m.Live = r.u64()
	m.Punch = r.peers()
	m.Echo = r.str()
}
