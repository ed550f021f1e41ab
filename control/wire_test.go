package control

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func testID(b byte) NodeID {
	var id NodeID
	for i := range id {
		id[i] = b + byte(i)
	}
	return id
}

// sampleMessages has one or more of every message type, each as
// ParseMessage returns it (so nil, not empty, lists).
func sampleMessages() []Message {
	peers := []PeerInfo{
		{ID: testID(1), Addr: "127.0.0.1:4000", Depth: 0, FreeSlots: 3, UploadKbps: 1000},
		{ID: testID(2), Addr: "[::1]:5000", Depth: -1, FreeSlots: 0, UploadKbps: 0},
		{ID: testID(3), Addr: "", Depth: 254, FreeSlots: MaxSlots, UploadKbps: math.MaxUint32},
	}
	return []Message{
		&Hello{Version: 2, Station: testID(9), Depth: 0, Observed: "203.0.113.7:41000",
			FreeSlots: 2, UploadKbps: 512, ListenAddr: "127.0.0.1:9000", Newest: 77},
		&Hello{Version: 7, Station: testID(9), Depth: 3, Path: []NodeID{testID(9), testID(4), testID(5)}},
		&Hello{Version: 1, Depth: -1},
		&Hello{Version: 3, Station: testID(9), Depth: 2, Newest: 5, Flags: HelloCountsPackets},
		&Hello{Version: 3, Depth: -1, Flags: 0xfe}, // bits of later nodes: kept, ignored
		&Welcome{},
		&Refuse{Reason: "no free slot"},
		&Refuse{},
		&Subscribe{},
		&Subscribe{From: math.MaxUint64},
		&Unsubscribe{},
		&Have{First: 1000, Bitmap: []byte{0xff, 0x01, 0x80}},
		&Have{},
		&Request{Seqs: []uint64{1, 2, math.MaxUint64}},
		&Request{},
		&PeerList{Peers: peers},
		&PeerList{},
		&Register{Version: 2, ListenAddr: "127.0.0.1:7000", UploadKbps: 300, Depth: 2, FreeSlots: 1, Parent: testID(7)},
		&Register{Version: 2, Depth: -1},
		&Register{Version: 3, Depth: 1, NAT: NATRandomises, Mapped: "198.51.100.1:7001"},
		&Register{Version: 3, Depth: 3, Want: true, Leaf: true, Failed: []NodeID{testID(3), testID(4)}, NAT: NATPreserves},
		&Candidates{Peers: peers[:2], Observed: "198.51.100.1:7000", Reach: ReachUnreachable, Live: 1234, Punch: peers[2:], Echo: "198.51.100.9:4000"},
		&Connect{Target: testID(8)},
		&Punch{Peer: peers[0]},
		&Candidates{Peers: peers[:1], Displace: peers[1:3]},
		&Candidates{},
		&Status{Depth: 4, FreeSlots: 1, Path: []NodeID{testID(9)}, Newest: 12},
		&Status{Depth: -1},
	}
}

func TestWireRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		t.Run(fmt.Sprintf("%v", m.Type()), func(t *testing.T) {
			b := AppendMessage([]byte("prefix"), m)
			require.Equal(t, "prefix", string(b[:6]), "AppendMessage must append")
			enc := b[6:]
			require.Equal(t, byte(m.Type()), enc[0])
			got, err := ParseMessage(enc)
			require.NoError(t, err)
			require.Equal(t, m, got)

			// Later versions may append fields: trailing bytes are ignored,
			// but for a Hello without Flags, whose first one is its Flags.
			want := m
			h, hello := m.(*Hello)
			if hello && h.Flags == 0 {
				withFlags := *h
				withFlags.Flags = 1
				want = &withFlags
			}
			got, err = ParseMessage(append(bytes.Clone(enc), 1, 2, 3))
			require.NoError(t, err)
			require.Equal(t, want, got)

			// Every field is mandatory: every truncation is an error, so
			// that a message has one encoding; but Hello's Flags, which
			// is written only when not 0.
			for n := range len(enc) {
				got, err := ParseMessage(enc[:n])
				if hello && h.Flags != 0 && n == len(enc)-1 {
					noFlags := *h
					noFlags.Flags = 0
					require.NoError(t, err)
					require.Equal(t, &noFlags, got, "a Hello from before Flags")
					continue
				}
				require.ErrorIs(t, err, ErrBadMessage, "truncated to %d of %d bytes", n, len(enc))
			}
		})
	}
}

func TestWireParseDoesNotAlias(t *testing.T) {
	enc := AppendMessage(nil, &Have{First: 1, Bitmap: []byte{0xaa}})
	m, err := ParseMessage(enc)
	require.NoError(t, err)
	enc[len(enc)-1] = 0
	require.Equal(t, []byte{0xaa}, m.(*Have).Bitmap)
}

func TestWireClamps(t *testing.T) {
	long := strings.Repeat("x", 300)
	path := make([]NodeID, MaxPath+10)
	for i := range path {
		path[i] = testID(byte(i))
	}
	peers := make([]PeerInfo, MaxPeers+1)
	seqs := make([]uint64, MaxRequest+1)
	for i := range seqs {
		seqs[i] = uint64(i)
	}
	for _, tc := range []struct {
		in, want Message
	}{
		{&Hello{Depth: -5, FreeSlots: -1, UploadKbps: -3, ListenAddr: long, Path: path},
			&Hello{Version: WireVersion, Depth: -1, ListenAddr: long[:MaxStringLen], Path: path[10:]}},
		{&Status{Depth: 1000, FreeSlots: 70000},
			&Status{Depth: MaxDepth, FreeSlots: MaxSlots}},
		{&Register{UploadKbps: math.MaxInt, Depth: 255}, &Register{Version: WireVersion, UploadKbps: math.MaxUint32, Depth: MaxDepth}},
		{&PeerList{Peers: peers}, &PeerList{Peers: peers[:MaxPeers]}},
		{&Request{Seqs: seqs}, &Request{Seqs: seqs[:MaxRequest]}},
		{&Have{Bitmap: make([]byte, 200)}, &Have{Bitmap: make([]byte, MaxHaveBytes)}},
		{&Refuse{Reason: long}, &Refuse{Reason: long[:MaxStringLen]}},
	} {
		got, err := ParseMessage(AppendMessage(nil, tc.in))
		require.NoError(t, err, "%v", tc.in.Type())
		require.Equal(t, tc.want, got)
	}
}

func TestWireRejects(t *testing.T) {
	hello := AppendMessage(nil, &Hello{})
	hello[1] = 0 // version 0
	for name, b := range map[string][]byte{
		"empty":           {},
		"unknown type":    {0},
		"unknown type 2":  {200, 1, 2, 3},
		"hello version 0": hello,
		"request too many": append([]byte{byte(TypeRequest), MaxRequest + 1},
			make([]byte, 8*(MaxRequest+1))...),
		"request count beyond data": {byte(TypeRequest), 2, 0, 0, 0, 0, 0, 0, 0, 1},
		"peers too many": append([]byte{byte(TypePeerList), MaxPeers + 1},
			make([]byte, peerInfoMin*(MaxPeers+1))...),
		"have too long":        append([]byte{byte(TypeHave), 0, 0, 0, 0, 0, 0, 0, 0, MaxHaveBytes + 1}, make([]byte, 200)...),
		"status path too long": append([]byte{byte(TypeStatus), 1, 0, 0, 0, 0, 0, 0, MaxPath + 1}, make([]byte, 32*(MaxPath+1))...),
		"register version 0":   {byte(TypeRegister), 0},
		"bool not 0 or 1":      badLeaf(),
		"NAT behaviour 3":      append(AppendMessage(nil, &Register{})[:len(AppendMessage(nil, &Register{}))-1], 3),
		"string beyond data":   {byte(TypeRefuse), 5, 'a', 'b'},
	} {
		_, err := ParseMessage(b)
		require.ErrorIs(t, err, ErrBadMessage, name)
	}
}

func TestWireHelpers(t *testing.T) {
	h := &Have{First: 100, Bitmap: []byte{0x80, 0x01}}
	for seq, want := range map[uint64]bool{99: false, 100: true, 101: false, 115: true, 116: false, 0: false} {
		require.Equal(t, want, h.Has(seq), "seq %d", seq)
	}
	require.Equal(t, int64(115), h.Newest())
	require.Equal(t, int64(-1), (&Have{First: 3}).Newest())
	held := map[uint64]bool{5: true, 7: true}
	m := NewHave(4, 9, func(s uint64) bool { return held[s] })
	require.Equal(t, &Have{First: 4, Bitmap: []byte{0x50}}, m)
	require.Equal(t, int64(7), m.Newest())
	long := NewHave(0, 5000, func(uint64) bool { return true })
	require.Len(t, long.Bitmap, MaxHaveBytes, "a map covers at most MaxHaveBytes*8 chunks, the last ones")
	require.True(t, long.Has(5000))
	require.False(t, long.Has(5000-MaxHaveBytes*8))

	pub, _, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	id := IDOf(pub)
	require.True(t, id.Key().Equal(pub))
	require.Equal(t, id, PeerInfo{ID: id}.ID)
	require.True(t, PeerInfo{ID: id}.Key().Equal(pub))
	require.True(t, IDOf(pub[:5]).IsZero())
	require.Nil(t, NodeID{}.Key())
	require.False(t, id.IsZero())
	require.Len(t, id.String(), 12)

	require.Equal(t, "Candidates", TypeCandidates.String())
	require.Equal(t, "MessageType(99)", MessageType(99).String())
}

func ExampleParseMessage() {
	b := AppendMessage(nil, &Subscribe{From: 1200})
	m, err := ParseMessage(b)
	if err != nil {
		panic(err)
	}
	fmt.Printf("%v % x\n%+v\n", m.Type(), b, *m.(*Subscribe))
	// Output:
	// Subscribe 04 00 00 00 00 00 00 04 b0
	// {From:1200}
}

// badLeaf is a Register whose Leaf byte is 2 (it ends Leaf, Failed's
// count, NAT).
func badLeaf() []byte {
	b := AppendMessage(nil, &Register{})
	b[len(b)-3] = 2
	return b
}
