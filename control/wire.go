package control

import (
	"cmp"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
)

// WireVersion is the version of the overlay's message set that this package
// speaks. Hello and Register carry it, and a node closes a link whose
// version differs (CodeVersion) with a message that says both. Every field
// is mandatory, so that each message has one encoding; a change of any
// message is a new version. Decoders ignore bytes after the last field,
// which lets a node add a last field that nodes of the same version
// without it ignore: Hello.Flags, written only when not zero.
const WireVersion = 3

// Maxima of the wire format. Decoders reject larger values; AppendMessage
// clamps to them (see AppendMessage).
const (
	MaxStringLen = 255 // bytes of an address or reason
	MaxPath      = 64  // ancestors in a Hello or Status path
	MaxPeers     = 64  // entries of a PeerList or Candidates
	MaxRequest   = 64  // sequence numbers in one Request
	MaxHaveBytes = 128 // bytes of a Have bitmap (1024 chunks)
	MaxDepth     = 254 // depths are 0..MaxDepth, or -1 for "not joined"
	MaxSlots     = math.MaxUint16
)

// NodeID is a node's identity: its ed25519 public key. A station's ID is
// the broadcaster's key, which signs the chunks.
type NodeID [ed25519.PublicKeySize]byte

// IDOf returns the NodeID of a public key (the zero NodeID when k is not an
// ed25519 public key).
func IDOf(k ed25519.PublicKey) NodeID {
	var id NodeID
	if len(k) == len(id) {
		copy(id[:], k)
	}
	return id
}

// Key returns the ID as a public key, or nil for the zero ID (so that
// Transport.Dial with it checks no key).
func (id NodeID) Key() ed25519.PublicKey {
	if id.IsZero() {
		return nil
	}
	return append(ed25519.PublicKey(nil), id[:]...)
}

// IsZero reports whether id is the zero NodeID ("none").
func (id NodeID) IsZero() bool { return id == NodeID{} }

// String returns the first bytes of the ID in hex, for logs.
func (id NodeID) String() string { return hex.EncodeToString(id[:6]) }

// MessageType is the first byte of every control message.
type MessageType uint8

// The message types.
const (
	TypeHello MessageType = 1 + iota
	TypeWelcome
	TypeRefuse
	TypeSubscribe
	TypeUnsubscribe
	TypeHave
	TypeRequest
	TypePeerList
	TypeRegister
	TypeCandidates
	TypeStatus
	TypeConnect
	TypePunch
)

func (t MessageType) String() string {
	switch t {
	case TypeHello:
		return "Hello"
	case TypeWelcome:
		return "Welcome"
	case TypeRefuse:
		return "Refuse"
	case TypeSubscribe:
		return "Subscribe"
	case TypeUnsubscribe:
		return "Unsubscribe"
	case TypeHave:
		return "Have"
	case TypeRequest:
		return "Request"
	case TypePeerList:
		return "PeerList"
	case TypeRegister:
		return "Register"
	case TypeCandidates:
		return "Candidates"
	case TypeStatus:
		return "Status"
	case TypeConnect:
		return "Connect"
	case TypePunch:
		return "Punch"
	}
	return fmt.Sprintf("MessageType(%d)", uint8(t))
}

// Message is one overlay control message: [type u8][payload], carried in
// one Conn.Send. The implementations are the pointer types of this file.
type Message interface {
	Type() MessageType
	appendPayload(b []byte) []byte
	parsePayload(r *wireReader)
}

// AppendMessage appends m's encoding to b. Fields beyond the wire's ranges
// are clamped: a negative Depth is sent as -1 ("not joined"), counts and
// lists are cut to their maxima (a Path keeps its last, nearest, entries),
// strings to MaxStringLen bytes. So AppendMessage never fails, and what
// ParseMessage returns encodes to the same bytes.
func AppendMessage(b []byte, m Message) []byte {
	b = append(b, byte(m.Type()))
	return m.appendPayload(b)
}

// ParseMessage decodes one message. Every error wraps ErrBadMessage. Bytes
// after a message's known fields are ignored (a later version's additions).
// The result shares no memory with b.
func ParseMessage(b []byte) (Message, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrBadMessage)
	}
	var m Message
	switch MessageType(b[0]) {
	case TypeHello:
		m = new(Hello)
	case TypeWelcome:
		m = new(Welcome)
	case TypeRefuse:
		m = new(Refuse)
	case TypeSubscribe:
		m = new(Subscribe)
	case TypeUnsubscribe:
		m = new(Unsubscribe)
	case TypeHave:
		m = new(Have)
	case TypeRequest:
		m = new(Request)
	case TypePeerList:
		m = new(PeerList)
	case TypeRegister:
		m = new(Register)
	case TypeCandidates:
		m = new(Candidates)
	case TypeStatus:
		m = new(Status)
	case TypeConnect:
		m = new(Connect)
	case TypePunch:
		m = new(Punch)
	default:
		return nil, fmt.Errorf("%w: unknown type %d", ErrBadMessage, b[0])
	}
	r := &wireReader{b: b[1:]}
	m.parsePayload(r)
	if r.err != nil {
		return nil, fmt.Errorf("%w: %v: %v", ErrBadMessage, m.Type(), r.err)
	}
	return m, nil
}

// Hello opens a peer link; each side sends one. The sender's key is the
// connection's RemoteKey, proven by the transport, so it is not repeated.
type Hello struct {
	// Version is the sender's WireVersion; AppendMessage writes
	// WireVersion when it is zero.
	Version uint8
	Station NodeID // the station the sender relays
	// Observed is the receiver's address as the sender sees this
	// connection's far end (its public address behind a NAT); empty when
	// the sender speaks first.
	Observed   string
	Depth      int // hops from the broadcaster; -1 when not joined
	FreeSlots  int // children the sender can still take
	UploadKbps int // the sender's upload budget
	// ListenAddr is where the sender accepts connections, as it sees it
	// (Conn.RemoteAddr is the same socket as seen from here).
	ListenAddr string
	// Path lists the sender's ancestors, the broadcaster first and its
	// parent last, so that a node never picks its own descendant.
	Path []NodeID
	// Newest is one more than the highest chunk sequence number the sender
	// holds (0: none): a joiner prefers a parent that is not behind it.
	Newest uint64
	// Flags says what the sender does that nodes before it did not
	// (HelloCountsPackets); bits it does not know the receiver ignores.
	// Optional on the wire: absent (a node from before) is 0.
	Flags uint8
}

// Hello.Flags.
const (
	// HelloCountsPackets: the sender takes any packet of the link for a
	// sign of life where its transport counts them (QUIC), so a child it
	// feeds may send its Status as seldom as every childQuiet: the
	// child's acknowledgements of the chunks say it is there. A node
	// without it drops a child whose messages stop for silentAfter.
	HelloCountsPackets uint8 = 1 << iota
)

// Type returns TypeHello.
func (*Hello) Type() MessageType { return TypeHello }

func (m *Hello) appendPayload(b []byte) []byte {
	b = append(b, cmp.Or(m.Version, WireVersion))
	b = append(b, m.Station[:]...)
	b = appendString(b, m.Observed)
	b = appendDepth(b, m.Depth)
	b = appendU16(b, m.FreeSlots)
	b = appendU32(b, m.UploadKbps)
	b = appendString(b, m.ListenAddr)
	b = appendPath(b, m.Path)
	b = binary.BigEndian.AppendUint64(b, m.Newest)
	if m.Flags != 0 {
		b = append(b, m.Flags)
	}
	return b
}

func (m *Hello) parsePayload(r *wireReader) {
	m.Version = r.version()
	m.Station = r.id()
	m.Observed = r.str()
	m.Depth = r.depth()
	m.FreeSlots = int(r.u16())
	m.UploadKbps = int(r.u32())
	m.ListenAddr = r.str()
	m.Path = r.path()
	m.Newest = r.u64()
	if r.err == nil && len(r.b) > 0 {
		m.Flags = r.u8()
	}
}

// Welcome accepts a Subscribe; the burst and the live chunks follow.
type Welcome struct{}

// Type returns TypeWelcome.
func (*Welcome) Type() MessageType { return TypeWelcome }

func (*Welcome) appendPayload(b []byte) []byte { return b }

func (*Welcome) parsePayload(*wireReader) {}

// Refuse turns a Subscribe down. The subscriber logs Reason and shows
// the last one in its figures while it has no parent.
type Refuse struct {
	Reason string
}

// Type returns TypeRefuse.
func (*Refuse) Type() MessageType { return TypeRefuse }

func (m *Refuse) appendPayload(b []byte) []byte { return appendString(b, m.Reason) }

func (m *Refuse) parsePayload(r *wireReader) { m.Reason = r.str() }

// Subscribe asks a peer to push chunks.
type Subscribe struct {
	// From is the first sequence number wanted; 0 lets the parent choose
	// (its most recent chunks: a burst that starts the child at once).
	From uint64
}

// Type returns TypeSubscribe.
func (*Subscribe) Type() MessageType { return TypeSubscribe }

func (m *Subscribe) appendPayload(b []byte) []byte { return binary.BigEndian.AppendUint64(b, m.From) }

func (m *Subscribe) parsePayload(r *wireReader) { m.From = r.u64() }

// Unsubscribe stops a subscription.
type Unsubscribe struct{}

// Type returns TypeUnsubscribe.
func (*Unsubscribe) Type() MessageType { return TypeUnsubscribe }

func (*Unsubscribe) appendPayload(b []byte) []byte { return b }

func (*Unsubscribe) parsePayload(*wireReader) {}

// Have is a buffer map: which chunks the sender holds.
type Have struct {
	// First is the sequence number of bit 0.
	First uint64
	// Bitmap's bit i (byte i/8, most significant bit first) says whether
	// chunk First+i is held. At most MaxHaveBytes bytes.
	Bitmap []byte
}

// Type returns TypeHave.
func (*Have) Type() MessageType { return TypeHave }

// Has reports whether the map says chunk seq is held.
func (m *Have) Has(seq uint64) bool {
	if seq < m.First || seq-m.First >= uint64(len(m.Bitmap))*8 {
		return false
	}
	i := seq - m.First
	return m.Bitmap[i/8]&(0x80>>(i%8)) != 0
}

// Newest is the highest sequence number the map shows held, or -1.
func (m *Have) Newest() int64 {
	for i := len(m.Bitmap)*8 - 1; i >= 0; i-- {
		if m.Bitmap[i/8]&(0x80>>(i%8)) != 0 {
			return int64(m.First) + int64(i)
		}
	}
	return -1
}

// NewHave returns the buffer map of the chunks first..last for which held
// is true (at most MaxHaveBytes*8 of them, the last ones).
func NewHave(first, last uint64, held func(seq uint64) bool) *Have {
	if last < first {
		return &Have{First: first}
	}
	first = max(first, last-min(last, MaxHaveBytes*8-1))
	m := &Have{First: first, Bitmap: make([]byte, (last-first+8)/8)}
	for s := first; s <= last; s++ {
		if held(s) {
			i := s - first
			m.Bitmap[i/8] |= 0x80 >> (i % 8)
		}
	}
	return m
}

func (m *Have) appendPayload(b []byte) []byte {
	bm := m.Bitmap[:min(len(m.Bitmap), MaxHaveBytes)]
	b = binary.BigEndian.AppendUint64(b, m.First)
	b = append(b, byte(len(bm)))
	return append(b, bm...)
}

func (m *Have) parsePayload(r *wireReader) {
	m.First = r.u64()
	n := r.count(MaxHaveBytes, 1)
	if n > 0 {
		m.Bitmap = r.bytes(n)
	}
}

// Request asks for chunks by sequence number (repair).
type Request struct {
	Seqs []uint64 // at most MaxRequest
}

// Type returns TypeRequest.
func (*Request) Type() MessageType { return TypeRequest }

func (m *Request) appendPayload(b []byte) []byte {
	seqs := m.Seqs[:min(len(m.Seqs), MaxRequest)]
	b = append(b, byte(len(seqs)))
	for _, s := range seqs {
		b = binary.BigEndian.AppendUint64(b, s)
	}
	return b
}

func (m *Request) parsePayload(r *wireReader) {
	n := r.count(MaxRequest, 8)
	if n > 0 {
		m.Seqs = make([]uint64, n)
		for i := range m.Seqs {
			m.Seqs[i] = r.u64()
		}
	}
}

// PeerInfo describes a node that may become a parent.
type PeerInfo struct {
	ID         NodeID
	Addr       string // where it accepts connections
	Depth      int    // -1 when not joined
	FreeSlots  int
	UploadKbps int
}

// Key returns the node's public key, to pass to Transport.Dial (nil when ID
// is zero).
func (p PeerInfo) Key() ed25519.PublicKey { return p.ID.Key() }

// peerInfoMin is the smallest encoding of a PeerInfo.
const peerInfoMin = 32 + 1 + 1 + 2 + 4

func appendPeers(b []byte, peers []PeerInfo) []byte {
	peers = peers[:min(len(peers), MaxPeers)]
	b = append(b, byte(len(peers)))
	for _, p := range peers {
		b = append(b, p.ID[:]...)
		b = appendString(b, p.Addr)
		b = appendDepth(b, p.Depth)
		b = appendU16(b, p.FreeSlots)
		b = appendU32(b, p.UploadKbps)
	}
	return b
}

func (r *wireReader) peers() []PeerInfo {
	n := r.count(MaxPeers, peerInfoMin)
	if n == 0 {
		return nil
	}
	peers := make([]PeerInfo, n)
	for i := range peers {
		p := &peers[i]
		p.ID = r.id()
		p.Addr = r.str()
		p.Depth = r.depth()
		p.FreeSlots = int(r.u16())
		p.UploadKbps = int(r.u32())
	}
	return peers
}

// PeerList shares known nodes with a neighbour (peer exchange).
type PeerList struct {
	Peers []PeerInfo // at most MaxPeers
}

// Type returns TypePeerList.
func (*PeerList) Type() MessageType { return TypePeerList }

func (m *PeerList) appendPayload(b []byte) []byte { return appendPeers(b, m.Peers) }

func (m *PeerList) parsePayload(r *wireReader) { m.Peers = r.peers() }

// Status is a node's periodic news to its neighbours.
type Status struct {
	Depth      int // -1 when not joined
	FreeSlots  int
	UploadKbps int      // as in Hello: 0 once the sender found it can take no children
	Path       []NodeID // ancestors, broadcaster first
	Newest     uint64   // as in Hello
}

// Type returns TypeStatus.
func (*Status) Type() MessageType { return TypeStatus }

func (m *Status) appendPayload(b []byte) []byte {
	b = appendDepth(b, m.Depth)
	b = appendU16(b, m.FreeSlots)
	b = appendU32(b, m.UploadKbps)
	b = appendPath(b, m.Path)
	return binary.BigEndian.AppendUint64(b, m.Newest)
}

func (m *Status) parsePayload(r *wireReader) {
	m.Depth = r.depth()
	m.FreeSlots = int(r.u16())
	m.UploadKbps = int(r.u32())
	m.Path = r.path()
	m.Newest = r.u64()
}

// Encoding helpers; each clamps its value to the wire's range.

// depthUnknown encodes Depth -1.
const depthUnknown = 0xff

func appendDepth(b []byte, d int) []byte {
	if d < 0 {
		return append(b, depthUnknown)
	}
	return append(b, byte(min(d, MaxDepth)))
}

func appendU16(b []byte, v int) []byte {
	return binary.BigEndian.AppendUint16(b, uint16(max(0, min(v, math.MaxUint16))))
}

func appendU32(b []byte, v int) []byte {
	return binary.BigEndian.AppendUint32(b, uint32(max(0, min(int64(v), math.MaxUint32))))
}

func appendString(b []byte, s string) []byte {
	s = s[:min(len(s), MaxStringLen)]
	b = append(b, byte(len(s)))
	return append(b, s...)
}

func appendPath(b []byte, path []NodeID) []byte {
	return appendIDs(b, path[max(0, len(path)-MaxPath):], MaxPath)
}

func appendIDs(b []byte, ids []NodeID, most int) []byte {
	ids = ids[:min(len(ids), most)]
	b = append(b, byte(len(ids)))
	for _, id := range ids {
		b = append(b, id[:]...)
	}
	return b
}

// wireReader decodes fields with bounds checks. After the first error every
// read returns a zero value, and err keeps the first error.
type wireReader struct {
	b   []byte
	err error
}

func (r *wireReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
	}
}

// take returns the next n bytes, or nil (and an error) if there are fewer.
func (r *wireReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.fail("truncated: need %d bytes, have %d", n, len(r.b))
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

// version reads a WireVersion field: any value but 0.
func (r *wireReader) version() uint8 {
	v := r.u8()
	if v == 0 && r.err == nil {
		r.fail("version 0")
	}
	return v
}

// bool reads a byte that must be 0 or 1, so that it has one encoding.
func (r *wireReader) bool() bool {
	v := r.u8()
	if v > 1 {
		r.fail("bool %d", v)
	}
	return v == 1
}

func (r *wireReader) u8() uint8 {
	if p := r.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (r *wireReader) u16() uint16 {
	if p := r.take(2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (r *wireReader) u32() uint32 {
	if p := r.take(4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (r *wireReader) u64() uint64 {
	if p := r.take(8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (r *wireReader) id() NodeID {
	var id NodeID
	copy(id[:], r.take(len(id)))
	return id
}

func (r *wireReader) bytes(n int) []byte {
	return append([]byte(nil), r.take(n)...)
}

func (r *wireReader) str() string {
	return string(r.take(int(r.u8())))
}

// depth reads a depth: every byte is valid, depthUnknown being -1.
func (r *wireReader) depth() int {
	if d := r.u8(); d != depthUnknown {
		return int(d)
	}
	return -1
}

// count reads a u8 element count, at most maxN, of elements of at least
// minSize bytes each, which must fit in what is left (before allocating).
func (r *wireReader) count(maxN, minSize int) int {
	n := int(r.u8())
	switch {
	case r.err != nil:
		return 0
	case n > maxN:
		r.fail("%d elements, at most %d", n, maxN)
		return 0
	case n*minSize > len(r.b):
		r.fail("truncated: %d elements need %d bytes, have %d", n, n*minSize, len(r.b))
		return 0
	}
	return n
}

func (r *wireReader) path() []NodeID { return r.ids(MaxPath) }

func (r *wireReader) ids(most int) []NodeID {
	n := r.count(most, len(NodeID{}))
	if n == 0 {
		return nil
	}
	path := make([]NodeID, n)
	for i := range path {
		path[i] = r.id()
	}
	return path
}
