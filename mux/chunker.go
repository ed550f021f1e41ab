package mux

import (
	"crypto/ed25519"
	"errors"
	"io"
	"time"
)

// ChunkerConfig configures a Chunker. The zero value is usable: 100 ms
// chunks, unsigned.
type ChunkerConfig struct {
	// Duration is the target playing time of a chunk. A chunk holds the
	// whole number of frames nearest to it, at least one. Zero means 100 ms.
	Duration time.Duration
	// Key signs every chunk. Nil leaves chunks unsigned (local playback).
	Key ed25519.PrivateKey
	// TitleEvery repeats the current title at least this often, so that
	// listeners who join later learn it. Zero means 5 s.
	TitleEvery time.Duration
}

// A Chunker groups a station's frames into numbered, timestamped and signed
// chunks. It is used by one goroutine.
type Chunker struct {
	cfg ChunkerConfig

	seq        uint64
	timestamp  int64 // samples before the pending chunk
	pending    []Frame
	produced   time.Time
	format     Format
	brk        bool // the pending chunk starts a discontinuity
	brkNext    bool // Break was called: the next frame starts one
	title      string
	titleDirty bool
	titleSent  time.Time
}

// NewChunker returns a Chunker whose first chunk has sequence number 0.
func NewChunker(cfg ChunkerConfig) *Chunker {
	if cfg.Duration <= 0 {
		cfg.Duration = 100 * time.Millisecond
	}
	if cfg.TitleEvery <= 0 {
		cfg.TitleEvery = 5 * time.Second
	}
	return &Chunker{cfg: cfg}
}

// framesPerChunk is the whole number of frames of f nearest cfg.Duration.
func (c *Chunker) framesPerChunk(f Format) int {
	d := f.FrameDuration()
	n := int((c.cfg.Duration + d/2) / d)
	return min(max(n, 1), MaxChunkFrames)
}

// SetTitle sets the stream title; the next chunk carries it.
func (c *Chunker) SetTitle(title string) {
	if len(title) > MaxTitleLen {
		title = title[:MaxTitleLen]
	}
	if title != c.title {
		c.title = title
		c.titleDirty = true
	}
}

// Break marks a discontinuity: the pending frames are flushed by the next
// Add or Flush, and the chunk after them has FlagDiscontinuity.
func (c *Chunker) Break() { c.brkNext = true }

// Add appends a frame that the input produced at the given time. It returns
// a completed chunk, or nil when the pending chunk is not full yet. A change
// of format completes the pending chunk and starts a discontinuity. The
// chunker keeps f: the caller must not modify it.
func (c *Chunker) Add(f Frame, produced time.Time) (*Chunk, error) {
	var done *Chunk
	if len(c.pending) > 0 && (f.Format() != c.format || c.brkNext) {
		var err error
		if done, err = c.Flush(); err != nil {
			return nil, err
		}
	}
	if len(c.pending) == 0 {
		c.brk = c.brkNext || (f.Format() != c.format && c.seq > 0)
		c.brkNext = false
		c.format = f.Format()
		c.produced = produced
	}
	c.pending = append(c.pending, f)
	if done == nil && len(c.pending) >= c.framesPerChunk(c.format) {
		return c.Flush()
	}
	return done, nil
}

// Flush completes the pending chunk, if any, and returns it (nil if there
// were no pending frames).
func (c *Chunker) Flush() (*Chunk, error) {
	if len(c.pending) == 0 {
		return nil, nil
	}
	ch := &Chunk{
		Seq:       c.seq,
		Timestamp: c.timestamp,
		Produced:  c.produced.UnixMicro(),
		Frames:    c.pending,
	}
	if c.brk {
		ch.Flags |= FlagDiscontinuity
	}
	if c.title != "" && (c.titleDirty || c.produced.Sub(c.titleSent) >= c.cfg.TitleEvery) {
		ch.Flags |= FlagMetadata
		ch.Title = c.title
		c.titleDirty = false
		c.titleSent = c.produced
	}
	if c.cfg.Key != nil {
		if err := ch.Sign(c.cfg.Key); err != nil {
			return nil, err
		}
	}
	c.seq++
	c.timestamp += ch.Samples()
	c.pending = nil
	return ch, nil
}

// Pump reads frames from d and cuts them into chunks with c, handing each
// complete chunk to emit, and the last, partial one when the stream ends.
// title, if not nil, is asked for the stream title before each frame. It
// returns nil when d reaches io.EOF, else d's or c's error. It is the one
// loop from a frame stream to chunks: a broadcaster's and local playback's.
func Pump(d *Demuxer, c *Chunker, title func() string, emit func(*Chunk)) error {
	for {
		f, err := d.Next()
		if errors.Is(err, io.EOF) {
			if ch, _ := c.Flush(); ch != nil {
				emit(ch)
			}
			return nil
		}
		if err != nil {
			return err
		}
		if title != nil {
			c.SetTitle(title())
		}
		ch, err := c.Add(f, time.Now())
		if err != nil {
			return err
		}
		if ch != nil {
			emit(ch)
		}
	}
}
