package p2pradio

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/input"
	"github.com/p2pradio/p2pradio/mux"
	"github.com/p2pradio/p2pradio/output"
	"github.com/p2pradio/p2pradio/playout"
)

// loopedReference decodes a file repeated times times with mpg123: what a
// looped input.File of it decodes to (cbr128.mp3 has no tags, so the
// repeats join frame to frame).
func loopedReference(t *testing.T, name string, times int) []int16 {
	t.Helper()
	if _, err := exec.LookPath("mpg123"); err != nil {
		t.Skip("mpg123 not installed (.ci/setup installs it)")
	}
	b, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "looped.mp3")
	require.NoError(t, os.WriteFile(path, bytes.Repeat(b, times), 0o644))
	out, err := exec.Command("mpg123", "--no-gapless", "--stereo", "-q", "-s", path).Output()
	require.NoError(t, err)
	return samples(out)
}

// attack is what a hostile peer does to a node that subscribed to it.
type attack int

const (
	attackNone       attack = iota
	attackForged            // a chunk with other audio, signed by another key
	attackFlipped           // a genuine chunk with one audio byte flipped
	attackReplay            // genuine chunks too old for the window, and duplicates
	attackBadMessage        // a control message of an unknown type
	attackGarbage           // a 100 KB data message that is no chunk
)

func (a attack) String() string {
	return [...]string{"none", "forged", "flipped", "replay", "bad message", "garbage"}[a]
}

// forge makes a chunk that claims c's place in the stream but carries
// other frames, signed by a key that is not the station's.
func forge(c *mux.Chunk, frames []mux.Frame, key ed25519.PrivateKey) ([]byte, error) {
	f := &mux.Chunk{Seq: c.Seq, Timestamp: c.Timestamp, Produced: c.Produced, Flags: c.Flags, Title: c.Title, Frames: frames}
	if err := f.Sign(key); err != nil {
		return nil, err
	}
	return f.Bytes(), nil
}

// flip returns a copy of a chunk's encoding with one byte of its last
// frame's audio data changed: it still parses, only the signature fails.
func flip(b []byte) ([]byte, error) {
	x := bytes.Clone(b)
	x[len(x)-mux.SignatureSize-100] ^= 0x55
	if _, err := mux.ParseChunk(x); err != nil {
		return nil, fmt.Errorf("a flipped audio byte must keep the chunk well formed: %w", err)
	}
	return x, nil
}

// hostilePeer speaks the overlay's wire protocol by hand. It takes genuine
// chunks as the child of an honest node, poses to the rendezvous as a
// shallow relay with free slots, and serves each node that subscribes to it
// honestly for a while, then with the attack chosen for that node, every
// time that node subscribes.
type hostilePeer struct {
	t       *testing.T
	tr      control.Transport
	station ed25519.PublicKey
	forger  ed25519.PrivateKey // a key that is not the station's
	path    []control.NodeID   // the ancestors it claims
	honest  time.Duration      // relayed honestly before an attack

	mu       sync.Mutex
	attacks  map[control.NodeID]attack // what to do to each node
	chunks   map[uint64][]byte         // genuine, by sequence number
	newest   int64
	subs     map[chan uint64]struct{} // children waiting for new chunks
	attacked map[control.NodeID]int   // attacks made on each node
	closes   map[control.NodeID][]error
	wg       sync.WaitGroup
}

// chunksIn is about how many chunks of the default length (a little
// longer: whole frames) the stream has in d.
func chunksIn(d time.Duration) uint64 { return uint64(d / DefaultChunkDuration) }

// hostileWindow is the Window of the nodes that TestHostilePeerInMemory
// attacks, in chunks: about 5 s, whatever the chunk length.
var hostileWindow = chunksIn(5 * time.Second)

func newHostilePeer(t *testing.T, tr control.Transport, station ed25519.PublicKey, path []control.NodeID) *hostilePeer {
	_, forger, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	return &hostilePeer{
		t: t, tr: tr, station: station, forger: forger, path: path, honest: 1500 * time.Millisecond,
		attacks: map[control.NodeID]attack{}, chunks: map[uint64][]byte{}, newest: -1,
		subs: map[chan uint64]struct{}{}, attacked: map[control.NodeID]int{}, closes: map[control.NodeID][]error{},
	}
}

func (h *hostilePeer) hello() *control.Hello {
	h.mu.Lock()
	defer h.mu.Unlock()
	return &control.Hello{
		Station: control.IDOf(h.station), Depth: len(h.path), FreeSlots: 8, UploadKbps: 2000,
		ListenAddr: h.tr.Addr(), Path: h.path, Newest: uint64(h.newest + 1),
	}
}

func (h *hostilePeer) status() *control.Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	return &control.Status{Depth: len(h.path), FreeSlots: 8, Path: h.path, Newest: uint64(h.newest + 1)}
}

func (h *hostilePeer) send(ctx context.Context, c control.Conn, m control.Message) error {
	return c.Send(ctx, control.AppendMessage(nil, m))
}

// drain reads and drops a link's control messages until it closes.
func drain(ctx context.Context, c control.Conn) {
	for {
		if _, err := c.Receive(ctx); err != nil {
			return
		}
	}
}

// upstream subscribes to the honest node at addr and keeps the chunks it
// pushes (each checked, so that only genuine ones are kept).
func (h *hostilePeer) upstream(ctx context.Context, addr string, key ed25519.PublicKey) {
	c, err := h.tr.Dial(ctx, addr, key)
	require.NoError(h.t, err)
	require.NoError(h.t, h.send(ctx, c, h.hello()))
	require.NoError(h.t, h.send(ctx, c, &control.Subscribe{}))
	h.wg.Go(func() { drain(ctx, c) })
	h.wg.Go(func() {
		// A Status each second, as every node sends: a peer silent for
		// 3 s is taken for gone.
		for ctx.Err() == nil && c.Err() == nil {
			h.send(ctx, c, h.status())
			select {
			case <-ctx.Done():
			case <-c.Done():
			case <-time.After(time.Second):
			}
		}
	})
	h.wg.Go(func() {
		defer c.Close(control.CodeGoodbye, "")
		for {
			b, err := c.ReceiveData(ctx)
			if err != nil {
				return
			}
			ch, err := mux.ParseChunk(b)
			if err != nil || ch.Verify(h.station) != nil {
				h.t.Errorf("hostile peer: its upstream sent a bad chunk")
				return
			}
			h.mu.Lock()
			h.chunks[ch.Seq] = b
			h.newest = max(h.newest, int64(ch.Seq))
			for s := range h.subs {
				select {
				case s <- ch.Seq:
				default:
				}
			}
			h.mu.Unlock()
		}
	})
}

// register poses to the rendezvous as a shallow relay with free slots.
func (h *hostilePeer) register(ctx context.Context, rendezvous string) {
	c, err := h.tr.Dial(ctx, rendezvous, nil)
	require.NoError(h.t, err)
	h.wg.Go(func() { drain(ctx, c) })
	h.wg.Go(func() {
		defer c.Close(control.CodeGoodbye, "")
		for {
			reg := &control.Register{ListenAddr: h.tr.Addr(), UploadKbps: 2000, Depth: len(h.path), FreeSlots: 8}
			if h.send(ctx, c, reg) != nil {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	})
}

// serve accepts the nodes that dial it (to probe it, to subscribe).
func (h *hostilePeer) serve(ctx context.Context) {
	h.wg.Go(func() {
		for {
			c, err := h.tr.Accept(ctx)
			if err != nil {
				return
			}
			h.wg.Go(func() { h.link(ctx, c) })
		}
	})
}

func (h *hostilePeer) link(ctx context.Context, c control.Conn) {
	defer c.Close(control.CodeGoodbye, "")
	serving := false
	for {
		b, err := c.Receive(ctx)
		if err != nil {
			return
		}
		m, err := control.ParseMessage(b)
		if err != nil {
			return
		}
		switch m := m.(type) {
		case *control.Hello:
			if h.send(ctx, c, h.hello()) != nil {
				return
			}
		case *control.Subscribe:
			if !serving {
				serving = true
				h.wg.Go(func() { h.child(ctx, c, m.From) })
			}
		}
	}
}

// child pushes chunks to a node that subscribed: a burst, then each new
// chunk; after h.honest (or, for a replay, once the stream is well past
// the window), the node's attack, once.
func (h *hostilePeer) child(ctx context.Context, c control.Conn, from uint64) {
	id := control.IDOf(c.RemoteKey())
	h.mu.Lock()
	a := h.attacks[id]
	h.mu.Unlock()
	if h.send(ctx, c, &control.Welcome{}) != nil || h.send(ctx, c, h.status()) != nil {
		return
	}
	news := make(chan uint64, 64)
	h.mu.Lock()
	h.subs[news] = struct{}{}
	next := uint64(max(h.newest-int64(chunksIn(1300*time.Millisecond)), 0))
	if from > 0 {
		next = from
	}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.subs, news)
		h.mu.Unlock()
	}()
	start := time.Now()
	done := a == attackNone
	for {
		// Everything from next up to the newest held.
		for {
			h.mu.Lock()
			b, ok := h.chunks[next]
			newest := h.newest
			h.mu.Unlock()
			if !ok {
				break
			}
			if !done && time.Since(start) >= h.honest && (a != attackReplay || newest >= int64(hostileWindow+30)) {
				done = true
				h.mu.Lock()
				h.attacked[id]++
				h.mu.Unlock()
				h.attack(ctx, c, a, next, b)
				next++
				continue
			}
			c.SendData(b)
			next++
		}
		select {
		case <-news:
		case <-c.Done():
			if done && a != attackNone {
				h.mu.Lock()
				h.closes[id] = append(h.closes[id], c.Err())
				h.mu.Unlock()
			}
			return
		case <-ctx.Done():
			return
		}
	}
}

// attack does a to the chunk with sequence number seq, whose genuine
// encoding is b, instead of sending it.
func (h *hostilePeer) attack(ctx context.Context, c control.Conn, a attack, seq uint64, b []byte) {
	switch a {
	case attackForged:
		h.mu.Lock()
		older := h.chunks[seq-chunksIn(2*time.Second)]
		h.mu.Unlock()
		ch, err := mux.ParseChunk(b)
		if err != nil {
			h.t.Errorf("hostile peer: %v", err)
			return
		}
		o, err := mux.ParseChunk(older)
		if err != nil {
			h.t.Errorf("hostile peer: chunk %d: %v", seq-chunksIn(2*time.Second), err)
			return
		}
		f, err := forge(ch, o.Frames, h.forger)
		if err != nil {
			h.t.Errorf("hostile peer: %v", err)
			return
		}
		c.SendData(f)
	case attackFlipped:
		x, err := flip(b)
		if err != nil {
			h.t.Errorf("hostile peer: %v", err)
			return
		}
		c.SendData(x)
	case attackReplay:
		// Chunks the node's window (hostileWindow) no longer holds, then
		// the last ones again, then the genuine chunk: all honest bytes.
		h.mu.Lock()
		var replay [][]byte
		for s := seq - hostileWindow - 20; s < seq-hostileWindow-10; s++ {
			replay = append(replay, h.chunks[s])
		}
		for s := seq - 5; s < seq; s++ {
			replay = append(replay, h.chunks[s])
		}
		h.mu.Unlock()
		for _, r := range replay {
			c.SendData(r)
		}
		c.SendData(b)
	case attackBadMessage:
		c.Send(ctx, []byte{0xee, 1, 2, 3})
	case attackGarbage:
		c.SendData(bytes.Repeat([]byte{0xab}, 100<<10))
	}
}

func (h *hostilePeer) results() (map[control.NodeID]int, map[control.NodeID][]error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	attacked := make(map[control.NodeID]int, len(h.attacked))
	closes := make(map[control.NodeID][]error, len(h.closes))
	for k, v := range h.attacked {
		attacked[k] = v
	}
	for k, v := range h.closes {
		closes[k] = slices.Clone(v)
	}
	return attacked, closes
}

// requireCut checks that a link was closed by the node at its other end
// with the given code.
func requireCut(t *testing.T, err error, code uint64, msg string) {
	t.Helper()
	var ce *control.CloseError
	require.True(t, errors.As(err, &ce), "%s: closed with %v, not by the node", msg, err)
	require.True(t, ce.Remote, "%s: closed by the node at the other end (%v)", msg, err)
	require.Equal(t, code, ce.Code, "%s: %v", msg, err)
}

// strangerAttacks dials an honest node as a stranger and, each on a link
// of its own, sends what the node must cut off, checking the close code.
func strangerAttacks(t *testing.T, ctx context.Context, tr control.Transport, addr string, key ed25519.PublicKey, station ed25519.PublicKey, forged []byte) {
	t.Helper()
	hello := control.AppendMessage(nil, &control.Hello{Station: control.IDOf(station), Depth: -1, ListenAddr: tr.Addr()})
	_, other, _ := ed25519.GenerateKey(nil)
	wrong := control.AppendMessage(nil, &control.Hello{Station: control.IDOf(other.Public().(ed25519.PublicKey)), Depth: -1})
	cases := []struct {
		name string
		ctrl [][]byte
		data []byte
		code uint64
	}{
		{"forged chunk", [][]byte{hello}, forged, control.CodeBadChunk},
		{"garbage data", [][]byte{hello}, bytes.Repeat([]byte{0xab}, 100<<10), control.CodeBadChunk},
		{"truncated chunk", [][]byte{hello}, forged[:len(forged)/2], control.CodeBadChunk},
		{"garbage first message", [][]byte{{0xee, 1, 2}}, nil, control.CodeBadMessage},
		{"truncated subscribe", [][]byte{hello, {byte(control.TypeSubscribe), 0}}, nil, control.CodeBadMessage},
		{"rendezvous message on a peer link", [][]byte{hello, control.AppendMessage(nil, &control.Register{})}, nil, control.CodeBadMessage},
		{"another station", [][]byte{wrong}, nil, control.CodeWrongStation},
	}
	for _, tc := range cases {
		c, err := tr.Dial(ctx, addr, key)
		require.NoError(t, err, tc.name)
		go drain(ctx, c)
		for _, m := range tc.ctrl {
			require.NoError(t, c.Send(ctx, m), tc.name)
		}
		if tc.data != nil {
			require.NoError(t, c.SendData(tc.data), tc.name)
		}
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: the node did not cut the link off", tc.name)
		}
		requireCut(t, c.Err(), tc.code, "stranger: "+tc.name)
	}
}

// TestHostilePeerInMemory runs a station on the in-memory network in fake
// time with a hostile peer that poses as a shallow relay with free slots.
// Five listeners pick it as their parent; it relays genuine audio to each
// for 1.5 s, then attacks: a forged chunk (other audio, another key), a
// genuine chunk with one audio byte flipped (the nodes share a
// SignatureCache, which must not let it through), replays of chunks too old
// for the window and of duplicates, a malformed control message, a 100 KB
// data message that is no chunk. It does so again whenever a victim comes
// back. A second hostile peer attacks an honest relay as a stranger.
//
// No node accepts a chunk that is not the broadcaster's, byte for byte; the
// decoding victims play exactly the reference where they play; the attacker
// is cut off with the right code by every victim but the one it only
// replayed to; every honest node keeps continuity >= 0.99.
func TestHostilePeerInMemory(t *testing.T) {
	ref := loopedReference(t, "cbr128.mp3", 3)
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		net := control.NewMemNetwork(control.MemConfig{Link: control.LinkConfig{Delay: 5 * time.Millisecond}})
		defer net.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		sigs := mux.NewSignatureCache(256)

		src, err := input.OpenFile("testdata/cbr128.mp3", input.FileConfig{Loop: true})
		require.NoError(t, err)
		_, bkey, _ := ed25519.GenerateKey(nil)
		btr, err := net.NewTransport(bkey)
		require.NoError(t, err)
		blog := newChunkLog()
		// One slot at the broadcaster: the first listener takes it.
		b, err := New(Config{Source: src, Key: bkey, Transport: btr, UploadKbps: 150, Outputs: []output.Output{blog}, Logger: testLogger(t, "b")})
		require.NoError(t, err)
		defer b.Close()
		go b.Run(ctx)

		type honest struct {
			name   string
			n      *Node
			sink   *playout.MemorySink
			log    *chunkLog
			attack attack
			decode bool
		}
		var nodes []*honest
		add := func(name string, a attack, decode bool) *honest {
			tr, err := net.NewTransport(nil)
			require.NoError(t, err)
			h := &honest{name: name, sink: &playout.MemorySink{}, log: newChunkLog(), attack: a, decode: decode}
			h.n, err = New(Config{
				Station: b.Address().String(), Transport: tr, UploadKbps: 300, Window: int(hostileWindow),
				Sink: h.sink, Playout: playout.Config{NoDecode: !decode},
				Outputs: []output.Output{h.log}, SignatureCache: sigs, Logger: testLogger(t, name),
			})
			require.NoError(t, err)
			nodes = append(nodes, h)
			return h
		}
		// Decoding is slow under -race; the victims of the attacks on
		// audio always decode, the others without -race.
		full := !raceEnabled()
		l0 := add("l0", attackNone, full)
		go l0.n.Run(ctx)
		time.Sleep(time.Second)

		htr, err := net.NewTransport(nil)
		require.NoError(t, err)
		h := newHostilePeer(t, htr, b.Address().Station, []control.NodeID{control.IDOf(b.Key())})
		h.serve(ctx)
		h.upstream(ctx, l0.n.LocalAddr(), l0.n.Key())
		time.Sleep(200 * time.Millisecond)
		l1 := add("l1", attackNone, full)
		go l1.n.Run(ctx)
		time.Sleep(300 * time.Millisecond)
		h.register(ctx, b.Address().Rendezvous)
		time.Sleep(500 * time.Millisecond)

		// The victims join; the hostile peer is nearer to them than
		// anyone: they pick it.
		for i, a := range []attack{attackForged, attackFlipped, attackReplay, attackBadMessage, attackGarbage} {
			v := add(fmt.Sprintf("v%d-%s", i+1, a), a, full || a == attackForged || a == attackFlipped)
			net.SetLink(htr.Addr(), v.n.LocalAddr(), control.LinkConfig{Delay: time.Millisecond})
			h.mu.Lock()
			h.attacks[control.IDOf(v.n.Key())] = a
			h.mu.Unlock()
			go v.n.Run(ctx)
			time.Sleep(300 * time.Millisecond)
		}

		// A stranger attacks l0, the relay of the hostile peer's own feed,
		// each attack on a link of its own.
		time.Sleep(2 * time.Second)
		str, err := net.NewTransport(nil)
		require.NoError(t, err)
		bchunks := blog.snapshot()
		newest := slices.Max(slices.Collect(maps.Keys(bchunks)))
		genuine, err := mux.ParseChunk(bchunks[newest])
		require.NoError(t, err)
		old, err := mux.ParseChunk(bchunks[newest-chunksIn(3*time.Second)])
		require.NoError(t, err)
		next := *genuine
		next.Seq += 5 // a chunk l0 does not have yet
		forged, err := forge(&next, old.Frames, h.forger)
		require.NoError(t, err)
		strangerAttacks(t, ctx, str, l0.n.LocalAddr(), l0.n.Key(), b.Address().Station, forged)

		time.Sleep(time.Until(start.Add(13 * time.Second)))
		stats := make([]Stats, len(nodes))
		for i, x := range nodes {
			stats[i] = x.n.Stats()
		}
		attacked, closes := h.results()
		bchunks = blog.snapshot()
		cancel()
		for _, x := range nodes {
			x.n.Close()
		}
		b.Close()
		h.wg.Wait()

		for i, x := range nodes {
			s := stats[i]
			id := control.IDOf(x.n.Key())
			t.Logf("%s: depth %d, continuity %.4f, played %d, concealed %d, muted %d, bad chunks %d, attacked %d, cut off %d, recoveries %d",
				x.name, s.Depth, s.Continuity, s.Playout.FramesPlayed, s.Playout.FramesConcealed, s.Playout.FramesMuted,
				s.BadChunks, attacked[id], len(closes[id]), s.Recoveries)
			for seq, c := range x.log.snapshot() {
				require.True(t, bytes.Equal(bchunks[seq], c), "%s accepted a chunk %d that is not the broadcaster's", x.name, seq)
			}
			require.True(t, s.Playout.Playing, x.name)
			require.GreaterOrEqual(t, s.Continuity, 0.99, x.name)
			if x.decode {
				r := checkPlayed(t, x.name, samples(x.sink.PCM()), ref, s.Playout.FirstTimestamp)
				require.Equal(t, int(s.Playout.FramesPlayed), r.matched, "%s: every frame played from received audio is the reference's", x.name)
				require.Equal(t, int(s.Playout.FramesConcealed+s.Playout.FramesMuted), r.silent, x.name)
			}
			switch x.attack {
			case attackNone:
				require.Zero(t, attacked[id], x.name)
			case attackForged, attackFlipped, attackGarbage:
				require.Positive(t, attacked[id], x.name)
				require.Equal(t, int64(attacked[id]), s.BadChunks, "%s: each attack is one bad chunk", x.name)
				require.GreaterOrEqual(t, len(closes[id]), attacked[id]-1, x.name)
				for _, err := range closes[id] {
					requireCut(t, err, control.CodeBadChunk, x.name)
				}
			case attackBadMessage:
				require.Positive(t, attacked[id], x.name)
				require.Zero(t, s.BadChunks, x.name)
				require.GreaterOrEqual(t, len(closes[id]), attacked[id]-1, x.name)
				for _, err := range closes[id] {
					requireCut(t, err, control.CodeBadMessage, x.name)
				}
			case attackReplay:
				// Old and duplicate chunks are honest bytes: ignored, and
				// no reason to cut the sender off.
				require.Equal(t, 1, attacked[id], x.name)
				require.Zero(t, s.BadChunks, x.name)
				require.Empty(t, closes[id], x.name)
			}
		}
		require.Equal(t, int64(3), stats[0].BadChunks, "l0: the stranger's three bad data messages")
	})
}

// rawQUICOversized opens a bare quic-go connection to a node's QUIC
// transport, does the transport's own handshake on the control stream (the
// preamble 'P', the reply 'A'), then announces on a data stream a message
// one byte longer than control.MaxMessageSize, which no control.Conn can
// send. It returns why the connection closed.
func rawQUICOversized(t *testing.T, ctx context.Context, addr string) error {
	t.Helper()
	_, key, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	require.NoError(t, err)
	tlsConf := &tls.Config{
		Certificates:       []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		NextProtos:         []string{control.ALPN},
		InsecureSkipVerify: true, // the node's key is not checked here
		MinVersion:         tls.VersionTLS13,
	}
	qc, err := quic.DialAddr(ctx, addr, tlsConf, &quic.Config{})
	require.NoError(t, err)
	defer qc.CloseWithError(0, "")
	st, err := qc.OpenStreamSync(ctx)
	require.NoError(t, err)
	_, err = st.Write([]byte{'P'})
	require.NoError(t, err)
	var ack [1]byte
	_, err = io.ReadFull(st, ack[:])
	require.NoError(t, err)
	require.Equal(t, byte('A'), ack[0], "the transport's handshake reply")
	s, err := qc.OpenUniStreamSync(ctx)
	require.NoError(t, err)
	_, err = s.Write(binary.AppendUvarint(nil, control.MaxMessageSize+1))
	require.NoError(t, err)
	select {
	case <-qc.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("an oversized data message did not cut the connection off")
	}
	return context.Cause(qc.Context())
}

// TestHostilePeerQUIC is the attack of a stranger over real QUIC on
// loopback. A hostile peer, itself a child of the broadcaster (so it holds
// genuine chunks), dials a listener again and again, each time with one
// attack: a forged chunk, a data message of 100 KB that is no chunk, a
// truncated chunk, malformed control messages, a Hello for another station,
// a genuine chunk the listener never had with one audio byte flipped, a data
// message longer than the transport allows (over a bare quic-go
// connection), and replays of chunks too old for the window. The listener
// cuts each off with the right code, except the replays, which it ignores;
// it keeps playing without a gap, exactly the reference.
func TestHostilePeerQUIC(t *testing.T) {
	ref := samples(reference(t, "cbr128.mp3"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src, err := input.OpenFile("testdata/cbr128.mp3", input.FileConfig{})
	require.NoError(t, err)
	_, bkey, _ := ed25519.GenerateKey(nil)
	btr := newQUICTransport(t, bkey)
	defer btr.Close()
	blog := newChunkLog()
	b, err := New(Config{Source: src, Key: bkey, Transport: btr, UploadKbps: 300, Outputs: []output.Output{blog}, Logger: testLogger(t, "b")})
	require.NoError(t, err)
	defer b.Close()
	start := time.Now()
	bdone := make(chan error, 1)
	go func() { bdone <- b.Run(ctx) }()

	htr := newQUICTransport(t)
	defer htr.Close()
	h := newHostilePeer(t, htr, b.Address().Station, []control.NodeID{control.IDOf(b.Key())})
	defer h.wg.Wait()
	defer cancel()
	time.Sleep(300 * time.Millisecond)
	h.upstream(ctx, btr.Addr(), b.Key())

	// The listener joins at 2.5 s: it never has the chunks before its
	// burst, which its window would still take.
	time.Sleep(time.Until(start.Add(2500 * time.Millisecond)))
	ltr := newQUICTransport(t)
	defer ltr.Close()
	sink := &playout.MemorySink{}
	llog := newChunkLog()
	// A window of 3 s: the 8 s stream goes well past it.
	window := chunksIn(3 * time.Second)
	l, err := New(Config{Station: b.Address().String(), Transport: ltr, Window: int(window), Sink: sink, Outputs: []output.Output{llog}, Logger: testLogger(t, "l")})
	require.NoError(t, err)
	defer l.Close()
	ldone := make(chan error, 1)
	go func() { ldone <- l.Run(ctx) }()
	require.Eventually(t, func() bool { return l.Stats().Playout.Playing }, 3*time.Second, 20*time.Millisecond)

	station := b.Address().Station
	h.mu.Lock()
	newest := uint64(h.newest)
	chunks := maps.Clone(h.chunks)
	h.mu.Unlock()
	first := slices.Min(slices.Collect(maps.Keys(llog.snapshot())))
	require.Positive(t, first, "the listener started after the stream")

	// A forged chunk 2 s ahead of the stream (so that it is not a
	// duplicate by the time it arrives), and the others.
	genuine, err := mux.ParseChunk(chunks[newest])
	require.NoError(t, err)
	old, err := mux.ParseChunk(chunks[newest-chunksIn(2*time.Second)])
	require.NoError(t, err)
	ahead := *genuine
	ahead.Seq += chunksIn(2 * time.Second)
	forged, err := forge(&ahead, old.Frames, h.forger)
	require.NoError(t, err)
	strangerAttacks(t, ctx, htr, ltr.Addr(), l.Key(), station, forged)

	// A genuine chunk the listener never had, inside its window, with one
	// audio byte flipped: only the signature can tell.
	flipped, err := flip(chunks[first-1])
	require.NoError(t, err)
	c, err := htr.Dial(ctx, ltr.Addr(), l.Key())
	require.NoError(t, err)
	go drain(ctx, c)
	require.NoError(t, c.Send(ctx, control.AppendMessage(nil, h.hello())))
	require.NoError(t, c.SendData(flipped))
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("flipped byte: the listener did not cut the link off")
	}
	requireCut(t, c.Err(), control.CodeBadChunk, "flipped byte")

	// A data message longer than the transport allows.
	var appErr *quic.ApplicationError
	require.ErrorAs(t, rawQUICOversized(t, ctx, ltr.Addr()), &appErr)
	require.True(t, appErr.Remote)
	require.Equal(t, quic.ApplicationErrorCode(control.CodeProtocol), appErr.ErrorCode)

	// Replays of chunks the window no longer holds, and duplicates: honest
	// bytes, ignored, and no reason to cut the sender off.
	require.Eventually(t, func() bool {
		return l.Stats().ChunksReceived > 0 && blogNewest(blog) >= int64(10+window+chunksIn(1500*time.Millisecond))
	}, 8*time.Second, 20*time.Millisecond)
	bad := l.Stats().BadChunks
	c, err = htr.Dial(ctx, ltr.Addr(), l.Key())
	require.NoError(t, err)
	go drain(ctx, c)
	require.NoError(t, c.Send(ctx, control.AppendMessage(nil, h.hello())))
	h.mu.Lock()
	newest = uint64(h.newest)
	var replays [][]byte
	for s := uint64(0); s < 10; s++ {
		replays = append(replays, h.chunks[s])
	}
	for s := newest - 3; s <= newest; s++ {
		replays = append(replays, h.chunks[s])
	}
	h.mu.Unlock()
	for _, r := range replays {
		require.NoError(t, c.SendData(r))
	}
	select {
	case <-c.Done():
		t.Fatalf("the listener cut off a peer that replayed honest chunks: %v", c.Err())
	case <-time.After(500 * time.Millisecond):
	}
	require.Equal(t, bad, l.Stats().BadChunks, "replays are not bad chunks")
	c.Close(control.CodeGoodbye, "")

	// The stream ends; the listener plays on past its end.
	select {
	case err := <-bdone:
		require.NoError(t, err)
	case <-time.After(time.Until(start.Add(15 * time.Second))):
		t.Fatal("the broadcaster did not end with its source")
	}
	s := l.Stats()
	require.Zero(t, s.Playout.FramesConcealed+s.Playout.FramesMuted, "no gap while the stream ran (%+v)", s.Playout)
	require.GreaterOrEqual(t, s.Continuity, 0.99, "%+v", s.Playout)
	refEnd := time.Duration(len(ref)/2) * time.Second / 44100
	require.Eventually(t, func() bool {
		p := l.Stats().Playout
		return time.Duration(p.FirstTimestamp)*time.Second/44100+p.Position > refEnd+300*time.Millisecond
	}, 5*time.Second, 20*time.Millisecond)
	cancel()
	require.NoError(t, <-ldone)

	s = l.Stats()
	t.Logf("listener: continuity %.4f (with the silence after the end), played %d, concealed %d, bad chunks %d", s.Continuity, s.Playout.FramesPlayed, s.Playout.FramesConcealed, s.BadChunks)
	require.Equal(t, int64(4), s.BadChunks, "forged, garbage, truncated, flipped")
	bchunks := blog.snapshot()
	for seq, c := range llog.snapshot() {
		require.True(t, bytes.Equal(bchunks[seq], c), "the listener accepted a chunk %d that is not the broadcaster's", seq)
	}
	r := checkPlayed(t, "listener", samples(sink.PCM()), ref, s.Playout.FirstTimestamp)
	require.Zero(t, r.silent, "no silent frame while the stream ran")
	require.Equal(t, int(s.Playout.FramesPlayed), r.matched, "every frame played from received audio is the reference's")
}

// blogNewest is the newest sequence number in a chunk log (-1 if none).
func blogNewest(l *chunkLog) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := int64(-1)
	for s := range l.chunks {
		n = max(n, int64(s))
	}
	return n
}
