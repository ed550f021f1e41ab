package control

import (
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func udpPair(t *testing.T) (a, b net.PacketConn) {
	t.Helper()
	a, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	b, err = net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// readAll reads datagrams from pc until want have arrived (want < 0: until
// it is quiet for quiet), or for at most 5 s.
func readAll(t *testing.T, pc net.PacketConn, want int, quiet time.Duration) (got []string, at []time.Time) {
	buf := make([]byte, 2048)
	end := time.Now().Add(5 * time.Second)
	for len(got) != want && time.Now().Before(end) {
		deadline := end
		if want < 0 {
			deadline = time.Now().Add(quiet)
		}
		require.NoError(t, pc.SetReadDeadline(deadline))
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			break
		}
		got = append(got, string(buf[:n]))
		at = append(at, time.Now())
	}
	return got, at
}

func TestLossyPacketConnDelay(t *testing.T) {
	a, b := udpPair(t)
	before := runtime.NumGoroutine()
	l := NewLossyPacketConn(a, LinkConfig{Delay: 200 * time.Millisecond})
	start := time.Now()
	for _, s := range []string{"one", "two", "three"} {
		n, err := l.WriteTo([]byte(s), b.LocalAddr())
		require.NoError(t, err)
		require.Equal(t, len(s), n)
	}
	require.Less(t, time.Since(start), 150*time.Millisecond, "WriteTo does not wait for the delay")
	got, at := readAll(t, b, 3, 0)
	require.Equal(t, []string{"one", "two", "three"}, got, "no jitter: order kept")
	require.GreaterOrEqual(t, at[0].Sub(start), 200*time.Millisecond)
	require.NoError(t, l.Close())
	for deadline := time.Now().Add(time.Second); runtime.NumGoroutine() > before && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if runtime.NumGoroutine() > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
	}
	_, err := l.WriteTo([]byte("x"), b.LocalAddr())
	require.ErrorIs(t, err, net.ErrClosed)
	require.NoError(t, l.Close(), "idempotent")
}

func TestLossyPacketConnLoss(t *testing.T) {
	a, b := udpPair(t)
	l := NewLossyPacketConn(a, LinkConfig{Loss: 0.5, Seed: 3})
	defer l.Close()
	for range 200 {
		_, err := l.WriteTo([]byte("x"), b.LocalAddr())
		require.NoError(t, err)
	}
	got, _ := readAll(t, b, -1, 300*time.Millisecond)
	require.Greater(t, len(got), 60)
	require.Less(t, len(got), 140)

	all := NewLossyPacketConn(b, LinkConfig{Loss: 1})
	defer all.Close()
	_, err := all.WriteTo([]byte("x"), a.LocalAddr())
	require.NoError(t, err)
	got, _ = readAll(t, a, -1, 300*time.Millisecond)
	require.Empty(t, got)
}

func TestLossyPacketConnBandwidth(t *testing.T) {
	a, b := udpPair(t)
	l := NewLossyPacketConn(a, LinkConfig{Bandwidth: 100_000}) // 1000 B = 10 ms
	defer l.Close()
	start := time.Now()
	for range 10 {
		_, err := l.WriteTo(make([]byte, 1000), b.LocalAddr())
		require.NoError(t, err)
	}
	got, at := readAll(t, b, 10, 0)
	require.Equal(t, 10, len(got))
	require.GreaterOrEqual(t, at[9].Sub(start), 100*time.Millisecond)
}

// Close discards what is queued and stops the queue's goroutine.
func TestLossyPacketConnCloseDiscards(t *testing.T) {
	a, b := udpPair(t)
	l := NewLossyPacketConn(a, LinkConfig{Delay: time.Hour})
	_, err := l.WriteTo([]byte("x"), b.LocalAddr())
	require.NoError(t, err)
	require.NoError(t, l.Close())
	got, _ := readAll(t, b, -1, 100*time.Millisecond)
	require.Empty(t, got)
}
