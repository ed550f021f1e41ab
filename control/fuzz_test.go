package control

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzWire checks that decoding arbitrary bytes never panics, fails only
// with ErrBadMessage, and that decode, encode, decode is stable.
func FuzzWire(f *testing.F) {
	for _, m := range sampleMessages() {
		f.Add(AppendMessage(nil, m))
	}
	f.Add([]byte{})
	f.Add([]byte{byte(TypePeerList), 255})
	f.Add([]byte{byte(TypeHello), 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMessage(b)
		if err != nil {
			require.ErrorIs(t, err, ErrBadMessage)
			require.Nil(t, m)
			return
		}
		enc := AppendMessage(nil, m)
		// The encoding is the input up to what this version understands.
		require.True(t, bytes.HasPrefix(b, enc), "input % x re-encodes as % x", b, enc)
		m2, err := ParseMessage(enc)
		require.NoError(t, err)
		require.Equal(t, m, m2)
		require.Equal(t, enc, AppendMessage(nil, m2))
	})
}
