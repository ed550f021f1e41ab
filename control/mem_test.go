package control

import (
	"context"
	"fmt"
	"runtime"
	"strings"
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

func TestMemShareDataPassesTheSendersBuffer(t *testing.T) {
	for _, share := range []bool{false, true} {
		synctest.Test(t, func(t *testing.T) {
			n := NewMemNetwork(MemConfig{ShareData: share})
			defer n.Close()
			a, _ := n.NewTransport(nil)
			b, _ := n.NewTransport(nil)
			ca, cb := memConnect(t, a, b)
			sent := []byte("chunk")
			require.NoError(t, ca.SendData(sent))
			m, err := cb.ReceiveData(t.Context())
			require.NoError(t, err)
			require.Equal(t, sent, m)
			require.Equal(t, share, &m[0] == &sent[0], "the receiver's buffer is the sender's")
		})
	}
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

// natDial dials addr from a and, when that works, accepts at the node that
// was reached and returns both ends; else the dial's error.
func natDial(t *testing.T, a *MemTransport, addr string, b *MemTransport) (ca, cb Conn, err error) {
	t.Helper()
	ca, err = a.Dial(t.Context(), addr, b.Key())
	if err != nil {
		return nil, nil, err
	}
	cb, err = b.Accept(t.Context())
	require.NoError(t, err)
	return ca, cb, nil
}

// observedBy returns the address a shows to the public node seer, leaving
// the connection open as a registration at a rendezvous would.
func observedBy(t *testing.T, a, seer *MemTransport) string {
	t.Helper()
	_, in, err := natDial(t, a, seer.Addr(), seer)
	require.NoError(t, err)
	return in.RemoteAddr()
}

func TestMemNATWhoCanDialWhom(t *testing.T) {
	for _, kind := range []NATKind{NATPortPreserving, NATPortRandom} {
		for _, hairpin := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/hairpin=%v", kind, hairpin), func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					n := NewMemNetwork(MemConfig{Link: LinkConfig{Delay: 10 * time.Millisecond}})
					defer n.Close()
					tracker, _ := n.NewTransport(nil)
					public, _ := n.NewTransport(nil)
					home := n.NewNAT(NATConfig{Kind: kind, Hairpin: hairpin})
					a1, _ := home.NewTransport(nil)
					a2, _ := home.NewTransport(nil)
					other := n.NewNAT(NATConfig{Kind: kind})
					b, _ := other.NewTransport(nil)
					require.Equal(t, home.Addr()+"/1", a1.Addr())
					require.Equal(t, home.Addr()+"/2", a2.Addr())
					require.Same(t, home, a1.NAT())
					require.Nil(t, tracker.NAT())

					// Out of a home to a public node: it sees the NAT's mapping.
					ca, ct, err := natDial(t, a1, tracker.Addr(), tracker)
					require.NoError(t, err)
					require.Equal(t, tracker.Addr(), ca.RemoteAddr())
					seen := ct.RemoteAddr()
					require.True(t, strings.HasPrefix(seen, home.Addr()+":"), seen)
					if kind == NATPortPreserving {
						require.Equal(t, home.Addr()+":1", seen, "the member's own port")
					}
					mapped, ok := home.Mapping(a1, tracker.Addr())
					require.True(t, ok)
					require.Equal(t, seen, mapped)

					// The node a1 talks to can dial back to the mapping;
					// nobody else can.
					_, _, err = natDial(t, tracker, seen, a1)
					require.NoError(t, err, "the tracker, which a1 sent to")
					start := time.Now()
					_, _, err = natDial(t, public, seen, a1)
					require.ErrorIs(t, err, ErrTimeout, "a public node a1 never sent to")
					require.Equal(t, DefaultHandshakeTimeout, time.Since(start))
					_, _, err = natDial(t, b, seen, a1)
					require.ErrorIs(t, err, ErrTimeout, "a node of another home")
					_, _, err = natDial(t, public, a1.Addr(), a1)
					require.ErrorIs(t, err, ErrTimeout, "a LAN address from outside")
					_, _, err = natDial(t, b, a1.Addr(), a1)
					require.ErrorIs(t, err, ErrTimeout, "a LAN address from another LAN")

					// Members reach each other by LAN address, and see LAN
					// addresses.
					c12, c21, err := natDial(t, a2, a1.Addr(), a1)
					require.NoError(t, err)
					require.Equal(t, a1.Addr(), c12.RemoteAddr())
					require.Equal(t, a2.Addr(), c21.RemoteAddr())

					// By public address only through a hairpin.
					c, in, err := natDial(t, a2, seen, a1)
					if !hairpin {
						require.ErrorIs(t, err, ErrTimeout)
						return
					}
					require.NoError(t, err)
					require.Equal(t, seen, c.RemoteAddr())
					mapped, ok = home.Mapping(a2, seen)
					require.True(t, ok)
					require.Equal(t, mapped, in.RemoteAddr(), "a1 sees a2's mapping")
				})
			})
		}
	}
}

// A port-preserving NAT shows every remote the same address; a
// port-randomising one shows each its own.
func TestMemNATObservedAddresses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := NewMemNetwork(MemConfig{Link: LinkConfig{Delay: 5 * time.Millisecond, Seed: 1}})
		defer n.Close()
		t1, _ := n.NewTransport(nil)
		t2, _ := n.NewTransport(nil)
		pp, _ := n.NewNAT(NATConfig{}).NewTransport(nil)
		pr, _ := n.NewNAT(NATConfig{Kind: NATPortRandom}).NewTransport(nil)
		require.Equal(t, observedBy(t, pp, t1), observedBy(t, pp, t2))
		require.NotEqual(t, observedBy(t, pr, t1), observedBy(t, pr, t2))
		// The same flow is used again while it lives.
		require.Equal(t, observedBy(t, pr, t1), pr.NAT().public(pr.NAT().byLocal[natLocal{pr, t1.Addr()}].port))
	})
}

// A flow admits its remote for FlowTimeout after its last packet, or as long
// as a connection uses it.
func TestMemNATFlowTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := NewMemNetwork(MemConfig{})
		defer n.Close()
		tracker, _ := n.NewTransport(nil)
		home := n.NewNAT(NATConfig{FlowTimeout: 10 * time.Second})
		a, _ := home.NewTransport(nil)
		c, in, err := natDial(t, a, tracker.Addr(), tracker)
		require.NoError(t, err)
		seen := in.RemoteAddr()
		time.Sleep(time.Minute)
		back, _, err := natDial(t, tracker, seen, a)
		require.NoError(t, err, "an open connection keeps the flow")
		c.Close(CodeNormal, "")
		back.Close(CodeNormal, "")
		time.Sleep(9 * time.Second)
		_, ok := home.Mapping(a, tracker.Addr())
		require.True(t, ok)
		time.Sleep(time.Second)
		_, ok = home.Mapping(a, tracker.Addr())
		require.False(t, ok)
		_, _, err = natDial(t, tracker, seen, a)
		require.ErrorIs(t, err, ErrTimeout)
	})
}

// punchSetup makes two homes of the given kinds, each with one member
// registered at a public tracker, 20 ms from the internet each way.
func punchSetup(t *testing.T, kindA, kindB NATKind) (n *MemNetwork, a, b *MemTransport, seenA, seenB string) {
	n = NewMemNetwork(MemConfig{Link: LinkConfig{Delay: 10 * time.Millisecond, Seed: 3}})
	t.Cleanup(func() { n.Close() })
	tracker, _ := n.NewTransport(nil)
	a, _ = n.NewNAT(NATConfig{Kind: kindA}).NewTransport(nil)
	b, _ = n.NewNAT(NATConfig{Kind: kindB}).NewTransport(nil)
	n.SetLink(a.Addr(), b.Addr(), LinkConfig{Delay: 20 * time.Millisecond})
	return n, a, b, observedBy(t, a, tracker), observedBy(t, b, tracker)
}

// The accepting side punches with a low TTL, then the other side dials the
// address the tracker saw: that works between port-preserving NATs only.
func TestMemNATPunchThenDial(t *testing.T) {
	for _, tc := range []struct {
		a, b NATKind
		ok   bool
	}{
		{NATPortPreserving, NATPortPreserving, true},
		{NATPortPreserving, NATPortRandom, false},
		{NATPortRandom, NATPortPreserving, false},
		{NATPortRandom, NATPortRandom, false},
	} {
		t.Run(fmt.Sprintf("%v-%v", tc.a, tc.b), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				_, a, b, seenA, seenB := punchSetup(t, tc.a, tc.b)
				// Without a punch the dial dies at b's NAT.
				_, _, err := natDial(t, a, seenB, b)
				require.ErrorIs(t, err, ErrTimeout)
				time.Sleep(DefaultFlowTimeout) // let the failed dial's traces go
				require.NoError(t, b.Punch(t.Context(), seenA, 2))
				start := time.Now()
				ca, cb, err := natDial(t, a, seenB, b)
				if !tc.ok {
					require.ErrorIs(t, err, ErrTimeout)
					return
				}
				require.NoError(t, err)
				require.Equal(t, 80*time.Millisecond, time.Since(start), "two round trips")
				require.Equal(t, seenB, ca.RemoteAddr())
				require.Equal(t, seenA, cb.RemoteAddr(), "the address the tracker saw")
				require.NoError(t, ca.Send(t.Context(), []byte("hi")))
				m, err := cb.Receive(t.Context())
				require.NoError(t, err)
				require.Equal(t, "hi", string(m))
			})
		})
	}
}

// How the punch's timing and TTL decide, between port-preserving NATs.
func TestMemNATPunchRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, a, b *MemTransport, seenA, seenB string) error
		ok   bool
	}{
		{"TTL1DiesInOwnNAT", func(t *testing.T, a, b *MemTransport, seenA, seenB string) error {
			require.NoError(t, b.Punch(t.Context(), seenA, 1))
			_, _, err := natDial(t, a, seenB, b)
			return err
		}, false},
		{"FullTTLFirstSpoilsTheDialersPort", func(t *testing.T, a, b *MemTransport, seenA, seenB string) error {
			// The punch reaches a's NAT before a has sent to b: its
			// trace makes a's dial leave from another port, which b's
			// NAT does not admit.
			require.NoError(t, b.Punch(t.Context(), seenA, 0))
			time.Sleep(50 * time.Millisecond)
			_, _, err := natDial(t, a, seenB, b)
			return err
		}, false},
		{"SimultaneousFullTTL", func(t *testing.T, a, b *MemTransport, seenA, seenB string) error {
			// Both act at once: each packet meets the other's open flow.
			require.NoError(t, b.Punch(t.Context(), seenA, 0))
			_, _, err := natDial(t, a, seenB, b)
			return err
		}, true},
		{"PunchAfterTheDialLeft", func(t *testing.T, a, b *MemTransport, seenA, seenB string) error {
			// a's first packet reaches b's NAT before b punched: its
			// trace moves b's flow to another port.
			go func() {
				time.Sleep(30 * time.Millisecond)
				b.Punch(t.Context(), seenA, 2)
			}()
			_, _, err := natDial(t, a, seenB, b)
			return err
		}, false},
		{"PunchWhileTheDialIsOnItsWay", func(t *testing.T, a, b *MemTransport, seenA, seenB string) error {
			// A punch with full TTL while a's dial is already on its
			// way but not arrived: the dial's first packet gets in.
			go func() {
				time.Sleep(10 * time.Millisecond)
				b.Punch(t.Context(), seenA, 0)
			}()
			_, _, err := natDial(t, a, seenB, b)
			return err
		}, true},
		{"AfterADroppedDial", func(t *testing.T, a, b *MemTransport, seenA, seenB string) error {
			// The dropped dial's trace at b's NAT moves b's punch to
			// another port for FlowTimeout: back off, or punch first.
			_, _, err := natDial(t, a, seenB, b)
			require.ErrorIs(t, err, ErrTimeout)
			require.NoError(t, b.Punch(t.Context(), seenA, 2))
			_, _, err = natDial(t, a, seenB, b)
			return err
		}, false},
		{"PunchOpensForFlowTimeout", func(t *testing.T, a, b *MemTransport, seenA, seenB string) error {
			require.NoError(t, b.Punch(t.Context(), seenA, 2))
			time.Sleep(DefaultFlowTimeout)
			_, _, err := natDial(t, a, seenB, b)
			return err
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				_, a, b, seenA, seenB := punchSetup(t, NATPortPreserving, NATPortPreserving)
				err := tc.run(t, a, b, seenA, seenB)
				if tc.ok {
					require.NoError(t, err)
				} else {
					require.ErrorIs(t, err, ErrTimeout)
				}
			})
		})
	}
}

func TestMemPunchAfterClose(t *testing.T) {
	n := NewMemNetwork(MemConfig{})
	a, _ := n.NewNAT(NATConfig{}).NewTransport(nil)
	a.Close()
	require.ErrorIs(t, a.Punch(t.Context(), "mem:9:1", 2), ErrClosed)
}

// Members of one home pass the transport contract over their LAN.
func TestMemTransportLAN(t *testing.T) {
	testTransport(t, func(t *testing.T) (Transport, Transport) {
		n := NewMemNetwork(MemConfig{Link: LinkConfig{Bandwidth: 4 << 20}})
		t.Cleanup(func() { n.Close() })
		home := n.NewNAT(NATConfig{})
		a, err := home.NewTransport(nil)
		require.NoError(t, err)
		b, err := home.NewTransport(nil)
		require.NoError(t, err)
		return a, b
	})
}
