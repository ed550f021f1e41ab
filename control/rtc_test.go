package control_test

import (
	"context"
	"crypto/ed25519"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/control/rtc"
)

// TestRTCTransport runs the contract suite on WebRTC links between two
// Go transports on loopback, signalled by direct calls to Answer.
func TestRTCTransport(t *testing.T) {
	control.RunTransportContract(t, rtc.MaxControl, func(t *testing.T) (control.Transport, control.Transport) {
		byName := map[string]*rtc.Transport{}
		signal := func(ctx context.Context, addr, offer string) (string, error) {
			return byName[addr].Answer(ctx, offer)
		}
		for _, name := range []string{"a", "b"} {
			_, k, err := ed25519.GenerateKey(nil)
			require.NoError(t, err)
			tr, err := rtc.New(rtc.Config{Key: k, IPFilter: rtc.LoopbackOnly, Addr: name, Signal: signal})
			require.NoError(t, err)
			t.Cleanup(func() { tr.Close() })
			byName[name] = tr
		}
		return byName["a"], byName["b"]
	})
}

func TestJoinedAcceptsFromEverySourceAndDialsWithThePrimary(t *testing.T) {
	n := control.NewMemNetwork(control.MemConfig{})
	t.Cleanup(func() { n.Close() })
	m1, err := n.NewTransport(nil)
	require.NoError(t, err)
	m2, err := n.NewTransport(nil)
	require.NoError(t, err)
	_, k, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	var r2 *rtc.Transport
	r1, err := rtc.New(rtc.Config{Key: k, IPFilter: rtc.LoopbackOnly, Signal: func(ctx context.Context, _, offer string) (string, error) {
		return r2.Answer(ctx, offer)
	}})
	require.NoError(t, err)
	t.Cleanup(func() { r1.Close() })
	r2, err = rtc.New(rtc.Config{Key: k, IPFilter: rtc.LoopbackOnly})
	require.NoError(t, err)
	t.Cleanup(func() { r2.Close() })

	j := control.Join(m2, r2)
	require.Equal(t, m2.Addr(), j.Addr())
	require.True(t, j.Key().Equal(m2.Key()))
	ctx := t.Context()
	_, err = r1.Dial(ctx, "r2", nil)
	require.NoError(t, err)
	_, err = m1.Dial(ctx, j.Addr(), j.Key())
	require.NoError(t, err)
	var rtcs, mems int
	for range 2 {
		c, err := j.Accept(ctx)
		require.NoError(t, err)
		if _, ok := c.(*rtc.Conn); ok {
			rtcs++
		} else {
			mems++
		}
	}
	require.Equal(t, 1, rtcs)
	require.Equal(t, 1, mems)
	c, err := j.Dial(ctx, m1.Addr(), m1.Key()) // with the primary
	require.NoError(t, err)
	require.True(t, c.RemoteKey().Equal(m1.Key()))

	require.NoError(t, j.Close())
	_, err = j.Accept(ctx)
	require.ErrorIs(t, err, control.ErrClosed)
	_, err = j.Dial(ctx, m1.Addr(), nil)
	require.ErrorIs(t, err, control.ErrClosed)

	// A closed primary ends a Joined's Accept too.
	j = control.Join(m2, r2)
	t.Cleanup(func() { j.Close() })
	require.NoError(t, m2.Close())
	_, err = j.Accept(ctx)
	require.ErrorIs(t, err, control.ErrClosed)
}

// recordingPuncher is a Transport whose punches are counted.
type recordingPuncher struct {
	control.Transport
	punched []string
}

func (p *recordingPuncher) Punch(_ context.Context, addr string, _ int) error {
	p.punched = append(p.punched, addr)
	return nil
}

// A node that accepts browsers (its transport Joined) is still punched
// through to: the overlay's punch reaches the primary. (It did not, and
// TestNATLab's NATed listeners waited for a parent none could reach.)
func TestJoinedPunchesWithThePrimary(t *testing.T) {
	n := control.NewMemNetwork(control.MemConfig{})
	t.Cleanup(func() { n.Close() })
	m, err := n.NewTransport(nil)
	require.NoError(t, err)
	p := &recordingPuncher{Transport: m}
	var j control.Transport = control.Join(p)
	pu, ok := j.(control.Puncher)
	require.True(t, ok)
	require.NoError(t, pu.Punch(t.Context(), "192.0.2.1:7000", 2))
	require.Equal(t, []string{"192.0.2.1:7000"}, p.punched)
	// A primary that cannot punch: nothing happens, no error.
	plain := struct{ control.Transport }{m} // hides MemTransport's Punch
	require.NoError(t, control.Join(plain).Punch(t.Context(), "192.0.2.1:7000", 2))
}
