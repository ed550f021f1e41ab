package p2pradio

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/internal/web"
	"github.com/p2pradio/p2pradio/mux"
)

// tab is one page of a Chromium started by startChromium, driven through
// its own DevTools session.
type tab struct {
	c       *cdp
	target  string
	session string
}

// openTab opens url in a new tab of w x h pixels.
func openTab(ctx context.Context, c *cdp, url string, w, h int) (*tab, error) {
	var target struct {
		TargetID string `json:"targetId"`
	}
	// A window of its own: Chromium defers loading media in a tab that is
	// not in front.
	if err := c.call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank", "newWindow": true}, &target); err != nil {
		return nil, err
	}
	var att struct {
		SessionID string `json:"sessionId"`
	}
	if err := c.call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att); err != nil {
		return nil, err
	}
	tb := &tab{c: c, target: target.TargetID, session: att.SessionID}
	for _, m := range []string{"Page.enable", "Runtime.enable", "Log.enable"} {
		if err := c.call(ctx, tb.session, m, nil, nil); err != nil {
			return nil, err
		}
	}
	if err := c.call(ctx, tb.session, "Emulation.setDeviceMetricsOverride",
		map[string]any{"width": w, "height": h, "deviceScaleFactor": 1, "mobile": false}, nil); err != nil {
		return nil, err
	}
	return tb, c.call(ctx, tb.session, "Page.navigate", map[string]any{"url": url}, nil)
}

// eval evaluates a JavaScript expression in the tab (awaiting a promise)
// and decodes its value into out.
func (tb *tab) eval(ctx context.Context, expr string, out any) error {
	var r struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := tb.c.call(ctx, tb.session, "Runtime.evaluate",
		map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true}, &r); err != nil {
		return err
	}
	if e := r.ExceptionDetails; e != nil {
		return fmt.Errorf("%.80s: %s %s", expr, e.Text, e.Exception.Description)
	}
	if out != nil && len(r.Result.Value) > 0 {
		return json.Unmarshal(r.Result.Value, out)
	}
	return nil
}

// screenshot returns a PNG of the tab.
func (tb *tab) screenshot(ctx context.Context) ([]byte, error) {
	var shot struct {
		Data []byte `json:"data"`
	}
	err := tb.c.call(ctx, tb.session, "Page.captureScreenshot", map[string]any{"format": "png"}, &shot)
	return shot.Data, err
}

// close closes the tab, as a listener closing it would.
func (tb *tab) close(ctx context.Context) error {
	return tb.c.call(ctx, "", "Target.closeTarget", map[string]any{"targetId": tb.target}, nil)
}

// peerJSTestPage runs peer.js's codec and checks against vectors made by
// the Go packages: what Go encodes JS decodes to the same fields and
// encodes to the same bytes; chunks signed by the station verify and
// forged ones do not.
const peerJSTestPage = `<!doctype html><meta charset="utf-8"><title>peer.js test</title>
<script>%s</script>
<script>
"use strict";
const I = window.p2pradio.internals;
const vectors = %s;
function norm(m) {
  const o = {};
  for (const [k, v] of Object.entries(m)) {
    if (v instanceof Uint8Array) o[k] = I.hex(v);
    else if (Array.isArray(v)) o[k] = v.map((x) => x instanceof Uint8Array ? I.hex(x) : (typeof x === "object" ? norm(x) : x));
    else o[k] = v;
  }
  return o;
}
function denorm(m) {
  const o = {};
  for (const [k, v] of Object.entries(m)) {
    if (k === "station" || k === "bitmap" || k === "id") o[k] = I.unhex(v);
    else if (k === "path") o[k] = v.map(I.unhex);
    else if (k === "peers") o[k] = v.map(denorm);
    else o[k] = v;
  }
  return o;
}
async function run() {
  const out = { decoded: [], encoded: [], truncated: [], chunks: [] };
  for (const h of vectors.messages) {
    const b = I.unhex(h), m = I.decode(b);
    out.decoded.push(norm(m));
    out.encoded.push(I.hex(I.encode(denorm(norm(m)))));
    let fails = 0;
    for (let n = 1; n < b.length; n++) { try { I.decode(b.subarray(0, n)); } catch (e) { fails++; } }
    out.truncated.push(fails);
  }
  out.clamped = I.hex(I.encode({ type: I.T.Hello, station: new Uint8Array(32), observed: "x".repeat(300), depth: -7, freeSlots: 70000,
    uploadKbps: -1, listenAddr: "", path: [], newest: 0 }));
  const raw = I.unhex(vectors.station), station = { raw, key: await I.importKey(raw) };
  for (const h of vectors.chunks) {
    const r = {};
    try {
      const c = I.parseChunk(I.unhex(h));
      r.seq = c.seq; r.timestamp = c.timestamp; r.produced = c.produced; r.title = c.title; r.frames = c.frames.length;
      r.verified = await I.verifyChunk(station, c);
    } catch (e) { r.error = e.message; }
    out.chunks.push(r);
  }
  out.silent = I.hex(I.silentFrame(I.frameInfo(I.unhex(vectors.frame))));
  out.fingerprint = I.fingerprint("v=0\r\na=fingerprint:sha-256 ab:cd:0e\r\n");
  return out;
}
</script>`

func TestPeerJSCodecAndSignaturesInChromium(t *testing.T) {
	c := startChromium(t)
	pub, priv, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	_, other, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	id := func(b byte) control.NodeID {
		var n control.NodeID
		for i := range n {
			n[i] = b + byte(i)
		}
		return n
	}
	msgs := []control.Message{
		&control.Hello{Station: control.IDOf(pub), Observed: "10.0.0.1:7000", Depth: 3, FreeSlots: 2, UploadKbps: 300,
			ListenAddr: "", Path: []control.NodeID{id(1), id(2)}, Newest: 1 << 40},
		&control.Hello{Station: id(9), Depth: -1},
		&control.Welcome{},
		&control.Refuse{Reason: "no free slot"},
		&control.Subscribe{From: 123456789},
		&control.Unsubscribe{},
		&control.Have{First: 77, Bitmap: []byte{0xff, 0x01, 0x80}},
		&control.Request{Seqs: []uint64{1, 2, 1 << 33}},
		&control.PeerList{Peers: []control.PeerInfo{{ID: id(3), Addr: "127.0.0.1:9", Depth: 1, FreeSlots: 4, UploadKbps: 512}, {ID: id(4), Depth: -1}}},
		&control.Status{Depth: 2, FreeSlots: 1, UploadKbps: 256, Path: []control.NodeID{id(5)}, Newest: 42},
	}
	var hexMsgs []string
	for _, m := range msgs {
		hexMsgs = append(hexMsgs, hex.EncodeToString(control.AppendMessage(nil, m)))
	}
	format := mux.Format{Version: mux.MPEG1, SampleRate: 44100, Channels: 2}
	frame := mux.Silent(format)
	mk := func(seq uint64, title string, key ed25519.PrivateKey) *mux.Chunk {
		ch := &mux.Chunk{Seq: seq, Timestamp: int64(seq) * 3 * 1152, Produced: 1_700_000_000_000_000 + int64(seq), Frames: []mux.Frame{frame, frame, frame}}
		if title != "" {
			ch.Flags, ch.Title = mux.FlagMetadata, title
		}
		require.NoError(t, ch.Sign(key))
		return ch
	}
	good := mk(5, "Ünïcode title", priv).Bytes()
	forged := append([]byte(nil), mk(6, "", priv).Bytes()...)
	forged[len(forged)-64-10] ^= 1 // a byte of main data: still a well-formed chunk
	chunks := [][]byte{good, forged, mk(7, "", other).Bytes(), good[:len(good)-1]}
	var hexChunks []string
	for _, b := range chunks {
		hexChunks = append(hexChunks, hex.EncodeToString(b))
	}
	vec, err := json.Marshal(map[string]any{"messages": hexMsgs, "station": hex.EncodeToString(pub),
		"chunks": hexChunks, "frame": hex.EncodeToString(frame)})
	require.NoError(t, err)
	page := fmt.Sprintf(peerJSTestPage, web.PeerJS, vec)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write([]byte(page))
	}))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tb, err := openTab(ctx, c, srv.URL, 800, 600)
	require.NoError(t, err)
	var out struct {
		Decoded   []map[string]any `json:"decoded"`
		Encoded   []string         `json:"encoded"`
		Truncated []int            `json:"truncated"`
		Clamped   string           `json:"clamped"`
		Chunks    []struct {
			Seq, Timestamp, Produced, Frames int64
			Title                            string
			Verified                         bool
			Error                            string
		} `json:"chunks"`
		Silent      string `json:"silent"`
		Fingerprint string `json:"fingerprint"`
	}
	require.Eventually(t, func() bool { return tb.eval(ctx, `run()`, &out) == nil }, 10*time.Second, 100*time.Millisecond)

	// Every message: the same bytes back, and every truncation rejected
	// (Welcome and Unsubscribe have one byte: none to truncate).
	require.Equal(t, hexMsgs, out.Encoded)
	for i, n := range out.Truncated {
		require.Equal(t, len(hexMsgs[i])/2-1, n, "message %d: every truncation fails", i)
	}
	h := out.Decoded[0]
	require.EqualValues(t, control.TypeHello, h["type"])
	require.EqualValues(t, control.WireVersion, h["version"])
	require.Equal(t, hex.EncodeToString(pub), h["station"])
	require.Equal(t, "10.0.0.1:7000", h["observed"])
	require.EqualValues(t, 3, h["depth"])
	require.EqualValues(t, 2, h["freeSlots"])
	require.EqualValues(t, 300, h["uploadKbps"])
	require.EqualValues(t, 1<<40, h["newest"])
	require.Len(t, h["path"], 2)
	require.EqualValues(t, -1, out.Decoded[1]["depth"])
	require.Equal(t, "no free slot", out.Decoded[3]["reason"])
	require.EqualValues(t, 123456789, out.Decoded[4]["from"])
	require.Equal(t, "ff0180", out.Decoded[6]["bitmap"])
	require.Equal(t, []any{1.0, 2.0, float64(1 << 33)}, out.Decoded[7]["seqs"])
	require.Len(t, out.Decoded[8]["peers"], 2)
	require.EqualValues(t, 42, out.Decoded[9]["newest"])

	// Clamping as AppendMessage does: depth -7 is -1, slots at 65535, the
	// string cut to 255 bytes, a negative budget 0.
	clamped := control.AppendMessage(nil, &control.Hello{Observed: string(make([]byte, 300)), Depth: -7, FreeSlots: 70000, UploadKbps: -1})
	for i := 0; i < 255; i++ {
		clamped[2+32+1+i] = 'x'
	}
	require.Equal(t, hex.EncodeToString(clamped), out.Clamped)

	require.Len(t, out.Chunks, 4)
	require.Empty(t, out.Chunks[0].Error)
	require.True(t, out.Chunks[0].Verified, "the station's chunk verifies")
	require.EqualValues(t, 5, out.Chunks[0].Seq)
	require.EqualValues(t, 5*3*1152, out.Chunks[0].Timestamp)
	require.EqualValues(t, 1_700_000_000_000_005, out.Chunks[0].Produced)
	require.Equal(t, "Ünïcode title", out.Chunks[0].Title)
	require.EqualValues(t, 3, out.Chunks[0].Frames)
	require.Empty(t, out.Chunks[1].Error)
	require.False(t, out.Chunks[1].Verified, "a chunk with a changed byte does not verify")
	require.Empty(t, out.Chunks[2].Error)
	require.False(t, out.Chunks[2].Verified, "a chunk signed by another key does not verify")
	require.NotEmpty(t, out.Chunks[3].Error, "a truncated chunk does not parse")

	require.Equal(t, hex.EncodeToString(frame), out.Silent, "silent frames as mux.Silent makes them")
	require.Equal(t, "AB:CD:0E", out.Fingerprint)
}
