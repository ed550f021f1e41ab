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
			tr, err := rtc.New(rtc.Config{Key: k, Loopback: true, Addr: name, Signal: signal})
			require.NoError(t, err)
			t.Cleanup(func() { tr.Close() })
			byName[name] = tr
		}
		return byName["a"], byName["b"]
	})
}
