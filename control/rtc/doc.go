// Package rtc carries the overlay's links over WebRTC data channels, so
// that the station page in a browser can be a peer (docs/browser-peers.md
// is the contract with the page).
//
// A link is one PeerConnection with two negotiated data channels: "ctl"
// (id 0, ordered) carries control messages and "data" (id 1, unordered)
// carries chunks. Each side proves its identity key by signing the two
// DTLS fingerprints of the link's SDP. A Transport answers offers (Answer,
// what a node's /peer endpoint calls) and, with Config.Signal, dials
// (Dial: Go-to-Go links, which the tests use); its links are control.Conns.
//
// The package keeps pion out of package control; a node joins a Transport's
// Accept to its QUIC transport's with control.Join.
package rtc
