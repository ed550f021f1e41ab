package control

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func peerWithMap(first uint64, bits ...bool) *peer {
	bm := make([]byte, (len(bits)+7)/8)
	for i, b := range bits {
		if b {
			bm[i/8] |= 0x80 >> (i % 8)
		}
	}
	p := &peer{newest: -1}
	p.setHave(&Have{First: first, Bitmap: bm})
	return p
}

func TestPickSourceFollowsBufferMaps(t *testing.T) {
	hole := peerWithMap(100, true, false, true, true) // lacks 101
	full := peerWithMap(100, true, true, true, true)
	none := &peer{newest: -1} // no map yet, nothing announced
	parent := &peer{newest: 120}

	require.Equal(t, 0, hole.holds(101))
	require.Equal(t, 2, full.holds(101))
	require.Equal(t, 1, hole.holds(104), "past the map's end: probably arrived since")
	require.Equal(t, 0, hole.holds(99), "before the map: gone from its window")
	require.Equal(t, 0, none.holds(101))
	require.Equal(t, 1, parent.holds(101))

	sources := []*peer{hole, none, full, parent}
	// The first request goes to the neighbour whose map shows the chunk.
	require.Same(t, full, pickSource(sources, 101, 0))
	// Then to the others that may hold it, in turn; never to one whose map
	// shows a hole there, nor to one that announced nothing.
	seen := map[*peer]bool{}
	for try := 1; try < 4; try++ {
		p := pickSource(sources, 101, try)
		require.NotSame(t, hole, p)
		require.NotSame(t, none, p)
		seen[p] = true
	}
	require.True(t, seen[full] && seen[parent], "asked one, then another")

	// When nobody seems to hold it, everyone is asked in turn.
	seen = map[*peer]bool{}
	for try := range 4 {
		seen[pickSource([]*peer{hole, none}, 101, try)] = true
	}
	require.Len(t, seen, 2)
}

func TestPickChildToDisplace(t *testing.T) {
	slots := func(kbps int) int { return slotBudget{kbps}.slots(128) }
	relay := peerView{id: testID(1), upload: 1000, public: true}
	natted := peerView{id: testID(8), upload: 1000} // behind a NAT: it cannot feed a restricted leaf
	leaf := peerView{id: testID(2), upload: 0}
	other := peerView{id: testID(3), upload: 400, free: 1}             // one child
	childless := peerView{id: testID(5), upload: 400, free: 2}         // none
	voluntary := peerView{id: testID(4), upload: 0}                    // a leaf by choice: others can feed it
	restricted := peerView{id: testID(6), upload: 0, restricted: true} // only public nodes can feed it
	for _, tc := range []struct {
		name     string
		newcomer peerView
		children []peerView
		want     int
	}{
		{"a relay takes a leaf's place", relay, []peerView{other, leaf}, 1},
		{"no leaf child", relay, []peerView{other}, -1},
		{"a leaf by choice never displaces", voluntary, []peerView{leaf, other}, -1},
		{"a relay displaces a restricted leaf last", relay, []peerView{restricted, leaf}, 1},
		{"a relay displaces a restricted leaf (it is public: the rendezvous sent it)", relay, []peerView{other, restricted}, 1},
		{"a relay behind a NAT displaces a leaf by choice", natted, []peerView{restricted, leaf}, 1},
		{"never a restricted one (it could not feed it)", natted, []peerView{other, restricted}, -1},
		{"a restricted newcomer takes the place of a relay without children", restricted, []peerView{leaf, other, childless}, 2},
		{"never of one with children (its subtree would move)", restricted, []peerView{leaf, other}, -1},
		{"nor of one that reaches us from another port (restricted too, perhaps, and not told yet)", restricted, []peerView{{id: testID(9), upload: 400, free: 2, apart: true}}, -1},
		{"a restricted newcomer never displaces a leaf", restricted, []peerView{leaf}, -1},
		{"nor another restricted node", restricted, []peerView{{id: testID(7), upload: 0, restricted: true}}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, pickChildToDisplace(tc.newcomer, tc.children, slots))
		})
	}
	require.Equal(t, []int{0, 2, 7}, []int{slotBudget{-1}.slots(128), slotBudget{400}.slots(0), slotBudget{1000}.slots(128)})
}

func TestMappedApart(t *testing.T) {
	for _, tc := range []struct {
		listen, remote string
		want           bool
	}{
		{"mem:12/3", "mem:12:3", false},    // a port-preserving NAT
		{"mem:12/3", "mem:12:40123", true}, // a port-randomising one
		{"mem:5", "mem:5", false},          // public
		{"0.0.0.0:4433", "192.0.2.7:4433", false},
		{"[::]:4433", "192.0.2.7:61000", true},
		{"", "192.0.2.7:61000", false}, // nothing said
	} {
		require.Equal(t, tc.want, mappedApart(tc.listen, tc.remote), "%s from %s", tc.listen, tc.remote)
	}
}

func TestJoinOrder(t *testing.T) {
	at := func(d, free int) []PeerInfo { return []PeerInfo{{ID: testID(byte(d)), Depth: d, FreeSlots: free}} }
	for _, tc := range []struct {
		name                    string
		direct, displace, punch []PeerInfo
		want                    []joinWay
	}{
		{"nothing known: as they cost", nil, nil, nil, []joinWay{wayDirect, wayDisplace, wayPunch}},
		{"a free slot as shallow as a punched one: dialed first", at(3, 1), nil, at(3, 1), []joinWay{wayDirect, wayPunch, wayDisplace}},
		{"a punched slot shallower: punched first", at(7, 1), nil, at(3, 2), []joinWay{wayPunch, wayDirect, wayDisplace}},
		{"a direct candidate that is full counts for nothing", append(at(1, 0), at(6, 1)...), nil, at(3, 1), []joinWay{wayPunch, wayDirect, wayDisplace}},
		{"a leaf's place shallower than a punched slot", nil, at(2, 0), at(4, 1), []joinWay{wayDisplace, wayPunch, wayDirect}},
		{"a leaf's place never before a free slot", at(5, 1), at(2, 0), nil, []joinWay{wayDirect, wayDisplace, wayPunch}},
		{"a punched slot shallower than a leaf's place", at(8, 1), at(6, 0), at(3, 1), []joinWay{wayPunch, wayDirect, wayDisplace}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, joinOrder(tc.direct, tc.displace, tc.punch))
		})
	}
}

func TestClimbDue(t *testing.T) {
	const s = time.Second
	for _, tc := range []struct {
		name                                string
		sinceLook, sinceParent, sinceDeeper time.Duration
		want                                bool
	}{
		{"settled: every climbInterval", 6 * s, 20 * s, 30 * s, true},
		{"settled, looked lately", 3 * s, 20 * s, 30 * s, false},
		{"came to sit deeper lately: every climbSoon", 1500 * time.Millisecond, 20 * s, 3 * s, true},
		{"just joined: soon, not at once", 20 * s, 1500 * time.Millisecond, 1500 * time.Millisecond, true},
		{"the parent came a moment ago", 20 * s, 200 * time.Millisecond, 200 * time.Millisecond, false},
		{"deeper long ago: climbInterval again", 3 * s, 20 * s, 10 * s, false},
		{"an ancestor moved and took it deeper: at once, though it looked lately", 200 * time.Millisecond, 20 * s, 150 * time.Millisecond, true},
		{"an ancestor moved this very tick: the next", 200 * time.Millisecond, 20 * s, 0, false},
		{"an ancestor moved, looked since: climbSoon", 200 * time.Millisecond, 20 * s, 800 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, climbDue(tc.sinceLook, tc.sinceParent, tc.sinceDeeper))
		})
	}
}

func TestPutOff(t *testing.T) {
	for _, tc := range []struct {
		name          string
		starved       time.Duration
		backups       int
		climb, backup bool
	}{
		{"not starved: nothing", schedLimit - time.Millisecond, 1, false, false},
		{"starved, with a backup: both", schedLimit, 1, true, true},
		{"starved, no backup: still looks for one", time.Second, 0, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			climb, backup := putOff(tc.starved, tc.backups)
			require.Equal(t, tc.climb, climb, "climb")
			require.Equal(t, tc.backup, backup, "backup search")
		})
	}
}

func TestBackupsToDrop(t *testing.T) {
	self, a1, a2, parent, x := testID(1), testID(2), testID(3), testID(4), testID(9)
	ancestors := []NodeID{a1, a2, parent} // the broadcaster's child first
	// A backup fed through the root only, or through ancestors down to
	// the given one.
	free := peerView{id: testID(10), path: []NodeID{testID(0), x}}
	under := func(id byte, through ...NodeID) peerView {
		return peerView{id: testID(id), path: append([]NodeID{testID(0)}, through...)}
	}
	for _, tc := range []struct {
		name    string
		backups []peerView
		want    []int
	}{
		{"none", nil, nil},
		{"independent ones stay", []peerView{free, under(11, x)}, nil},
		{"one under our parent goes", []peerView{under(11, a1, a2, parent)}, []int{0}},
		{"our parent itself goes", []peerView{{id: parent, path: []NodeID{testID(0), a1, a2}}}, []int{0}},
		{"one fed through us goes", []peerView{under(11, a1, a2, parent, self)}, []int{0}},
		{"dependent ones go when one is independent", []peerView{under(11, a1), free, under(12, a1, a2)}, []int{0, 2}},
		{"the least dependent stays while none is independent", []peerView{under(11, a1, a2), under(12, a1)}, []int{0}},
		{"but never one under our parent", []peerView{under(11, a1, a2, parent), under(12, a1, a2)}, []int{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, backupsToDrop(tc.backups, self, ancestors))
		})
	}
}

func TestBackupSearchDue(t *testing.T) {
	const s = time.Second
	for _, tc := range []struct {
		name                  string
		sinceTry, sinceParent time.Duration
		backups               int
		want                  bool
	}{
		{"settled, one backup", 2 * s, 3 * s, 1, true},
		{"looked just now", 500 * time.Millisecond, 3 * s, 1, false},
		{"a new parent, one backup", 2 * s, s, 1, false},
		{"a new parent, no backup", 2 * s, 600 * time.Millisecond, 0, true},
		{"a parent just now, no backup", 2 * s, 100 * time.Millisecond, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, backupSearchDue(tc.sinceTry, tc.sinceParent, tc.backups))
		})
	}
}

func TestSilentChild(t *testing.T) {
	const limit = 1200 * time.Millisecond
	for _, tc := range []struct {
		name     string
		silences []time.Duration
		want     int
	}{
		{"no children", nil, -1},
		{"all heard from lately", []time.Duration{0, 900 * time.Millisecond, limit - 1}, -1},
		{"one silent for the limit", []time.Duration{100 * time.Millisecond, limit}, 1},
		{"the silentest of two", []time.Duration{2 * time.Second, 0, 2500 * time.Millisecond}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, silentChild(tc.silences, limit))
		})
	}
}

func TestPromoteOrder(t *testing.T) {
	at := func(depth int) peerView { return peerView{depth: depth} }
	for _, tc := range []struct {
		name    string
		backups []peerView
		want    []int
	}{
		{"none", nil, []int{}},
		{"the shallowest first", []peerView{at(7), at(3), at(5)}, []int{1, 2, 0}},
		{"ties keep their order", []peerView{at(4), at(4)}, []int{0, 1}},
		{"one not joined last", []peerView{at(-1), at(9)}, []int{1, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, promoteOrder(tc.backups))
		})
	}
}

func TestBackupToClimb(t *testing.T) {
	self := NodeID{1}
	at := func(depth, free int, path ...NodeID) peerView { return peerView{depth: depth, free: free, path: path} }
	for _, tc := range []struct {
		name    string
		depth   int
		backups []peerView
		want    int
	}{
		{"none", 14, nil, -1},
		{"three levels up with a free slot", 14, []peerView{at(11, 1)}, 0},
		{"only two levels up: the rendezvous decides", 14, []peerView{at(12, 2)}, -1},
		{"full", 14, []peerView{at(8, 0)}, -1},
		{"not joined", 14, []peerView{at(-1, 2)}, -1},
		{"fed through us", 14, []peerView{at(9, 2, NodeID{9}, self)}, -1},
		{"the shallowest of those that fit", 14, []peerView{at(10, 1), at(8, 0), at(9, 2), at(11, 1)}, 2},
		{"too shallow a node to climb", 2, []peerView{at(0, 2)}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, backupToClimb(tc.depth, tc.backups, self))
		})
	}
}

func TestParentFedByDuplicatesAhead(t *testing.T) {
	// A parent's chunks, in the order they come, as (sequence number, a
	// duplicate of one we had): whether each counts as the parent feeding
	// us (see lastFed).
	type chunk struct {
		seq  uint64
		dup  bool
		feed bool
	}
	cases := []struct {
		name   string
		chunks []chunk
	}{
		{"new chunks feed", []chunk{{10, false, true}, {11, false, true}}},
		{"duplicates ahead of what it sent feed: it relays what it pulls from its backups, and we pulled the same",
			[]chunk{{10, false, true}, {11, true, true}, {12, true, true}, {13, false, true}}},
		{"old chunks again do not", []chunk{{10, false, true}, {11, false, true}, {9, true, false}, {11, true, false}}},
		{"a new chunk behind its newest (repair) feeds", []chunk{{12, false, true}, {11, false, true}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := &peer{}
			p.sentMax.Store(-1)
			for i, c := range tc.chunks {
				at := int64(i + 1)
				p.received(c.seq, c.dup, at)
				require.Equal(t, c.feed, p.lastFed() == at, "chunk %d (%d)", i, c.seq)
			}
		})
	}
}
