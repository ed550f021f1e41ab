package control

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/mux"
	"github.com/p2pradio/p2pradio/output"
)

// The overlay's tests run whole overlays on the in-memory network, in fake
// time (testing/synctest), without playout: a testHost keeps what its
// overlay accepted and feeds its children as p2pradio.Node does.

// testHost is a Host that records when each chunk arrived.
type testHost struct {
	mu  sync.Mutex
	win *output.Window
	fan *output.Fanout
	got map[uint64]time.Time
}

func newTestHost() *testHost {
	return &testHost{win: output.NewWindow(50), fan: output.NewFanout(output.FanoutConfig{}), got: make(map[uint64]time.Time)}
}

func (h *testHost) Accept(c *mux.Chunk, arrived time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.win.Get(c.Seq) != nil {
		return
	}
	h.win.WriteChunk(c)
	h.fan.WriteChunk(c)
	h.got[c.Seq] = time.Now()
}

func (h *testHost) Attach(child output.Peer, from uint64, n int) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	burst := h.win.Last(n)
	if from > 0 {
		burst = h.win.Since(from)
	}
	for _, c := range burst {
		output.Send(child, c)
	}
	h.fan.Add(child)
	return len(burst)
}

func (h *testHost) Detach(child output.Peer) { h.fan.Remove(child) }
func (h *testHost) Children() int            { return h.fan.Len() }

// missing lists the chunks from first to last that never arrived.
func (h *testHost) missing(first, last uint64) []uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []uint64
	for s := first; s <= last; s++ {
		if _, ok := h.got[s]; !ok {
			out = append(out, s)
		}
	}
	return out
}

// testFrames are the frames of a real encoder's file, read once.
var testFrames = sync.OnceValues(func() ([]mux.Frame, error) {
	b, err := os.ReadFile("../testdata/cbr128.mp3")
	if err != nil {
		return nil, err
	}
	d := mux.NewDemuxer(bytes.NewReader(b))
	var out []mux.Frame
	for {
		f, err := d.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
})

// testSwarm is a station (a root overlay fed chunks in real, or fake,
// time) and listeners' overlays on one in-memory network.
type testSwarm struct {
	t       *testing.T
	net     *MemNetwork
	ctx     context.Context
	key     ed25519.PrivateKey
	root    *testNode
	nodes   []*testNode
	sigs    *mux.SignatureCache
	newest  func() int64
	stop    context.CancelFunc
	wg      sync.WaitGroup
	tracker *Tracker
	chunks  sync.Map // seq -> *mux.Chunk, every chunk the station made
	// lateUntil: the station makes no chunk before this (unix nanos): a
	// source that is late, or a machine starved of CPU.
	lateUntil atomic.Int64
}

// close stops every node and waits for their goroutines, before the fake
// time bubble ends.
func (s *testSwarm) close() {
	s.stop()
	for _, n := range append(s.nodes, s.root) {
		n.ov.Close()
	}
	s.wg.Wait()
	s.net.Close()
}

type testNode struct {
	ov     *Overlay
	host   *testHost
	tr     *MemTransport
	cancel context.CancelFunc
}

// newTestSwarm starts a station whose root has rootKbps of upload.
func newTestSwarm(t *testing.T, cfg MemConfig, rootKbps int) *testSwarm {
	t.Helper()
	_, key, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	s := &testSwarm{t: t, net: NewMemNetwork(cfg), ctx: ctx, key: key, sigs: mux.NewSignatureCache(256), stop: cancel}
	t.Cleanup(s.close)
	tr, err := s.net.NewTransport(key)
	require.NoError(t, err)
	prober, err := s.net.NewTransport(nil)
	require.NoError(t, err)
	echo, err := s.net.NewTransport(nil)
	require.NoError(t, err)
	h := newTestHost()
	s.tracker = NewTracker(TrackerConfig{Prober: prober, Echo: echo, Station: IDOf(key.Public().(ed25519.PublicKey))})
	ov, err := NewOverlay(OverlayConfig{Station: key.Public().(ed25519.PublicKey), Transport: tr, Host: h, Window: h.win,
		Root: true, Tracker: s.tracker, UploadKbps: rootKbps})
	require.NoError(t, err)
	s.root = &testNode{ov: ov, host: h, tr: tr, cancel: cancel}
	s.wg.Go(func() { ov.Run(ctx) })
	frames, err := testFrames()
	require.NoError(t, err)
	var mu sync.Mutex
	newest := int64(-1)
	s.newest = func() int64 { mu.Lock(); defer mu.Unlock(); return newest }
	s.wg.Go(func() {
		ch := mux.NewChunker(mux.ChunkerConfig{Key: key})
		for i := 0; ctx.Err() == nil; i++ {
			if late := time.Unix(0, s.lateUntil.Load()); time.Now().Before(late) {
				time.Sleep(time.Until(late))
			}
			c, err := ch.Add(frames[i%len(frames)], time.Now())
			if err != nil {
				panic(err)
			}
			if c != nil {
				s.chunks.Store(c.Seq, c)
				h.Accept(c, time.Now())
				mu.Lock()
				newest = int64(c.Seq)
				mu.Unlock()
			}
			time.Sleep(frames[0].Format().FrameDuration())
		}
	})
	return s
}

// add starts a listener with uploadKbps of upload.
func (s *testSwarm) add(uploadKbps int) *testNode {
	s.t.Helper()
	tr, err := s.net.NewTransport(nil)
	require.NoError(s.t, err)
	return s.start(tr, uploadKbps)
}

// addBehind starts a listener behind nat.
func (s *testSwarm) addBehind(nat *MemNAT, uploadKbps int) *testNode {
	s.t.Helper()
	tr, err := nat.NewTransport(nil)
	require.NoError(s.t, err)
	return s.start(tr, uploadKbps)
}

func (s *testSwarm) start(tr *MemTransport, uploadKbps int) *testNode {
	s.t.Helper()
	h := newTestHost()
	ov, err := NewOverlay(OverlayConfig{Station: s.key.Public().(ed25519.PublicKey), Transport: tr, Host: h, Window: h.win,
		Rendezvous: s.root.tr.Addr(), UploadKbps: uploadKbps, SignatureCache: s.sigs,
		Logger: slog.New(slog.NewTextHandler(tWriter{s.t, tr.Addr()}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	require.NoError(s.t, err)
	ctx, cancel := context.WithCancel(s.ctx)
	n := &testNode{ov: ov, host: h, tr: tr, cancel: cancel}
	s.wg.Go(func() { ov.Run(ctx) })
	s.nodes = append(s.nodes, n)
	return n
}

type tWriter struct {
	t    *testing.T
	name string
}

func (w tWriter) Write(b []byte) (int, error) {
	if testing.Verbose() {
		w.t.Log(w.name, string(b))
	}
	return len(b), nil
}

// parentOf returns the node that pushes to n (nil: none or the root).
func (s *testSwarm) parentOf(n *testNode) *testNode {
	st := n.ov.Stats()
	if len(st.Parents) == 0 {
		return nil
	}
	for _, m := range append([]*testNode{s.root}, s.nodes...) {
		if m.ov.ID() == st.Parents[0].ID {
			return m
		}
	}
	return nil
}

func TestJoinPicksAParentWithAFreeSlotNearestFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSwarm(t, MemConfig{Link: LinkConfig{Delay: 5 * time.Millisecond}}, 300) // 2 slots
		near, far := s.add(300), s.add(300)
		time.Sleep(3 * time.Second)
		require.Equal(t, 1, near.ov.Stats().Depth)
		require.Equal(t, 1, far.ov.Stats().Depth)
		require.Equal(t, 0, s.root.ov.freeSlots(), "the root's two slots are taken")

		// A joiner 5 ms from near and 150 ms from far, both at depth 1
		// with free slots, picks the nearer.
		j := s.add(0)
		s.net.SetLink(j.tr.Addr(), far.tr.Addr(), LinkConfig{Delay: 150 * time.Millisecond})
		time.Sleep(3 * time.Second)
		st := j.ov.Stats()
		require.Equal(t, 2, st.Depth)
		require.Equal(t, near.ov.ID(), st.Parents[0].ID, "the nearer of two equal candidates")
		require.Empty(t, j.host.missing(uint64(s.newest()-20), uint64(s.newest()-3)), "it receives the stream")
	})
}

func TestBackupsAreFedByNoneOfTheAncestorsOrOneAtMost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSwarm(t, MemConfig{Link: LinkConfig{Delay: 5 * time.Millisecond}}, 300)
		for range 8 {
			s.add(300)
			time.Sleep(200 * time.Millisecond)
		}
		time.Sleep(8 * time.Second)
		for i, n := range s.nodes {
			st := n.ov.Stats()
			t.Logf("node %d: depth %d, parents %d, peers %d", i, st.Depth, len(st.Parents), st.Peers)
			require.GreaterOrEqual(t, st.Depth, 1, "node %d joined", i)
			ancestors := n.ov.ancestors()
			_, backups := n.ov.links()
			require.NotEmpty(t, backups, "node %d keeps backups", i)
			for _, b := range backups {
				// One fed through a higher ancestor only while none is
				// independent (see backupsToDrop); never through the
				// parent (the last of the ancestors, unless it is the
				// broadcaster).
				v := b.snapshot()
				require.False(t, v.fedThrough(append(ancestors[max(len(ancestors)-1, 0):], n.ov.self)), "node %d: backup %v is fed through its parent", i, b.id)
				require.False(t, v.fedThrough(ancestors) && len(backups) > 1, "node %d: backup %v is fed through an ancestor", i, b.id)
			}
		}
	})
}

// newRelaysSwarm starts a root with two child slots, two relays a and c
// under it and, once they have joined, b, which joins below one of them
// and keeps the other as a backup; it returns once b has settled.
func newRelaysSwarm(t *testing.T) (s *testSwarm, a, c, b *testNode) {
	s = newTestSwarm(t, MemConfig{Link: LinkConfig{Delay: 10 * time.Millisecond}}, 300) // 2 slots
	a, c = s.add(300), s.add(300)
	time.Sleep(2 * time.Second)
	b = s.add(300)
	time.Sleep(6 * time.Second)
	return s, a, c, b
}

func TestDeadParentIsReplacedWithinTheStallTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a, c, b := newRelaysSwarm(t)
		parent := s.parentOf(b)
		require.Contains(t, []*testNode{a, c}, parent)
		other := a
		if parent == a {
			other = c
		}
		killed := s.newest()
		parent.tr.Kill()
		// b pulls from its backup (the other relay, which has upload to
		// spare) a few chunks' time after the parent fell silent, and
		// switches to it, or takes its dead parent's place at the root
		// (see reclaim) while the backup bridges the gap.
		time.Sleep(2 * time.Second)
		st := b.ov.Stats()
		require.Contains(t, []*testNode{other, s.root}, s.parentOf(b), "its backup or the root took over")
		want := 1 // the root's child
		if s.parentOf(b) == other {
			want = 2
		}
		require.Equal(t, want, st.Depth)
		require.Empty(t, b.host.missing(uint64(killed)-5, uint64(s.newest())-3), "no chunk lost: the backup bridged the gap")
		rec := b.ov.Stats()
		require.Equal(t, uint64(1), rec.Recoveries)
		require.Less(t, rec.RecoveryMax, 400*time.Millisecond)
	})
}

// TestAParentIsKeptWhileTheSourceIsLate: a source (or a whole machine)
// that stops for 3 s makes no node leave its parent: none of the backups
// has or says it has anything newer (see judgeStall).
func TestAParentIsKeptWhileTheSourceIsLate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a, c, b := newRelaysSwarm(t)
		parents := map[*testNode]*testNode{}
		for _, n := range []*testNode{a, b, c} {
			parents[n] = s.parentOf(n)
			require.GreaterOrEqual(t, len(n.ov.Stats().Parents), 2, "a parent and a backup at least")
		}
		s.lateUntil.Store(time.Now().Add(3 * time.Second).UnixNano())
		time.Sleep(5 * time.Second)
		for _, n := range []*testNode{a, b, c} {
			require.Same(t, parents[n], s.parentOf(n), "the same parent after the source's silence")
			require.Zero(t, n.ov.Stats().Recoveries, "no parent lost")
		}
		require.Empty(t, b.host.missing(uint64(s.newest())-30, uint64(s.newest())-3), "every chunk since")
	})
}

// TestAnUnfilledRequestIsAnsweredWithABufferMap: a node asked for chunks
// it does not hold answers with its buffer map at once, so that the asker
// (whose parent went silent) knows whether anyone has newer audio; the
// periodic one comes only once a second.
func TestAnUnfilledRequestIsAnsweredWithABufferMap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, _, _, b := newRelaysSwarm(t)
		_, backups := b.ov.links()
		require.NotEmpty(t, backups)
		backup := backups[0]
		for range 3 {
			asked := time.Now()
			future := uint64(s.newest() + 10)
			require.NoError(t, b.ov.send(t.Context(), backup, &Request{Seqs: seqsFrom(int64(future), 4)}))
			time.Sleep(50 * time.Millisecond)
			newest, at := backup.lastHave()
			require.True(t, at.After(asked), "a buffer map came in answer")
			require.Less(t, newest, int64(future), "what it holds, not what we asked for")
			time.Sleep(280 * time.Millisecond)
		}
	})
}

// TestAnOrphanTakesItsDeadParentsPlace: the grandparent still counts the
// dead relay among its children (for silentAfter), but gives its place to
// the relay's orphan, which asks it first: the orphan keeps its depth.
func TestAnOrphanTakesItsDeadParentsPlace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSwarm(t, MemConfig{Link: LinkConfig{Delay: 10 * time.Millisecond}}, 150) // 1 slot
		a := s.add(300)
		time.Sleep(2 * time.Second)
		b := s.add(300)
		time.Sleep(4 * time.Second)
		require.Same(t, a, s.parentOf(b))
		require.Equal(t, 2, b.ov.Stats().Depth)
		a.tr.Kill()
		// b judges a stalled after the stall timeout (1 s) and asks the
		// root, which has heard nothing from a for 1.2 s by then.
		time.Sleep(2 * time.Second)
		st := b.ov.Stats()
		require.Equal(t, 1, st.Depth, "b took a's place at the root")
		require.Less(t, st.RecoveryMax, 2*time.Second)
	})
}

// TestPullsStayWithinTheUploadBudget: a node whose children take nearly its
// whole budget answers few pulls; repair and bridge traffic count against
// it.
func TestPullsStayWithinTheUploadBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSwarm(t, MemConfig{Link: LinkConfig{Delay: 10 * time.Millisecond}}, 150) // 1 slot, nothing to spare
		a := s.add(300)
		time.Sleep(3 * time.Second)
		// a asks the root for 40 chunks it already has, at once and again.
		for range 2 {
			p, _ := a.ov.links()
			require.NoError(t, a.ov.send(t.Context(), p, &Request{Seqs: seqsFrom(s.newest()-40, 40)}))
			time.Sleep(time.Second)
		}
		// What the child's stream leaves: 2 s saved up, and 2 s more.
		st := s.root.ov.Stats()
		spare := pullRate(150, 1, st.BitrateKbps)
		require.LessOrEqual(t, float64(st.BytesSent), 4*spare, "within what the budget leaves beside the child")
		require.Positive(t, st.PullsRefused)
	})
}

func TestALeafGivesItsSlotToARelay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSwarm(t, MemConfig{Link: LinkConfig{Delay: 5 * time.Millisecond}}, 150) // 1 slot
		leaf := s.add(0)
		time.Sleep(2 * time.Second)
		require.Equal(t, 1, leaf.ov.Stats().Depth)
		relay := s.add(1000)
		time.Sleep(8 * time.Second)
		require.Equal(t, 1, relay.ov.Stats().Depth, "the relay took the leaf's place")
		require.Equal(t, 2, leaf.ov.Stats().Depth, "the leaf moved below it")
		require.Same(t, relay, s.parentOf(leaf))
		require.Empty(t, leaf.host.missing(5, uint64(s.newest())-3), "without a gap")
	})
}

func TestOrphanBridgesFromItsBackups(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSwarm(t, MemConfig{Link: LinkConfig{Delay: 10 * time.Millisecond}}, 300) // 2 slots
		// One slot each, and upload to spare for pulls (a bridge counts
		// against the budget).
		s.add(280)
		s.add(280)
		time.Sleep(3 * time.Second)
		s.add(0) // takes one of their slots
		time.Sleep(2 * time.Second)
		a := s.add(0) // takes the other: no free slot is left anywhere
		time.Sleep(6 * time.Second)
		require.Equal(t, 2, a.ov.Stats().Depth)
		_, backups := a.ov.links()
		require.NotEmpty(t, backups, "a backup to pull from")
		// The parent's link to a becomes too slow for the stream: a leaves
		// it, finds no slot, and keeps its stream from the backups meanwhile.
		from := s.newest()
		s.net.SetLink(s.parentOf(a).tr.Addr(), a.tr.Addr(), LinkConfig{Delay: 10 * time.Millisecond, Bandwidth: 100})
		time.Sleep(8 * time.Second)
		require.Equal(t, -1, a.ov.Stats().Depth, "no parent")
		// (One backup has upload to spare for about one stream: its answers
		// lag a little behind the live edge.)
		require.Empty(t, a.host.missing(uint64(from)+1, uint64(s.newest())-10), "every chunk came, from a backup")
	})
}

func TestPlanClimb(t *testing.T) {
	free := func(d, slots int) PeerInfo {
		return PeerInfo{ID: testID(byte(d*10 + slots)), Depth: d, FreeSlots: slots}
	}
	for _, tc := range []struct {
		name                   string
		depth                  int
		relay                  bool
		cands, punch, displace []PeerInfo
		want, wantPunch        []PeerInfo
		needSlot               bool
	}{
		{"shallow nodes never move", 1, true, []PeerInfo{free(0, 1)}, nil, nil, nil, nil, true},
		{"a free slot three levels up", 5, true, []PeerInfo{free(1, 1), free(2, 1), free(3, 1), free(4, 1), free(2, 0)}, nil, nil, []PeerInfo{free(1, 1), free(2, 1)}, nil, true},
		{"a relay: a free slot two levels up when there is no leaf's place", 5, true, []PeerInfo{free(3, 1), free(4, 1), free(2, 0)}, nil, nil, []PeerInfo{free(3, 1)}, nil, true},
		{"a relay: a leaf's place before a free slot two levels up", 5, true, []PeerInfo{free(3, 1)}, nil, []PeerInfo{free(2, 0)}, []PeerInfo{free(2, 0)}, nil, false},
		{"a leaf: a free slot three levels up, not two", 5, false, []PeerInfo{free(3, 1), free(4, 1)}, nil, nil, nil, nil, true},
		{"a leaf does not displace", 5, false, nil, nil, []PeerInfo{free(1, 0)}, nil, nil, true},
		{"a relay takes a leaf's place two levels up", 5, true, []PeerInfo{free(4, 1)}, nil, []PeerInfo{free(2, 0), free(3, 0), free(4, 0)}, []PeerInfo{free(2, 0), free(3, 0)}, nil, false},
		{"a free slot behind a NAT three levels up", 6, true, []PeerInfo{free(5, 1)}, []PeerInfo{free(2, 1), free(3, 1), free(4, 1), free(5, 1), free(1, 0)}, []PeerInfo{free(1, 0)},
			nil, []PeerInfo{free(2, 1), free(3, 1)}, true},
		{"a relay: a free slot behind a NAT two levels up when there is no leaf's place", 6, true, []PeerInfo{free(5, 1)}, []PeerInfo{free(4, 1), free(5, 1)}, nil,
			nil, []PeerInfo{free(4, 1)}, true},
		{"a free slot behind a NAT before a leaf's place", 6, true, nil, []PeerInfo{free(3, 1)}, []PeerInfo{free(1, 0)}, nil, []PeerInfo{free(3, 1)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := planClimb(tc.depth, tc.relay, tc.cands, tc.punch, tc.displace)
			require.Equal(t, tc.want, p.targets)
			require.Equal(t, tc.wantPunch, p.punch)
			if len(tc.want)+len(tc.wantPunch) > 0 {
				require.Equal(t, tc.needSlot, p.needSlot)
			}
		})
	}
}

func TestJudgeStall(t *testing.T) {
	const to = time.Second
	live := backupView{silent: 100 * time.Millisecond}
	dead := backupView{silent: 2 * time.Second}
	ahead := backupView{newSince: true}
	nothing := backupView{silent: 100 * time.Millisecond, nothingNewer: true}
	for _, tc := range []struct {
		name string
		in   stallInput
		want stallVerdict
	}{
		{"a parent silent briefly is fine", stallInput{silent: 400 * time.Millisecond, timeout: to, backups: []backupView{live}}, stallVerdict{}},
		{"half the timeout: ask the backups", stallInput{silent: 600 * time.Millisecond, timeout: to, backups: []backupView{live}}, stallVerdict{ask: true}},
		{"a backup ahead before the timeout: keep asking", stallInput{silent: 600 * time.Millisecond, timeout: to, backups: []backupView{ahead}}, stallVerdict{ask: true}},
		{"a closed link is stalled at once", stallInput{silent: 10 * time.Millisecond, gone: true, timeout: to}, stallVerdict{stalled: true}},
		{"without backups: the timeout", stallInput{silent: 1100 * time.Millisecond, timeout: to}, stallVerdict{stalled: true}},
		{"a backup had newer audio", stallInput{silent: 1100 * time.Millisecond, timeout: to, backups: []backupView{live, ahead}}, stallVerdict{ask: true, stalled: true}},
		{"the source is late: everyone silent but the backups answer", stallInput{silent: 1100 * time.Millisecond, timeout: to, backups: []backupView{live}}, stallVerdict{ask: true}},
		{"every backup silent too", stallInput{silent: 1100 * time.Millisecond, timeout: to, backups: []backupView{dead}}, stallVerdict{ask: true, stalled: true}},
		{"half as long again", stallInput{silent: 1600 * time.Millisecond, timeout: to, backups: []backupView{live}}, stallVerdict{ask: true, stalled: true}},
		{"the source is late: every live backup said it has nothing newer", stallInput{silent: 3 * time.Second, timeout: to, backups: []backupView{nothing, dead}}, stallVerdict{ask: true}},
		{"the source is late, but not for four times the timeout", stallInput{silent: 4100 * time.Millisecond, timeout: to, backups: []backupView{nothing}}, stallVerdict{ask: true, stalled: true}},
		{"one live backup did not say: half as long again", stallInput{silent: 1600 * time.Millisecond, timeout: to, backups: []backupView{nothing, live}}, stallVerdict{ask: true, stalled: true}},
		{"a backup said nothing newer, another sent newer audio", stallInput{silent: 1100 * time.Millisecond, timeout: to, backups: []backupView{nothing, ahead}}, stallVerdict{ask: true, stalled: true}},
		{"a starved node waits longer", stallInput{silent: 1600 * time.Millisecond, timeout: to, backups: []backupView{ahead}, starved: 400 * time.Millisecond}, stallVerdict{ask: true}},
		{"a starved node: past the timeout and twice the starvation", stallInput{silent: 1900 * time.Millisecond, timeout: to, backups: []backupView{ahead}, starved: 400 * time.Millisecond}, stallVerdict{ask: true, stalled: true}},
		{"a starved node still drops a closed link at once", stallInput{gone: true, timeout: to, starved: time.Second}, stallVerdict{stalled: true}},
		{"at most three times the timeout", stallInput{silent: 3100 * time.Millisecond, timeout: to, starved: 10 * time.Second}, stallVerdict{stalled: true}},
	} {
		t.Run(tc.name, func(t *testing.T) { require.Equal(t, tc.want, judgeStall(tc.in)) })
	}
}

func TestCanServeAndOrderCandidates(t *testing.T) {
	self, root, a, b := testID(1), testID(2), testID(3), testID(4)
	require.True(t, canServe(peerView{id: a, depth: 1, free: 1, path: []NodeID{root}}, self, true, nil))
	require.False(t, canServe(peerView{id: a, depth: 1, free: 0, path: []NodeID{root}}, self, true, nil), "no free slot")
	require.True(t, canServe(peerView{id: a, depth: 1, free: 0, path: []NodeID{root}}, self, false, nil), "a backup needs no slot")
	require.False(t, canServe(peerView{id: a, depth: -1, free: 1}, self, true, nil), "not joined")
	require.False(t, canServe(peerView{id: a, depth: 3, free: 1, path: []NodeID{root, self, b}}, self, true, nil), "our descendant")
	require.False(t, canServe(peerView{id: a, depth: 2, free: 1, path: []NodeID{root, b}}, self, false, []NodeID{b}), "fed through an ancestor")

	rnd := rand.New(rand.NewPCG(1, 2))
	cands := []PeerInfo{
		{ID: a, Depth: 3, FreeSlots: 1}, {ID: b, Depth: 1, FreeSlots: 0}, {ID: root, Depth: 0, FreeSlots: 2},
		{ID: self, Depth: 0, FreeSlots: 5}, {ID: a, Depth: 3, FreeSlots: 1}, {ID: testID(5), Depth: 2, FreeSlots: 1},
	}
	failed := func(id NodeID) bool { return id == testID(5) }
	got := orderCandidates(cands, self, nil, true, failed, rnd)
	require.Equal(t, []NodeID{root, a}, ids(got), "free slots only, shallow first, each once, not self, not failed")
	got = orderCandidates(cands, self, []NodeID{root}, false, failed, rnd)
	require.Equal(t, []NodeID{a, b}, ids(got), "with a slot first, then without; excluded left out")
}

func ids(ps []PeerInfo) []NodeID {
	var out []NodeID
	for _, p := range ps {
		out = append(out, p.ID)
	}
	return out
}

func TestADuplicateCountsOnlyWithTheBytesWeHold(t *testing.T) {
	s := newTestSwarm(t, MemConfig{}, 1000)
	n := s.add(300)
	var held *mux.Chunk
	require.Eventually(t, func() bool {
		seq, ok := n.host.win.Newest()
		if ok {
			held = n.host.win.Get(seq)
		}
		return held != nil
	}, 10*time.Second, 10*time.Millisecond)

	// A copy of the chunk we hold, as another peer sends it: a duplicate.
	c, dup, err := n.ov.checkChunk(bytes.Clone(held.Bytes()))
	require.NoError(t, err)
	require.True(t, dup)
	require.Equal(t, held.Seq, c.Seq)

	// The same chunk with one byte of its audio changed: it would fail
	// its signature; as a copy of a chunk we hold it is not checked
	// again, and so it must not count as a duplicate either (a silent
	// parent sending such copies would look alive).
	forged := bytes.Clone(held.Bytes())
	forged[len(forged)-mux.SignatureSize-1] ^= 0x55
	c, dup, err = n.ov.checkChunk(forged)
	require.NoError(t, err)
	require.False(t, dup)
	require.Nil(t, c)
}
