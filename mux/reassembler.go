package mux

import (
	"errors"
	"io"
	"slices"
	"sync"
	"time"
)

// Errors from Reassembler.Push. They are not faults of the sender: a chunk
// can be late or duplicated by the overlay in honest operation.
var (
	// ErrDuplicate means the chunk was already received or played.
	ErrDuplicate = errors.New("mux: duplicate chunk")
	// ErrLate means the chunk's audio is entirely behind the playhead.
	ErrLate = errors.New("mux: chunk arrived after its deadline")
	// ErrTooFarAhead is no longer returned: a chunk far ahead of the
	// playhead is live audio, and the Reassembler makes room for it by
	// dropping its oldest chunks. It is kept for source compatibility.
	ErrTooFarAhead = errors.New("mux: chunk beyond the reassembly window")
)

// ReassemblerConfig configures a Reassembler. The zero value is usable.
type ReassemblerConfig struct {
	// Window is how many chunks are held at most: when one more arrives,
	// the oldest is dropped to make room, before and during playback. It
	// is also, in chunks of the arriving one's length, how far behind the
	// newest audio received a chunk may be and still be accepted. Zero
	// means 300 (30 s of 100 ms chunks).
	Window int
}

// ReassemblerStats counts what a Reassembler did with the chunks pushed.
type ReassemblerStats struct {
	Chunks     int64 // accepted
	Duplicates int64
	// Late counts chunks behind the playhead, or more than Window behind
	// the newest audio received (stale: an old burst from a lagging peer).
	Late   int64
	TooFar int64 // no longer counted; see ErrTooFarAhead
	// Dropped counts chunks held and then dropped unplayed: to respect
	// Window, or because they fell more than Window behind the newest audio.
	Dropped int64
	// Skips counts the times Skip moved the playhead; Skipped the chunks it
	// dropped doing so.
	Skips, Skipped int64
	Held           int // chunks held now
}

// A Reassembler turns chunks that arrive out of order, twice, late or never
// back into one continuous frame stream (it implements playout.Frames).
//
// The timeline is the chunks' timestamps: the playhead starts at the oldest
// chunk received before the first Next, and advances one frame per Next.
// A frame missing at its deadline (Next(true)) becomes a silent frame of the
// same format and duration. Frames that cannot be decoded exactly, because
// their bit reservoir or the frame before them was not received, are marked
// Muted.
//
// The live edge is the newest audio received, in the broadcaster's time
// (Chunk.Produced): Behind says how far the playhead is behind it and Skip
// jumps forward to it, so that a listener that fell behind (starved, or
// rebuffering after an outage) rejoins the live stream. Because it compares
// the broadcaster's timestamps with each other, it needs no clock shared
// with the broadcaster, and a stream pushed faster than real time (a file
// played at once) is never behind. Old chunks never pin the stream: a chunk
// of any sequence number ahead is accepted, and chunks more than Window
// behind the newest are dropped.
//
// Push, End, Buffered, Behind, Ready and Stats are safe from any goroutine;
// Next and Skip are called by one goroutine.
type Reassembler struct {
	cfg   ReassemblerConfig
	ready chan struct{}

	mu       sync.Mutex
	held     []*Chunk // sorted by Timestamp
	started  bool
	ended    bool
	playhead int64
	lastSeq  uint64 // highest sequence number played from, when havePlayed
	havePlay bool
	format   Format // of the last frame handed out
	title    string
	// newest is the production time (Unix microseconds) of the end of the
	// newest audio received; 0 when no chunk carried one.
	newest int64
	// ref is a frame handed out, the timestamp and production time it
	// pins the playhead's production time to; refRate is its sample rate
	// (0: none yet).
	refTS, refProduced int64
	refRate            int

	primed    bool // a frame other than a priming one was handed out
	reservoir int  // main data bytes received contiguously before the playhead
	// cleanRun counts the frames before the playhead, up to cleanHistory,
	// that were received with their whole bit reservoir: a frame decodes
	// exactly only when it and the frames whose state it inherits did.
	cleanRun int
	stats    ReassemblerStats
}

// cleanHistory is the longest run of clean frames the muting rule needs.
const cleanHistory = 2

// NewReassembler returns an empty Reassembler.
func NewReassembler(cfg ReassemblerConfig) *Reassembler {
	if cfg.Window <= 0 {
		cfg.Window = 300
	}
	return &Reassembler{cfg: cfg, ready: make(chan struct{}, 1)}
}

func (r *Reassembler) signal() {
	select {
	case r.ready <- struct{}{}:
	default:
	}
}

// Push adds a chunk. The Reassembler keeps it: the caller must not modify
// it afterwards. The signature is not checked here; the caller verifies
// chunks before pushing them.
func (r *Reassembler) Push(c *Chunk) error {
	if len(c.Frames) == 0 {
		return ErrBadChunk
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started && c.End() <= r.playhead {
		r.stats.Late++
		return ErrLate
	}
	i, found := slices.BinarySearchFunc(r.held, c.Timestamp, func(h *Chunk, ts int64) int {
		switch {
		case h.Timestamp < ts:
			return -1
		case h.Timestamp > ts:
			return 1
		}
		return 0
	})
	if found || (r.havePlay && c.Seq <= r.lastSeq && c.Timestamp <= r.playhead) {
		r.stats.Duplicates++
		return ErrDuplicate
	}
	if end := producedEnd(c); c.Produced != 0 && r.newest != 0 && end < r.newest-r.span(c) {
		r.stats.Late++ // stale: far behind what others sent
		return ErrLate
	}
	r.held = slices.Insert(r.held, i, c)
	r.stats.Chunks++
	if end := producedEnd(c); c.Produced != 0 && end > r.newest {
		r.newest = end
		// Whatever is now far behind the live edge will never be played
		// (a player playing it skips ahead).
		for len(r.held) > 1 && r.held[0].Produced != 0 && producedEnd(r.held[0]) < r.newest-r.span(r.held[0]) &&
			(!r.started || r.held[0].Timestamp > r.playhead) {
			r.held[0] = nil
			r.held = r.held[1:]
			r.stats.Dropped++
		}
	}
	for len(r.held) > r.cfg.Window {
		r.drop()
	}
	if !r.started {
		r.playhead = r.held[0].Timestamp
	}
	r.signal()
	return nil
}

// drop drops the oldest held chunk not being played, unplayed, or one
// already played; r.mu is held and at least two chunks are held.
func (r *Reassembler) drop() {
	j := 0
	if r.started && r.held[0].Timestamp <= r.playhead {
		if r.held[0].End() <= r.playhead {
			r.held = slices.Delete(r.held, 0, 1) // played
			return
		}
		j = 1 // being played
	}
	r.held = slices.Delete(r.held, j, j+1)
	r.stats.Dropped++
}

// span is how far behind the live edge a chunk like c may be and still be
// held: Window chunks of its length, in microseconds.
func (r *Reassembler) span(c *Chunk) int64 {
	return int64(r.cfg.Window) * c.Duration().Microseconds()
}

// producedEnd is when the broadcaster's input produced the end of c, in
// Unix microseconds.
func producedEnd(c *Chunk) int64 { return c.Produced + c.Duration().Microseconds() }

// Behind is how far the playhead is behind the live edge, the end of the
// newest audio received, in the broadcaster's time: at the playhead's
// frame, the time the broadcaster took to produce what the Reassembler
// received after it. It is 0 when chunks carry no production time, and
// counts the audio in holes too (Buffered does not).
func (r *Reassembler) Behind() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.producedAt()
	if !ok || r.newest == 0 || at >= r.newest {
		return 0
	}
	return time.Duration(r.newest-at) * time.Microsecond
}

// producedAt is the production time of the playhead's frame, from the
// last frame handed out (or, before playback, the first chunk held); r.mu
// is held.
func (r *Reassembler) producedAt() (int64, bool) {
	if !r.started {
		if len(r.held) == 0 || r.held[0].Produced == 0 {
			return 0, false
		}
		return r.held[0].Produced, true
	}
	if r.refRate == 0 {
		return 0, false
	}
	d := r.playhead - r.refTS
	return r.refProduced + d*int64(time.Second/time.Microsecond)/int64(r.refRate), true
}

// Skip moves the playhead forward over the audio more than keep behind the
// live edge (see Behind), and over a hole at the playhead, onto the start
// of the first held chunk after them: a chunk boundary. The chunks it
// passes are dropped. Frames from the new playhead on prime the decoder
// (Slot.Prime) until one decodes exactly, as at the start of playback, so
// playback resumes without a click. Skip reports whether the playhead
// moved; it does not move when the chunk at the playhead is held and not
// too far behind, nor when nothing newer than keep behind is held. It is
// meant for a player that stopped (rebuffering) or fell behind: the
// frames skipped are never played.
func (r *Reassembler) Skip(keep time.Duration) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	limit := r.newest - keep.Microseconds()
	i := 0
	for ; i < len(r.held); i++ {
		c := r.held[i]
		if r.started && c.End() <= r.playhead {
			continue // played
		}
		if r.newest == 0 || c.Produced == 0 || producedEnd(c) > limit {
			break
		}
	}
	dropped := int64(0)
	for _, c := range r.held[:i] {
		if !r.started || c.End() > r.playhead {
			dropped++
		}
	}
	clear(r.held[:i])
	r.held = r.held[i:]
	if len(r.held) == 0 {
		if dropped > 0 {
			r.stats.Skips++
			r.stats.Skipped += dropped
		}
		return dropped > 0
	}
	c := r.held[0]
	if r.started && c.Timestamp <= r.playhead || !r.started && dropped == 0 {
		return false
	}
	r.stats.Skips++
	r.stats.Skipped += dropped
	r.playhead = c.Timestamp
	if r.started {
		// Decode from here as after a join: prime until a frame is exact.
		r.reservoir, r.cleanRun, r.primed = 0, 0, false
		r.refTS, r.refProduced, r.refRate = c.Timestamp, c.Produced, c.Format().SampleRate
	}
	r.signal()
	return true
}

// End says no more chunks will come: once the held ones are played, Next
// returns io.EOF.
func (r *Reassembler) End() {
	r.mu.Lock()
	r.ended = true
	r.mu.Unlock()
	r.signal()
}

// Ended reports whether End was called.
func (r *Reassembler) Ended() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ended
}

// Ready is signalled whenever a chunk is accepted or End is called.
func (r *Reassembler) Ready() <-chan struct{} { return r.ready }

// Buffered is the playing time held without a gap from the playhead on.
// Chunks of a joiner's burst can arrive out of order; playback starts only
// once Target of them are here without a hole.
func (r *Reassembler) Buffered() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.held) == 0 || r.held[0].Timestamp > r.playhead {
		return 0
	}
	end := r.held[0].End()
	for _, c := range r.held[1:] {
		if c.Timestamp != end {
			break
		}
		end = c.End()
	}
	return r.held[0].Format().Duration(end - r.playhead)
}

// Stats returns the counters.
func (r *Reassembler) Stats() ReassemblerStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.stats
	s.Held = len(r.held)
	return s
}

// Next returns the slot at the playhead and advances it; see playout.Frames.
func (r *Reassembler) Next(conceal bool) (Slot, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.started {
		if len(r.held) == 0 {
			if r.ended {
				return Slot{}, false, io.EOF
			}
			return Slot{}, false, nil
		}
		r.started = true
		r.playhead = r.held[0].Timestamp
		// A fresh decoder at the very start of the stream is in the same
		// state as the reference decoder; anywhere else it is not.
		if r.playhead == 0 {
			r.cleanRun = cleanHistory // like the reference decoder's start
		}
	}
	// Forget chunks that are entirely played.
	for len(r.held) > 0 && r.held[0].End() <= r.playhead {
		r.held = r.held[1:]
	}
	if len(r.held) > 0 && r.held[0].Timestamp <= r.playhead {
		return r.fromChunk(r.held[0]), true, nil
	}
	if r.ended && len(r.held) == 0 {
		return Slot{}, false, io.EOF
	}
	if !conceal {
		return Slot{}, false, nil
	}
	format := r.format
	if format.SampleRate == 0 && len(r.held) > 0 {
		format = r.held[0].Format()
	}
	if format.SampleRate == 0 {
		return Slot{}, false, nil // nothing known yet to conceal with
	}
	s := Slot{Frame: Silent(format), Timestamp: r.playhead, Concealed: true, Title: r.title}
	r.playhead += int64(format.SamplesPerFrame())
	if len(r.held) > 0 && r.playhead > r.held[0].Timestamp {
		// A frame boundary of the next chunk is not on our grid (a format
		// change inside the gap): resynchronise on that chunk.
		r.playhead = r.held[0].Timestamp
	}
	r.reservoir = 0
	r.cleanRun = 0
	r.primed = true
	return s, true, nil
}

// fromChunk hands out the frame of c at the playhead.
func (r *Reassembler) fromChunk(c *Chunk) Slot {
	format := c.Format() // every frame's
	spf := int64(c.frameSamples())
	off := r.playhead - c.Timestamp
	i := int((off + spf - 1) / spf) // round up onto c's frame grid
	f := c.Frames[i]
	s := Slot{
		Frame:     f,
		Timestamp: c.Timestamp + int64(i)*spf,
		Produced:  c.Produced + format.Duration(int64(i)*spf).Microseconds(),
	}
	if c.Flags&FlagDiscontinuity != 0 && i == 0 || format != r.format && r.format.SampleRate != 0 {
		s.Discontinuity = true
		r.reservoir = 0
		r.cleanRun = cleanHistory // a new decoder starts clean
	}
	if c.Flags&FlagMetadata != 0 && c.Title != r.title {
		r.title = c.Title
		s.TitleChanged = true
	}
	s.Title = r.title
	clean := f.MainDataBegin() <= r.reservoir
	// A frame's output depends on its own main data, the IMDCT overlap of
	// the granule before it and the synthesis filterbank's last 16 subband
	// slots: one frame back in MPEG-1 (two granules a frame), two frames
	// back in MPEG-2 (one granule).
	need := 1
	if format.Version != MPEG1 {
		need = 2
	}
	s.Muted = !clean || r.cleanRun < need
	if clean {
		r.cleanRun = min(r.cleanRun+1, cleanHistory)
	} else {
		r.cleanRun = 0
	}
	if !r.primed {
		// Before playback's first exact frame, frames only prime the decoder.
		s.Prime, s.Muted = s.Muted, false
		r.primed = !s.Prime
	}
	r.reservoir = min(r.reservoir+f.MainDataSize(), 1<<12)
	r.format = format
	r.lastSeq, r.havePlay = c.Seq, true
	if c.Produced != 0 {
		r.refTS, r.refProduced, r.refRate = s.Timestamp, s.Produced, format.SampleRate
	}
	r.playhead = s.Timestamp + spf
	return s
}
