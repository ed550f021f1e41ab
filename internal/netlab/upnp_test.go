package netlab

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSTUNAnswerCarriesTheSendersAddress(t *testing.T) {
	req := make([]byte, 28)
	req[1] = 0x01 // Binding request
	binary.BigEndian.PutUint16(req[2:], 8)
	binary.BigEndian.PutUint32(req[4:], 0x2112A442)
	copy(req[8:20], "transaction!")
	from := netip.MustParseAddrPort("172.17.3.2:41234")
	resp := stunAnswer(req, from)
	require.Len(t, resp, 32)
	require.Equal(t, []byte{0x01, 0x01, 0, 12}, resp[:4], "a Binding success response with one attribute")
	require.Equal(t, req[4:20], resp[4:20], "the cookie and the transaction id")
	require.Equal(t, []byte{0, 1, 0, 8, 0, 1, 0xa1, 0x12, 172, 17, 3, 2}, resp[20:], "MAPPED-ADDRESS")

	require.Nil(t, stunAnswer(req[:19], from), "too short")
	resp[1] = 0x11
	require.Nil(t, stunAnswer(resp, from), "not a request")
	require.Nil(t, stunAnswer(req, netip.MustParseAddrPort("[2001:db8::1]:5")), "IPv4 only")
}
