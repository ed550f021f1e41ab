package p2pradio

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/control/rtc"
	"github.com/p2pradio/p2pradio/internal/signal"
	"github.com/p2pradio/p2pradio/mux"
	"github.com/p2pradio/p2pradio/playout"
)

// goPage is a station page written in Go: it signals at a node's /peer
// with internal/signal, links over WebRTC with control/rtc and speaks the
// wire protocol by hand, as peer.js does.
type goPage struct {
	key ed25519.PrivateKey
	sig *signal.Client
	tr  *rtc.Transport
	id  string
}

func newGoPage(t *testing.T, url string, upload int) *goPage {
	t.Helper()
	_, key, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	ctx := testCtx(t)
	sig, err := signal.Dial(ctx, "ws"+strings.TrimPrefix(url, "http")+"/peer", key.Public().(ed25519.PublicKey), upload)
	require.NoError(t, err)
	t.Cleanup(func() { sig.Close() })
	tr, err := rtc.New(rtc.Config{
		Key:      key,
		IPFilter: rtc.LoopbackOnly,
		Signal:   sig.Signal,
	})
	require.NoError(t, err)
	t.Cleanup(func() { tr.Close() })
	return &goPage{key: key, sig: sig, tr: tr, id: sig.Welcome().You}
}

// answerOffers answers the offers other pages send p, until the test ends.
func (p *goPage) answerOffers(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			select {
			case o := <-p.sig.Offers():
				answer, err := p.tr.Answer(ctx, o.SDP)
				if err != nil {
					t.Errorf("Answer: %v", err)
					return
				}
				if err := p.sig.Answer(ctx, o, answer); err != nil {
					t.Errorf("sending the answer: %v", err)
					return
				}
			case <-ctx.Done():
				return
			}
		}
	})
}

// someStation is the address of a station that is not there.
func someStation(t *testing.T) string {
	pub, _, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	return Address{Station: pub, Rendezvous: "127.0.0.1:9"}.String()
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func send(t *testing.T, ctx context.Context, c control.Conn, m control.Message) {
	t.Helper()
	require.NoError(t, c.Send(ctx, control.AppendMessage(nil, m)))
}

// receiveUntil reads c's control messages until one has type T.
func receiveUntil[T control.Message](t *testing.T, ctx context.Context, c control.Conn) T {
	t.Helper()
	for {
		b, err := c.Receive(ctx)
		require.NoError(t, err)
		m, err := control.ParseMessage(b)
		require.NoError(t, err)
		if m, ok := m.(T); ok {
			return m
		}
	}
}

// subscribe joins a page to the node at the other end of c as its child,
// as peer.js does: Hello without ListenAddr, the node's Hello, Subscribe,
// Welcome; then a Status every second (a silent peer is dropped) until
// the test ends.
func subscribe(t *testing.T, c control.Conn, station ed25519.PublicKey) {
	t.Helper()
	ctx := testCtx(t)
	send(t, ctx, c, &control.Hello{Station: control.IDOf(station), Depth: -1})
	h := receiveUntil[*control.Hello](t, ctx, c)
	require.Equal(t, control.IDOf(station), h.Station)
	send(t, ctx, c, &control.Subscribe{})
	receiveUntil[*control.Welcome](t, ctx, c)
	done := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() {
		close(done)
		wg.Wait()
	})
	wg.Go(func() {
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				c.Send(context.Background(), control.AppendMessage(nil, &control.Status{Depth: h.Depth + 1}))
			case <-done:
				return
			case <-c.Done():
				return
			}
		}
	})
	go func() { // drain the control messages
		for {
			if _, err := c.Receive(context.Background()); err != nil {
				return
			}
		}
	}()
}

// receiveChunks reads n chunks from c, each verified with the station's key.
func receiveChunks(t *testing.T, c control.Conn, station ed25519.PublicKey, n int) []uint64 {
	t.Helper()
	ctx := testCtx(t)
	var seqs []uint64
	for range n {
		b, err := c.ReceiveData(ctx)
		require.NoError(t, err)
		ch, err := mux.ParseChunk(b)
		require.NoError(t, err)
		require.NoError(t, ch.Verify(station))
		seqs = append(seqs, ch.Seq)
	}
	return seqs
}

func TestAGoPageJoinsANodeOverWebRTCAndReceivesVerifiedChunks(t *testing.T) {
	st := startWebStation(t, 0, "Browsers", 0)
	srv := serveNode(t, st.b, HTTPConfig{})
	p := newGoPage(t, srv.URL, 0)
	w := p.sig.Welcome()
	require.Equal(t, hex.EncodeToString(st.b.Key()), w.Node)
	require.Equal(t, hex.EncodeToString(st.b.Address().Station), w.Station)
	require.Equal(t, control.IDOf(p.key.Public().(ed25519.PublicKey)).String(), w.You)
	require.NotNil(t, w.ICE)

	ctx := testCtx(t)
	var cands []signal.Candidate
	require.Eventually(t, func() bool {
		var err error
		cands, err = p.sig.Candidates(ctx)
		require.NoError(t, err)
		return len(cands) > 0
	}, 10*time.Second, 50*time.Millisecond, "the broadcaster never offered itself")
	require.Equal(t, signal.Candidate{ID: "node", Key: w.Node, Depth: 0, Free: cands[0].Free}, cands[0])
	require.Positive(t, cands[0].Free)

	c, err := p.tr.Dial(ctx, signal.NodeID, st.b.Key())
	require.NoError(t, err)
	require.Contains(t, c.RemoteAddr(), "127.0.0.1:")
	subscribe(t, c, st.b.Address().Station)
	seqs := receiveChunks(t, c, st.b.Address().Station, 20) // a burst, then live
	for i := 1; i < len(seqs); i++ {
		require.Greater(t, seqs[i], seqs[0])
	}

	// The node counts the page as a child, and shows its report.
	require.NoError(t, p.sig.SendStats(ctx, signal.Stats{Playing: true, Continuity: 0.98, Depth: 1, Parent: new("node"), Children: []string{}, Received: 20, Free: 2, UploadKbps: 300}))
	var s Status
	require.Eventually(t, func() bool {
		s = getStatus(t, srv.URL)
		return len(s.Browsers) == 1 && s.Browsers[0].Reported && len(s.Children) == 1
	}, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, p.id, s.Children[0].ID)
	require.True(t, s.Children[0].Browser)
	b := s.Browsers[0]
	require.Equal(t, p.id, b.ID)
	require.True(t, b.Child)
	require.True(t, b.Playing)
	require.InDelta(t, 0.98, b.Continuity, 1e-9)
	require.Equal(t, 1, b.Depth)
	require.Equal(t, s.ID, b.Parent)
	var inSwarm bool
	for _, n := range s.Swarm {
		if n.ID == p.id {
			inSwarm = n.Browser && n.Parent == s.ID && n.Depth == 1
		}
	}
	require.True(t, inSwarm, "the page is not in the swarm's tree: %+v", s.Swarm)
	stats := st.b.Stats()
	require.Equal(t, 1, stats.BrowserPages)
	require.Equal(t, 1, stats.BrowsersPlaying)
	require.InDelta(t, 0.98, stats.BrowserContinuity, 1e-9)
}

func TestPagesAreNeverOfferedToGoNodes(t *testing.T) {
	st := startWebStation(t, 0, "Browsers", 0)
	srv := serveNode(t, st.b, HTTPConfig{})
	p := newGoPage(t, srv.URL, 0)
	ctx := testCtx(t)
	require.Eventually(t, func() bool {
		cands, err := p.sig.Candidates(ctx)
		require.NoError(t, err)
		return len(cands) > 0
	}, 10*time.Second, 50*time.Millisecond)
	c, err := p.tr.Dial(ctx, signal.NodeID, st.b.Key())
	require.NoError(t, err)
	subscribe(t, c, st.b.Address().Station)
	receiveChunks(t, c, st.b.Address().Station, 1)
	require.Eventually(t, func() bool { // its Status said depth 1: it has joined
		s := getStatus(t, srv.URL)
		return len(s.Children) == 1 && s.Children[0].Depth == 1
	}, 5*time.Second, 20*time.Millisecond)

	// A Go node that says hello to the broadcaster hears of its joined
	// neighbours: the page is not among them.
	tr := newQUICTransport(t)
	gc, err := tr.Dial(ctx, st.b.LocalAddr(), st.b.Key())
	require.NoError(t, err)
	send(t, ctx, gc, &control.Hello{Station: control.IDOf(st.b.Key()), Depth: -1, ListenAddr: tr.Addr()})
	receiveUntil[*control.Hello](t, ctx, gc)
	send(t, ctx, gc, &control.Subscribe{})
	receiveUntil[*control.Welcome](t, ctx, gc)
	pl := receiveUntil[*control.PeerList](t, ctx, gc) // after the Welcome
	for _, pi := range pl.Peers {
		require.NotEqual(t, p.id, pi.ID.String(), "a page offered to a Go node")
	}
}

func TestPagesSignalToEachOtherThroughTheNode(t *testing.T) {
	n, err := New(Config{Station: someStation(t), Sink: &playout.Discard{}, Browsers: BrowserConfig{IPFilter: rtc.LoopbackOnly}})
	require.NoError(t, err)
	t.Cleanup(func() { n.Close() })
	srv := serveNode(t, n, HTTPConfig{})
	a, b := newGoPage(t, srv.URL, 0), newGoPage(t, srv.URL, 0)
	b.answerOffers(t)
	ctx := testCtx(t)

	// b reports free slots at depth 2: a hears of it (the node, not
	// joined, offers none of its own).
	require.NoError(t, b.sig.SendStats(ctx, signal.Stats{Depth: 2, Free: 3, Parent: new("abc")}))
	require.Eventually(t, func() bool {
		cands, err := a.sig.Candidates(ctx)
		require.NoError(t, err)
		return len(cands) == 1 && cands[0] == signal.Candidate{ID: b.id, Key: hex.EncodeToString(b.key.Public().(ed25519.PublicKey)), Depth: 2, Free: 3}
	}, 5*time.Second, 20*time.Millisecond)

	// a dials b through the node's forwarding.
	ca, err := a.tr.Dial(ctx, b.id, b.key.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	cb, err := b.tr.Accept(ctx)
	require.NoError(t, err)
	require.NoError(t, ca.Send(ctx, []byte("hi")))
	m, err := cb.Receive(ctx)
	require.NoError(t, err)
	require.Equal(t, "hi", string(m))

	// An offer to a page that is not there is answered with an error.
	_, err = a.sig.Signal(ctx, "000000000000", "v=0")
	require.ErrorIs(t, err, signal.ErrRemote)
	require.ErrorContains(t, err, "no page")
	// A bad offer to the node too.
	_, err = a.sig.Signal(ctx, signal.NodeID, "v=0")
	require.ErrorIs(t, err, signal.ErrRemote)
}

func TestTheHubDropsPagesThatBreakItsRules(t *testing.T) {
	n, err := New(Config{
		Station:  someStation(t),
		Sink:     &playout.Discard{},
		Browsers: BrowserConfig{MaxPages: 2, ICEServers: []string{"stun:127.0.0.1:3478"}},
	})
	require.NoError(t, err)
	t.Cleanup(func() { n.Close() })
	srv := serveNode(t, n, HTTPConfig{})
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/peer"
	ctx := testCtx(t)

	closedWith := func(t *testing.T, ws *websocket.Conn) websocket.CloseError {
		t.Helper()
		for {
			_, _, err := ws.Read(ctx)
			if err != nil {
				var ce websocket.CloseError
				require.True(t, errors.As(err, &ce), "%v", err)
				return ce
			}
		}
	}
	for _, tc := range []struct {
		name, first, second, reason string
	}{
		// Each page its own key: the hub may not yet have dropped the last
		// one when the next says hello.
		{"NotJSON", "hello", "", "bad message"},
		{"NoHelloFirst", `{"type":"candidates"}`, "", "hello"},
		{"HelloWithoutKey", `{"type":"hello","upload_kbps":0}`, "", "key"},
		{"ShortKey", `{"type":"hello","key":"abcd","upload_kbps":0}`, "", "32 bytes"},
		{"UnknownType", `{"type":"hello","key":"` + strings.Repeat("ab", 32) + `","upload_kbps":0}`, `{"type":"dance"}`, "unknown type"},
		{"OfferWithoutSDP", `{"type":"hello","key":"` + strings.Repeat("ac", 32) + `","upload_kbps":0}`, `{"type":"offer","to":"node","link":1}`, "sdp"},
		{"Oversized", `{"type":"hello","key":"` + strings.Repeat("ad", 32) + `","upload_kbps":0}`, `{"type":"stats","x":"` + strings.Repeat("x", signal.MaxMessage) + `"}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws, _, err := websocket.Dial(ctx, url, nil)
			require.NoError(t, err)
			defer ws.CloseNow()
			require.NoError(t, ws.Write(ctx, websocket.MessageText, []byte(tc.first)))
			if tc.second != "" {
				_, b, err := ws.Read(ctx)
				require.NoError(t, err)
				require.Contains(t, string(b), `"type":"welcome"`)
				require.Contains(t, string(b), `"ice":[{"urls":["stun:127.0.0.1:3478"]}]`)
				require.NoError(t, ws.Write(ctx, websocket.MessageText, []byte(tc.second)))
			}
			ce := closedWith(t, ws)
			if tc.reason != "" {
				require.Equal(t, websocket.StatusPolicyViolation, ce.Code)
				require.Contains(t, ce.Reason, tc.reason)
			} else {
				require.Equal(t, websocket.StatusMessageTooBig, ce.Code)
			}
		})
	}

	t.Run("SameKeyTwice", func(t *testing.T) {
		p := newGoPage(t, srv.URL, 0)
		_, err := signal.Dial(ctx, url, p.key.Public().(ed25519.PublicKey), 0)
		var ce websocket.CloseError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, websocket.StatusTryAgainLater, ce.Code)
		require.Contains(t, ce.Reason, "key")
		_, err = p.sig.Candidates(ctx) // the first is unharmed
		require.NoError(t, err)
	})

	t.Run("MaxPages", func(t *testing.T) {
		require.Eventually(t, func() bool { return n.Stats().BrowserPages == 0 }, 5*time.Second, 10*time.Millisecond)
		newGoPage(t, srv.URL, 0)
		newGoPage(t, srv.URL, 0)
		_, key, _ := ed25519.GenerateKey(nil)
		_, err := signal.Dial(ctx, url, key.Public().(ed25519.PublicKey), 0)
		var ce websocket.CloseError
		require.ErrorAs(t, err, &ce)
		require.Equal(t, websocket.StatusTryAgainLater, ce.Code)
		require.Contains(t, ce.Reason, "full")
	})
}

func TestABrowserChildTakesASlotLikeAnyChild(t *testing.T) {
	st := startWebStation(t, 0, "Browsers", 200) // one slot at 128 kbit/s
	srv := serveNode(t, st.b, HTTPConfig{})
	station := st.b.Address().Station
	a, b := newGoPage(t, srv.URL, 0), newGoPage(t, srv.URL, 0)
	ctx := testCtx(t)
	free := func(p *goPage) int {
		cands, err := p.sig.Candidates(ctx)
		require.NoError(t, err)
		if len(cands) == 0 || cands[0].ID != signal.NodeID {
			return -1
		}
		return cands[0].Free
	}
	require.Eventually(t, func() bool { return free(a) == 1 }, 10*time.Second, 50*time.Millisecond)
	ca, err := a.tr.Dial(ctx, signal.NodeID, st.b.Key())
	require.NoError(t, err)
	subscribe(t, ca, station)
	receiveChunks(t, ca, station, 1)
	require.Equal(t, 0, free(b))

	cb, err := b.tr.Dial(ctx, signal.NodeID, st.b.Key())
	require.NoError(t, err)
	send(t, ctx, cb, &control.Hello{Station: control.IDOf(station), Depth: -1})
	receiveUntil[*control.Hello](t, ctx, cb)
	send(t, ctx, cb, &control.Subscribe{})
	r := receiveUntil[*control.Refuse](t, ctx, cb)
	require.Equal(t, "no free slot", r.Reason)
}

func TestNoPeerEndpointWhenBrowsersAreDisabled(t *testing.T) {
	n, err := New(Config{Station: someStation(t), Sink: &playout.Discard{}, Browsers: BrowserConfig{Disabled: true}})
	require.NoError(t, err)
	t.Cleanup(func() { n.Close() })
	srv := serveNode(t, n, HTTPConfig{})
	resp, err := http.Get(srv.URL + "/peer")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 404, resp.StatusCode)
	require.Empty(t, getStatus(t, srv.URL).Browsers)
}

func TestAPageNeverDisplacesAGoLeaf(t *testing.T) {
	st := startWebStation(t, 0, "Browsers", 200) // one slot at 128 kbit/s
	srv := serveNode(t, st.b, HTTPConfig{})
	station := st.b.Address().Station
	ctx := testCtx(t)
	require.Eventually(t, func() bool { // the bitrate is known: one slot
		return st.b.Stats().Slots == 1
	}, 10*time.Second, 20*time.Millisecond)

	// A Go leaf (no upload) takes the slot.
	tr := newQUICTransport(t)
	gc, err := tr.Dial(ctx, st.b.LocalAddr(), st.b.Key())
	require.NoError(t, err)
	send(t, ctx, gc, &control.Hello{Station: control.IDOf(station), Depth: -1, ListenAddr: tr.Addr()})
	receiveUntil[*control.Hello](t, ctx, gc)
	send(t, ctx, gc, &control.Subscribe{})
	receiveUntil[*control.Welcome](t, ctx, gc)

	// A page that could relay to many is refused rather than sending the
	// leaf to a parent it cannot dial.
	p := newGoPage(t, srv.URL, 0)
	c, err := p.tr.Dial(ctx, signal.NodeID, st.b.Key())
	require.NoError(t, err)
	send(t, ctx, c, &control.Hello{Station: control.IDOf(station), Depth: -1, UploadKbps: 5000})
	receiveUntil[*control.Hello](t, ctx, c)
	send(t, ctx, c, &control.Subscribe{})
	r := receiveUntil[*control.Refuse](t, ctx, c)
	require.Equal(t, "no free slot", r.Reason)
}

func TestAPageCannotRegisterAtTheRendezvous(t *testing.T) {
	st := startWebStation(t, 0, "Browsers", 0)
	srv := serveNode(t, st.b, HTTPConfig{})
	p := newGoPage(t, srv.URL, 0)
	ctx := testCtx(t)
	c, err := p.tr.Dial(ctx, signal.NodeID, st.b.Key())
	require.NoError(t, err)
	send(t, ctx, c, &control.Register{ListenAddr: "127.0.0.1:1", UploadKbps: 5000, Depth: 1, FreeSlots: 5, Want: true})
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the node keeps a page's rendezvous session")
	}
	var ce *control.CloseError
	require.ErrorAs(t, c.Err(), &ce)
	require.Equal(t, "no rendezvous here", ce.Reason)
	for _, n := range getStatus(t, srv.URL).Swarm {
		require.NotEqual(t, p.id, n.ID)
	}
}
