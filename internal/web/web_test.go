package web

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/control"
)

func TestPageIsSelfContained(t *testing.T) {
	// Nothing loaded from elsewhere: no external scripts, styles, fonts or
	// images (the SVG namespace is a name, not a load).
	ext := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//|@import|(^|[^\w.])url\(|<link[^>]+stylesheet`)
	require.Nil(t, ext.Find(Page), "external reference %q", ext.Find(Page))
	for _, id := range []string{`id="play"`, `id="audio"`, `id="title"`, `id="figs"`, `id="tree"`, `fetch("status.json"`, `window.p2pradio =`} {
		require.Contains(t, string(Page), id)
	}
}

func TestServePage(t *testing.T) {
	rec := httptest.NewRecorder()
	ServePage(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, "text/html; charset=utf-8", rec.Header().Get("Content-Type"))
	require.Equal(t, ContentSecurityPolicy, rec.Header().Get("Content-Security-Policy"))
	require.Equal(t, Page, rec.Body.Bytes())

	rec = httptest.NewRecorder()
	ServePage(rec, httptest.NewRequest(http.MethodHead, "/", nil))
	require.Empty(t, rec.Body.Bytes())
}

func TestServe(t *testing.T) {
	url, stop, err := Serve("127.0.0.1:0", http.HandlerFunc(ServePage))
	require.NoError(t, err)
	resp, err := http.Get(url)
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, Page, b)
	stop()
	_, err = http.Get(url)
	require.Error(t, err, "stopped")
}

func TestPeerJSSpeaksTheWireVersion(t *testing.T) {
	require.Contains(t, PeerJS, fmt.Sprintf("const WIRE_VERSION = %d,", control.WireVersion))
	require.Contains(t, string(Page), "window.p2pradio =")
}
