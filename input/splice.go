package input

import "bytes"

const (
	// DefaultResumeWindow is how much delivered audio an HTTP source keeps
	// to find a reconnect's overlap: more than Icecast's default burst.
	DefaultResumeWindow = 256 << 10
	// spliceProbe is how much of a new connection's audio is looked for in
	// the history: enough to be unique in real audio, little enough to
	// arrive quickly when the server sends no burst (64 ms at 128 kbit/s).
	spliceProbe = 1024
	// spliceMinOverlap is the shortest overlap that is trusted when the new
	// connection's audio continues past the end of the history.
	spliceMinOverlap = 64
)

type spliceState uint8

const (
	spliceLive     spliceState = iota // deliver and remember
	spliceProbing                     // collecting the new connection's first bytes
	spliceSkipping                    // dropping bytes that repeat the history
)

// splicer drops the audio that a reconnection delivers twice. An Icecast
// server bursts recent audio (64 KiB by default) to a new listener, so
// after a reconnection the new connection starts with audio the old one
// already delivered. The splicer keeps the last bytes delivered; after a
// reconnection it looks for the new connection's first bytes in them and
// drops the new stream's prefix that repeats the end of the history.
//
// Whatever the bytes, the output for a connection is a suffix of its input,
// and the prefix dropped is a suffix of the history.
type splicer struct {
	window int    // bytes of history kept; 0 disables
	hist   []byte // the last bytes delivered: window to 2*window of them
	state  spliceState
	probe  []byte // probing: the new connection's bytes so far
	start  int    // skipping: where in hist the new stream's bytes began
	pos    int    // skipping: the index in hist of the next byte expected
}

// live reports whether bytes may go straight through (with remember).
func (s *splicer) live() bool { return s.state == spliceLive }

// remember records bytes delivered. It is called only while live.
func (s *splicer) remember(b []byte) {
	if s.window <= 0 {
		return
	}
	s.hist = append(s.hist, b...)
	if len(s.hist) > 2*s.window {
		n := copy(s.hist, s.hist[len(s.hist)-s.window:])
		s.hist = s.hist[:n]
	}
}

// reconnected starts looking for the overlap of a new connection.
func (s *splicer) reconnected() {
	s.probe = s.probe[:0]
	s.state = spliceLive
	if s.window > 0 && len(s.hist) > 0 {
		s.state = spliceProbing
	}
}

// write takes bytes from the new connection while not live and appends to
// dst what is to be delivered.
func (s *splicer) write(dst, b []byte) []byte {
	switch s.state {
	case spliceProbing:
		s.probe = append(s.probe, b...)
		if len(s.probe) >= spliceProbe {
			dst = s.decide(dst, false)
		}
	case spliceSkipping:
		h := s.hist[s.pos:]
		m := commonPrefix(b, h)
		switch {
		case m == len(h): // the overlap is over
			dst = s.deliver(dst, b[m:])
		case m == len(b): // still repeating
			s.pos += m
		default: // the new stream diverged: it was no repeat after all
			held := len(dst)
			dst = append(dst, s.hist[s.start:s.pos+m]...)
			dst = append(dst, b[m:]...)
			s.state = spliceLive
			s.remember(dst[held:])
		}
	default:
		dst = s.deliver(dst, b)
	}
	return dst
}

// endConn is called when the connection ends: a probe too short to judge
// is judged as it is, and the repeat being skipped stays skipped.
func (s *splicer) endConn(dst []byte) []byte {
	switch s.state {
	case spliceProbing:
		dst = s.decide(dst, true)
	case spliceSkipping:
		s.state = spliceLive
	}
	return dst
}

// decide finds where the probe continues the history. final means the
// connection has ended and the probe is all it delivered.
func (s *splicer) decide(dst []byte, final bool) []byte {
	n, h := s.probe, s.hist
	skip := 0
	if len(n) >= spliceMinOverlap {
		p := min(len(n), spliceProbe)
		if j := bytes.LastIndex(h, n[:p]); j >= 0 {
			m := commonPrefix(n[p:], h[j+p:])
			switch {
			case j+p+m == len(h): // repeats the history to its end
				skip = len(h) - j
			case p+m == len(n): // repeats the history so far
				if final {
					skip = len(n)
					break
				}
				s.state = spliceSkipping
				s.start, s.pos = j, j+len(n)
				s.probe = s.probe[:0]
				return dst
			}
		} else {
			// The overlap may be shorter than the probe.
			for k := min(p-1, len(h)); k >= spliceMinOverlap; k-- {
				if bytes.HasSuffix(h, n[:k]) {
					skip = k
					break
				}
			}
		}
	}
	dst = s.deliver(dst, n[skip:])
	s.probe = s.probe[:0]
	return dst
}

// deliver goes live and passes b on.
func (s *splicer) deliver(dst, b []byte) []byte {
	s.state = spliceLive
	s.remember(b)
	return append(dst, b...)
}

// commonPrefix is the length of the longest common prefix of a and b.
func commonPrefix(a, b []byte) int {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}
