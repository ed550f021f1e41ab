package control

import "testing"

// RunTransportContract runs the Transport contract suite on a transport
// of another package (control/rtc), whose control messages are at most
// maxControl bytes and whose RemoteAddr is an observed address, not the
// peer's Addr. ManyConns dials 4 at a time.
func RunTransportContract(t *testing.T, maxControl int, newPair func(t *testing.T) (a, b Transport)) {
	testTransportWith(t, contractOptions{maxControl: maxControl, dialsInFlight: 4}, newPair)
}
