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
	// ErrTooFarAhead means the chunk is beyond the reassembly window.
	ErrTooFarAhead = errors.New("mux: chunk beyond the reassembly window")
)

// ReassemblerConfig configures a Reassembler. The zero value is usable.
type ReassemblerConfig struct {
	// Window is how many chunks ahead of the playhead are accepted and held.
	// Before playback starts, the oldest are dropped to make room. Zero
	// means 300 (30 s of 100 ms chunks).
	Window int
}

// ReassemblerStats counts what a Reassembler did with the chunks pushed.
type ReassemblerStats struct {
	Chunks     int64 // accepted
	Duplicates int64
	Late       int64
	TooFar     int64
	Dropped    int64 // dropped before playback started to respect Window
	Held       int   // chunks held now
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
// Push, End, Buffered, Ready and Stats are safe from any goroutine; Next is
// called by one goroutine.
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
	if r.havePlay && c.Seq > r.lastSeq+uint64(r.cfg.Window) {
		r.stats.TooFar++
		return ErrTooFarAhead
	}
	r.held = slices.Insert(r.held, i, c)
	r.stats.Chunks++
	if !r.started {
		for len(r.held) > r.cfg.Window {
			r.held = r.held[1:]
			r.stats.Dropped++
		}
		r.playhead = r.held[0].Timestamp
	}
	r.signal()
	return nil
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
	r.playhead = s.Timestamp + spf
	return s
}
