package control

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

// memConnect dials b from a in a synctest bubble.
func memConnect(t *testing.T, a, b *MemTransport) (ca, cb Conn) {
	t.Helper()
	ca, err := a.Dial(context.Background(), b.Addr(), b.Key())
	require.NoError(t, err)
	cb, err = b.Accept(context.Background())
	require.NoError(t, err)
	return ca, cb
}

func TestMemLatency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := NewMemNetwork(MemConfig{Link: LinkConfig{Delay: 50 * time.Millisecond}})
		defer n.Close()
		a, _ := n.NewTransport(nil)
		b, _ := n.NewTransport(nil)
		start := time.Now()
		ca, cb := memConnect(t, a, b)
		require.Equal(t, 200*time.Millisecond, time.Since(start), "two round trips")
		require.Equal(t, 100*time.Millisecond, ca.RTT())

		start = time.Now()
		require.NoError(t, ca.Send(t.Context(), []byte("c")))
		require.NoError(t, ca.SendData([]byte("d")))
		_, err := cb.Receive(t.Context())
		require.NoError(t, err)
		_, err = cb.ReceiveData(t.Context())
		require.NoError(t, err)
		require.Equal(t, 50*time.Millisecond, time.Since(start))

		// The peer hears of a Close one delay later, after what was sent
		// before it.
		start = time.Now()
		require.NoError(t, ca.Send(t.Context(), []byte("last")))
		require.NoError(t, ca.Close(9, "done"))
		m, err := cb.Receive(t.Context())
		require.NoError(t, err)
		require.Equal(t, "last", string(m))
		<-cb.Done()
		require.Equal(t, 50*time.Millisecond, time.Since(start))
		require.Equal(t, &CloseError{Code: 9, Reason: "done", Remote: true}, cb.Err())
	})
}

func TestMemBandwidth(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := NewMemNetwork(MemConfig{
			Link:      LinkConfig{Delay: 10 * time.Millisecond, Bandwidth: 100_000},
			SendQueue: 3,
		})
		defer n.Close()
		a, _ := n.NewTransport(nil)
		b, _ := n.NewTransport(nil)
		ca, cb := memConnect(t, a, b)
		start := time.Now()
		m := make([]byte, 10_000) // 100 ms on the link
		for range 3 {
			require.NoError(t, ca.SendData(m))
		}
		require.ErrorIs(t, ca.SendData(m), ErrQueueFull)
		// Control messages do not queue behind data.
		require.NoError(t, ca.Send(t.Context(), []byte("c")))
		_, err := cb.Receive(t.Context())
		require.NoError(t, err)
		require.Equal(t, 10*time.Millisecond, time.Since(start))
		for i := range 3 {
			_, err := cb.ReceiveData(t.Context())
			require.NoError(t, err)
			require.Equal(t, time.Duration(i+1)*100*time.Millisecond+10*time.Millisecond, time.Since(start))
			if i == 0 {
				// One left the queue: there is room again.
				require.NoError(t, ca.SendData(m[:1]))
			}
		}
		st := ca.(*MemConn).Stats()
		require.EqualValues(t, 4, st.DataSent)
		require.EqualValues(t, 1, st.SendDropped)
	})
}

// A lost packet delays its message by 1.5 round trips; nothing is dropped,
// and control messages stay in order.
func TestMemLoss(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const delay = 20 * time.Millisecond
		n := NewMemNetwork(MemConfig{Link: LinkConfig{Delay: delay, Loss: 0.3, Seed: 7}, ReceiveQueue: 200, ControlQueue: 200})
		defer n.Close()
		a, _ := n.NewTransport(nil)
		b, _ := n.NewTransport(nil)
		ca, cb := memConnect(t, a, b)
		start := time.Now()
		const count = 100
		for i := range count {
			require.NoError(t, ca.SendData([]byte{byte(i)}))
			require.NoError(t, ca.Send(t.Context(), []byte{byte(i)}))
		}
		onTime, late := 0, 0
		for range count {
			_, err := cb.ReceiveData(t.Context())
			require.NoError(t, err)
			switch time.Since(start) {
			case delay:
				onTime++
			case 4 * delay:
				late++
			default:
				t.Fatalf("data arrived after %v", time.Since(start))
			}
		}
		require.Equal(t, count, onTime+late)
		require.Greater(t, onTime, 50)
		require.Greater(t, late, 10)
		for i := range count {
			m, err := cb.Receive(t.Context())
			require.NoError(t, err)
			require.Equal(t, []byte{byte(i)}, m)
		}
	})
}

func TestMemJitterKeepsControlOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := NewMemNetwork(MemConfig{Link: LinkConfig{Delay: 10 * time.Millisecond, Jitter: 50 * time.Millisecond}})
		defer n.Close()
		a, _ := n.NewTransport(nil)
		b, _ := n.NewTransport(nil)
		ca, cb := memConnect(t, a, b)
		for i := range 50 {
			require.NoError(t, ca.Send(t.Context(), []byte{byte(i)}))
			require.NoError(t, ca.SendData([]byte{byte(i)}))
			time.Sleep(time.Millisecond)
		}
		reordered := false
		for i := range 50 {
			m, err := cb.Receive(t.Context())
			require.NoError(t, err)
			require.Equal(t, []byte{byte(i)}, m)
			d, err := cb.ReceiveData(t.Context())
			require.NoError(t, err)
			reordered = reordered || d[0] != byte(i)
		}
		require.True(t, reordered, "data messages are independent: jitter reorders them")
	})
}

// A killed node's peers hear nothing and time out after IdleTimeout;
// meanwhile sending to it neither blocks nor fails.
func TestMemKill(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := NewMemNetwork(MemConfig{Link: LinkConfig{Delay: 10 * time.Millisecond}, IdleTimeout: 2 * time.Second, ControlQueue: 4})
		defer n.Close()
		a, _ := n.NewTransport(nil)
		b, _ := n.NewTransport(nil)
		ca, cb := memConnect(t, a, b)
		start := time.Now()
		b.Kill()
		require.ErrorIs(t, cb.Err(), ErrClosed)
		for range 10 {
			require.NoError(t, ca.Send(t.Context(), []byte("x")))
			require.NoError(t, ca.SendData([]byte("x")))
		}
		<-ca.Done()
		require.Equal(t, 2*time.Second, time.Since(start))
		require.ErrorIs(t, ca.Err(), ErrTimeout)
		require.ErrorIs(t, ca.Err(), ErrClosed)
		_, err := b.Accept(t.Context())
		require.ErrorIs(t, err, ErrClosed)
		// The address is gone: dialing it times out.
		start = time.Now()
		_, err = a.Dial(t.Context(), b.Addr(), nil)
		require.ErrorIs(t, err, ErrTimeout)
		require.Equal(t, DefaultHandshakeTimeout, time.Since(start))
	})
}

func TestMemControlBackpressure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := NewMemNetwork(MemConfig{ControlQueue: 2})
		defer n.Close()
		a, _ := n.NewTransport(nil)
		b, _ := n.NewTransport(nil)
		ca, cb := memConnect(t, a, b)
		require.NoError(t, ca.Send(t.Context(), []byte{1}))
		require.NoError(t, ca.Send(t.Context(), []byte{2}))
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		require.ErrorIs(t, ca.Send(ctx, []byte{3}), context.DeadlineExceeded)
		sent := make(chan error, 1)
		go func() { sent <- ca.Send(t.Context(), []byte{4}) }()
		synctest.Wait()
		select {
		case <-sent:
			t.Fatal("Send did not block on a full control queue")
		default:
		}
		m, err := cb.Receive(t.Context())
		require.NoError(t, err)
		require.Equal(t, []byte{1}, m)
		require.NoError(t, <-sent)
		for _, want := range []byte{2, 4} {
			m, err := cb.Receive(t.Context())
			require.NoError(t, err)
			require.Equal(t, []byte{want}, m)
		}
	})
}

func TestMemReceiveQueueDrops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := NewMemNetwork(MemConfig{ReceiveQueue: 4})
		defer n.Close()
		a, _ := n.NewTransport(nil)
		b, _ := n.NewTransport(nil)
		ca, cb := memConnect(t, a, b)
		for i := range 10 {
			require.NoError(t, ca.SendData([]byte{byte(i)}))
		}
		for i := range 4 {
			m, err := cb.ReceiveData(t.Context())
			require.NoError(t, err)
			require.Equal(t, []byte{byte(i)}, m)
		}
		st := cb.(*MemConn).Stats()
		require.EqualValues(t, 4, st.DataReceived)
		require.EqualValues(t, 6, st.ReceiveDropped)
	})
}

func TestMemRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := NewMemNetwork(MemConfig{MaxConns: 1})
		defer n.Close()
		a, _ := n.NewTransport(nil)
		b, _ := n.NewTransport(nil)
		c, _ := n.NewTransport(nil)
		memConnect(t, a, b)
		_, err := c.Dial(t.Context(), b.Addr(), nil)
		require.ErrorIs(t, err, ErrRefused)
		_, err = a.Dial(t.Context(), c.Addr(), nil)
		require.ErrorIs(t, err, ErrRefused, "local limit")
	})
}

func TestMemSetLink(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := NewMemNetwork(MemConfig{Link: LinkConfig{Delay: 10 * time.Millisecond}})
		defer n.Close()
		a, _ := n.NewTransport(nil)
		b, _ := n.NewTransport(nil)
		ca, cb := memConnect(t, a, b)
		n.SetLink(b.Addr(), a.Addr(), LinkConfig{Delay: 100 * time.Millisecond})
		require.Equal(t, 200*time.Millisecond, ca.RTT())
		start := time.Now()
		require.NoError(t, cb.SendData([]byte("x")))
		_, err := ca.ReceiveData(t.Context())
		require.NoError(t, err)
		require.Equal(t, 100*time.Millisecond, time.Since(start))
	})
}

func TestMemConfigAndKeys(t *testing.T) {
	n := NewMemNetwork(MemConfig{})
	defer n.Close()
	_, err := n.NewTransport(make([]byte, 3))
	require.Error(t, err)
	a, err := n.NewTransport(nil)
	require.NoError(t, err)
	b, err := n.NewTransport(nil)
	require.NoError(t, err)
	require.Equal(t, "mem:1", a.Addr())
	require.NotEqual(t, a.Addr(), b.Addr())
	require.False(t, a.Key().Equal(b.Key()))
}

// TestMemScale runs 10,000 nodes in a ring, each sending a chunk-sized data
// message and a control message to the next, over links with delay.
func TestMemScale(t *testing.T) {
	nodes := 10_000
	if testing.Short() {
		nodes = 1000
	}
	synctest.Test(t, func(t *testing.T) {
		n := NewMemNetwork(MemConfig{Link: LinkConfig{Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond, Loss: 0.01}})
		defer n.Close()
		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		trs := make([]*MemTransport, nodes)
		for i := range trs {
			tr, err := n.NewTransport(nil)
			require.NoError(t, err)
			trs[i] = tr
		}
		out := make([]Conn, nodes)
		in := make([]Conn, nodes)
		errs := make(chan error, nodes)
		for i := range trs {
			go func() {
				c, err := trs[i].Dial(t.Context(), trs[(i+1)%nodes].Addr(), nil)
				out[i] = c
				errs <- err
			}()
		}
		for range nodes {
			require.NoError(t, <-errs)
		}
		for i := range trs {
			c, err := trs[(i+1)%nodes].Accept(t.Context())
			require.NoError(t, err)
			in[(i+1)%nodes] = c
		}
		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)
		t.Logf("%d nodes, %d connections: %d goroutines, %.1f KB heap per node",
			nodes, nodes, runtime.NumGoroutine(), float64(after.HeapAlloc-before.HeapAlloc)/float64(nodes)/1024)
		chunk := make([]byte, 1700)
		for i := range trs {
			require.NoError(t, out[i].SendData(chunk))
			require.NoError(t, out[i].Send(t.Context(), fmt.Appendf(nil, "%d", i)))
		}
		for i := range trs {
			m, err := in[(i+1)%nodes].ReceiveData(t.Context())
			require.NoError(t, err)
			require.Len(t, m, len(chunk))
			m, err = in[(i+1)%nodes].Receive(t.Context())
			require.NoError(t, err)
			require.Equal(t, fmt.Sprint(i), string(m))
		}
	})
}
