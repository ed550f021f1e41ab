// Package signal is the signalling of browser peers at a node's /peer
// WebSocket (docs/browser-peers.md): its JSON messages, their checks, and
// Client, a Go page that signals like the station page does (tests).
package signal

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// Bounds of the signalling (the node enforces them).
const (
	// MaxMessage bounds one WebSocket message.
	MaxMessage = 64 << 10
	// MaxOffers bounds the offers in flight from one page.
	MaxOffers = 16
	// MaxCandidates bounds a candidates list.
	MaxCandidates = 16
	// NodeID is how messages name the node itself.
	NodeID = "node"
)

// In is any message a page sends, as parsed: the fields of every type,
// nil when absent (Check says which each type needs).
type In struct {
	Type       string          `json:"type"`
	Key        *string         `json:"key"`
	UploadKbps *int            `json:"upload_kbps"`
	To         *string         `json:"to"`
	Link       *int64          `json:"link"`
	SDP        *string         `json:"sdp"`
	Stats      json.RawMessage `json:"stats"`
}

// ErrBadMessage wraps every error about a malformed message.
var ErrBadMessage = errors.New("signal: bad message")

func bad(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadMessage, fmt.Sprintf(format, args...))
}

// Parse parses and checks a page's message.
func Parse(b []byte) (*In, error) {
	var m In
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, bad("%v", err)
	}
	switch m.Type {
	case "hello":
		if m.Key == nil || m.UploadKbps == nil {
			return nil, bad("hello needs key and upload_kbps")
		}
		if _, err := ParseKey(*m.Key); err != nil {
			return nil, err
		}
	case "candidates":
	case "offer", "answer":
		if m.To == nil || m.Link == nil || m.SDP == nil || *m.To == "" {
			return nil, bad("%s needs to, link and sdp", m.Type)
		}
	case "stats":
		var s Stats
		if len(m.Stats) == 0 || json.Unmarshal(m.Stats, &s) != nil {
			return nil, bad("stats needs a stats object")
		}
	case "":
		return nil, bad("no type")
	default:
		return nil, bad("unknown type %q", m.Type)
	}
	return &m, nil
}

// ParseKey parses a 32-byte key in hex.
func ParseKey(s string) ([]byte, error) {
	k, err := hex.DecodeString(s)
	if err != nil || len(k) != 32 {
		return nil, bad("key %.80q is not 32 bytes of hex", s)
	}
	return k, nil
}

// Hello is a page's first message.
type Hello struct {
	Type       string `json:"type"` // "hello"
	Key        string `json:"key"`
	UploadKbps int    `json:"upload_kbps"`
}

// ICEServer is one entry of Welcome.ICE, as RTCPeerConnection takes it.
type ICEServer struct {
	URLs []string `json:"urls"`
}

// Welcome is the node's answer to Hello.
type Welcome struct {
	Type    string      `json:"type"` // "welcome"
	Node    string      `json:"node"`
	Station string      `json:"station"`
	ICE     []ICEServer `json:"ice"`
	You     string      `json:"you"`
}

// Candidate is one entry of Candidates.
type Candidate struct {
	ID    string `json:"id"` // NodeID or a page's id
	Key   string `json:"key"`
	Depth int    `json:"depth"`
	Free  int    `json:"free"`
}

// Candidates answers a page's {"type":"candidates"}.
type Candidates struct {
	Type  string      `json:"type"` // "candidates"
	Peers []Candidate `json:"peers"`
}

// Offer goes from a page to the node (To) and from the node to a page
// (From).
type Offer struct {
	Type string `json:"type"` // "offer" or "answer"
	To   string `json:"to,omitempty"`
	From string `json:"from,omitempty"`
	Link int64  `json:"link"`
	SDP  string `json:"sdp"`
}

// Error answers an offer that cannot be delivered or answered.
type Error struct {
	Type  string `json:"type"` // "error"
	Link  int64  `json:"link"`
	Error string `json:"error"`
}

// Stats is window.p2pradio.stats() of a page. Pointers are fields a page
// may leave null.
type Stats struct {
	Playing    bool     `json:"playing"`
	Continuity float64  `json:"continuity"`
	LagMs      *float64 `json:"lagMs"`
	Depth      int      `json:"depth"`
	Parent     *string  `json:"parent"`
	Children   []string `json:"children"`
	Received   int64    `json:"received"`
	Relayed    int64    `json:"relayed"`
	Forged     int64    `json:"forged"`
	StartupMs  *float64 `json:"startupMs"`
	Rebuffers  int64    `json:"rebuffers"`
	Free       int      `json:"free"`
	UploadKbps int      `json:"uploadKbps"`
}

// StatsMessage carries a page's Stats.
type StatsMessage struct {
	Type  string `json:"type"` // "stats"
	Stats Stats  `json:"stats"`
}
