package output

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/mux"
)

// liveWriter writes chunks to h at speed times real time until the test
// ends, after writing the first n at once.
func liveWriter(t *testing.T, h *HTTP, chunks []*mux.Chunk, n int, speed float64) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
	})
	go func() {
		defer close(done)
		for i, c := range chunks {
			if i >= n {
				select {
				case <-time.After(time.Duration(float64(c.Duration()) / speed)):
				case <-ctx.Done():
					return
				}
			}
			h.WriteChunk(c)
		}
	}()
}

// rawListener connects from the local address from (nil: any), asks for
// the stream and reads nothing, ever.
func rawListener(t *testing.T, from net.IP, addr string) net.Conn {
	d := net.Dialer{}
	if from != nil {
		d.LocalAddr = &net.TCPAddr{IP: from}
	}
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, err = fmt.Fprintf(c, "GET /stream.mp3 HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
	require.NoError(t, err)
	return c
}

// requireLoopbackAlias skips the test where 127.0.0.2 is not a local
// address (Linux has all of 127/8; macOS only 127.0.0.1).
func requireLoopbackAlias(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("127.0.0.2 is not a local address here: %v", err)
	}
	ln.Close()
}

// clientFrom is an HTTP client whose connections come from the local
// address from.
func clientFrom(from net.IP) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: from}}
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
}

func TestHTTPManyNonReadersFromOneAddressDoNotShutOutOthers(t *testing.T) {
	requireLoopbackAlias(t)
	chunks, _ := demoChunks(t, 300, nil)
	h := NewHTTP(HTTPConfig{})
	srv := serve(t, h)
	liveWriter(t, h, chunks, 30, 1)
	addr := srv.Listener.Addr().String()

	// 300 clients from 127.0.0.1 that never read: 8 get a stream.
	for range 300 {
		rawListener(t, net.IPv4(127, 0, 0, 1), addr)
	}
	require.Eventually(t, func() bool { return h.Stats().RefusedAddress == 292 }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, 8, h.Stats().Listeners)

	// A player from another address is served and plays.
	resp, err := clientFrom(net.IPv4(127, 0, 0, 2)).Get(srv.URL + "/stream.mp3")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	audio := make([]byte, 48000)
	_, err = io.ReadFull(resp.Body, audio)
	require.NoError(t, err)
	_, err = mux.ParseFrame(audio)
	require.NoError(t, err)
	require.Equal(t, 9, h.Stats().Listeners)

	// The ninth from 127.0.0.1 is told why it is refused.
	resp2, err := clientFrom(net.IPv4(127, 0, 0, 1)).Get(srv.URL + "/stream.mp3")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp2.Body)
	resp2.Body.Close()
	require.Equal(t, http.StatusTooManyRequests, resp2.StatusCode)
	require.Contains(t, string(body), "too many streams to your address (8)")
	st := h.Stats()
	t.Logf("stats: %+v", st)
	require.Zero(t, st.Refused, "never full")
}

func TestHTTPAddressKey(t *testing.T) {
	for remote, want := range map[string]string{
		"127.0.0.1:5000":             "127.0.0.1",
		"[::ffff:10.0.0.1]:80":       "10.0.0.1",
		"[2001:db8:1:2:3:4:5:6]:443": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:443": "2001:db8:1:2::/64",
		"[fe80::1%eth0]:80":          "fe80::/64",
		"@":                          "",
		"":                           "",
	} {
		require.Equal(t, want, addrKey(remote), remote)
	}
}

func TestHTTPListenerThatStopsReadingIsCutWithinSeconds(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the unread bytes are read from Linux's TCP_INFO")
	}
	requireLoopbackAlias(t)
	// The stream runs at twice real time to make the test quicker: what
	// counts is how much audio the listener has not taken.
	const speed = 2
	chunks, _ := demoChunks(t, 400, nil)
	h := NewHTTP(HTTPConfig{Logger: testLogger(t)})
	srv := serve(t, h)
	liveWriter(t, h, chunks, 30, speed)
	addr := srv.Listener.Addr().String()

	// A player that reads in gulps of one second, from another address.
	resp, err := clientFrom(net.IPv4(127, 0, 0, 2)).Get(srv.URL + "/stream.mp3")
	require.NoError(t, err)
	defer resp.Body.Close()
	player := make(chan error, 1)
	go func() {
		br := bufio.NewReaderSize(resp.Body, 64<<10)
		buf := make([]byte, 64<<10)
		for {
			time.Sleep(time.Second / speed)
			if _, err := br.Read(buf); err != nil {
				player <- err
				return
			}
		}
	}()

	// A listener that takes its burst and then nothing.
	start := time.Now()
	rawListener(t, nil, addr)
	require.Eventually(t, func() bool { return h.Stats().Listeners == 2 }, 5*time.Second, time.Millisecond)
	require.Eventually(t, func() bool { return h.Stats().Listeners == 1 }, 15*time.Second, 10*time.Millisecond)
	cut := time.Since(start) * speed
	t.Logf("the listener that reads nothing was cut after %v of audio: %+v", cut, h.Stats())
	require.Less(t, cut, 10*time.Second)
	require.Equal(t, int64(1), h.Stats().Slow)

	// The player goes on.
	time.Sleep(3 * time.Second / speed)
	select {
	case err := <-player:
		t.Fatalf("the player was cut: %v", err)
	default:
	}
	require.Equal(t, 1, h.Stats().Listeners)
}

// testLogger logs to the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestHTTP10ClientGetsTheBodyUpToTheClose(t *testing.T) {
	chunks, frames := demoChunks(t, 30, nil)
	h := NewHTTP(HTTPConfig{})
	srv := serve(t, h)
	for _, c := range chunks[:25] {
		h.WriteChunk(c)
	}
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	require.NoError(t, err)
	defer conn.Close()
	_, err = io.WriteString(conn, "GET /stream.mp3 HTTP/1.0\r\nIcy-MetaData: 0\r\n\r\n")
	require.NoError(t, err)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	require.NoError(t, err)
	require.Equal(t, "HTTP/1.0 200 OK", resp.Proto+" "+resp.Status)
	require.Empty(t, resp.TransferEncoding)
	require.True(t, resp.Close)
	for _, c := range chunks[25:] {
		h.WriteChunk(c)
	}
	nb := burstFrames(frames, 2*time.Second)
	want := concat(frames[25*4-nb:])
	// Close ends the stream at once, sent or not: wait for it to be sent.
	require.Eventually(t, func() bool { return h.Stats().Bytes == int64(len(want)) }, 5*time.Second, time.Millisecond)
	h.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, want, body)
}
