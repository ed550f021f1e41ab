package rtc

import (
	"context"
	"crypto/ed25519"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/control"
)

// newPair returns two loopback transports whose Dial reaches each other
// by name ("a", "b") through a direct call to Answer.
func newPair(t *testing.T) (a, b *Transport) {
	t.Helper()
	byName := map[string]*Transport{}
	signal := func(ctx context.Context, addr, offer string) (string, error) {
		return byName[addr].Answer(ctx, offer)
	}
	for _, name := range []string{"a", "b"} {
		_, k, err := ed25519.GenerateKey(nil)
		require.NoError(t, err)
		tr, err := New(Config{Key: k, IPFilter: LoopbackOnly, Addr: name, Signal: signal})
		require.NoError(t, err)
		t.Cleanup(func() { tr.Close() })
		byName[name] = tr
	}
	return byName["a"], byName["b"]
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func connect(t *testing.T, a, b *Transport) (ca, cb control.Conn) {
	t.Helper()
	ctx := testCtx(t)
	ca, err := a.Dial(ctx, b.Addr(), b.Key())
	require.NoError(t, err)
	cb, err = b.Accept(ctx)
	require.NoError(t, err)
	return ca, cb
}

func TestALinkCarriesBothChannelsBetweenProvenKeys(t *testing.T) {
	a, b := newPair(t)
	ca, cb := connect(t, a, b)
	require.True(t, ca.RemoteKey().Equal(b.Key()))
	require.True(t, cb.RemoteKey().Equal(a.Key()))
	require.Contains(t, ca.RemoteAddr(), "127.0.0.1:")
	require.Contains(t, cb.RemoteAddr(), "127.0.0.1:")
	ctx := testCtx(t)
	require.NoError(t, ca.Send(ctx, []byte("hello")))
	m, err := cb.Receive(ctx)
	require.NoError(t, err)
	require.Equal(t, "hello", string(m))
	require.NoError(t, cb.SendData([]byte("chunk")))
	m, err = ca.ReceiveData(ctx)
	require.NoError(t, err)
	require.Equal(t, "chunk", string(m))
	require.NoError(t, ca.Close(42, "bye"))
	select {
	case <-cb.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("the peer did not see the close")
	}
	var ce *control.CloseError
	require.ErrorAs(t, cb.Err(), &ce)
	require.Equal(t, control.CloseError{Code: 42, Reason: "bye", Remote: true}, *ce)
}

// waitClosed waits for c to close and returns its CloseError.
func waitClosed(t *testing.T, c control.Conn) *control.CloseError {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the link is still open")
	}
	var ce *control.CloseError
	require.ErrorAs(t, c.Err(), &ce)
	return ce
}

// requireNoAccept checks that b accepts no link for a while.
func requireNoAccept(t *testing.T, b *Transport, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	c, err := b.Accept(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded, "accepted %v", c)
}

func TestABadKeyProofClosesTheLink(t *testing.T) {
	_, other, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	for _, tc := range []struct {
		name  string
		proof func(a *Transport) func(own, peer string) []byte
	}{
		{"WrongPeerFingerprint", func(a *Transport) func(own, peer string) []byte {
			return func(own, peer string) []byte {
				return appendProof(nil, a.cfg.Key, own, "AB:CD")
			}
		}},
		{"OwnFingerprintSwapped", func(a *Transport) func(own, peer string) []byte {
			return func(own, peer string) []byte { return appendProof(nil, a.cfg.Key, peer, own) }
		}},
		{"KeyNotTheSigners", func(a *Transport) func(own, peer string) []byte {
			return func(own, peer string) []byte {
				p := appendProof(nil, other, own, peer)
				copy(p[len(proofMagic):], a.Key()) // claims a's key, signed by another
				return p
			}
		}},
		{"NotAProof", func(a *Transport) func(own, peer string) []byte {
			return func(own, peer string) []byte { return []byte("\x02hello") }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The dialer forges: the answerer never hands the link to
			// Accept and closes it; the dialer sees why.
			a, b := newPair(t)
			a.proof = tc.proof(a)
			ca, err := a.Dial(testCtx(t), b.Addr(), b.Key())
			if err == nil { // it had b's proof before b judged its own
				ce := waitClosed(t, ca)
				require.Equal(t, control.CodeProtocol, ce.Code)
				require.True(t, ce.Remote)
				require.Contains(t, ce.Reason, "key proof")
			}
			requireNoAccept(t, b, 500*time.Millisecond)

			// The answerer forges: Dial fails.
			a, b = newPair(t)
			b.proof = tc.proof(b)
			_, err = a.Dial(testCtx(t), b.Addr(), nil)
			require.ErrorIs(t, err, control.ErrClosed)
			require.ErrorContains(t, err, "key proof")
		})
	}
}

func TestNoKeyProofTimesOut(t *testing.T) {
	a, b := newPair(t)
	b.proofTimeout = 300 * time.Millisecond
	a.proof = func(own, peer string) []byte { return nil }
	ca, err := a.Dial(testCtx(t), b.Addr(), b.Key())
	require.NoError(t, err) // b proved itself
	ce := waitClosed(t, ca)
	require.Equal(t, control.CodeProtocol, ce.Code)
	require.Contains(t, ce.Reason, "no key proof")
	requireNoAccept(t, b, 200*time.Millisecond)

	a, b = newPair(t)
	a.proofTimeout = 300 * time.Millisecond
	b.proof = func(own, peer string) []byte { return nil }
	start := time.Now()
	_, err = a.Dial(testCtx(t), b.Addr(), b.Key())
	require.ErrorIs(t, err, control.ErrTimeout)
	require.Less(t, time.Since(start), 3*time.Second)
}

func TestOversizedMessagesCloseTheLink(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(c *Conn) error
	}{
		{"Control", func(c *Conn) error { return c.ctl.Send(make([]byte, MaxControl+1)) }},
		{"Data", func(c *Conn) error { return c.data.Send(make([]byte, MaxData+1)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newPair(t)
			ca, cb := connect(t, a, b)
			require.NoError(t, tc.send(ca.(*Conn))) // past the checks of Send and SendData
			ce := waitClosed(t, cb)
			require.Equal(t, control.CodeProtocol, ce.Code)
			require.False(t, ce.Remote)
			ce = waitClosed(t, ca)
			require.Equal(t, control.CodeProtocol, ce.Code)
			require.True(t, ce.Remote)
			require.Contains(t, ce.Reason, "bytes")
		})
	}
}

func TestTheLargestMessagesPass(t *testing.T) {
	a, b := newPair(t)
	ca, cb := connect(t, a, b)
	ctx := testCtx(t)
	require.NoError(t, ca.Send(ctx, make([]byte, MaxControl)))
	require.NoError(t, ca.SendData(make([]byte, MaxData)))
	m, err := cb.Receive(ctx)
	require.NoError(t, err)
	require.Len(t, m, MaxControl)
	m, err = cb.ReceiveData(ctx)
	require.NoError(t, err)
	require.Len(t, m, MaxData)
}

func TestFingerprintIsTheSHA256Line(t *testing.T) {
	sdp := "v=0\r\na=fingerprint:sha-1 00:11\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=fingerprint:sha-256 ab:cd:EF\r\n"
	fp, err := fingerprint(sdp)
	require.NoError(t, err)
	require.Equal(t, "AB:CD:EF", fp)
	_, err = fingerprint("v=0\r\n")
	require.ErrorIs(t, err, errNoFingerprint)
}

func TestProofRoundTrip(t *testing.T) {
	pub, key, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	p := appendProof(nil, key, "AA", "BB")
	require.Len(t, p, proofSize)
	got, err := checkProof(p, "BB", "AA")
	require.NoError(t, err)
	require.True(t, got.Equal(pub))
	_, err = checkProof(p, "AA", "BB")
	require.ErrorIs(t, err, errBadProof)
}

func TestCloseMessageRoundTrip(t *testing.T) {
	code, reason, ok := parseClose(appendClose(nil, 300, "bye"))
	require.True(t, ok)
	require.EqualValues(t, 300, code)
	require.Equal(t, "bye", reason)
	_, _, ok = parseClose([]byte("\x02hello"))
	require.False(t, ok)
	// Invalid UTF-8 is replaced, then the reason is cut at a rune.
	_, reason, ok = parseClose(appendClose(nil, 1, strings.Repeat("\xffa", 200)))
	require.True(t, ok)
	require.LessOrEqual(t, len(reason), control.MaxCloseReason)
	require.True(t, utf8.ValidString(reason))
}

func FuzzLinkMessages(f *testing.F) {
	_, key, err := ed25519.GenerateKey(nil)
	require.NoError(f, err)
	f.Add(appendProof(nil, key, "AA", "BB"))
	f.Add(appendClose(nil, 300, "bye"))
	f.Add([]byte("a=fingerprint:sha-256 AB:CD\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if k, err := checkProof(b, "BB", "AA"); err == nil {
			require.Len(t, k, ed25519.PublicKeySize)
		}
		if code, reason, ok := parseClose(b); ok {
			require.LessOrEqual(t, code, control.MaxCloseCode)
			require.LessOrEqual(t, len(reason), control.MaxCloseReason)
			require.True(t, utf8.ValidString(reason))
		}
		fingerprint(string(b))
	})
}

// BenchmarkLinkSetup measures a loopback link from the offer to both keys
// proven (ICE, DTLS, SCTP, the proofs), and its close.
func BenchmarkLinkSetup(b *testing.B) {
	byName := map[string]*Transport{}
	signal := func(ctx context.Context, addr, offer string) (string, error) {
		return byName[addr].Answer(ctx, offer)
	}
	for _, name := range []string{"a", "b"} {
		_, k, err := ed25519.GenerateKey(nil)
		require.NoError(b, err)
		tr, err := New(Config{Key: k, IPFilter: LoopbackOnly, Addr: name, Signal: signal})
		require.NoError(b, err)
		defer tr.Close()
		byName[name] = tr
	}
	a, bt := byName["a"], byName["b"]
	ctx := context.Background()
	for b.Loop() {
		ca, err := a.Dial(ctx, "b", bt.Key())
		require.NoError(b, err)
		cb, err := bt.Accept(ctx)
		require.NoError(b, err)
		ca.Close(0, "")
		cb.Close(0, "")
	}
}
