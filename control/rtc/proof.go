package rtc

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/p2pradio/p2pradio/control"
)

// The link's own messages on "ctl", beside the wire messages.
const (
	// proofMagic opens the key proof, the first message each side sends:
	// proofMagic || ed25519 public key || signature.
	proofMagic = "P2PR-RTC1"
	// closeMagic opens the last message, which carries Close's code and
	// reason: closeMagic || uvarint code || reason.
	closeMagic = "P2PR-CLOSE"
	// proofContext is signed before the two fingerprints.
	proofContext = "p2pradio webrtc v1\x00"
	proofSize    = len(proofMagic) + ed25519.PublicKeySize + ed25519.SignatureSize
)

var (
	errNoFingerprint = errors.New("rtc: no sha-256 fingerprint in the SDP")
	errBadProof      = errors.New("rtc: bad key proof")
)

// fingerprint returns the sha-256 fingerprint of an SDP (session or first
// media level), upper-cased hex with colons, without the algorithm name.
func fingerprint(sdp string) (string, error) {
	for line := range strings.Lines(sdp) {
		v, ok := strings.CutPrefix(strings.TrimSpace(line), "a=fingerprint:")
		if !ok {
			continue
		}
		alg, fp, ok := strings.Cut(v, " ")
		if ok && strings.EqualFold(alg, "sha-256") {
			return strings.ToUpper(strings.TrimSpace(fp)), nil
		}
	}
	return "", errNoFingerprint
}

// signed is what a side signs: its own fingerprint, then the peer's.
func signed(own, peer string) []byte {
	return []byte(proofContext + own + "\x00" + peer)
}

// appendProof appends the key proof of the side with key and fingerprint
// own, to the peer with fingerprint peer.
func appendProof(b []byte, key ed25519.PrivateKey, own, peer string) []byte {
	b = append(b, proofMagic...)
	b = append(b, key.Public().(ed25519.PublicKey)...)
	return append(b, ed25519.Sign(key, signed(own, peer))...)
}

// checkProof checks the peer's key proof, where own is this side's
// fingerprint and peer the peer's, and returns the peer's key.
func checkProof(msg []byte, own, peer string) (ed25519.PublicKey, error) {
	if len(msg) != proofSize || !bytes.HasPrefix(msg, []byte(proofMagic)) {
		return nil, fmt.Errorf("%w: not a proof (%d bytes)", errBadProof, len(msg))
	}
	key := ed25519.PublicKey(bytes.Clone(msg[len(proofMagic) : len(proofMagic)+ed25519.PublicKeySize]))
	if !ed25519.Verify(key, signed(peer, own), msg[len(proofMagic)+ed25519.PublicKeySize:]) {
		return nil, fmt.Errorf("%w: the signature does not verify", errBadProof)
	}
	return key, nil
}

// appendClose appends the close message.
func appendClose(b []byte, code uint64, reason string) []byte {
	b = append(b, closeMagic...)
	b = binary.AppendUvarint(b, code)
	return append(b, reason...)
}

// parseClose parses a close message; ok is false if msg is not one.
func parseClose(msg []byte) (code uint64, reason string, ok bool) {
	rest, ok := bytes.CutPrefix(msg, []byte(closeMagic))
	if !ok {
		return 0, "", false
	}
	code, n := binary.Uvarint(rest)
	if n <= 0 {
		return control.CodeProtocol, "malformed close", true
	}
	reason = strings.ToValidUTF8(string(rest[n:]), string(utf8.RuneError))
	if len(reason) > control.MaxCloseReason {
		cut := control.MaxCloseReason
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	return min(code, control.MaxCloseCode), reason, true
}
