package control

import (
	"crypto/ed25519"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pradio/p2pradio/mux"
	"github.com/p2pradio/p2pradio/output"
	"github.com/stretchr/testify/require"
)

func TestAQuietLinkHearsOurStatusWhenItChangedOrIsDue(t *testing.T) {
	p := &peer{}
	t0 := time.Unix(1000, 0)
	st := &Status{Depth: 1, FreeSlots: 3, UploadKbps: 500, Path: []NodeID{{1}}, Newest: 10}
	require.True(t, p.statusDue(st, t0, childQuiet), "the first is always sent")
	same := *st
	same.Newest = 20 // the chunks say that
	for s := 1; s < 5; s++ {
		require.False(t, p.statusDue(&same, t0.Add(time.Duration(s)*time.Second), childQuiet), "second %d", s)
	}
	require.True(t, p.statusDue(&same, t0.Add(5*time.Second), childQuiet), "due after childQuiet")
	moved := same
	moved.FreeSlots = 2
	require.True(t, p.statusDue(&moved, t0.Add(6*time.Second), childQuiet), "changed")
	require.True(t, p.statusDue(&moved, t0.Add(7*time.Second), 0), "not quiet: every time")

	// parentQuiet is every second tick, even a tick a little early.
	q := &peer{}
	require.True(t, q.statusDue(st, t0, parentQuiet))
	require.False(t, q.statusDue(st, t0.Add(time.Second), parentQuiet))
	require.True(t, q.statusDue(st, t0.Add(2*time.Second-10*time.Millisecond), parentQuiet))
}

func TestAChildIsQuietOnlyWhileWeFeedIt(t *testing.T) {
	p := &peer{}
	t0 := time.Unix(1000, 0)
	const lately = 1500 * time.Millisecond
	require.False(t, p.fedWithin(0, t0, lately), "nothing sent yet")
	require.True(t, p.fedWithin(5, t0, lately))
	require.True(t, p.fedWithin(5, t0.Add(time.Second), lately))
	require.False(t, p.fedWithin(5, t0.Add(2*time.Second), lately), "no chunk since")
	require.True(t, p.fedWithin(6, t0.Add(3*time.Second), lately))
}

func TestASettledNodeRegistersLessOften(t *testing.T) {
	for _, tc := range []struct {
		settled time.Duration
		leaf    bool
		want    time.Duration
	}{
		{0, false, registerEvery},
		{5 * time.Second, true, registerEvery},
		{registerSettle, false, registerQuiet},
		{time.Minute, true, registerLeafQuiet},
	} {
		require.Equal(t, tc.want, registerInterval(tc.settled, tc.leaf), "%+v", tc)
	}
	// The rendezvous offers a node registered within offerFor and forgets
	// one silent for its Expiry (10 s by default).
	require.Less(t, registerQuiet, offerFor)
	require.Less(t, registerLeafQuiet, 10*time.Second)
}

// countingConn is a Conn whose packet count the test sets (packetCounter).
type countingConn struct {
	Conn
	packets atomic.Uint64
}

func (c *countingConn) PacketsReceived() uint64 { return c.packets.Load() }

type noHost struct{}

func (noHost) Accept(*mux.Chunk, time.Time)        {}
func (noHost) Attach(output.Peer, uint64, int) int { return 0 }
func (noHost) Detach(output.Peer)                  {}
func (noHost) Children() int                       { return 0 }

func TestAPeerWhosePacketsKeepComingIsAlive(t *testing.T) {
	a, b := newMemPair(t, MemConfig{})
	mc, _ := connect(t, a, b)
	conn := &countingConn{Conn: mc}
	o := &Overlay{log: slog.New(slog.DiscardHandler), host: noHost{}, peers: make(map[*peer]struct{}), failed: make(map[NodeID]time.Time)}
	p := newPeer(o, conn, false)
	p.child.Store(true)
	o.peers[p] = struct{}{}

	now := time.Now()
	p.lastHeard.Store(now.Add(-10 * time.Second).UnixNano()) // no message for 10 s
	conn.packets.Store(7)
	o.dropIdle(now)
	require.Len(t, o.peers, 1, "its acknowledgements arrive: alive")
	o.dropIdle(now.Add(2 * time.Second))
	require.Len(t, o.peers, 1, "within silentAfter of its last packet")
	o.dropIdle(now.Add(silentAfter + time.Second))
	require.Empty(t, o.peers, "nothing for longer than silentAfter: gone")
}

func TestAChildTellsAParentThatCountsPacketsItsStatusLessOften(t *testing.T) {
	a, b := newMemPair(t, MemConfig{})
	mc, _ := connect(t, a, b)
	station, _, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	h := newTestHost()
	o, err := NewOverlay(OverlayConfig{Station: station, Transport: a, Host: h, Window: h.win, Rendezvous: "127.0.0.1:1"})
	require.NoError(t, err)
	now := time.Now()
	for _, tc := range []struct {
		flags   uint8
		counter bool
		want    time.Duration
	}{
		{0, true, parentQuiet},                 // a parent from before: it drops a child silent for 3 s
		{HelloCountsPackets, true, childQuiet}, // it counts our acknowledgements
		{HelloCountsPackets | 0x80, true, childQuiet},
		{HelloCountsPackets, false, 0}, // the link counts no packets: every second
	} {
		var conn Conn = mc
		if tc.counter {
			conn = &countingConn{Conn: mc}
		}
		p := newPeer(o, conn, true)
		// Its Hello as the parent sends it back.
		require.NoError(t, o.handle(t.Context(), p, &Hello{Version: WireVersion, Station: o.id, Depth: 1, Flags: tc.flags}))
		p.lastNew.Store(now.Add(-200 * time.Millisecond).UnixNano())
		require.Equal(t, tc.want, o.quietFor(p, true, now), "%+v", tc)
		p.lastNew.Store(now.Add(-3 * time.Second).UnixNano())
		require.Zero(t, o.quietFor(p, true, now), "not fed lately: every second (%+v)", tc)
	}
	// A node says it counts packets.
	require.Equal(t, HelloCountsPackets, o.hello(newPeer(o, mc, true)).Flags&HelloCountsPackets)
}
