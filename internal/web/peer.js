// peer.js: the station page as a peer of the overlay (docs/browser-peers.md).
// It speaks the overlay's wire protocol (control/wire.go, version 2) over
// WebRTC data channels, signalled through the node that served the page
// (a WebSocket at /peer); it verifies every chunk's ed25519 signature with
// WebCrypto before it plays or relays it, and plays the chunks' MP3 frames
// through MediaSource. No dependencies; window.p2pradio is its interface.
"use strict";
(() => {
const te = new TextEncoder(), td = new TextDecoder();

// ---- the wire format (control/wire.go) ----

const T = { Hello: 1, Welcome: 2, Refuse: 3, Subscribe: 4, Unsubscribe: 5, Have: 6, Request: 7, PeerList: 8, Status: 11 };
// WIRE_VERSION is control.WireVersion: web.go writes it in when it embeds
// this file (the messages a page uses are the same in versions 2 and 3).
const WIRE_VERSION = 2, MAX_STRING = 255, MAX_PATH = 64, MAX_PEERS = 64, MAX_REQUEST = 64, MAX_HAVE = 128, MAX_DEPTH = 254;
const CODE = { Refused: 3, BadChunk: 16, BadMessage: 17, Slow: 18, WrongStation: 19, Goodbye: 20, Version: 21, Idle: 22 };

class Writer {
  constructor() { this.b = []; }
  u8(v) { this.b.push(v & 255); }
  u16(v) { v = Math.max(0, Math.min(v | 0, 65535)); this.b.push(v >> 8, v & 255); }
  u32(v) { v = Math.max(0, Math.min(Math.floor(v), 4294967295)); this.b.push(v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255); }
  u64(v) { const hi = Math.floor(v / 4294967296), lo = v >>> 0; this.u32(hi); this.u32(lo); }
  bytes(a) { for (const x of a) this.b.push(x); }
  str(s) { const a = te.encode(s || "").subarray(0, MAX_STRING); this.u8(a.length); this.bytes(a); }
  id(a) { if (!a || a.length !== 32) throw new Error("id of " + (a && a.length) + " bytes"); this.bytes(a); }
  depth(d) { this.u8(d < 0 ? 255 : Math.min(d, MAX_DEPTH)); }
  path(p) { p = (p || []).slice(Math.max(0, (p || []).length - MAX_PATH)); this.u8(p.length); p.forEach((x) => this.id(x)); }
  out() { return Uint8Array.from(this.b); }
}

class Reader {
  constructor(b) { this.b = b; this.p = 0; this.v = new DataView(b.buffer, b.byteOffset, b.byteLength); }
  take(n) {
    if (this.p + n > this.b.length) throw new Error("truncated: need " + n + " bytes, have " + (this.b.length - this.p));
    const s = this.b.subarray(this.p, this.p + n); this.p += n; return s;
  }
  u8() { return this.take(1)[0]; }
  u16() { this.take(2); return this.v.getUint16(this.p - 2); }
  u32() { this.take(4); return this.v.getUint32(this.p - 4); }
  u64() { this.take(8); return this.v.getUint32(this.p - 8) * 4294967296 + this.v.getUint32(this.p - 4); }
  id() { return this.take(32).slice(); }
  str() { return td.decode(this.take(this.u8())); }
  depth() { const d = this.u8(); return d === 255 ? -1 : d; }
  version() { const v = this.u8(); if (v === 0) throw new Error("version 0"); return v; }
  count(max, min) {
    const n = this.u8();
    if (n > max) throw new Error(n + " elements, at most " + max);
    if (n * min > this.b.length - this.p) throw new Error("truncated: " + n + " elements");
    return n;
  }
  path() { const n = this.count(MAX_PATH, 32), p = []; for (let i = 0; i < n; i++) p.push(this.id()); return p; }
}

// encode returns a message's bytes: m = {type: T.x, ...fields as in Go,
// lower camel case}. Out-of-range fields are clamped as AppendMessage does.
function encode(m) {
  const w = new Writer();
  w.u8(m.type);
  switch (m.type) {
    case T.Hello:
      w.u8(m.version || WIRE_VERSION); w.id(m.station); w.str(m.observed); w.depth(m.depth); w.u16(m.freeSlots);
      w.u32(m.uploadKbps); w.str(m.listenAddr); w.path(m.path); w.u64(m.newest || 0); break;
    case T.Welcome: case T.Unsubscribe: break;
    case T.Refuse: w.str(m.reason); break;
    case T.Subscribe: w.u64(m.from || 0); break;
    case T.Have: { const bm = (m.bitmap || new Uint8Array(0)).subarray(0, MAX_HAVE); w.u64(m.first); w.u8(bm.length); w.bytes(bm); break; }
    case T.Request: { const s = (m.seqs || []).slice(0, MAX_REQUEST); w.u8(s.length); s.forEach((x) => w.u64(x)); break; }
    case T.PeerList: {
      const ps = (m.peers || []).slice(0, MAX_PEERS);
      w.u8(ps.length);
      for (const p of ps) { w.id(p.id); w.str(p.addr); w.depth(p.depth); w.u16(p.freeSlots); w.u32(p.uploadKbps); }
      break;
    }
    case T.Status: w.depth(m.depth); w.u16(m.freeSlots); w.u32(m.uploadKbps); w.path(m.path); w.u64(m.newest || 0); break;
    default: throw new Error("cannot encode type " + m.type);
  }
  return w.out();
}

// decode parses one message; it throws on anything malformed. Bytes after
// the known fields are ignored (a later version's additions).
function decode(b) {
  if (!b.length) throw new Error("empty message");
  const r = new Reader(b), m = { type: b[0] };
  r.p = 1;
  switch (m.type) {
    case T.Hello:
      m.version = r.version(); m.station = r.id(); m.observed = r.str(); m.depth = r.depth(); m.freeSlots = r.u16();
      m.uploadKbps = r.u32(); m.listenAddr = r.str(); m.path = r.path(); m.newest = r.u64(); break;
    case T.Welcome: case T.Unsubscribe: break;
    case T.Refuse: m.reason = r.str(); break;
    case T.Subscribe: m.from = r.u64(); break;
    case T.Have: { m.first = r.u64(); const n = r.count(MAX_HAVE, 1); m.bitmap = r.take(n).slice(); break; }
    case T.Request: { const n = r.count(MAX_REQUEST, 8); m.seqs = []; for (let i = 0; i < n; i++) m.seqs.push(r.u64()); break; }
    case T.PeerList: {
      const n = r.count(MAX_PEERS, 32 + 1 + 1 + 2 + 4); m.peers = [];
      for (let i = 0; i < n; i++) m.peers.push({ id: r.id(), addr: r.str(), depth: r.depth(), freeSlots: r.u16(), uploadKbps: r.u32() });
      break;
    }
    case T.Status: m.depth = r.depth(); m.freeSlots = r.u16(); m.uploadKbps = r.u32(); m.path = r.path(); m.newest = r.u64(); break;
    default: throw new Error("unknown or unexpected type " + m.type);
  }
  return m;
}

// haveHas reports whether a Have's bitmap shows seq held.
function haveHas(h, seq) {
  if (!h || seq < h.first || seq - h.first >= h.bitmap.length * 8) return false;
  const i = seq - h.first;
  return (h.bitmap[i >> 3] & (0x80 >> (i & 7))) !== 0;
}
function haveNewest(h) {
  for (let i = h.bitmap.length * 8 - 1; i >= 0; i--) if (h.bitmap[i >> 3] & (0x80 >> (i & 7))) return h.first + i;
  return -1;
}

// ---- MP3 frames and chunks (mux/header.go, mux/chunk.go) ----

const BR1 = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, -1];
const BR2 = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, -1];
const RATES = [44100, 48000, 32000, -1];

// frameInfo checks a Layer III frame header at b[0..] and describes the
// frame, or returns null.
function frameInfo(b) {
  if (b.length < 4) return null;
  const h = ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) >>> 0;
  if (h >>> 21 !== 0x7ff) return null;
  const vb = (h >>> 19) & 3, layer = (h >>> 17) & 3, bi = (h >>> 12) & 15, ri = (h >>> 10) & 3;
  if (vb === 1 || layer !== 1 || bi === 15 || bi === 0 || ri === 3 || (h & 3) === 2) return null;
  const version = vb === 3 ? 1 : vb === 2 ? 2 : 3; // MPEG-1, 2, 2.5
  const rate = RATES[ri] / (version === 1 ? 1 : version === 2 ? 2 : 4);
  const kbps = (version === 1 ? BR1 : BR2)[bi];
  const mono = ((h >>> 6) & 3) === 3;
  const size = Math.floor((version === 1 ? 144 : 72) * kbps * 1000 / rate) + ((h >>> 9) & 1);
  const side = version === 1 ? (mono ? 17 : 32) : (mono ? 9 : 17);
  const sideAt = ((h >>> 16) & 1) === 0 ? 6 : 4;
  if (size < sideAt + side) return null;
  return { version, rate, channels: mono ? 1 : 2, size, samples: version === 1 ? 1152 : 576, sideAt, side };
}

// mainDataBegin is the frame's bit-reservoir back-pointer in bytes.
function mainDataBegin(f, fi) {
  const s = fi.sideAt;
  return fi.version === 1 ? (f[s] << 1) | (f[s + 1] >> 7) : f[s];
}

// silentFrame is a frame that decodes to silence in fi's format (as
// mux.Silent): the lowest bitrate, side information and main data zero.
function silentFrame(fi) {
  let h = 0x7ff << 21;
  if (fi.version === 1) h |= 3 << 19; else if (fi.version === 2) h |= 2 << 19;
  h |= (1 << 17) | (1 << 16) | (1 << 12);
  const base = fi.rate * (fi.version === 1 ? 1 : fi.version === 2 ? 2 : 4);
  h |= RATES.indexOf(base) << 10;
  if (fi.channels === 1) h |= 3 << 6;
  const hb = new Uint8Array([(h >>> 24) & 255, (h >>> 16) & 255, (h >>> 8) & 255, h & 255]);
  const f = new Uint8Array(frameInfo(hb).size);
  f.set(hb);
  return f;
}

const CHUNK_HEADER = 1 + 1 + 8 + 8 + 8 + 2 + 2, SIG = 64, MAX_FRAMES = 64, MAX_TITLE = 1024;
const MAX_CHUNK = CHUNK_HEADER + MAX_FRAMES * (2 + 1441) + MAX_TITLE + SIG;
const FLAG_DISCONTINUITY = 1, FLAG_METADATA = 2;

// parseChunk decodes a chunk with every check of mux.ParseChunk; the
// signature is not checked (verifyChunk). It throws when malformed.
function parseChunk(b) {
  if (b.length < CHUNK_HEADER + SIG || b.length > MAX_CHUNK) throw new Error("chunk of " + b.length + " bytes");
  if (b[0] !== 1) throw new Error("chunk version " + b[0]);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const u64 = (p) => v.getUint32(p) * 4294967296 + v.getUint32(p + 4);
  const c = { flags: b[1], seq: u64(2), timestamp: u64(10), produced: u64(18) };
  if (c.flags & ~(FLAG_DISCONTINUITY | FLAG_METADATA)) throw new Error("unknown flags");
  if (v.getUint32(10) >= 0x80000000 || v.getUint32(18) >= 0x80000000) throw new Error("negative timestamp");
  const titleLen = v.getUint16(26), n = v.getUint16(28);
  if (n === 0 || n > MAX_FRAMES || titleLen > MAX_TITLE) throw new Error(n + " frames, title of " + titleLen);
  let p = CHUNK_HEADER;
  const body = b.length - SIG;
  if (p + 2 * n + titleLen > body) throw new Error("truncated");
  const lens = [];
  for (let i = 0; i < n; i++) lens.push(v.getUint16(p + 2 * i));
  p += 2 * n;
  c.title = td.decode(b.subarray(p, p + titleLen));
  p += titleLen;
  c.frames = [];
  let first = null;
  for (let i = 0; i < n; i++) {
    const l = lens[i];
    if (p + l > body) throw new Error("frame " + i + " truncated");
    const f = b.subarray(p, p + l), fi = frameInfo(f);
    if (!fi || fi.size !== l) throw new Error("frame " + i + " is not a whole frame");
    if (first && (fi.version !== first.version || fi.rate !== first.rate || fi.channels !== first.channels)) throw new Error("frame " + i + " changes format");
    first = first || fi;
    c.frames.push(f);
    p += l;
  }
  if (p !== body) throw new Error((body - p) + " bytes after the frames");
  if (!(c.flags & FLAG_METADATA) && titleLen) throw new Error("title without metadata flag");
  c.format = first;
  c.samples = n * first.samples;
  c.unsigned = b.subarray(0, body);
  c.signature = b.subarray(body);
  c.raw = b;
  return c;
}

const CHUNK_CONTEXT = te.encode("p2pradio chunk v1\0");

// verifyChunk checks a parsed chunk's signature by the station's key
// (station: {raw: Uint8Array, key: CryptoKey}).
async function verifyChunk(station, c) {
  const m = new Uint8Array(CHUNK_CONTEXT.length + 32 + c.unsigned.length);
  m.set(CHUNK_CONTEXT); m.set(station.raw, CHUNK_CONTEXT.length); m.set(c.unsigned, CHUNK_CONTEXT.length + 32);
  return crypto.subtle.verify({ name: "Ed25519" }, station.key, c.signature, m);
}

function importKey(raw) { return crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]); }
const hex = (a) => Array.from(a, (x) => x.toString(16).padStart(2, "0")).join("");
function unhex(s) {
  if (typeof s !== "string" || s.length % 2 || /[^0-9a-fA-F]/.test(s)) throw new Error("bad hex");
  const a = new Uint8Array(s.length / 2);
  for (let i = 0; i < a.length; i++) a[i] = parseInt(s.substr(2 * i, 2), 16);
  return a;
}
const eq = (a, b) => a && b && a.length === b.length && a.every((x, i) => x === b[i]);
const concat = (...xs) => { const o = new Uint8Array(xs.reduce((n, x) => n + x.length, 0)); let p = 0; for (const x of xs) { o.set(x, p); p += x.length; } return o; };

// ---- links: one RTCPeerConnection each (the contract's "Links") ----

const PROOF = te.encode("P2PR-RTC1"), CLOSE = te.encode("P2PR-CLOSE"), PROOF_CONTEXT = te.encode("p2pradio webrtc v1\0");
const MAX_CTL = 64 * 1024, DATA_QUEUE = 64, GATHER_MS = 2000, PROOF_MS = 5000, DISCONNECTED_MS = 3000;

function fingerprint(sdp) {
  const m = /a=fingerprint:sha-256 ([0-9A-Fa-f:]+)/i.exec(sdp || "");
  return m ? m[1].toUpperCase() : null;
}

function uvarint(n) { const o = []; while (n >= 0x80) { o.push((n & 0x7f) | 0x80); n = Math.floor(n / 128); } o.push(n); return o; }
function readUvarint(b, p) { let n = 0, mul = 1; for (;;) { if (p >= b.length) throw new Error("truncated uvarint"); const x = b[p++]; n += (x & 0x7f) * mul; if (x < 0x80) return [n, p]; mul *= 128; } }

// Link is one peer link. The node's handlers: onProved(link),
// onMessage(link, m), onData(link, bytes), onClosed(link).
class Link {
  constructor(node, dialer, remote) {
    this.node = node; this.dialer = dialer; this.remote = remote; // signalling id ("node" or a page id)
    this.closed = false; this.proved = false; this.closeReason = "";
    this.depth = -1; this.free = 0; this.path = []; this.newest = -1; this.upload = 0; this.have = null;
    this.child = false; this.helloed = false; this.lastHeard = Date.now(); this.lastNew = 0; this.queue = [];
    // described resolves once both descriptions are set: a channel can
    // open (on loopback, under load) before the promise that sets the
    // last one has resolved.
    this.described = new Promise((resolve) => { this.setDescribed = resolve; });
    this.pc = new RTCPeerConnection({ iceServers: node.ice || [] });
    this.ctl = this.pc.createDataChannel("ctl", { negotiated: true, id: 0, ordered: true });
    this.data = this.pc.createDataChannel("data", { negotiated: true, id: 1, ordered: false });
    for (const ch of [this.ctl, this.data]) { ch.binaryType = "arraybuffer"; ch.onclose = () => this.gone("channel closed"); }
    this.data.bufferedAmountLowThreshold = 64 * 1024;
    this.data.onbufferedamountlow = () => this.flush();
    this.ctl.onopen = () => this.prove();
    this.ctl.onmessage = (e) => this.onCtl(new Uint8Array(e.data));
    this.data.onmessage = (e) => {
      const b = new Uint8Array(e.data);
      if (!this.proved) return this.close(CODE.BadMessage, "data before the key proof");
      if (b.length > MAX_CHUNK) return this.close(CODE.BadChunk, "data message of " + b.length + " bytes");
      this.lastHeard = Date.now();
      node.onData(this, b);
    };
    this.pc.onconnectionstatechange = () => {
      const s = this.pc.connectionState;
      if (s === "failed" || s === "closed") this.gone("connection " + s);
      clearTimeout(this.discTimer);
      if (s === "disconnected") this.discTimer = setTimeout(() => this.gone("disconnected for 3 s"), DISCONNECTED_MS);
    };
    this.proofTimer = setTimeout(() => { if (!this.proved) this.close(CODE.BadMessage, "no key proof in 5 s"); }, PROOF_MS + GATHER_MS * 2);
  }

  // gathered resolves once ICE gathering completes or after 2 s.
  gathered() {
    return new Promise((resolve) => {
      if (this.pc.iceGatheringState === "complete") return resolve();
      const t = setTimeout(resolve, GATHER_MS);
      this.pc.addEventListener("icegatheringstatechange", () => { if (this.pc.iceGatheringState === "complete") { clearTimeout(t); resolve(); } });
    });
  }
  async offer() {
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await this.gathered();
    return this.pc.localDescription.sdp;
  }
  async answer(sdp) {
    await this.pc.setRemoteDescription({ type: "offer", sdp });
    await this.pc.setLocalDescription(await this.pc.createAnswer());
    this.setDescribed();
    await this.gathered();
    return this.pc.localDescription.sdp;
  }
  async accept(sdp) { await this.pc.setRemoteDescription({ type: "answer", sdp }); this.setDescribed(); }

  prove() {
    this.proofSent = this.sendProof();
  }
  async sendProof() {
    try {
      await this.described;
      if (this.closed) return;
      const own = fingerprint(this.pc.localDescription.sdp), peer = fingerprint(this.pc.remoteDescription.sdp);
      const msg = concat(PROOF_CONTEXT, te.encode(own), [0], te.encode(peer));
      const sig = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, this.node.keys.privateKey, msg));
      if (!this.closed) { this.ctl.send(concat(PROOF, this.node.pub, sig)); this.provedOwn = true; }
    } catch (e) { this.close(CODE.BadMessage, "key proof: " + e.message); }
  }

  async checkProof(b) {
    if (b.length !== PROOF.length + 32 + 64 || !eq(b.subarray(0, PROOF.length), PROOF)) throw new Error("no key proof");
    const key = b.slice(PROOF.length, PROOF.length + 32), sig = b.subarray(PROOF.length + 32);
    const own = fingerprint(this.pc.localDescription.sdp), peer = fingerprint(this.pc.remoteDescription.sdp);
    const msg = concat(PROOF_CONTEXT, te.encode(peer), [0], te.encode(own));
    if (!(await crypto.subtle.verify({ name: "Ed25519" }, await importKey(key), sig, msg))) throw new Error("key proof does not verify");
    if (this.expectKey && !eq(key, this.expectKey)) throw new Error("not the key we dialed");
    this.key = key; this.keyHex = hex(key); this.id = this.keyHex.slice(0, 12);
  }

  onCtl(b) {
    if (this.closed) return;
    if (b.length > MAX_CTL) return this.close(CODE.BadMessage, "control message of " + b.length + " bytes");
    this.lastHeard = Date.now();
    if (b.length >= CLOSE.length && eq(b.subarray(0, CLOSE.length), CLOSE)) {
      let code = 0, reason = "";
      try { const [c, p] = readUvarint(b, CLOSE.length); code = c; reason = td.decode(b.subarray(p)); } catch (e) { /* closing anyway */ }
      return this.gone("closed by peer: " + code + " " + reason);
    }
    // Messages are handled in order; the first is the key proof.
    this.chain = (this.chain || Promise.resolve()).then(async () => {
      if (this.closed) return;
      if (!this.proving) {
        this.proving = true;
        try { await this.described; await this.checkProof(b); } catch (e) { return this.close(CODE.BadMessage, e.message); }
        // Our own proof goes first, before any wire message.
        await this.proofSent;
        if (this.closed) return;
        this.proved = true;
        clearTimeout(this.proofTimer);
        return this.node.onProved(this);
      }
      let m;
      try { m = decode(b); } catch (e) { return this.close(CODE.BadMessage, e.message); }
      this.node.onMessage(this, m);
    });
  }

  send(m) {
    if (this.closed || !this.proved || this.ctl.readyState !== "open") return false;
    try { this.ctl.send(encode(m)); return true; } catch (e) { return false; }
  }
  // sendData queues a chunk; at most 64 wait, the oldest dropped first.
  sendData(b) {
    if (this.closed || this.data.readyState !== "open") return false;
    this.queue.push(b);
    if (this.queue.length > DATA_QUEUE) { this.queue.shift(); this.node.dropped++; }
    this.flush();
    return true;
  }
  flush() {
    while (this.queue.length && !this.closed && this.data.readyState === "open" && this.data.bufferedAmount < 256 * 1024) {
      try { this.data.send(this.queue.shift()); } catch (e) { return; }
    }
  }
  // close sends the close message (after our key proof only: before, it
  // would be taken for a bad proof) and closes the connection once the
  // peer has closed its own (it does on reading the message), or after 1 s.
  close(code, reason) {
    if (this.closed) return;
    let sent = false;
    try {
      if (this.provedOwn && this.ctl.readyState === "open") {
        this.ctl.send(concat(CLOSE, uvarint(code), te.encode(reason || "").subarray(0, 1024)));
        sent = true;
      }
    } catch (e) { /* closing anyway */ }
    this.gone(reason || "closed", sent);
  }
  gone(why, wait) {
    if (this.closed) return;
    this.closed = true; this.closeReason = why;
    clearTimeout(this.proofTimer); clearTimeout(this.discTimer);
    const end = () => { try { this.pc.close(); } catch (e) { /* gone */ } };
    if (wait) {
      this.ctl.addEventListener("close", end);
      this.pc.addEventListener("connectionstatechange", () => { if (this.pc.connectionState !== "connected") end(); });
      setTimeout(end, 1000);
    } else {
      end();
    }
    this.node.onClosed(this);
  }
  // fedThrough reports whether any of ids (hex keys) is this peer or on its path.
  fedThrough(ids) { return ids.some((x) => x && (x === this.keyHex || this.path.some((p) => hex(p) === x))); }
}

// ---- playback: MediaSource with audio/mpeg ----

// Player appends the chunks' frames in sequence to a SourceBuffer in
// "sequence" mode, so the timeline is the frames back to back. A chunk
// missing when its turn comes is replaced by silent frames of its length
// (the chunks' timestamps say how long), and a frame whose bit reservoir
// reaches into missing data (at the start, after a hole) is muted: its
// side information zeroed, its main data kept for the frames after it.
// So there is no click, and the clock keeps to the stream.
class Player {
  constructor(audio, stats) {
    this.audio = audio; this.stats = stats;
    this.pending = new Map(); this.next = -1; this.nextTS = -1; this.reservoir = 0;
    this.out = []; this.segs = []; this.end = 0; this.log = []; this.appended = []; this.logBytes = 0; this.started = false;
    this.played = 0; this.concealed = 0; this.missed = 0; this.lastCT = 0; this.lastWall = 0; this.waitingSince = 0;
    this.ms = new MediaSource();
    this.ready = new Promise((res) => this.ms.addEventListener("sourceopen", () => {
      this.sb = this.ms.addSourceBuffer("audio/mpeg");
      this.sb.mode = "sequence";
      this.sb.addEventListener("updateend", () => this.pump());
      res();
    }, { once: true }));
    audio.preload = "auto";
    audio.src = window.URL.createObjectURL(this.ms);
    audio.addEventListener("playing", () => {
      if (this.stats.startupMs == null) {
        this.stats.startupMs = Math.round(performance.now());
        if (this.onEvent) this.onEvent("playing");
      }
      if (this.waitingSince) { this.missed += (performance.now() - this.waitingSince) / 1000; this.waitingSince = 0; }
    });
    audio.addEventListener("waiting", () => {
      if (this.onEvent) {
        const b = this.sb && this.sb.buffered.length ? this.sb.buffered.start(0).toFixed(3) + "-" + this.sb.buffered.end(this.sb.buffered.length - 1).toFixed(3) + "/" + this.sb.buffered.length : "none";
        this.onEvent("waiting at", audio.currentTime.toFixed(3), "buffered", b, "end", this.end.toFixed(3), "pending", this.pending.size, "next", this.next);
      }
      if (this.started && this.stats.startupMs != null && !this.waitingSince) { this.stats.rebuffers++; this.waitingSince = performance.now(); }
    });
  }

  // push takes a verified chunk.
  push(c) {
    if (c.seq < this.next || this.pending.has(c.seq)) return;
    this.pending.set(c.seq, c);
    if (this.next < 0 && !this.firstAt) {
      this.firstAt = performance.now();
      if (this.onEvent) this.onEvent("first chunk", c.seq);
      setTimeout(() => this.tick(), 31); // start as soon as the burst is in
    }
  }

  ahead() { return this.end - this.audio.currentTime; }

  // tick moves chunks to the SourceBuffer; run it often (every 50 ms).
  tick() {
    if (!this.sb) return;
    const now = performance.now();
    if (this.next < 0) {
      // The burst arrives unordered: start at its oldest chunk after a moment.
      if (!this.pending.size || now - this.firstAt < 30) return;
      this.next = Math.min(...this.pending.keys());
    }
    for (;;) {
      const c = this.pending.get(this.next);
      if (c) {
        this.pending.delete(this.next);
        if (c.flags & FLAG_DISCONTINUITY) this.reservoir = 0;
        this.appendChunk(c);
        continue;
      }
      // Missing: conceal it once it is late (less than 0.3 s of audio
      // left) and a later chunk says how long the hole is.
      if (!this.pending.size || this.ahead() > 0.3 || !this.started) break;
      const later = Math.min(...this.pending.keys()), lc = this.pending.get(later);
      const samples = this.nextTS >= 0 ? lc.timestamp - this.nextTS : lc.samples * (later - this.next);
      this.conceal(lc.format, Math.max(0, Math.round(samples / lc.format.samples)), lc);
      this.next = later;
    }
    this.pump();
    // play() as the first frames go in: the element starts as soon as it
    // has decoded enough, with no round trip through updateend.
    if (!this.started && this.end > 0.25) {
      this.started = true;
      if (this.onEvent) this.onEvent("play, buffered", this.end.toFixed(3));
      this.audio.play().catch((e) => { this.stats.error = "cannot play: " + e.message; });
    }
    this.measure();
  }

  appendChunk(c) {
    const fi = c.format, t0 = this.end, bytes = [];
    let real = 0, silent = 0;
    for (const f of c.frames) {
      if (mainDataBegin(f, fi) > this.reservoir) {
        // Its bit reservoir reaches into data we do not have: play it
        // muted (side information zero), but keep its main data, which
        // the next frames' reservoirs hold.
        const m = f.slice();
        m.fill(0, fi.sideAt, fi.sideAt + fi.side);
        bytes.push(m); silent++;
      } else {
        bytes.push(f); real++;
      }
      this.reservoir = Math.min(this.reservoir + f.length - fi.sideAt - fi.side, 4096);
    }
    const d = fi.samples / fi.rate;
    this.end += (real + silent) * d;
    this.segs.push({ t0, t1: this.end, real: real * d, silent: silent * d, produced: c.produced, seq: c.seq });
    this.noteAppended(c.seq, c.frames.length);
    this.next = c.seq + 1; this.nextTS = c.timestamp + c.samples;
    this.append(concat(...bytes));
  }

  conceal(fi, frames, lc) {
    if (frames <= 0) return;
    const t0 = this.end, f = silentFrame(fi), d = fi.samples / fi.rate;
    this.end += frames * d;
    this.segs.push({ t0, t1: this.end, real: 0, silent: frames * d, produced: 0, seq: -1 });
    this.noteAppended(-1, frames);
    this.reservoir = 0;
    this.append(concat(...Array(frames).fill(f)));
  }

  // noteAppended keeps what was appended (for exportPCM): a chunk's
  // frames, or (seq -1) concealment.
  noteAppended(seq, frames) {
    if (this.logBytes < 2 * 1024 * 1024) this.appended.push([seq, frames]);
  }

  append(b) {
    this.out.push(b);
    // Keep what was played for exportPCM, up to 2 min at 128 kbit/s.
    if (this.logBytes < 2 * 1024 * 1024) { this.log.push(b); this.logBytes += b.length; }
  }

  pump() {
    if (!this.sb || this.sb.updating || this.ms.readyState !== "open") return;
    const ct = this.audio.currentTime;
    if (this.sb.buffered.length && ct - this.sb.buffered.start(0) > 20) {
      this.sb.remove(0, ct - 10);
      return;
    }
    if (!this.out.length) return;
    const b = concat(...this.out);
    this.out = [];
    try { this.sb.appendBuffer(b); } catch (e) { this.stats.error = "append: " + e.message; }
  }

  // measure updates continuity: the audio clock's progress over real and
  // concealed frames, and the wall time it stood still while it should play.
  measure() {
    const ct = this.audio.currentTime;
    if (ct > this.lastCT) {
      for (const s of this.segs) {
        const a = Math.max(s.t0, this.lastCT), b = Math.min(s.t1, ct);
        if (b > a) {
          const frac = (b - a) / (s.t1 - s.t0);
          this.played += s.real * frac; this.concealed += s.silent * frac;
        }
      }
      this.lastCT = ct;
      while (this.segs.length > 2 && this.segs[1].t1 < ct) this.segs.shift();
    }
    const seg = this.segs.find((s) => s.t0 <= ct && ct < s.t1 && s.produced);
    if (seg && !this.audio.paused) this.stats.lagMs = Math.round(Date.now() - (seg.produced / 1000 + (ct - seg.t0) * 1000));
  }

  continuity() {
    const missed = this.missed + (this.waitingSince ? (performance.now() - this.waitingSince) / 1000 : 0);
    const all = this.played + this.concealed + missed;
    return all > 0 ? this.played / all : 1;
  }
}

// ---- the page as a node ----

const TICK_MS = 100, STALL_MS = 1000, STALL_WITH_BACKUP_MS = 500, SILENT_MS = 3000, WINDOW = 50, BURST_MS = 1200;
const BACKUPS = 2, FAILED_MS = 10000, REPAIR_LAG_MS = 200, REPAIR_AGAIN_MS = 200, REPAIR_SPAN = 30;

class PageNode {
  constructor(opts) {
    this.opts = opts;
    this.upload = Math.max(0, Math.floor(opts.uploadKbps));
    this.links = new Set(); this.parent = null; this.backups = []; this.depth = -1; this.path = [];
    this.win = new Map(); this.newest = -1; this.first = -1; this.arrived = new Map(); this.asked = new Map();
    this.received = 0; this.relayed = 0; this.relayedBytes = 0; this.forged = 0; this.dropped = 0; this.bad = 0;
    this.failed = new Map(); this.banned = new Set(); this.linkNo = 0; this.answers = new Map(); this.candWait = [];
    this.joining = false; this.searching = false; this.lastBackupTry = 0; this.parentSince = 0;
    this.stats = { startupMs: null, rebuffers: 0, lagMs: null, error: "" };
    this.events = [];
    this.player = new Player(opts.audio, this.stats);
    this.player.onEvent = (...w) => this.event(...w);
  }

  // event notes what happened, for debug(): the last 100 events.
  event(...what) {
    this.events.push(Math.round(performance.now()) + " " + what.join(" "));
    if (this.events.length > 100) this.events.shift();
  }

  async start() {
    this.event("start");
    // The key is made while the socket opens.
    this.keyed = (async () => {
      this.keys = await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"]);
      this.pub = new Uint8Array(await crypto.subtle.exportKey("raw", this.keys.publicKey));
      this.pubHex = hex(this.pub);
    })();
    await this.connect();
    this.timer = setInterval(() => this.step(), TICK_MS);
    this.step(); // join now, not at the first tick
    this.playTimer = setInterval(() => this.player.tick(), 50);
    this.statsTimer = setInterval(() => this.report(), 1000);
    addEventListener("pagehide", () => this.stop());
  }

  stop() {
    clearInterval(this.playTimer);
    for (const l of this.links) l.close(CODE.Goodbye, "leaving");
    clearInterval(this.timer); clearInterval(this.statsTimer);
    if (this.ws) this.ws.close(1000, "leaving");
  }

  // connect opens the signalling socket and waits for its welcome.
  connect() {
    const url = new window.URL(this.opts.signal || "peer", location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      const t = setTimeout(() => { reject(new Error("no welcome from " + url)); ws.close(); }, 3000);
      ws.onopen = async () => {
        try { await this.keyed; } catch (e) { clearTimeout(t); reject(e); ws.close(); return; }
        ws.send(JSON.stringify({ type: "hello", key: this.pubHex, upload_kbps: this.upload }));
      };
      ws.onerror = () => { clearTimeout(t); reject(new Error("cannot open " + url)); };
      ws.onclose = (e) => { if (this.ws === ws) { this.ws = null; this.wsError = e.reason || "signalling closed"; setTimeout(() => this.reconnect(), 2000); } };
      ws.onmessage = async (e) => {
        let m;
        try { m = JSON.parse(e.data); } catch (err) { return; }
        if (m.type === "welcome") {
          try {
            const raw = unhex(m.station);
            this.station = { raw, key: await importKey(raw), hex: m.station };
            this.nodeKey = m.node; this.ice = m.ice || []; this.you = m.you; this.ws = ws;
          } catch (err) { clearTimeout(t); reject(err); return; }
          clearTimeout(t);
          this.event("welcome");
          resolve();
          return;
        }
        this.onSignal(m);
      };
    });
  }
  reconnect() { if (!this.stopped && !this.ws) this.connect().catch(() => setTimeout(() => this.reconnect(), 2000)); }
  signal(m) { if (this.ws && this.ws.readyState === 1) { this.ws.send(JSON.stringify(m)); return true; } return false; }

  onSignal(m) {
    switch (m.type) {
      case "candidates": { const w = this.candWait.shift(); if (w) w(m.peers || []); break; }
      case "answer": { const a = this.answers.get(m.link); if (a) { this.answers.delete(m.link); a.resolve(m.sdp); } break; }
      case "error": { const a = this.answers.get(m.link); if (a) { this.answers.delete(m.link); a.reject(new Error(m.error)); } break; }
      case "offer": this.onOffer(m); break;
    }
  }

  candidates() {
    return new Promise((resolve) => {
      if (!this.signal({ type: "candidates" })) return resolve([]);
      const t = setTimeout(() => { const i = this.candWait.indexOf(done); if (i >= 0) this.candWait.splice(i, 1); resolve([]); }, 2000);
      const done = (ps) => { clearTimeout(t); resolve(ps); };
      this.candWait.push(done);
    });
  }

  // dial opens a link to a candidate and waits for its Hello.
  async dial(cand) {
    const l = new Link(this, true, cand.id);
    l.expectKey = unhex(cand.key);
    this.links.add(l);
    const guard = setTimeout(() => l.close(CODE.Goodbye, "dial took over 6 s"), 6000);
    const gone = new Promise((_, reject) => { l.onGone = () => reject(new Error(l.closeReason)); });
    gone.catch(() => {});
    const race = (p) => Promise.race([p, gone]);
    try {
      const no = ++this.linkNo;
      const sdp = await race(l.offer());
      const answer = new Promise((resolve, reject) => {
        this.answers.set(no, { resolve, reject });
        setTimeout(() => { this.answers.delete(no); reject(new Error("no answer")); }, 3000);
      });
      if (!this.signal({ type: "offer", to: cand.id, link: no, sdp })) throw new Error("no signalling");
      await race(l.accept(await race(answer)));
      await race(new Promise((resolve, reject) => {
        l.onHello = resolve;
        setTimeout(() => reject(new Error("no hello")), 4000);
      }));
      clearTimeout(guard);
      l.onGone = null;
      return l;
    } catch (e) {
      clearTimeout(guard);
      this.event("dial", cand.id, "failed:", e.message);
      this.failed.set(cand.key, Date.now());
      l.close(CODE.Goodbye, "dial: " + e.message);
      return null;
    }
  }

  async onOffer(m) {
    if (this.links.size >= this.maxChildren() + 8) return; // the dialer times out
    const l = new Link(this, false, m.from);
    this.links.add(l);
    try {
      const sdp = await l.answer(m.sdp);
      this.signal({ type: "answer", to: m.from, link: m.link, sdp });
    } catch (e) { l.close(CODE.Goodbye, "answer: " + e.message); }
  }

  onProved(l) {
    if (l.dialer) l.send(this.hello());
  }

  hello() {
    return { type: T.Hello, station: this.station.raw, observed: "", depth: this.depth, freeSlots: this.freeSlots(),
      uploadKbps: this.uploadClaim(), listenAddr: "", path: this.path, newest: this.newest + 1 };
  }
  status() {
    return { type: T.Status, depth: this.depth, freeSlots: this.freeSlots(), uploadKbps: this.uploadClaim(), path: this.path, newest: this.newest + 1 };
  }

  bitrate() {
    const c = this.win.get(this.newest);
    return c ? c.raw.length * 8 / (c.samples / c.format.rate) / 1000 : 0;
  }
  maxChildren() { return this.upload > 0 ? Math.floor(this.upload / ((this.bitrate() || 128) * 1.05)) : 0; }
  children() { return [...this.links].filter((l) => l.child); }
  freeSlots() { return Math.max(0, this.maxChildren() - this.children().length); }
  uploadClaim() { return this.maxChildren() > 0 ? this.upload : 0; }

  onMessage(l, m) {
    switch (m.type) {
      case T.Hello:
        if (m.version !== WIRE_VERSION) return l.close(CODE.Version, "control: wire version " + m.version + ", this node speaks " + WIRE_VERSION);
        if (!eq(m.station, this.station.raw)) return l.close(CODE.WrongStation, "control: peer is on another station");
        if (m.depth === 0 && !eq(l.key, this.station.raw)) return l.close(CODE.BadMessage, "control: claims depth 0 without the station's key");
        this.update(l, m);
        l.upload = m.uploadKbps;
        if (!l.helloed) {
          l.helloed = true;
          if (!l.dialer) l.send(this.hello());
          if (l.onHello) l.onHello();
        }
        break;
      case T.Status:
        if (m.depth === 0 && !eq(l.key, this.station.raw)) return l.close(CODE.BadMessage, "control: claims depth 0 without the station's key");
        this.update(l, m);
        l.upload = m.uploadKbps;
        if (l === this.parent) this.adoptPath();
        break;
      case T.Subscribe: return this.subscribe(l, m);
      case T.Unsubscribe:
        l.child = false;
        if (l === this.parent) { this.loseParent("displaced"); l.close(CODE.Goodbye, "displaced"); }
        break;
      case T.Welcome: case T.Refuse:
        if (l.onAnswer) { const f = l.onAnswer; l.onAnswer = null; f(m); }
        break;
      case T.Request:
        for (const s of m.seqs) { const c = this.win.get(s); if (c) this.sendChunk(l, c); }
        break;
      case T.Have: l.have = m; l.newest = Math.max(l.newest, haveNewest(m)); break;
      case T.PeerList: break; // pages find peers through the signalling node
      default: l.close(CODE.BadMessage, "unexpected message");
    }
  }

  update(l, m) { l.depth = m.depth; l.free = m.freeSlots; l.path = m.path; l.newest = m.newest - 1; }

  subscribe(l, m) {
    if (l.child) return;
    if (this.depth < 0) return l.send({ type: T.Refuse, reason: "not joined" });
    if (this.path.some((p) => eq(p, l.key))) return l.send({ type: T.Refuse, reason: "loop: you are my ancestor" });
    if (this.freeSlots() === 0) return l.send({ type: T.Refuse, reason: "no free slot" });
    l.send({ type: T.Welcome });
    l.send(this.status());
    l.send({ type: T.PeerList, peers: [] });
    // The burst: recent chunks (from m.from on, or those of the last
    // BURST_MS at the newest chunk's duration, as a Go node sends).
    let from = m.from > 0 ? m.from : Math.max(0, this.newest - this.burst() + 1);
    from = Math.max(from, this.newest - WINDOW + 1);
    for (let s = from; s <= this.newest; s++) { const c = this.win.get(s); if (c) this.sendChunk(l, c); }
    l.child = true;
  }

  burst() {
    const c = this.win.get(this.newest), d = c ? 1000 * c.samples / c.format.rate : 100;
    return Math.max(1, Math.ceil(BURST_MS / d));
  }

  sendChunk(l, c) { if (l.sendData(c.raw)) { this.relayed++; this.relayedBytes += c.raw.length; } }

  onData(l, b) {
    let c;
    try { c = parseChunk(b); } catch (e) { this.bad++; return l.close(CODE.BadChunk, e.message); }
    const floor = this.newest + 1 - WINDOW;
    if (c.seq < floor || this.win.has(c.seq)) return;
    // Verify in arrival order per link; a forged chunk cuts the link off
    // and nothing of it is played or relayed.
    l.vchain = (l.vchain || Promise.resolve()).then(async () => {
      if (l.closed || this.win.has(c.seq)) return;
      let ok = false;
      try { ok = await verifyChunk(this.station, c); } catch (e) { ok = false; }
      if (!ok) {
        // A forger is never dialed again.
        this.forged++; this.banned.add(l.keyHex);
        return l.close(CODE.BadChunk, "mux: bad signature");
      }
      if (this.win.has(c.seq) || c.seq < this.newest + 1 - WINDOW) return;
      l.lastNew = Date.now();
      this.accept(c);
    });
  }

  accept(c) {
    this.received++;
    this.win.set(c.seq, c);
    this.arrived.set(c.seq, Date.now());
    if (this.first < 0) this.first = c.seq;
    if (c.seq > this.newest) {
      this.newest = c.seq;
      for (const s of this.win.keys()) if (s <= this.newest - WINDOW) { this.win.delete(s); this.arrived.delete(s); }
    }
    for (const ch of this.children()) this.sendChunk(ch, c);
    this.player.push(c);
    if (this.parentSince) this.parentSince = 0;
  }

  onClosed(l) {
    this.links.delete(l);
    if (l.onGone) l.onGone();
    if (l.onAnswer) { const f = l.onAnswer; l.onAnswer = null; f(null); }
    this.backups = this.backups.filter((b) => b !== l);
    if (l === this.parent) { this.failed.set(l.keyHex, Date.now()); this.loseParent("parent lost: " + l.closeReason); }
  }

  loseParent(why) {
    this.event("lost parent:", why);
    this.lostParent = this.parent && this.parent.keyHex;
    this.parent = null; this.depth = -1; this.path = []; this.waiting = why;
    this.parentSince = Date.now();
    this.step(); // promote a backup now, not at the next tick
  }

  adoptPath() {
    const p = this.parent;
    if (!p || p.depth < 0) return;
    if (p.path.some((x) => eq(x, this.pub))) { p.close(CODE.Goodbye, "loop"); return; }
    const changed = this.depth !== p.depth + 1;
    this.depth = p.depth + 1;
    this.path = [...p.path, p.key];
    if (changed) for (const l of this.links) if (l.proved) l.send(this.status());
  }

  // subscribeTo asks l to push to us and waits for its answer.
  subscribeTo(l, from) {
    return new Promise((resolve) => {
      const t = setTimeout(() => { l.onAnswer = null; resolve(false); }, 1500);
      l.onAnswer = (m) => {
        clearTimeout(t);
        if (m && m.type === T.Refuse) { this.waiting = m.reason; this.event("refused by", l.id + ":", m.reason); }
        resolve(!!m && m.type === T.Welcome);
      };
      if (!l.send({ type: T.Subscribe, from })) { clearTimeout(t); l.onAnswer = null; resolve(false); }
    });
  }

  canServe(l, needSlot) {
    return !l.closed && l.depth >= 0 && (!needSlot || l.free > 0) && !l.path.some((x) => eq(x, this.pub));
  }

  // orderCands: pages with free slots, shallowest first, then the node.
  orderCands(cands) {
    const now = Date.now(), linked = new Set([...this.links].map((l) => l.keyHex));
    const ok = cands.filter((c) => c.key !== this.pubHex && !linked.has(c.key) && !this.banned.has(c.key) &&
      !(now - (this.failed.get(c.key) || -1e9) < FAILED_MS));
    const pages = ok.filter((c) => c.id !== "node" && c.free > 0 && c.depth >= 1).sort((a, b) => a.depth - b.depth);
    return [...pages, ...ok.filter((c) => c.id === "node")];
  }

  // probe dials candidates (at most most at once) and returns those that
  // answered, soon after the first: a dead one must not hold up the rest.
  // Those that answer later become backups if wanted.
  probe(cands, most) {
    return new Promise((resolve) => {
      const out = [];
      let pending = 0, done = false, grace = null;
      const finish = () => { if (!done) { done = true; clearTimeout(grace); resolve(out); } };
      for (const c of cands.slice(0, most)) {
        pending++;
        this.dial(c).then((l) => {
          pending--;
          if (l && done) this.late(l);
          else if (l) { out.push(l); if (!grace) grace = setTimeout(finish, 50); }
          if (pending === 0) finish();
        });
      }
      if (!pending) finish();
    });
  }

  // late keeps a link that answered after its probe as a backup, if one
  // is wanted and it qualifies.
  late(l) {
    if (this.parent && l !== this.parent && this.canServe(l, false) && this.backups.length < BACKUPS && !this.backups.includes(l) &&
      !l.fedThrough([this.parent.keyHex, this.pubHex])) this.backups.push(l);
    else if (l !== this.parent && !this.backups.includes(l)) l.close(CODE.Goodbye, "");
  }

  async join() {
    const all = await this.candidates(), cands = this.orderCands(all);
    this.event("join: candidates", all.map((c) => c.id + "/" + c.depth + "/" + c.free).join(","), "->", cands.map((c) => c.id).join(","));
    if (!cands.length) { this.waiting = "no candidates"; return; }
    const found = (await this.probe(cands, 3)).filter((l) => this.canServe(l, true) || (l.close(CODE.Goodbye, ""), false));
    found.sort((a, b) => a.depth - b.depth || b.newest - a.newest);
    for (const l of found) {
      if (!this.parent && await this.subscribeTo(l, this.newest >= 0 ? this.newest + 1 : 0)) {
        this.event("joined", l.id, "depth", l.depth + 1);
        this.parent = l; l.lastNew = Date.now(); this.waiting = "";
        this.adoptPath();
      } else if (this.parent && l !== this.parent && this.backups.length < BACKUPS && !l.fedThrough([this.parent.keyHex, this.pubHex])) {
        this.backups.push(l);
      } else if (l !== this.parent) {
        l.close(CODE.Goodbye, "");
      }
    }
  }

  async findBackups() {
    const cands = this.orderCands(await this.candidates()).filter((c) => c.depth >= 0);
    for (const l of await this.probe(cands, BACKUPS - this.backups.length)) this.late(l);
  }

  async orphan() {
    // Backups fed through the parent we lost are cut off too.
    for (const b of [...this.backups]) if (b.fedThrough([this.lostParent, this.pubHex])) { this.backups = this.backups.filter((x) => x !== b); b.close(CODE.Goodbye, "cut off"); }
    for (const b of [...this.backups]) {
      if (await this.subscribeTo(b, this.newest + 1)) {
        this.event("backup promoted", b.id);
        this.backups = this.backups.filter((x) => x !== b);
        this.parent = b; b.lastNew = Date.now(); this.waiting = "";
        this.adoptPath();
        return;
      }
    }
    await this.join();
  }

  // step is one tick: stall detection, bridging, repair, searches, Status.
  step() {
    const now = Date.now();
    for (const l of this.links) if (l.proved && now - l.lastHeard > SILENT_MS) l.close(CODE.Goodbye, "silent");
    const p = this.parent;
    if (p) {
      const silent = now - Math.max(p.lastNew, this.lastArrival());
      const backupAhead = this.backups.some((b) => b.newest > this.newest);
      if (silent > STALL_MS || (silent > STALL_WITH_BACKUP_MS && backupAhead)) {
        this.failed.set(p.keyHex, now);
        p.close(CODE.Goodbye, "stalled");
        // onClosed -> loseParent
      }
    }
    if (this.opts.fed) {
      // Fed by the caller (tests): a page at depth 1 that relays.
    } else if (!this.parent) {
      // Bridge: pull what follows our newest from the backups meanwhile.
      if (this.newest >= 0) for (const b of this.backups) b.send({ type: T.Request, seqs: [1, 2, 3, 4, 5].map((i) => this.newest + i) });
      if (!this.joining && now >= (this.nextJoin || 0)) {
        this.joining = true;
        this.orphan().finally(() => {
          this.joining = false;
          // Nothing found: again soon, then less and less often (up to
          // every second).
          this.joinDelay = this.parent ? 0 : Math.min(Math.max(2 * (this.joinDelay || 0), TICK_MS), 1000);
          this.nextJoin = Date.now() + this.joinDelay;
        });
      }
    } else {
      this.repair(now);
      if (!this.searching && this.backups.length < BACKUPS && now - this.lastBackupTry > 2000) {
        this.lastBackupTry = now; this.searching = true;
        this.findBackups().finally(() => { this.searching = false; });
      }
    }
    if (now - (this.lastStatus || 0) >= 1000) {
      this.lastStatus = now;
      const st = this.status(), have = this.haveMsg();
      for (const l of this.links) {
        if (!l.proved) continue;
        l.send(st);
        if (!l.dialer && !l.child && have) l.send(have);
      }
    }
  }

  lastArrival() { return this.arrived.get(this.newest) || 0; }

  haveMsg() {
    if (this.newest < 0) return null;
    const first = Math.max(this.newest - 63, this.first, 0), bm = new Uint8Array(Math.ceil((this.newest - first + 1) / 8));
    for (let s = first; s <= this.newest; s++) if (this.win.has(s)) bm[(s - first) >> 3] |= 0x80 >> ((s - first) & 7);
    return { type: T.Have, first, bitmap: bm };
  }

  // repair asks for chunks missing behind the newest: the backups whose
  // maps show them first, then the parent.
  repair(now) {
    if (this.newest < 1) return;
    const from = Math.max(this.newest - REPAIR_SPAN, this.first, this.player.next, 0);
    const sources = [...this.backups, this.parent], reqs = new Map();
    for (let s = from; s < this.newest; s++) {
      if (this.win.has(s)) { this.asked.delete(s); continue; }
      const a = this.asked.get(s);
      if (a && now - a.at < REPAIR_AGAIN_MS) continue;
      if (!a) {
        let seen = 0;
        for (let q = s + 1; q <= this.newest; q++) if (this.arrived.has(q)) { seen = this.arrived.get(q); break; }
        if (now - seen < REPAIR_LAG_MS) continue;
      }
      const tries = a ? a.tries : 0;
      const holders = sources.filter((x) => haveHas(x.have, s));
      const to = holders.length ? holders[tries % holders.length] : sources[tries % sources.length];
      this.asked.set(s, { at: now, tries: tries + 1 });
      if (!reqs.has(to)) reqs.set(to, []);
      if (reqs.get(to).length < MAX_REQUEST) reqs.get(to).push(s);
    }
    for (const s of this.asked.keys()) if (s < from) this.asked.delete(s);
    for (const [to, seqs] of reqs) to.send({ type: T.Request, seqs });
  }

  idOf(l) { return l.keyHex === this.nodeKey ? "node" : l.id; }

  snapshot() {
    const pl = this.player;
    return {
      playing: pl.started && !this.opts.audio.paused && !pl.waitingSince,
      continuity: pl.continuity(),
      lagMs: this.stats.lagMs,
      depth: this.depth,
      parent: this.parent ? this.idOf(this.parent) : null,
      children: this.children().map((l) => l.id),
      received: this.received,
      relayed: this.relayed,
      forged: this.forged,
      startupMs: this.stats.startupMs,
      rebuffers: this.stats.rebuffers,
      free: this.freeSlots(),
      uploadKbps: this.upload,
    };
  }

  report() { this.signal({ type: "stats", stats: this.snapshot() }); }
}

// exportPCM decodes the frames the player appended (at most the first 2
// minutes) with WebAudio (the decoder MediaSource plays them with) and
// returns {rate, channels, pcm: base64 of interleaved int16 LE, mp3:
// base64 of the frames, appended: [[seq, frames], ...] (seq -1:
// concealment)}: the same bytes through another decoder (mpg123) must
// give the same PCM.
async function exportPCM(player) {
  const mp3 = concat(...player.log), appended = player.appended.slice();
  const ctx = new OfflineAudioContext(2, 1, 44100);
  const buf = await ctx.decodeAudioData(mp3.slice().buffer);
  const n = buf.length, ch = buf.numberOfChannels, out = new Int16Array(n * ch);
  for (let c = 0; c < ch; c++) {
    const d = buf.getChannelData(c);
    for (let i = 0; i < n; i++) out[i * ch + c] = Math.max(-32768, Math.min(32767, Math.round(d[i] * 32768)));
  }
  const b64 = (u8) => { let s = ""; for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000)); return btoa(s); };
  return { rate: buf.sampleRate, channels: ch, pcm: b64(new Uint8Array(out.buffer)), mp3: b64(mp3), appended };
}

let node = null;
window.p2pradio = {
  // join starts the page as a peer: {audio: HTMLAudioElement, uploadKbps}.
  async join(opts) {
    if (node) return;
    node = new PageNode(opts);
    try { await node.start(); } catch (e) { const n = node; node = null; n.stop(); throw e; }
  },
  leave() { if (node) { node.stopped = true; node.stop(); node = null; } },
  joined() { return !!node; },
  stats() {
    if (!node) return { playing: false, continuity: 1, lagMs: null, depth: -1, parent: null, children: [], received: 0, relayed: 0, forged: 0, startupMs: null, rebuffers: 0, free: 0, uploadKbps: 0 };
    return node.snapshot();
  },
  exportPCM() { return exportPCM(node.player); },
  // debug describes the page's links and player, for people and tests.
  debug() {
    if (!node) return null;
    const pl = node.player;
    return { events: node.events, id: node.pubHex && node.pubHex.slice(0, 12), waiting: node.waiting, newest: node.newest, depth: node.depth, error: node.stats.error,
      signalling: !!node.ws, wsError: node.wsError, forged: node.forged, bad: node.bad,
      links: [...node.links].map((l) => ({ remote: l.remote, id: l.id, dialer: l.dialer, proved: l.proved, helloed: l.helloed, child: l.child,
        depth: l.depth, free: l.free, state: l.pc.connectionState, ice: l.pc.iceConnectionState, gathering: l.pc.iceGatheringState,
        cands: ((l.pc.localDescription && l.pc.localDescription.sdp) || "").split("\n").filter((x) => x.startsWith("a=candidate")).length,
        remoteCands: ((l.pc.remoteDescription && l.pc.remoteDescription.sdp) || "").split("\n").filter((x) => x.startsWith("a=candidate")).length, parent: l === node.parent, backup: node.backups.includes(l) })),
      player: { next: pl.next, end: pl.end, pending: pl.pending.size, started: pl.started, clock: pl.audio.currentTime,
        ready: pl.audio.readyState, buffered: pl.sb && pl.sb.buffered.length ? [pl.sb.buffered.start(0), pl.sb.buffered.end(0)] : null } };
  },
  // feed hands the page a chunk as its parent would, for a page joined
  // with {fed: true} (tests): it is checked like any other.
  async feed(b) {
    const c = parseChunk(b);
    if (!(await verifyChunk(node.station, c))) { node.forged++; return false; }
    node.depth = 1; node.path = [node.station.raw];
    if (!node.win.has(c.seq) && c.seq >= node.newest + 1 - WINDOW) node.accept(c);
    return true;
  },
  // What the tests reach: the codec and the checks.
  internals: { T, encode, decode, parseChunk, verifyChunk, importKey, frameInfo, silentFrame, fingerprint, hex, unhex, haveHas, node: () => node },
};
})();
