package control

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testTransport is the contract every Transport passes. newPair returns two
// fresh transports and closes them when the test ends.
func testTransport(t *testing.T, newPair func(t *testing.T) (a, b Transport)) {
	testTransportWith(t, contractOptions{maxControl: MaxMessageSize, listenAddrs: true}, newPair)
}

// contractOptions are where transports may differ within the contract.
type contractOptions struct {
	// maxControl is the largest control message (WebRTC links: 64 KiB).
	maxControl int
	// listenAddrs: a Conn's RemoteAddr is the peer transport's Addr (one
	// socket per node). Otherwise it is only not empty (WebRTC: the
	// selected ICE candidate pair's remote address).
	listenAddrs bool
	// dialsInFlight bounds the dials not yet accepted in ManyConns; zero
	// means 16. (A WebRTC link costs a DTLS handshake and ICE: 16 at once
	// under -race on a busy 2-core machine outlast the 5 s key proof.)
	dialsInFlight int
}

func testTransportWith(t *testing.T, opts contractOptions, newPair func(t *testing.T) (a, b Transport)) {
	t.Run("DialAccept", func(t *testing.T) {
		a, b := newPair(t)
		ca, cb := connect(t, a, b)
		require.True(t, ca.RemoteKey().Equal(b.Key()))
		require.True(t, cb.RemoteKey().Equal(a.Key()))
		if opts.listenAddrs {
			require.Equal(t, b.Addr(), ca.RemoteAddr())
			// One socket per node: the acceptor sees the dialer's own address.
			require.Equal(t, a.Addr(), cb.RemoteAddr())
		} else {
			require.NotEmpty(t, ca.RemoteAddr())
			require.NotEmpty(t, cb.RemoteAddr())
		}
		require.Nil(t, ca.Err())
		require.Nil(t, cb.Err())
		select {
		case <-ca.Done():
			t.Fatal("Done closed on an open connection")
		default:
		}
		require.GreaterOrEqual(t, ca.RTT(), time.Duration(0))
	})

	t.Run("ControlInOrderBothWays", func(t *testing.T) {
		a, b := newPair(t)
		ca, cb := connect(t, a, b)
		const n = 200
		msg := func(from string, i int) []byte {
			switch i {
			case 0:
				return []byte{} // empty messages are messages too
			case n - 1:
				return bytes.Repeat([]byte(from), opts.maxControl/len(from)) // the largest
			}
			return fmt.Appendf(nil, "%s %d", from, i)
		}
		var wg sync.WaitGroup
		for _, dir := range []struct {
			name     string
			from, to Conn
		}{{"a", ca, cb}, {"b", cb, ca}} {
			wg.Go(func() {
				ctx := testCtx(t)
				for i := range n {
					if err := dir.from.Send(ctx, msg(dir.name, i)); err != nil {
						t.Errorf("Send %s %d: %v", dir.name, i, err)
						return
					}
				}
			})
			wg.Go(func() {
				ctx := testCtx(t)
				for i := range n {
					got, err := dir.to.Receive(ctx)
					if err != nil {
						t.Errorf("Receive %s %d: %v", dir.name, i, err)
						return
					}
					if !bytes.Equal(got, msg(dir.name, i)) {
						t.Errorf("message %s %d: got %d bytes %.20q", dir.name, i, len(got), got)
						return
					}
				}
			})
		}
		wg.Wait()
	})

	t.Run("SendDoesNotKeepBuffer", func(t *testing.T) {
		a, b := newPair(t)
		ca, cb := connect(t, a, b)
		ctx := testCtx(t)
		buf := []byte("first")
		require.NoError(t, ca.Send(ctx, buf))
		require.NoError(t, sendData(ctx, ca, buf))
		copy(buf, "XXXXX")
		got, err := cb.Receive(ctx)
		require.NoError(t, err)
		require.Equal(t, "first", string(got))
		got, err = cb.ReceiveData(ctx)
		require.NoError(t, err)
		require.Equal(t, "first", string(got))
	})

	t.Run("DataDelivered", func(t *testing.T) {
		a, b := newPair(t)
		ca, cb := connect(t, a, b)
		ctx := testCtx(t)
		want := map[string]bool{}
		var msgs [][]byte
		for i := range 60 {
			size := 1700
			if i%10 == 9 {
				size = 90_000 // about a whole chunk
			}
			m := make([]byte, size)
			rand.Read(m)
			msgs = append(msgs, m)
			want[string(m)] = true
		}
		for _, dir := range []struct{ from, to Conn }{{ca, cb}, {cb, ca}} {
			var wg sync.WaitGroup
			wg.Go(func() {
				for _, m := range msgs {
					if err := sendData(ctx, dir.from, m); err != nil {
						t.Errorf("SendData: %v", err)
						return
					}
				}
			})
			got := map[string]bool{}
			for range msgs {
				m, err := dir.to.ReceiveData(ctx)
				require.NoError(t, err)
				require.True(t, want[string(m)], "unknown message of %d bytes", len(m))
				require.False(t, got[string(m)], "duplicate message")
				got[string(m)] = true
			}
			wg.Wait()
			require.Len(t, got, len(msgs))
		}
		require.EqualValues(t, len(msgs), ca.(statser).Stats().DataReceived)
		require.EqualValues(t, len(msgs), cb.(statser).Stats().DataReceived)
	})

	t.Run("WantKeyMismatch", func(t *testing.T) {
		a, b := newPair(t)
		other, _, err := ed25519.GenerateKey(rand.Reader)
		require.NoError(t, err)
		_, err = a.Dial(testCtx(t), b.Addr(), other)
		require.ErrorIs(t, err, ErrKeyMismatch)
		// The right key still works afterwards.
		ca, _ := connect(t, a, b)
		require.True(t, ca.RemoteKey().Equal(b.Key()))
	})

	t.Run("Oversized", func(t *testing.T) {
		a, b := newPair(t)
		ca, cb := connect(t, a, b)
		ctx := testCtx(t)
		big := make([]byte, MaxMessageSize+1)
		require.ErrorIs(t, ca.Send(ctx, big), ErrMessageTooLarge)
		require.ErrorIs(t, ca.SendData(big), ErrMessageTooLarge)
		require.ErrorIs(t, ca.Send(ctx, big[:opts.maxControl+1]), ErrMessageTooLarge)
		// The connection is unharmed.
		require.NoError(t, ca.Send(ctx, []byte("after")))
		got, err := cb.Receive(ctx)
		require.NoError(t, err)
		require.Equal(t, "after", string(got))
	})

	t.Run("QueueFull", func(t *testing.T) {
		a, b := newPair(t)
		ca, _ := connect(t, a, b)
		m := make([]byte, 90_000)
		full := false
		for i := 0; i < 20_000 && !full; i++ {
			start := time.Now()
			err := ca.SendData(m)
			// Lenient: the machine may be busy; a blocking SendData would
			// wait for the peer, which a vanished peer never answers (see
			// TestQUICPeerVanishes and TestMemKill).
			require.Less(t, time.Since(start), 2*time.Second, "SendData blocked")
			switch {
			case errors.Is(err, ErrQueueFull):
				full = true
			case err != nil:
				t.Fatalf("SendData: %v", err)
			}
		}
		require.True(t, full, "the send queue never filled")
		require.NotZero(t, ca.(statser).Stats().SendDropped)
	})

	t.Run("CloseNotifiesPeer", func(t *testing.T) {
		a, b := newPair(t)
		ca, cb := connect(t, a, b)
		ctx := testCtx(t)
		received := make(chan error, 1)
		go func() {
			_, err := cb.Receive(ctx)
			received <- err
		}()
		require.NoError(t, ca.Close(42, "bye"))
		waitDone(t, cb, 3*time.Second)

		var ce *CloseError
		require.ErrorAs(t, cb.Err(), &ce)
		require.Equal(t, CloseError{Code: 42, Reason: "bye", Remote: true}, *ce)
		require.ErrorIs(t, cb.Err(), ErrClosed)
		require.ErrorAs(t, ca.Err(), &ce)
		require.Equal(t, CloseError{Code: 42, Reason: "bye", Remote: false}, *ce)

		select {
		case err := <-received:
			require.ErrorIs(t, err, ErrClosed)
		case <-time.After(3 * time.Second):
			t.Fatal("Receive did not return after the close")
		}
		_, err := cb.ReceiveData(ctx)
		require.ErrorIs(t, err, ErrClosed)
		require.ErrorIs(t, ca.Send(ctx, []byte("x")), ErrClosed)
		require.ErrorIs(t, ca.SendData([]byte("x")), ErrClosed)
		require.ErrorIs(t, cb.Send(ctx, []byte("x")), ErrClosed)
		// Idempotent, and the first reason stays.
		require.NoError(t, ca.Close(7, "again"))
		require.NoError(t, cb.Close(7, "again"))
		require.ErrorAs(t, ca.Err(), &ce)
		require.EqualValues(t, 42, ce.Code)
	})

	t.Run("CloseClamps", func(t *testing.T) {
		a, b := newPair(t)
		ca, cb := connect(t, a, b)
		long := strings.Repeat("r", 5000)
		require.NoError(t, ca.Close(math.MaxUint64, long))
		waitDone(t, cb, 3*time.Second)
		var ce *CloseError
		require.ErrorAs(t, cb.Err(), &ce)
		require.Equal(t, CloseError{Code: MaxCloseCode, Reason: long[:MaxCloseReason], Remote: true}, *ce)
	})

	t.Run("TransportClose", func(t *testing.T) {
		a, b := newPair(t)
		ca, cb := connect(t, a, b)
		accepted := make(chan error, 1)
		go func() {
			_, err := a.Accept(context.Background())
			accepted <- err
		}()
		require.NoError(t, a.Close())
		select {
		case err := <-accepted:
			require.ErrorIs(t, err, ErrClosed)
		case <-time.After(3 * time.Second):
			t.Fatal("a blocked Accept did not return on Close")
		}
		waitDone(t, ca, time.Second)
		waitDone(t, cb, 3*time.Second)
		var ce *CloseError
		require.ErrorAs(t, cb.Err(), &ce)
		require.Equal(t, CodeShutdown, ce.Code)
		require.True(t, ce.Remote)

		_, err := a.Accept(testCtx(t))
		require.ErrorIs(t, err, ErrClosed)
		_, err = a.Dial(testCtx(t), b.Addr(), nil)
		require.ErrorIs(t, err, ErrClosed)
		require.NoError(t, a.Close())
	})

	t.Run("ContextCanceled", func(t *testing.T) {
		a, b := newPair(t)
		ca, _ := connect(t, a, b)
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := ca.Receive(ctx)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		_, err = ca.ReceiveData(ctx)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		_, err = b.Accept(ctx)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Nil(t, ca.Err())
	})

	t.Run("ManyConns", func(t *testing.T) {
		a, b := newPair(t)
		const n = 50
		ctx := testCtx(t)
		// 50 connections open at once, with at most 16 dialed and not yet
		// accepted, so that the accept backlog (32) is not what is tested.
		sem := make(chan struct{}, cmp.Or(opts.dialsInFlight, 16))
		var wg sync.WaitGroup
		wg.Go(func() {
			for range n {
				c, err := b.Accept(ctx)
				if err != nil {
					t.Errorf("Accept: %v", err)
					return
				}
				<-sem
				wg.Go(func() { // echo one message
					m, err := c.Receive(ctx)
					if err == nil {
						err = c.Send(ctx, m)
					}
					if err != nil {
						t.Errorf("echo: %v", err)
					}
				})
			}
		})
		for i := range n {
			wg.Go(func() {
				sem <- struct{}{}
				c, err := a.Dial(ctx, b.Addr(), b.Key())
				if err != nil {
					t.Errorf("Dial %d: %v", i, err)
					return
				}
				want := fmt.Appendf(nil, "conn %d", i)
				if err := c.Send(ctx, want); err != nil {
					t.Errorf("Send %d: %v", i, err)
					return
				}
				got, err := c.Receive(ctx)
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("conn %d: echo %q, %v", i, got, err)
				}
			})
		}
		wg.Wait()
	})

	t.Run("NoGoroutineLeak", func(t *testing.T) {
		before := runtime.NumGoroutine()
		a, b := newPair(t)
		ca, cb := connect(t, a, b)
		ctx := testCtx(t)
		require.NoError(t, ca.Send(ctx, []byte("x")))
		require.NoError(t, sendData(ctx, cb, []byte("y")))
		_, err := cb.Receive(ctx)
		require.NoError(t, err)
		_, err = ca.ReceiveData(ctx)
		require.NoError(t, err)
		require.Greater(t, runtime.NumGoroutine(), 0)
		require.NoError(t, a.Close())
		require.NoError(t, b.Close())
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before, %d after Close:\n%s", before, n, buf[:runtime.Stack(buf, true)])
		}
	})
}

// testCtx is a context that ends with the test, or after 20 s.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// connect dials b from a and returns both ends.
func connect(t *testing.T, a, b Transport) (ca, cb Conn) {
	t.Helper()
	ctx := testCtx(t)
	accepted := make(chan Conn, 1)
	go func() {
		c, err := b.Accept(ctx)
		if err != nil {
			t.Errorf("Accept: %v", err)
		}
		accepted <- c
	}()
	ca, err := a.Dial(ctx, b.Addr(), b.Key())
	require.NoError(t, err)
	cb = <-accepted
	require.NotNil(t, cb)
	return ca, cb
}

// sendData sends m, waiting while the send queue is full.
func sendData(ctx context.Context, c Conn, m []byte) error {
	for {
		err := c.SendData(m)
		if !errors.Is(err, ErrQueueFull) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

func waitDone(t *testing.T, c Conn, d time.Duration) {
	t.Helper()
	select {
	case <-c.Done():
		require.Error(t, c.Err())
	case <-time.After(d):
		t.Fatalf("connection still open after %v", d)
	}
}

func newQUICPair(t testing.TB, cfg QUICConfig) (a, b *QUICTransport) {
	t.Helper()
	if cfg.IdleTimeout == 0 {
		// A busy machine (and -race) can starve quic-go's timers for
		// seconds; tests of the idle timeout set their own.
		cfg.IdleTimeout = 10 * time.Second
	}
	a, err := NewQUIC(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { a.Close() })
	b, err = NewQUIC(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	return a, b
}

func TestQUICTransport(t *testing.T) {
	testTransport(t, func(t *testing.T) (Transport, Transport) {
		return newQUICPair(t, QUICConfig{})
	})
}

func newMemPair(t *testing.T, cfg MemConfig) (a, b *MemTransport) {
	t.Helper()
	n := NewMemNetwork(cfg)
	t.Cleanup(func() { n.Close() })
	a, err := n.NewTransport(nil)
	require.NoError(t, err)
	b, err = n.NewTransport(nil)
	require.NoError(t, err)
	return a, b
}

func TestMemTransport(t *testing.T) {
	for _, tc := range []struct {
		name string
		link LinkConfig
	}{
		{"Ideal", LinkConfig{Bandwidth: 4 << 20}},
		{"Lossy", LinkConfig{Delay: time.Millisecond, Jitter: time.Millisecond, Loss: 0.2, Bandwidth: 4 << 20}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testTransport(t, func(t *testing.T) (Transport, Transport) {
				return newMemPair(t, MemConfig{Link: tc.link})
			})
		})
	}
}
