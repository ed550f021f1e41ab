package control

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/stretchr/testify/require"
)

// rawDial opens a bare quic-go connection to t's transport, through the
// transport's handshake, so that a test can break the framing rules.
func rawDial(t *testing.T, from, to *QUICTransport) (*quic.Conn, *quic.Stream) {
	t.Helper()
	ctx := testCtx(t)
	var mismatch atomic.Bool
	addr, err := net.ResolveUDPAddr("udp", to.Addr())
	require.NoError(t, err)
	qc, err := from.tr.Dial(ctx, addr, from.clientTLS(to.Key(), &mismatch), from.qconf)
	require.NoError(t, err)
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	st, err := qc.OpenStreamSync(ctx)
	require.NoError(t, err)
	_, err = st.Write([]byte{preamble})
	require.NoError(t, err)
	var b [1]byte
	_, err = io.ReadFull(st, b[:])
	require.NoError(t, err)
	require.Equal(t, byte(ack), b[0])
	return qc, st
}

// requireCutOff checks that the transport closed both qc and the accepted
// connection with CodeProtocol.
func requireCutOff(t *testing.T, qc *quic.Conn, accepted Conn) {
	t.Helper()
	select {
	case <-qc.Context().Done():
	case <-time.After(3 * time.Second):
		t.Fatal("the peer was not cut off")
	}
	var appErr *quic.ApplicationError
	require.ErrorAs(t, context.Cause(qc.Context()), &appErr)
	require.EqualValues(t, CodeProtocol, appErr.ErrorCode)
	require.True(t, appErr.Remote)
	waitDone(t, accepted, time.Second)
	var ce *CloseError
	require.ErrorAs(t, accepted.Err(), &ce)
	require.Equal(t, CodeProtocol, ce.Code)
	require.False(t, ce.Remote)
}

func TestQUICOversizedControlFrameCutsOff(t *testing.T) {
	a, b := newQUICPair(t, QUICConfig{})
	qc, st := rawDial(t, a, b)
	accepted, err := b.Accept(testCtx(t))
	require.NoError(t, err)
	_, err = st.Write(binary.AppendUvarint(nil, MaxMessageSize+1))
	require.NoError(t, err)
	requireCutOff(t, qc, accepted)
}

func TestQUICOversizedDataStreamCutsOff(t *testing.T) {
	a, b := newQUICPair(t, QUICConfig{})
	qc, _ := rawDial(t, a, b)
	accepted, err := b.Accept(testCtx(t))
	require.NoError(t, err)
	s, err := qc.OpenUniStream()
	require.NoError(t, err)
	_, err = s.Write(binary.AppendUvarint(nil, MaxMessageSize+1))
	require.NoError(t, err)
	requireCutOff(t, qc, accepted)
}

// A data stream carries message after message; one cut short by the
// stream's end is dropped and the connection goes on.
func TestQUICDataStreamCutShort(t *testing.T) {
	a, b := newQUICPair(t, QUICConfig{})
	qc, _ := rawDial(t, a, b)
	accepted, err := b.Accept(testCtx(t))
	require.NoError(t, err)
	s, err := qc.OpenUniStream()
	require.NoError(t, err)
	var w []byte
	w = append(binary.AppendUvarint(w, 3), "abc"...)
	w = append(binary.AppendUvarint(w, 2), "de"...)
	w = append(binary.AppendUvarint(w, 9), "fgh"...) // 6 bytes short
	_, err = s.Write(w)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	ctx := testCtx(t)
	for _, want := range []string{"abc", "de"} {
		m, err := accepted.ReceiveData(ctx)
		require.NoError(t, err)
		require.Equal(t, want, string(m))
	}
	require.Eventually(t, func() bool { return accepted.(*QUICConn).Stats().DataFailed == 1 },
		3*time.Second, 10*time.Millisecond)
	require.Nil(t, accepted.Err())
	data, _ := accepted.(*QUICConn).Buffered()
	require.Zero(t, data)
}

func TestQUICControlStreamEndCutsOff(t *testing.T) {
	a, b := newQUICPair(t, QUICConfig{})
	qc, st := rawDial(t, a, b)
	accepted, err := b.Accept(testCtx(t))
	require.NoError(t, err)
	require.NoError(t, st.Close())
	requireCutOff(t, qc, accepted)
}

// An unfinished data stream is abandoned after DataTimeout without harming
// the connection.
func TestQUICDataTimeout(t *testing.T) {
	a, b := newQUICPair(t, QUICConfig{DataTimeout: 200 * time.Millisecond})
	qc, _ := rawDial(t, a, b)
	accepted, err := b.Accept(testCtx(t))
	require.NoError(t, err)
	s, err := qc.OpenUniStream()
	require.NoError(t, err)
	_, err = s.Write(append(binary.AppendUvarint(nil, 10), "abc"...)) // 7 bytes short, no FIN
	require.NoError(t, err)
	require.Eventually(t, func() bool { return accepted.(*QUICConn).Stats().DataFailed == 1 },
		3*time.Second, 10*time.Millisecond)
	require.Nil(t, accepted.Err())
	// A whole message still gets through.
	s, err = qc.OpenUniStream()
	require.NoError(t, err)
	_, err = s.Write(append(binary.AppendUvarint(nil, 2), "ok"...))
	require.NoError(t, err)
	require.NoError(t, s.Close())
	m, err := accepted.ReceiveData(testCtx(t))
	require.NoError(t, err)
	require.Equal(t, "ok", string(m))
}

// A peer that vanishes without a word (its socket closed under it) is seen
// dead after about the idle timeout; meanwhile SendData never blocks.
func TestQUICPeerVanishes(t *testing.T) {
	cfg := QUICConfig{IdleTimeout: time.Second}
	a, err := NewQUIC(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { a.Close() })
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	cfg.PacketConn = pc
	b, err := NewQUIC(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { b.Close() })
	ca, _ := connect(t, a, b)

	require.NoError(t, pc.Close())
	start := time.Now()
	m := make([]byte, 90_000)
	full := false
	for ca.Err() == nil && time.Since(start) < 5*time.Second {
		callStart := time.Now()
		err := ca.SendData(m)
		require.Less(t, time.Since(callStart), time.Second, "SendData blocked")
		if errors.Is(err, ErrQueueFull) {
			full = true
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitDone(t, ca, time.Second)
	took := time.Since(start)
	t.Logf("vanished peer noticed after %v", took)
	require.True(t, full, "the send queue never filled")
	require.ErrorIs(t, ca.Err(), ErrTimeout)
	require.ErrorIs(t, ca.Err(), ErrClosed)
	require.Greater(t, took, 500*time.Millisecond)
	require.Less(t, took, 4*time.Second)
}

func TestQUICMaxConns(t *testing.T) {
	a, b := newQUICPair(t, QUICConfig{MaxConns: 1})
	connect(t, a, b)
	_, err := a.Dial(testCtx(t), b.Addr(), nil)
	require.ErrorIs(t, err, ErrRefused)
}

func TestQUICDialNobody(t *testing.T) {
	a, err := NewQUIC(QUICConfig{HandshakeTimeout: 300 * time.Millisecond})
	require.NoError(t, err)
	t.Cleanup(func() { a.Close() })
	pc, err := net.ListenPacket("udp", "127.0.0.1:0") // bound, never answers
	require.NoError(t, err)
	defer pc.Close()
	_, err = a.Dial(testCtx(t), pc.LocalAddr().String(), nil)
	require.ErrorIs(t, err, ErrTimeout)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = a.Dial(ctx, pc.LocalAddr().String(), nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestQUICConfigErrors(t *testing.T) {
	_, err := NewQUIC(QUICConfig{Key: make([]byte, 5)})
	require.Error(t, err)
	_, err = NewQUIC(QUICConfig{SendQueue: -1})
	require.Error(t, err)
	_, err = NewQUIC(QUICConfig{ListenAddr: "127.0.0.1:notaport"})
	require.Error(t, err)
}

// The same key gives the same identity across restarts.
func TestQUICKeyIsIdentity(t *testing.T) {
	a1, err := NewQUIC(QUICConfig{})
	require.NoError(t, err)
	defer a1.Close()
	b, err := NewQUIC(QUICConfig{})
	require.NoError(t, err)
	defer b.Close()
	ca, _ := connect(t, a1, b)
	require.True(t, ca.RemoteKey().Equal(b.Key()))
	b2, err := NewQUIC(QUICConfig{Key: b.cfg.Key})
	require.NoError(t, err)
	defer b2.Close()
	require.True(t, b2.Key().Equal(b.Key()))
	ca2, _ := connect(t, a1, b2)
	require.True(t, ca2.RemoteKey().Equal(b.Key()))
}

// Under 20 ms of delay and 20% loss each way, QUIC still delivers every
// message, control and data.
func TestQUICOverLossyLink(t *testing.T) {
	link := LinkConfig{Delay: 20 * time.Millisecond, Jitter: 2 * time.Millisecond, Loss: 0.2}
	newLossy := func(seed uint64) *QUICTransport {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		require.NoError(t, err)
		l := link
		l.Seed = seed
		// Generous timeouts: the test asserts delivery, not speed, and the
		// machine may be busy.
		tr, err := NewQUIC(QUICConfig{PacketConn: NewLossyPacketConn(pc, l), IdleTimeout: 10 * time.Second,
			DataTimeout: time.Minute})
		require.NoError(t, err)
		t.Cleanup(func() { tr.Close() })
		return tr
	}
	a, b := newLossy(1), newLossy(2)
	start := time.Now()
	ca, cb := connect(t, a, b)
	t.Logf("dial took %v", time.Since(start))
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Second)
	defer cancel()

	var msgs [][]byte
	for i := range 30 {
		size := 1700
		if i%15 == 0 {
			size = 90_000
		}
		m := make([]byte, size)
		rand.Read(m)
		msgs = append(msgs, m)
	}
	start = time.Now()
	go func() {
		for i, m := range msgs {
			if err := sendData(ctx, ca, m); err != nil {
				t.Errorf("SendData: %v", err)
			}
			if err := ca.Send(ctx, []byte{byte(i)}); err != nil {
				t.Errorf("Send: %v", err)
			}
		}
	}()
	for i := range msgs {
		got, err := cb.Receive(ctx)
		require.NoError(t, err)
		require.Equal(t, []byte{byte(i)}, got)
	}
	seen := 0
	for range msgs {
		got, err := cb.ReceiveData(ctx)
		require.NoError(t, err)
		for _, m := range msgs {
			if bytes.Equal(m, got) {
				seen++
				break
			}
		}
	}
	require.Equal(t, len(msgs), seen)
	t.Logf("%d messages in %v, rtt %v", len(msgs), time.Since(start), ca.RTT())
	require.Greater(t, ca.RTT(), 30*time.Millisecond)
	require.Less(t, ca.RTT(), time.Second)
}

// BenchmarkQUICFanout measures the cost of one 1.7 KB data message (a
// chunk of about 100 ms of 128 kbit/s audio) sent by one node to each of its
// children over loopback: ns/op is per message delivered.
func BenchmarkQUICFanout(b *testing.B) {
	const children = 8
	src, err := NewQUIC(QUICConfig{})
	require.NoError(b, err)
	defer src.Close()
	ctx := context.Background()
	var conns []Conn
	received := make(chan int, children)
	for range children {
		dst, err := NewQUIC(QUICConfig{})
		require.NoError(b, err)
		defer dst.Close()
		c, err := src.Dial(ctx, dst.Addr(), dst.Key())
		require.NoError(b, err)
		in, err := dst.Accept(ctx)
		require.NoError(b, err)
		conns = append(conns, c)
		go func() {
			n := 0
			for {
				if _, err := in.ReceiveData(ctx); err != nil {
					received <- n
					return
				}
				n++
			}
		}()
	}
	chunk := make([]byte, 1700)
	msgs := b.N/children + 1
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for range msgs {
		for _, c := range conns {
			for c.SendData(chunk) != nil {
				time.Sleep(50 * time.Microsecond)
			}
		}
	}
	want := uint64(msgs)
	for _, c := range conns {
		for c.(*QUICConn).Stats().DataSent < want {
			time.Sleep(100 * time.Microsecond)
		}
	}
	b.StopTimer()
	src.Close()
	total := 0
	for range children {
		total += <-received
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(msgs*children), "ns/delivered")
	if total < msgs*children*9/10 {
		b.Fatalf("only %d of %d messages arrived", total, msgs*children)
	}
}

func TestReadN(t *testing.T) {
	for _, n := range []int{0, 1, 16 << 10, 16<<10 + 1, 90_000, MaxMessageSize} {
		src := make([]byte, n+5)
		rand.Read(src)
		got, err := readN(bytes.NewReader(src), uint64(n))
		require.NoError(t, err)
		require.Equal(t, src[:n], got)
	}
	_, err := readN(bytes.NewReader(make([]byte, 100)), 40_000)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
}

// BenchmarkQUICDelayUnderLoss measures how long data messages take over a
// lossy link: a 1.7 KB chunk every 100 ms (128 kbit/s audio) for b.N
// chunks, 20 ms each way and 5% loss each way (control/lossy.go). A lost
// packet delays the messages behind it on the data stream until it is
// retransmitted: the quantiles show by how much.
//
//	go test -run '^$' -bench DelayUnderLoss -benchtime 300x ./control
func BenchmarkQUICDelayUnderLoss(b *testing.B) {
	link := LinkConfig{Delay: 20 * time.Millisecond, Loss: 0.05}
	newLossy := func(seed uint64) *QUICTransport {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		require.NoError(b, err)
		l := link
		l.Seed = seed
		tr, err := NewQUIC(QUICConfig{PacketConn: NewLossyPacketConn(pc, l), IdleTimeout: 10 * time.Second})
		require.NoError(b, err)
		b.Cleanup(func() { tr.Close() })
		return tr
	}
	src, dst := newLossy(1), newLossy(2)
	ctx := context.Background()
	accepted := make(chan Conn, 1)
	go func() {
		c, _ := dst.Accept(ctx)
		accepted <- c
	}()
	out, err := src.Dial(ctx, dst.Addr(), dst.Key())
	require.NoError(b, err)
	in := <-accepted
	require.NotNil(b, in)

	start := time.Now()
	var delays []time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range b.N {
			m, err := in.ReceiveData(ctx)
			if err != nil {
				return
			}
			sent := time.Duration(binary.LittleEndian.Uint64(m))
			delays = append(delays, time.Since(start)-sent)
		}
	}()
	chunk := make([]byte, 1700)
	b.ResetTimer()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for range b.N {
		<-tick.C
		binary.LittleEndian.PutUint64(chunk, uint64(time.Since(start)))
		require.NoError(b, out.SendData(chunk))
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
	b.StopTimer()
	require.NotEmpty(b, delays)
	slices.Sort(delays)
	q := func(f float64) float64 { return float64(delays[int(f*float64(len(delays)-1))]) / 1e6 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.9), "p90-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(q(1), "max-ms")
	b.ReportMetric(float64(len(delays))/float64(b.N), "delivered")
}
