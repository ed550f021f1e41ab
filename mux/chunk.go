package mux

import (
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"time"
)

// Flags describe a chunk.
type Flags uint8

const (
	// FlagDiscontinuity marks the first chunk after a break in the stream: a
	// change of format, or the source restarted. A decoder must not carry its
	// state across it.
	FlagDiscontinuity Flags = 1 << iota
	// FlagMetadata means the chunk carries the stream title in Title.
	FlagMetadata
)

const (
	chunkVersion = 1
	// chunkHeaderSize is version, flags, seq, timestamp, produced time,
	// title length and frame count.
	chunkHeaderSize = 1 + 1 + 8 + 8 + 8 + 2 + 2
	// SignatureSize is the size of a chunk's ed25519 signature.
	SignatureSize = ed25519.SignatureSize
	// MaxChunkFrames bounds the number of frames in one chunk.
	MaxChunkFrames = 64
	// MaxTitleLen bounds a chunk's title in bytes.
	MaxTitleLen = 1024
	// MaxChunkSize bounds a chunk's encoding.
	MaxChunkSize = chunkHeaderSize + MaxChunkFrames*(2+MaxFrameSize) + MaxTitleLen + SignatureSize
)

// signContext separates chunk signatures from anything else the station key
// might sign.
const signContext = "p2pradio chunk v1\x00"

// A Chunk is the unit the broadcaster signs and the network carries: a run of
// whole frames of one format with its place in the stream.
//
// A station's chunks are numbered from zero without gaps; Timestamp counts
// the samples (per channel) of every frame before the chunk's first, so the
// receiver can place a chunk on the timeline even when others are missing.
type Chunk struct {
	Seq       uint64
	Timestamp int64 // samples since the stream began
	// Produced is when the broadcaster's input produced the first frame, in
	// microseconds since the Unix epoch (used for the lag figure).
	Produced  int64
	Flags     Flags
	Title     string  // the stream title, when Flags has FlagMetadata
	Frames    []Frame // at least one, all of one Format
	Signature [SignatureSize]byte

	raw []byte // the encoding, once known
	// Format and Samples, once known (kept by Sign and ParseChunk, after
	// which the chunk must not change): a player and a relay ask for them
	// on every frame, and computing them reads a frame header.
	format  Format
	samples int64 // 0: not kept
}

// Format is the format of the chunk's frames.
func (c *Chunk) Format() Format {
	if c.samples != 0 {
		return c.format
	}
	return c.Frames[0].Format()
}

// Samples is the number of samples per channel in the chunk.
func (c *Chunk) Samples() int64 {
	if c.samples != 0 {
		return c.samples
	}
	return int64(len(c.Frames) * c.Frames[0].Samples())
}

// frameSamples is the number of samples per channel in each of the chunk's
// frames.
func (c *Chunk) frameSamples() int {
	if c.samples != 0 {
		return c.format.SamplesPerFrame()
	}
	return c.Frames[0].Samples()
}

// keep computes Format and Samples once, for a chunk that is complete.
func (c *Chunk) keep() {
	c.format = c.Frames[0].Format()
	c.samples = int64(len(c.Frames) * c.format.SamplesPerFrame())
}

// End is the timestamp just after the chunk's last sample.
func (c *Chunk) End() int64 { return c.Timestamp + c.Samples() }

// Duration is the playing time of the chunk.
func (c *Chunk) Duration() time.Duration { return c.Format().Duration(c.Samples()) }

// ProducedTime is Produced as a time.Time.
func (c *Chunk) ProducedTime() time.Time { return time.UnixMicro(c.Produced) }

// encodedSize is the length of the chunk's encoding.
func (c *Chunk) encodedSize() int {
	n := chunkHeaderSize + len(c.Title) + SignatureSize
	for _, f := range c.Frames {
		n += 2 + len(f)
	}
	return n
}

// check reports whether the chunk's fields fit the encoding.
func (c *Chunk) check() error {
	if len(c.Frames) == 0 || len(c.Frames) > MaxChunkFrames {
		return fmt.Errorf("%w: %d frames", ErrBadChunk, len(c.Frames))
	}
	if len(c.Title) > MaxTitleLen {
		return fmt.Errorf("%w: title of %d bytes", ErrBadChunk, len(c.Title))
	}
	if c.Timestamp < 0 {
		return fmt.Errorf("%w: negative timestamp", ErrBadChunk)
	}
	// Everything ParseChunk checks, so that a station never signs a chunk
	// its listeners must reject.
	if c.Flags&^(FlagDiscontinuity|FlagMetadata) != 0 {
		return fmt.Errorf("%w: unknown flags %#x", ErrBadChunk, c.Flags)
	}
	if c.Flags&FlagMetadata == 0 && c.Title != "" {
		return fmt.Errorf("%w: title without metadata flag", ErrBadChunk)
	}
	for i, f := range c.Frames {
		g, err := ParseFrame(f)
		if err != nil {
			return fmt.Errorf("%w: frame %d: %w", ErrBadChunk, i, err)
		}
		if len(g) != len(f) {
			return fmt.Errorf("%w: frame %d is %d bytes, its header says %d", ErrBadChunk, i, len(f), len(g))
		}
		if i > 0 && f.Format() != c.Frames[0].Format() {
			return fmt.Errorf("%w: frame %d changes format", ErrBadChunk, i)
		}
	}
	return nil
}

// appendUnsigned appends everything but the signature.
func (c *Chunk) appendUnsigned(b []byte) []byte {
	b = append(b, chunkVersion, byte(c.Flags))
	b = binary.BigEndian.AppendUint64(b, c.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(c.Timestamp))
	b = binary.BigEndian.AppendUint64(b, uint64(c.Produced))
	b = binary.BigEndian.AppendUint16(b, uint16(len(c.Title)))
	b = binary.BigEndian.AppendUint16(b, uint16(len(c.Frames)))
	for _, f := range c.Frames {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
	}
	b = append(b, c.Title...)
	for _, f := range c.Frames {
		b = append(b, f...)
	}
	return b
}

// Sign encodes the chunk and signs it with the station's private key. The
// station's public key is part of what is signed, so a chunk cannot be
// replayed into another station's stream.
func (c *Chunk) Sign(key ed25519.PrivateKey) error {
	if err := c.check(); err != nil {
		return err
	}
	pub := key.Public().(ed25519.PublicKey)
	b := make([]byte, 0, c.encodedSize())
	b = c.appendUnsigned(b)
	sig := ed25519.Sign(key, signedMessage(pub, b))
	copy(c.Signature[:], sig)
	c.raw = append(b, sig...)
	c.keep()
	return nil
}

// signedMessage is what a signature covers: context, station key, chunk.
func signedMessage(station ed25519.PublicKey, unsigned []byte) []byte {
	m := make([]byte, 0, len(signContext)+len(station)+len(unsigned))
	m = append(m, signContext...)
	m = append(m, station...)
	return append(m, unsigned...)
}

// Verify checks the chunk's signature against the station's public key.
func (c *Chunk) Verify(station ed25519.PublicKey) error {
	if len(station) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: station key of %d bytes", ErrBadSignature, len(station))
	}
	b := c.Bytes()
	if b == nil {
		return ErrBadChunk
	}
	unsigned := b[:len(b)-SignatureSize]
	if !ed25519.Verify(station, signedMessage(station, unsigned), c.Signature[:]) {
		return ErrBadSignature
	}
	return nil
}

// Bytes is the chunk's encoding, signature included. It is computed once and
// kept: do not modify the chunk after calling Bytes or Sign, and do not
// modify the returned slice. It returns nil for a chunk that cannot be
// encoded.
func (c *Chunk) Bytes() []byte {
	if c.raw == nil {
		if c.check() != nil {
			return nil
		}
		b := make([]byte, 0, c.encodedSize())
		b = c.appendUnsigned(b)
		c.raw = append(b, c.Signature[:]...)
	}
	return c.raw
}

// parsedFrames is how many frames a parsed chunk holds in its own
// allocation (parsedChunk): 100 ms of 44.1 kHz MPEG-1 is 4 frames, 200 ms 8.
const parsedFrames = 8

type parsedChunk struct {
	c      Chunk
	frames [parsedFrames]Frame
}

// ParseChunk decodes a chunk from b, checking every length, every frame and
// that all frames share one format. The chunk's frames and Bytes refer to b:
// the caller must not modify b afterwards. The signature is not checked:
// call Verify.
func ParseChunk(b []byte) (*Chunk, error) {
	if len(b) < chunkHeaderSize+SignatureSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadChunk, len(b))
	}
	if len(b) > MaxChunkSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds %d", ErrBadChunk, len(b), MaxChunkSize)
	}
	if b[0] != chunkVersion {
		return nil, fmt.Errorf("%w: version %d", ErrBadChunk, b[0])
	}
	// A chunk of the usual few frames comes with its Frames in the same
	// allocation: every node parses every chunk.
	var c *Chunk
	if n := int(binary.BigEndian.Uint16(b[28:])); n <= parsedFrames {
		a := new(parsedChunk)
		c = &a.c
		c.Frames = a.frames[:n:n]
	} else {
		c = new(Chunk)
	}
	c.Flags = Flags(b[1])
	c.Seq = binary.BigEndian.Uint64(b[2:])
	c.Timestamp = int64(binary.BigEndian.Uint64(b[10:]))
	c.Produced = int64(binary.BigEndian.Uint64(b[18:]))
	if c.Flags&^(FlagDiscontinuity|FlagMetadata) != 0 {
		return nil, fmt.Errorf("%w: unknown flags %#x", ErrBadChunk, c.Flags)
	}
	titleLen := int(binary.BigEndian.Uint16(b[26:]))
	n := int(binary.BigEndian.Uint16(b[28:]))
	if n == 0 || n > MaxChunkFrames || titleLen > MaxTitleLen {
		return nil, fmt.Errorf("%w: %d frames, title of %d bytes", ErrBadChunk, n, titleLen)
	}
	if c.Timestamp < 0 {
		return nil, fmt.Errorf("%w: negative timestamp", ErrBadChunk)
	}
	p := chunkHeaderSize
	body := len(b) - SignatureSize
	if p+2*n+titleLen > body {
		return nil, fmt.Errorf("%w: truncated", ErrBadChunk)
	}
	lens := b[p : p+2*n]
	p += 2 * n
	c.Title = string(b[p : p+titleLen])
	p += titleLen
	if c.Frames == nil {
		c.Frames = make([]Frame, n)
	}
	for i := range n {
		l := int(binary.BigEndian.Uint16(lens[2*i:]))
		if p+l > body {
			return nil, fmt.Errorf("%w: frame %d truncated", ErrBadChunk, i)
		}
		f, err := ParseFrame(b[p : p+l])
		if err != nil {
			return nil, fmt.Errorf("%w: frame %d: %w", ErrBadChunk, i, err)
		}
		if len(f) != l {
			return nil, fmt.Errorf("%w: frame %d is %d bytes, its header says %d", ErrBadChunk, i, l, len(f))
		}
		if i > 0 && f.Format() != c.Frames[0].Format() {
			return nil, fmt.Errorf("%w: frame %d changes format", ErrBadChunk, i)
		}
		c.Frames[i] = f
		p += l
	}
	if p != body {
		return nil, fmt.Errorf("%w: %d bytes after the frames", ErrBadChunk, body-p)
	}
	if c.Flags&FlagMetadata == 0 && titleLen != 0 {
		return nil, fmt.Errorf("%w: title without metadata flag", ErrBadChunk)
	}
	copy(c.Signature[:], b[body:])
	c.raw = b
	c.keep()
	return c, nil
}
