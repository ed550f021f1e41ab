package input

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// connPlan says how the test server treats one connection.
type connPlan struct {
	status      int                // if not 0 or 200, answer with this error status
	contentType string             // "": audio/mpeg
	metaint     string             // "": the server's metaint
	start       func(last int) int // audio offset to start at, given where the last connection stopped; nil: there
	stopWire    int                // stop after this many bytes on the wire; 0: at the end of the audio
	then        string             // after stopping: "abort" (drop), "stall" (stay silent), "end" (finish), "hold" (stay open)
	length      bool               // send a Content-Length: a file, not a stream
}

// icyServer is a live stream server that speaks ICY like Icecast: audio
// with a metadata block every metaint bytes whose title is "Song N", N being
// the audio offset divided by titleEvery. Connection i follows plans[i] (the
// last plan repeats). A new connection resumes where the last stopped,
// optionally with a burst of earlier audio or after a gap (plan.start).
type icyServer struct {
	*httptest.Server
	t          *testing.T
	audio      []byte
	metaint    int
	titleEvery int
	plans      []connPlan

	mu    sync.Mutex
	conns int
	last  int // the audio offset the latest connection reached
}

func newICYServer(t *testing.T, audio []byte, metaint, titleEvery int, plans ...connPlan) *icyServer {
	s := &icyServer{t: t, audio: audio, metaint: metaint, titleEvery: titleEvery, plans: plans}
	s.Server = httptest.NewServer(s)
	t.Cleanup(s.Close)
	return s
}

func (s *icyServer) connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

// title is the title of the metadata block after audio offset off.
func (s *icyServer) title(off int) string { return fmt.Sprintf("Song %d", off/s.titleEvery) }

// lastTitle is the title of the last metadata block that a client reading
// the whole audio meets on a connection that starts at audio offset start.
func (s *icyServer) lastTitle(start int) string {
	last := start + (len(s.audio)-1-start)/s.metaint*s.metaint
	return s.title(last)
}

// encode is the wire stream from audio offset start, and for each wire
// offset the audio offset reached.
func (s *icyServer) encode(start int) (wire []byte, audioAt []int) {
	pos := start
	for {
		n := min(s.metaint, len(s.audio)-pos)
		for i := 0; i < n; i++ {
			audioAt = append(audioAt, pos+i)
		}
		wire = append(wire, s.audio[pos:pos+n]...)
		pos += n
		if pos == len(s.audio) {
			return wire, append(audioAt, pos)
		}
		m := []byte(fmt.Sprintf("StreamTitle='%s';StreamUrl='';", s.title(pos)))
		m = append(m, make([]byte, (16-len(m)%16)%16)...)
		for i := 0; i < 1+len(m); i++ {
			audioAt = append(audioAt, pos)
		}
		wire = append(wire, byte(len(m)/16))
		wire = append(wire, m...)
	}
}

func (s *icyServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	plan := s.plans[min(s.conns, len(s.plans)-1)]
	s.conns++
	start := s.last
	s.mu.Unlock()
	if r.Header.Get("Icy-MetaData") != "1" {
		http.Error(w, "no Icy-MetaData", http.StatusBadRequest)
		return
	}
	if plan.status != 0 && plan.status != http.StatusOK {
		http.Error(w, http.StatusText(plan.status), plan.status)
		return
	}
	if plan.start != nil {
		start = max(0, min(plan.start(start), len(s.audio)))
	}
	wire, audioAt := s.encode(start)
	h := w.Header()
	h.Set("Content-Type", "audio/mpeg")
	if plan.contentType != "" {
		h.Set("Content-Type", plan.contentType)
	}
	h.Set("icy-metaint", strconv.Itoa(s.metaint))
	if plan.metaint != "" {
		h.Set("icy-metaint", plan.metaint)
	}
	h.Set("icy-name", "Test Radio")
	h.Set("icy-genre", "Test")
	h.Set("icy-br", "128")
	stop := len(wire)
	if plan.stopWire > 0 {
		stop = min(plan.stopWire, len(wire))
	}
	if plan.length {
		h.Set("Content-Length", strconv.Itoa(stop))
	}
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush() // a stream has no Content-Length, even when empty
	for off := 0; off < stop; {
		n := min(4096, stop-off)
		if _, err := w.Write(wire[off : off+n]); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		off += n
		s.mu.Lock()
		s.last = audioAt[off]
		s.mu.Unlock()
	}
	switch plan.then {
	case "abort":
		panic(http.ErrAbortHandler)
	case "stall", "hold":
		<-r.Context().Done()
	}
}

// testLogger logs to the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// fastConfig has short timeouts for tests.
func fastConfig(t *testing.T) HTTPConfig {
	return HTTPConfig{
		Logger:         testLogger(t),
		ConnectTimeout: 2 * time.Second,
		StallTimeout:   5 * time.Second,
		MinBackoff:     5 * time.Millisecond,
		MaxBackoff:     50 * time.Millisecond,
	}
}

// readTitled reads n bytes from src in uneven pieces, noting the title
// after each Read.
func readTitled(t *testing.T, src Source, n int) (got []byte, titles []string, titleAt []int) {
	t.Helper()
	sizes := []int{1, 1000, 17, 8192, 333}
	for i := 0; len(got) < n; i++ {
		buf := make([]byte, min(sizes[i%len(sizes)], n-len(got)))
		k, err := src.Read(buf)
		require.NoError(t, err, "after %d bytes", len(got))
		got = append(got, buf[:k]...)
		if tt := src.Title(); len(titles) == 0 || titles[len(titles)-1] != tt {
			titles = append(titles, tt)
			titleAt = append(titleAt, len(got))
		}
	}
	return got, titles, titleAt
}

func TestHTTPStripsMetadata(t *testing.T) {
	audio := readTestdata(t, "cbr128.mp3")
	srv := newICYServer(t, audio, 16000, 20000, connPlan{then: "hold"})
	src, err := OpenURL(t.Context(), srv.URL+"/stream", fastConfig(t))
	require.NoError(t, err)
	defer src.Close()
	require.Equal(t, StreamInfo{Name: "Test Radio", Genre: "Test", Bitrate: 128, ContentType: "audio/mpeg", Metaint: 16000}, src.Info())
	require.Empty(t, src.Title(), "no title before the first metadata block")
	got, titles, _ := readTitled(t, src, len(audio))
	require.True(t, bytes.Equal(audio, got), "the audio differs from the file")
	// Blocks come after 16000, 32000, ... 128000 bytes; titles change every
	// 20000 bytes: Song 0 (16000), 1 (32000), 2 (48000), 3 (64000), 4 (80000,
	// 96000), 5 (112000), 6 (128000).
	require.Equal(t, []string{"", "Song 0", "Song 1", "Song 2", "Song 3", "Song 4", "Song 5", "Song 6"}, titles)
	require.Equal(t, 1, srv.connections())
	require.NoError(t, src.Close())
	requireNoClientConns(t)
}

func TestHTTPReconnect(t *testing.T) {
	audio := readTestdata(t, "cbr128.mp3")
	const metaint = 16000
	// The first block's wire bytes are 16000..16000+1+48.
	tests := []struct {
		name     string
		stopWire int
		start    func(last int) int
		then     string
		want     func(drop int) []byte
	}{
		{name: "icecast burst", stopWire: 50_000, then: "abort",
			start: func(last int) int { return last - 20_000 }},
		{name: "burst larger than what was sent", stopWire: 10_000, then: "abort",
			start: func(last int) int { return 0 }},
		{name: "exact resume", stopWire: 50_000, then: "abort"},
		{name: "drop at a length byte", stopWire: 16_000, then: "abort",
			start: func(last int) int { return last - 5000 }},
		{name: "drop inside metadata", stopWire: 16_020, then: "abort",
			start: func(last int) int { return last - 5000 }},
		{name: "server ends the stream", stopWire: 70_000, then: "end",
			start: func(last int) int { return last - 30_000 }},
		{name: "gap: live point moved on", stopWire: 50_000, then: "abort",
			start: func(last int) int { return last + 10_000 },
			want: func(drop int) []byte {
				return append(append([]byte(nil), audio[:drop]...), audio[drop+10_000:]...)
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newICYServer(t, audio, metaint, 20000,
				connPlan{stopWire: tt.stopWire, then: tt.then},
				connPlan{start: tt.start, then: "hold"})
			src, err := OpenURL(t.Context(), srv.URL, fastConfig(t))
			require.NoError(t, err)
			defer src.Close()
			// The audio offset the first connection reached: its wire bytes
			// less the metadata blocks it fully or partly sent.
			_, audioAt := srv.encode(0)
			drop := audioAt[tt.stopWire]
			want := audio
			if tt.want != nil {
				want = tt.want(drop)
			}
			got, titles, titleAt := readTitled(t, src, len(want))
			require.True(t, bytes.Equal(want, got), "the audio differs across the reconnection")
			require.Equal(t, 2, srv.connections())
			// Titles go on changing after the reconnection.
			var before, after []string
			for i, at := range titleAt {
				if at <= drop {
					before = append(before, titles[i])
				} else {
					after = append(after, titles[i])
				}
			}
			require.NotEmpty(t, after, "no title change after the reconnection (before: %q)", before)
			start2 := drop
			if tt.start != nil {
				start2 = max(0, tt.start(drop))
			}
			require.Equal(t, srv.lastTitle(start2), src.Title())
		})
	}
}

func TestHTTPStall(t *testing.T) {
	audio := readTestdata(t, "vbr_id3_xing.mp3")
	srv := newICYServer(t, audio, 16000, 10000,
		connPlan{stopWire: 12_345, then: "stall"},
		connPlan{start: func(last int) int { return last - 4000 }, then: "hold"})
	cfg := fastConfig(t)
	cfg.StallTimeout = 300 * time.Millisecond
	src, err := OpenURL(t.Context(), srv.URL, cfg)
	require.NoError(t, err)
	defer src.Close()
	first := readN(t, src, 12_345)
	start := time.Now()
	rest := readN(t, src, len(audio)-len(first))
	require.GreaterOrEqual(t, time.Since(start), cfg.StallTimeout, "reconnected before the stall timeout")
	require.True(t, bytes.Equal(audio, append(first, rest...)))
	require.Equal(t, 2, srv.connections())
	_, audioAt := srv.encode(0)
	require.Equal(t, srv.lastTitle(audioAt[12_345]-4000), src.Title())
}

func TestHTTPPermanentErrors(t *testing.T) {
	audio := readTestdata(t, "cbr128.mp3")
	tests := []struct {
		name string
		plan connPlan
		is   error
	}{
		{"text/html", connPlan{contentType: "text/html; charset=utf-8"}, ErrContentType},
		{"aac", connPlan{contentType: "audio/aacp"}, ErrContentType},
		{"octet-stream", connPlan{contentType: "application/octet-stream"}, ErrContentType},
		{"404", connPlan{status: http.StatusNotFound}, ErrHTTPStatus},
		{"403", connPlan{status: http.StatusForbidden}, ErrHTTPStatus},
		{"bad metaint", connPlan{metaint: "lots"}, ErrBadMetaint},
		{"negative metaint", connPlan{metaint: "-5"}, ErrBadMetaint},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newICYServer(t, audio, 16000, 20000, tt.plan)
			src, err := OpenURL(t.Context(), srv.URL, fastConfig(t))
			require.ErrorIs(t, err, tt.is)
			require.Nil(t, src)
			require.Equal(t, 1, srv.connections(), "a permanent error is not retried")
			var se *StatusError
			if errors.As(err, &se) {
				require.Equal(t, tt.plan.status, se.StatusCode)
			}
			t.Log(err)
		})
	}
	// A server that says application/octet-stream is accepted when asked.
	srv := newICYServer(t, audio, 16000, 20000, connPlan{contentType: "application/octet-stream", then: "hold"})
	cfg := fastConfig(t)
	cfg.ContentTypes = append([]string{"application/octet-stream"}, defaultContentTypes...)
	src, err := OpenURL(t.Context(), srv.URL, cfg)
	require.NoError(t, err)
	require.Equal(t, audio[:1000], readN(t, src, 1000))
	require.NoError(t, src.Close())
}

func TestHTTPRetries(t *testing.T) {
	audio := readTestdata(t, "cbr128.mp3")
	unavailable := connPlan{status: http.StatusServiceUnavailable}

	t.Run("open retries a 503", func(t *testing.T) {
		srv := newICYServer(t, audio, 16000, 20000, unavailable, unavailable, connPlan{then: "hold"})
		src, err := OpenURL(t.Context(), srv.URL, fastConfig(t))
		require.NoError(t, err)
		defer src.Close()
		require.Equal(t, audio, readN(t, src, len(audio)))
		require.Equal(t, 3, srv.connections())
	})

	t.Run("open gives up", func(t *testing.T) {
		srv := newICYServer(t, audio, 16000, 20000, unavailable)
		cfg := fastConfig(t)
		cfg.MaxRetries = 3
		_, err := OpenURL(t.Context(), srv.URL, cfg)
		var se *StatusError
		require.ErrorAs(t, err, &se)
		require.Equal(t, http.StatusServiceUnavailable, se.StatusCode)
		require.Equal(t, 3, srv.connections())
	})

	t.Run("open until ctx is done", func(t *testing.T) {
		srv := newICYServer(t, audio, 16000, 20000, unavailable)
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		_, err := OpenURL(ctx, srv.URL, fastConfig(t))
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Greater(t, srv.connections(), 2)
	})

	t.Run("read gives up after a drop", func(t *testing.T) {
		// 404 after a drop is retried (Icecast says 404 while a mount's
		// source reconnects), up to MaxRetries.
		srv := newICYServer(t, audio, 16000, 20000,
			connPlan{stopWire: 30_000, then: "abort"}, connPlan{status: http.StatusNotFound})
		cfg := fastConfig(t)
		cfg.MaxRetries = 4
		src, err := OpenURL(t.Context(), srv.URL, cfg)
		require.NoError(t, err)
		defer src.Close()
		got, err := io.ReadAll(src)
		require.ErrorIs(t, err, ErrHTTPStatus)
		require.Contains(t, err.Error(), "giving up after 4 failed attempts")
		_, audioAt := srv.encode(0)
		require.Equal(t, audio[:audioAt[30_000]], got)
		require.Equal(t, 1+4, srv.connections())
		_, err2 := src.Read(make([]byte, 10))
		require.Equal(t, err, err2, "the error is sticky")
	})

	t.Run("never reconnect", func(t *testing.T) {
		srv := newICYServer(t, audio, 16000, 20000, connPlan{stopWire: 30_000, then: "end"}, connPlan{then: "hold"})
		cfg := fastConfig(t)
		cfg.MaxRetries = -1
		src, err := OpenURL(t.Context(), srv.URL, cfg)
		require.NoError(t, err)
		defer src.Close()
		_, err = io.ReadAll(src)
		require.ErrorContains(t, err, "server ended the stream")
		require.Equal(t, 1, srv.connections())
	})

	t.Run("connections without audio count as failures", func(t *testing.T) {
		srv := newICYServer(t, audio, 16000, 20000,
			connPlan{stopWire: 30_000, then: "abort"}, connPlan{stopWire: 1, start: func(int) int { return len(audio) }, then: "end"})
		cfg := fastConfig(t)
		cfg.MaxRetries = 3
		src, err := OpenURL(t.Context(), srv.URL, cfg)
		require.NoError(t, err)
		defer src.Close()
		_, err = io.ReadAll(src)
		require.ErrorContains(t, err, "giving up after 3 failed attempts")
		require.Equal(t, 1+3, srv.connections())
	})
}

func TestHTTPFile(t *testing.T) {
	// A response with a Content-Length is a file: its end is the end.
	audio := readTestdata(t, "speech.mp3")
	srv := newICYServer(t, audio, 4096, 10000, connPlan{length: true, then: "end"})
	src, err := OpenURL(t.Context(), srv.URL, fastConfig(t))
	require.NoError(t, err)
	defer src.Close()
	got, err := io.ReadAll(src)
	require.NoError(t, err)
	require.Equal(t, audio, got)
	_, err = src.Read(make([]byte, 1))
	require.Equal(t, io.EOF, err)
	require.Equal(t, 1, srv.connections())
}

func TestHTTPConnectTimeout(t *testing.T) {
	// A server that accepts connections and never answers.
	addr, conns := stallingServer(t, "")
	cfg := fastConfig(t)
	cfg.ConnectTimeout = 100 * time.Millisecond
	cfg.MaxRetries = 2
	start := time.Now()
	_, err := OpenURL(t.Context(), "http://"+addr+"/", cfg)
	require.ErrorIs(t, err, ErrConnectTimeout)
	require.Less(t, time.Since(start), 3*time.Second)
	require.Eventually(t, func() bool { return conns() == 2 }, 5*time.Second, time.Millisecond, "two attempts")
}

// stallingServer accepts connections, reads each request and sends the
// bytes head (perhaps none) and then nothing more until the test ends.
func stallingServer(t *testing.T, head string) (addr string, conns func() int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			wg.Go(func() {
				// Answer only once the request is in, as a server does:
				// net/http drops a connection that speaks first.
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if line == "\r\n" {
						break
					}
				}
				_, _ = c.Write([]byte(head))
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(open)
	}
}

func TestHTTPHeadersThatNeverEnd(t *testing.T) {
	// A server that starts its headers and stalls: OpenURL fails at once
	// after the header timeout, however many retries it may make, and
	// says what happened.
	addr, conns := stallingServer(t, "HTTP/1.0 200 OK\r\nContent-Type: audio/mpeg\r\nicy-na")
	cfg := fastConfig(t)
	cfg.HeaderTimeout = 300 * time.Millisecond
	start := time.Now()
	_, err := OpenURL(t.Context(), "http://"+addr+"/", cfg)
	took := time.Since(start)
	require.ErrorIs(t, err, ErrHeaderTimeout)
	var he *HeaderTimeoutError
	require.ErrorAs(t, err, &he)
	require.True(t, he.Partial)
	require.Contains(t, err.Error(), "http://"+addr+"/: the server began its response but did not finish its headers within 300ms")
	require.GreaterOrEqual(t, took, 300*time.Millisecond)
	require.Less(t, took, 2*time.Second)
	require.Equal(t, 1, conns(), "no retry")
	t.Logf("failed after %v: %v", took, err)
	requireNoClientConns(t)

	// With the defaults, within a few seconds.
	require.LessOrEqual(t, DefaultHeaderTimeout, 5*time.Second)
	cfg = HTTPConfig{Logger: testLogger(t)}
	start = time.Now()
	_, err = OpenURL(t.Context(), "http://"+addr+"/", cfg)
	require.ErrorIs(t, err, ErrHeaderTimeout)
	require.Less(t, time.Since(start), DefaultHeaderTimeout+time.Second)
	t.Logf("with the defaults: failed after %v", time.Since(start))
}

func TestHTTPHeaderTimeoutRetriesASilentServer(t *testing.T) {
	// A server that answers nothing at all may be busy: it is retried.
	addr, conns := stallingServer(t, "")
	cfg := fastConfig(t)
	cfg.HeaderTimeout = 100 * time.Millisecond
	cfg.MaxRetries = 3
	_, err := OpenURL(t.Context(), "http://"+addr+"/", cfg)
	var he *HeaderTimeoutError
	require.ErrorAs(t, err, &he)
	require.False(t, he.Partial)
	require.Contains(t, err.Error(), "giving up after 3 failed attempts")
	require.Contains(t, err.Error(), "the server sent no response within 100ms")
	require.Eventually(t, func() bool { return conns() == 3 }, 5*time.Second, time.Millisecond)
	_, err = OpenURL(t.Context(), "http://"+addr+"/", HTTPConfig{HeaderTimeout: -time.Second})
	require.Error(t, err)
}

func TestHTTPShoutcastV1(t *testing.T) {
	// SHOUTcast v1 answers "ICY 200 OK", which net/http alone refuses.
	audio := readTestdata(t, "mono22k.mp3")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &icyServer{audio: audio, metaint: 8192, titleEvery: 10000}
	wire, _ := srv.encode(0)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil || req.Header.Get("Icy-MetaData") != "1" {
			return
		}
		fmt.Fprintf(c, "ICY 200 OK\r\nicy-notice1: <BR>This stream requires Winamp<BR>\r\n"+
			"icy-name: Old School\xe9\r\ncontent-type: audio/mpeg\r\nicy-br: 48\r\nicy-metaint: 8192\r\n\r\n")
		c.Write(wire)
		io.Copy(io.Discard, c) // until the client closes
	}()
	defer func() { ln.Close(); <-done }()
	src, err := OpenURL(t.Context(), "http://"+ln.Addr().String()+"/;", fastConfig(t))
	require.NoError(t, err)
	require.Equal(t, "Old Schoolé", src.Info().Name)
	require.Equal(t, 48, src.Info().Bitrate)
	require.Equal(t, audio, readN(t, src, len(audio)))
	require.Equal(t, "Song 3", src.Title())
	require.NoError(t, src.Close())
}

func TestHTTPBadURL(t *testing.T) {
	for _, u := range []string{"ftp://example.com/x.mp3", "not a url", "http://", "://x"} {
		_, err := OpenURL(t.Context(), u, HTTPConfig{})
		require.Error(t, err, u)
	}
	_, err := OpenURL(t.Context(), "http://127.0.0.1:1/", HTTPConfig{StallTimeout: -1})
	require.Error(t, err)
}

func TestHTTPBackoff(t *testing.T) {
	h := &HTTP{cfg: HTTPConfig{MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}}
	var got []time.Duration
	for h.failures = 0; h.failures < 8; h.failures++ {
		got = append(got, h.backoff())
	}
	ms := time.Millisecond
	require.Equal(t, []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, time.Second, time.Second, time.Second, time.Second}, got)
	h.failures = 1 << 40
	require.Equal(t, time.Second, h.backoff())
}

func TestHTTPContract(t *testing.T) {
	audio := readTestdata(t, "cbr128.mp3")
	testSource(t, func(t *testing.T) Source {
		srv := newICYServer(t, audio, 16000, 20000, connPlan{then: "hold"})
		src, err := OpenURL(t.Context(), srv.URL, fastConfig(t))
		require.NoError(t, err)
		return src
	}, audio)
}

func TestHTTPCloseDuringReconnect(t *testing.T) {
	audio := readTestdata(t, "cbr128.mp3")
	srv := newICYServer(t, audio, 16000, 20000,
		connPlan{stopWire: 1000, then: "abort"}, connPlan{status: http.StatusServiceUnavailable})
	cfg := fastConfig(t)
	cfg.MinBackoff, cfg.MaxBackoff = time.Hour, time.Hour
	src, err := OpenURL(t.Context(), srv.URL, cfg)
	require.NoError(t, err)
	errc := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(src)
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond) // Read is (most likely) in its hour of backoff
	require.NoError(t, src.Close())
	select {
	case err := <-errc:
		require.ErrorIs(t, err, ErrClosed)
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the backoff wait")
	}
	require.Equal(t, 1, srv.connections(), "no attempt during the backoff")
	requireNoClientConns(t)
}

// requireNoClientConns checks that no HTTP client connection is left: the
// goroutines of a net/http client connection end with it.
func requireNoClientConns(t *testing.T) {
	t.Helper()
	require.Eventually(t, func() bool {
		buf := make([]byte, 1<<20)
		return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "net/http.(*persistConn)")
	}, 5*time.Second, 10*time.Millisecond, "an HTTP client connection outlived Close")
}

func ExampleOpenURL() {
	src, err := OpenURL(context.Background(), "http://localhost:8000/stream", HTTPConfig{
		Logger: slog.Default(),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer src.Close()
	buf := make([]byte, 4096)
	for {
		n, err := src.Read(buf)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Printf("%d bytes of %q (%s)\n", n, src.Info().Name, src.Title())
	}
}
