package p2pradio

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/mux"
)

// rtcLinkJS links the page to the node as docs/browser-peers.md says,
// with nothing of peer.js: /peer, an offer with the two negotiated
// channels, both key proofs (WebCrypto Ed25519), then the wire messages
// the test made in Go (HELLO, SUBSCRIBE; STATUS every 500 ms for STAY ms),
// then silence until the node closes the link. It returns what came on
// "ctl" and the first few messages on "data", in hex.
const rtcLinkJS = `(async () => {
  const hex = (b) => [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, "0")).join("");
  const unhex = (s) => new Uint8Array(s.match(/../g).map((h) => parseInt(h, 16)));
  const waiter = () => { const q = []; let wake = null;
    return { push(m) { q.push(m); if (wake) { wake(); wake = null; } },
      async next(pred = () => true) { for (;;) { const i = q.findIndex(pred); if (i >= 0) return q.splice(i, 1)[0];
        await new Promise((r) => { wake = r; }); } }, q }; };
  const kp = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
  const pub = new Uint8Array(await crypto.subtle.exportKey("raw", kp.publicKey));
  const ws = new WebSocket("ws://" + location.host + "/peer");
  const sig = waiter();
  ws.onmessage = (e) => sig.push(JSON.parse(e.data));
  await new Promise((res, rej) => { ws.onopen = res; ws.onerror = () => rej(new Error("websocket")); });
  ws.send(JSON.stringify({ type: "hello", key: hex(pub), upload_kbps: 0 }));
  const welcome = await sig.next((m) => m.type === "welcome");
  const pc = new RTCPeerConnection({ iceServers: welcome.ice });
  const ctl = pc.createDataChannel("ctl", { negotiated: true, id: 0, ordered: true });
  const data = pc.createDataChannel("data", { negotiated: true, id: 1, ordered: false });
  ctl.binaryType = data.binaryType = "arraybuffer";
  const ctlIn = waiter(), dataIn = [];
  ctl.onmessage = (e) => ctlIn.push(new Uint8Array(e.data));
  data.onmessage = (e) => { if (dataIn.length < 5) dataIn.push(hex(e.data)); };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((r) => { pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === "complete") r(); };
    if (pc.iceGatheringState === "complete") r(); setTimeout(r, 2000); });
  ws.send(JSON.stringify({ type: "offer", to: "node", link: 1, sdp: pc.localDescription.sdp }));
  const ans = await sig.next((m) => m.link === 1);
  if (ans.type !== "answer") throw new Error("no answer: " + JSON.stringify(ans));
  await pc.setRemoteDescription({ type: "answer", sdp: ans.sdp });
  const fp = (sdp) => sdp.match(/a=fingerprint:sha-256 (\S+)/i)[1].toUpperCase();
  const own = fp(pc.localDescription.sdp), peer = fp(pc.remoteDescription.sdp);
  const enc = new TextEncoder();
  const signed = (a, b) => enc.encode("p2pradio webrtc v1\0" + a + "\0" + b);
  await new Promise((r) => { if (ctl.readyState === "open") r(); else ctl.onopen = r; });
  const mine = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, kp.privateKey, signed(own, peer)));
  ctl.send(new Uint8Array([...enc.encode("P2PR-RTC1"), ...pub, ...mine]));
  const proof = await ctlIn.next();
  const nodeKey = proof.slice(9, 41);
  const nk = await crypto.subtle.importKey("raw", nodeKey, { name: "Ed25519" }, false, ["verify"]);
  const proofOK = new TextDecoder().decode(proof.slice(0, 9)) === "P2PR-RTC1" &&
    await crypto.subtle.verify({ name: "Ed25519" }, nk, proof.slice(41), signed(peer, own));
  ctl.send(unhex(HELLO));
  ctl.send(unhex(SUBSCRIBE));
  const status = setInterval(() => ctl.send(unhex(STATUS)), 500);
  await new Promise((r) => setTimeout(r, STAY));
  clearInterval(status);
  const ctlMsgs = [];
  for (;;) { const m = await ctlIn.next(); ctlMsgs.push(hex(m));
    if (new TextDecoder().decode(m.slice(0, 10)) === "P2PR-CLOSE") break; }
  const closed = await new Promise((r) => { const t0 = Date.now();
    const check = () => (["closed", "failed", "disconnected"].includes(pc.connectionState) || ctl.readyState !== "open") ? r(true) :
      Date.now() - t0 > 3000 ? r(false) : setTimeout(check, 50); check(); });
  pc.close(); ws.close();
  return { proofOK, nodeKey: hex(nodeKey), welcomeNode: welcome.node, you: welcome.you, ctl: ctlMsgs, data: dataIn, closed,
    candidates: pc.localDescription.sdp.split("\r\n").filter((l) => l.startsWith("a=candidate")) };
})()`

// TestChromiumLinksToANodeOverWebRTC checks the node's side of the
// contract against a real browser, without peer.js: the link is set up,
// both keys are proven, the node accepts the page as a child and sends it
// chunks that verify, and when the page goes silent the node closes the
// link with a close message whose code and reason the page reads.
func TestChromiumLinksToANodeOverWebRTC(t *testing.T) {
	if !inFreshNetns(t) {
		return
	}
	st := startWebStation(t, 0, "Browsers", 0)
	srv := serveNode(t, st.b, HTTPConfig{})
	station := st.b.Address().Station
	start := time.Now()
	c := startChromium(t, "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c.open(ctx, srv.URL+"/status.json", 800, 600) // same origin as /peer, and quick to load
	c.waitFor(ctx, "the page", `document.readyState === "complete"`)
	t.Logf("page open after %v", time.Since(start))

	msg := func(m control.Message) string { return hex.EncodeToString(control.AppendMessage(nil, m)) }
	js := strings.NewReplacer(
		"HELLO", `"`+msg(&control.Hello{Station: control.IDOf(station), Depth: -1})+`"`,
		"SUBSCRIBE", `"`+msg(&control.Subscribe{})+`"`,
		"STATUS", `"`+msg(&control.Status{Depth: 1})+`"`,
		"STAY", "1000",
	).Replace(rtcLinkJS)
	var r struct {
		ProofOK     bool     `json:"proofOK"`
		NodeKey     string   `json:"nodeKey"`
		WelcomeNode string   `json:"welcomeNode"`
		You         string   `json:"you"`
		Ctl         []string `json:"ctl"`
		Data        []string `json:"data"`
		Closed      bool     `json:"closed"`
		Candidates  []string `json:"candidates"`
	}
	require.NoError(t, c.eval(ctx, js, &r))
	t.Logf("linked and closed after %v", time.Since(start))
	t.Logf("the page's candidates: %q", r.Candidates)
	require.True(t, r.ProofOK, "the node's key proof does not verify in Chromium")
	require.Equal(t, hex.EncodeToString(st.b.Key()), r.NodeKey)
	require.Equal(t, r.WelcomeNode, r.NodeKey)

	// On "ctl": the node's Hello, its Welcome (with PeerList, Status,
	// Have around them), and last the close.
	var types []string
	for _, h := range r.Ctl[:len(r.Ctl)-1] {
		b, err := hex.DecodeString(h)
		require.NoError(t, err)
		m, err := control.ParseMessage(b)
		require.NoError(t, err)
		types = append(types, fmt.Sprintf("%T", m))
	}
	require.Contains(t, types, "*control.Hello")
	require.Contains(t, types, "*control.Welcome")
	last, err := hex.DecodeString(r.Ctl[len(r.Ctl)-1])
	require.NoError(t, err)
	rest, ok := bytes.CutPrefix(last, []byte("P2PR-CLOSE"))
	require.True(t, ok)
	code, n := binary.Uvarint(rest)
	require.Positive(t, n)
	require.Equal(t, control.CodeGoodbye, code)
	require.Equal(t, "silent", string(rest[n:]))
	require.True(t, r.Closed, "the node's end did not close")

	// On "data": signed chunks of the station.
	require.NotEmpty(t, r.Data)
	for _, h := range r.Data {
		b, err := hex.DecodeString(h)
		require.NoError(t, err)
		ch, err := mux.ParseChunk(b)
		require.NoError(t, err)
		require.NoError(t, ch.Verify(station))
	}
}
