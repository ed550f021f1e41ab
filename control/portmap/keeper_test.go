package portmap

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeMapper grants mappings of a fixed lifetime, or fails while fail is
// set; it records when each call came.
type fakeMapper struct {
	mu       sync.Mutex
	lifetime time.Duration
	fail     bool
	port     uint16 // the external port it grants
	maps     []time.Time
	unmaps   []Mapping
}

func (f *fakeMapper) Map(ctx context.Context, proto string, port int, lifetime time.Duration) (Mapping, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.maps = append(f.maps, time.Now())
	if f.fail {
		return Mapping{}, errors.New("no router")
	}
	return Mapping{Method: "fake", Proto: proto, External: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), f.port),
		Internal: port, Lifetime: min(lifetime, f.lifetime)}, nil
}

func (f *fakeMapper) Unmap(ctx context.Context, m Mapping) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unmaps = append(f.unmaps, m)
	return nil
}

func (f *fakeMapper) calls() (int, []Mapping) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.maps), append([]Mapping(nil), f.unmaps...)
}

func TestKeeperRenewsBeforeTheLifetimeEndsAndUnmapsAtTheEnd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeMapper{lifetime: time.Minute, port: 7001}
		var changes []State
		k := NewKeeper(KeeperConfig{Mapper: f, Port: 7001, Lifetime: time.Hour, OnChange: func(s State) { changes = append(changes, s) }})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { k.Run(ctx); close(done) }()
		synctest.Wait()
		n, _ := f.calls()
		require.Equal(t, 1, n, "mapped at the start")
		st := k.State()
		require.NoError(t, st.Err)
		require.Equal(t, "192.0.2.1:7001", st.Mapping.External.String())
		require.Equal(t, time.Minute, st.Mapping.Lifetime, "the router granted less than asked")

		time.Sleep(29 * time.Second)
		synctest.Wait()
		n, _ = f.calls()
		require.Equal(t, 1, n, "not renewed before half the lifetime")
		time.Sleep(2 * time.Second)
		synctest.Wait()
		n, _ = f.calls()
		require.Equal(t, 2, n, "renewed at half the granted lifetime")
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		n, _ = f.calls()
		require.Equal(t, 12, n, "every 30 s")
		require.Len(t, changes, 1, "renewing the same mapping is no change")

		cancel()
		<-done
		_, unmaps := f.calls()
		require.Len(t, unmaps, 1, "removed at the end")
		require.Equal(t, uint16(7001), unmaps[0].External.Port())
		require.False(t, k.State().Mapping.External.IsValid())
		require.Len(t, changes, 2)
	})
}

func TestKeeperRetriesAfterAFailureAndBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeMapper{lifetime: time.Hour, port: 7001, fail: true}
		k := NewKeeper(KeeperConfig{Mapper: f, Port: 7001, Lifetime: 10 * time.Minute})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { k.Run(ctx); close(done) }()
		synctest.Wait()
		require.Error(t, k.State().Err)
		// Tries at 0, 5, 15, 35 s: the wait doubles.
		time.Sleep(36 * time.Second)
		synctest.Wait()
		n, _ := f.calls()
		require.Equal(t, 4, n)

		f.mu.Lock()
		f.fail = false
		f.mu.Unlock()
		time.Sleep(40 * time.Second) // the next try, at 75 s
		synctest.Wait()
		st := k.State()
		require.NoError(t, st.Err)
		require.True(t, st.Mapping.External.IsValid())

		// The router grants a different port at a renewal: the new one is
		// held and the old one is not removed (the router replaced it).
		f.mu.Lock()
		f.port = 40000
		f.mu.Unlock()
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		require.Equal(t, uint16(40000), k.State().Mapping.External.Port())

		cancel()
		<-done
		_, unmaps := f.calls()
		require.Len(t, unmaps, 1)
		require.Equal(t, uint16(40000), unmaps[0].External.Port(), "the mapping held at the end is removed")
	})
}

func TestKeeperWithoutAMappingRemovesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeMapper{fail: true}
		k := NewKeeper(KeeperConfig{Mapper: f, Port: 7001})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { k.Run(ctx); close(done) }()
		synctest.Wait()
		cancel()
		<-done
		_, unmaps := f.calls()
		require.Empty(t, unmaps)
	})
}
