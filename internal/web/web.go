// Package web holds a node's station page: one self-contained HTML file
// (inline style and script, no external assets, no build step) that joins
// the swarm as a peer (peer.js, inlined: WebRTC links signalled at /peer,
// see docs/browser-peers.md) or plays the node's HTTP stream, shows the
// title and live figures from status.json, and at a broadcaster draws the
// overlay tree.
package web

import (
	"bytes"
	_ "embed"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/p2pradio/p2pradio/control"
)

// Page is the station page, with PeerJS inlined. It expects status.json,
// the stream (at the path status.json names) and the signalling socket
// (peer) relative to its own URL.
var Page = bytes.Replace(stationHTML, []byte("<!--peer.js-->"), []byte("<script>\n"+PeerJS+"</script>"), 1)

//go:embed station.html
var stationHTML []byte

// PeerJS is the page's peer: the wire codec, chunk verification, WebRTC
// links, the overlay's rules for a listener and MediaSource playback. It
// defines window.p2pradio (join, leave, stats, exportPCM). Its wire
// version is control.WireVersion.
var PeerJS = withWireVersion(peerJS)

//go:embed peer.js
var peerJS string

// withWireVersion writes control.WireVersion into peer.js.
func withWireVersion(js string) string {
	const decl = "const WIRE_VERSION = 2,"
	if !strings.Contains(js, decl) {
		panic("web: peer.js declares no WIRE_VERSION")
	}
	return strings.Replace(js, decl, fmt.Sprintf("const WIRE_VERSION = %d,", control.WireVersion), 1)
}

// ContentSecurityPolicy keeps the page to its own origin: it loads nothing
// from elsewhere.
const ContentSecurityPolicy = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; " +
	"connect-src 'self'; media-src 'self' blob:; img-src 'self' data:; base-uri 'none'; form-action 'none'"

// ServePage writes the page.
func ServePage(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	if r.Method == http.MethodHead {
		return
	}
	w.Write(Page)
}

// Serve serves h on addr (host:port) from a goroutine it owns, until stop
// is called. It returns the page's URL. stop closes the listener and every
// connection, live streams included, and waits for the goroutine.
func Serve(addr string, h http.Handler) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	stop = func() {
		srv.Close()
		<-done
	}
	return "http://" + ln.Addr().String() + "/", stop, nil
}
