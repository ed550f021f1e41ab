package mux

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
)

const (
	// MaxJunk is how many bytes the Demuxer scans at the start of a stream
	// without finding a frame before it gives up with ErrNotMP3. Once the
	// stream has started, a run of junk this long is logged and counted
	// (DemuxStats.JunkRuns) and the Demuxer goes on looking. Tags do not
	// count.
	MaxJunk = 64 << 10
	// MaxLiveJunk is how many bytes of junk after the last frame end a
	// stream that has started with ErrNotMP3: about 8 minutes of 128
	// kbit/s audio.
	MaxLiveJunk = 8 << 20
)

const (
	// demuxBufSize is the read buffer: room for the largest frame the
	// Demuxer must see whole (a free-format frame and the next header).
	demuxBufSize = 16 << 10
	// slabSize is the size of the blocks returned frames are cut from.
	slabSize = 16 << 10
	// unsupportedRun is how many consecutive unsupported frames, each
	// confirmed by the header after it, make the stream unsupported.
	unsupportedRun = 3
	// maxFreeFrame bounds a free-format frame (640 kbit/s at 32 kHz).
	maxFreeFrame = 2881
	// maxAPETag bounds the APEv2 tags the Demuxer skips whole.
	maxAPETag = 16 << 20
	// maxTags and maxTagBytes bound the tags between two frames.
	maxTags     = 16
	maxTagBytes = 64 << 20
	// maxEmptyReads is how many (0, nil) reads in a row end the stream with
	// io.ErrNoProgress, as in bufio.
	maxEmptyReads = 100
)

// errBadRead is returned for a reader that reports an impossible count.
var errBadRead = errors.New("mux: reader returned an invalid count")

// DemuxStats counts what a Demuxer has read.
type DemuxStats struct {
	Frames     int64 // audio frames returned by Next
	FrameBytes int64 // bytes of the frames returned
	Skipped    int64 // bytes skipped while hunting for a frame (junk, unconfirmed or unsupported frames)
	Tags       int64 // ID3v1, ID3v2 and APEv2 tags skipped
	TagBytes   int64 // bytes of the tags skipped
	InfoFrames int64 // Xing, Info and VBRI frames dropped
	Resyncs    int64 // times the stream lost frame sync after it had it
	JunkRuns   int64 // runs of more than MaxJunk bytes without a frame after the stream started
	Truncated  int64 // bytes of a partial frame dropped at the end of the stream
}

// A Demuxer splits a stream of MP3 bytes into validated Layer III frames.
//
// It skips ID3v2 tags (at the start and between frames), ID3v1 and APEv2
// tags, Xing/Info/VBRI frames and junk. At the start of the stream and after
// junk it trusts a frame header only when the next header (of the same
// Format) starts exactly where the frame ends; once in sync it returns each
// frame as soon as its last byte has arrived, so it never waits for more
// than the current frame and the next frame's header. A frame of a new
// Format must be confirmed by the header after it, like a frame after junk.
//
// A long run of junk (more than MaxJunk bytes) is fatal only at the start
// of the stream, where it means the input is not MP3; later it is skipped,
// logged and counted in DemuxStats.JunkRuns, up to MaxLiveJunk bytes. The
// Demuxer holds at most a fixed buffer (16 KiB) and the frames it returns,
// whatever the input.
//
// A Demuxer is not safe for concurrent use. It reads from its reader only
// inside Next.
type Demuxer struct {
	r        io.Reader
	log      *slog.Logger
	buf      []byte // buf[off:end] is read and not yet consumed
	off, end int
	eof      bool
	err      error // sticky: io.EOF, ErrNotMP3, ErrUnsupported
	discard  int   // bytes of a tag still to skip

	locked  bool   // in sync: the last thing consumed was a frame of format, or a tag after one
	format  Format // of the last frame
	aligned bool   // nothing but tags and frames consumed since the start or the last frame
	junkRun int64  // bytes skipped since the last frame
	lost    bool   // junkRun passed MaxJunk after the stream started: logged
	lastEnd int64  // the offset after the last frame
	tags    int    // tags since the last frame
	tagRun  int64  // bytes of those tags
	total   int64  // bytes consumed

	unsupported    int   // consecutive confirmed unsupported frames
	unsupportedErr error // what the last of them was

	slab  []byte
	stats DemuxStats
}

// DemuxConfig configures a Demuxer. The zero value is usable.
type DemuxConfig struct {
	// Logger receives a warning when the stream loses sync for more than
	// MaxJunk bytes, and a note when it is back in sync. Nil is silent.
	Logger *slog.Logger
}

// NewDemuxer returns a Demuxer reading MP3 bytes from r, with the zero
// DemuxConfig. It does no I/O.
func NewDemuxer(r io.Reader) *Demuxer { return NewDemuxerConfig(r, DemuxConfig{}) }

// NewDemuxerConfig returns a Demuxer reading MP3 bytes from r. It does no
// I/O.
func NewDemuxerConfig(r io.Reader, cfg DemuxConfig) *Demuxer {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Demuxer{r: r, log: log, buf: make([]byte, demuxBufSize), aligned: true}
}

// Stats returns the counts so far.
func (d *Demuxer) Stats() DemuxStats { return d.stats }

// Offset is how many bytes of the stream Next has consumed: after Next
// returns a frame, the offset of the byte after the frame; after io.EOF,
// the length of the stream.
func (d *Demuxer) Offset() int64 { return d.total }

// started reports whether the stream has yielded a frame.
func (d *Demuxer) started() bool { return d.stats.Frames > 0 || d.stats.InfoFrames > 0 }

// Next returns the next audio frame. The frame is the Demuxer's own copy and
// stays valid: the Demuxer never reuses its memory.
//
// At the end of the stream Next returns io.EOF; a partial frame at the end
// is dropped and counted in Stats.Truncated. A stream that ends, or runs
// MaxJunk bytes, without a frame, and a started stream that runs
// MaxLiveJunk bytes without one, yield an error wrapping ErrNotMP3; three
// consecutive frames of MPEG audio that p2pradio does not carry (free
// format, Layers I and II) yield an error wrapping ErrUnsupported.
// These errors, like io.EOF, are returned again by every later call. Any
// other error is the reader's: it is returned as is, and calling Next again
// reads again, carrying on where the Demuxer stopped.
func (d *Demuxer) Next() (Frame, error) {
	if d.err != nil {
		return nil, d.err
	}
	f, err := d.next()
	if err != nil {
		if err == io.EOF || errors.Is(err, ErrNotMP3) || errors.Is(err, ErrUnsupported) {
			d.err = err
		}
		return nil, err
	}
	return f, nil
}

func (d *Demuxer) next() (Frame, error) {
	for {
		if err := d.skipTagRest(); err != nil {
			return nil, err
		}
		if d.junkRun > MaxJunk {
			if err := d.longJunk(); err != nil {
				return nil, err
			}
		}
		if err := d.fill(HeaderSize); err == io.EOF {
			return nil, d.finish()
		} else if err != nil {
			return nil, err
		}
		b := d.buf[d.off:d.end]
		if b[0] != 0xFF {
			n, err := d.tag()
			if err != nil {
				return nil, err
			}
			if n > 0 && (d.tags >= maxTags || d.tagRun+int64(n) > maxTagBytes) {
				if !d.started() {
					return nil, fmt.Errorf("%w: %d tags of %d bytes and no frame", ErrNotMP3, d.tags+1, d.tagRun+int64(n))
				}
				n = 0 // in a live stream, junk that looks like a tag
			}
			if n > 0 {
				d.skipTag(n)
				continue
			}
			d.skipJunk(junkLen(b))
			continue
		}
		h, err := ParseHeader(b)
		if err != nil {
			if err := d.tryUnsupported(); err != nil {
				return nil, err
			}
			continue
		}
		n := h.Size()
		if n < h.sideInfoOffset()+h.SideInfoSize() {
			d.skipJunk(1)
			continue
		}
		if d.locked && h.Format() == d.format {
			// In sync: the frame needs no confirmation.
			if err := d.fill(n); err == io.EOF {
				d.truncate()
				continue
			} else if err != nil {
				return nil, err
			}
		} else {
			// Trust the header only if the next one confirms it.
			err := d.fill(n + HeaderSize)
			if err != nil && err != io.EOF {
				return nil, err
			}
			b = d.buf[d.off:d.end]
			switch {
			case len(b) >= n+HeaderSize && confirms(h, b[n:]):
			case len(b) == n && d.aligned:
				// The stream ends with the frame, and nothing
				// but tags and frames came before it.
			case len(b) < n && d.aligned:
				d.truncate()
				continue
			default:
				d.skipJunk(1)
				continue
			}
		}
		if f := d.accept(h, n); f != nil {
			return f, nil
		}
	}
}

// fill tries to have n bytes buffered. It returns nil when they are,
// io.EOF when the stream ends first, or the reader's error.
func (d *Demuxer) fill(n int) error {
	empty := 0
	for d.end-d.off < n {
		if d.eof {
			return io.EOF
		}
		if d.off+n > len(d.buf) {
			d.end = copy(d.buf, d.buf[d.off:d.end])
			d.off = 0
		}
		m, err := d.r.Read(d.buf[d.end:])
		if m < 0 || m > len(d.buf)-d.end {
			return errBadRead
		}
		d.end += m
		if err == io.EOF {
			d.eof = true
		} else if err != nil {
			return err
		}
		if m > 0 {
			empty = 0
		} else if empty++; empty >= maxEmptyReads && !d.eof {
			return io.ErrNoProgress
		}
	}
	return nil
}

// consume drops n buffered bytes.
func (d *Demuxer) consume(n int) {
	d.off += n
	d.total += int64(n)
}

// accept consumes the frame of n bytes at the start of the buffer, which
// has header h. It returns a copy of the frame, or nil for an info frame.
func (d *Demuxer) accept(h Header, n int) Frame {
	if d.lost {
		d.lost = false
		d.log.Info("mux: back in sync", "offset", d.total, "skipped", d.total-d.lastEnd)
	}
	d.locked, d.aligned = true, true
	d.format = h.Format()
	d.junkRun, d.tags, d.tagRun = 0, 0, 0
	d.unsupported, d.unsupportedErr = 0, nil
	src := Frame(d.buf[d.off : d.off+n])
	d.consume(n)
	d.lastEnd = d.total
	if src.IsInfo() {
		d.stats.InfoFrames++
		return nil
	}
	if cap(d.slab)-len(d.slab) < n {
		d.slab = make([]byte, 0, slabSize)
	}
	start := len(d.slab)
	d.slab = append(d.slab, src...)
	d.stats.Frames++
	d.stats.FrameBytes += int64(n)
	return Frame(d.slab[start:len(d.slab):len(d.slab)])
}

// skipJunk drops n bytes that are not a frame, losing sync.
func (d *Demuxer) skipJunk(n int) {
	if d.locked {
		d.locked = false
		d.stats.Resyncs++
	}
	d.aligned = false
	d.unsupported = 0
	d.consume(n)
	d.stats.Skipped += int64(n)
	d.junkRun += int64(n)
}

// longJunk handles a run of more than MaxJunk bytes without a frame: the
// end of a stream that has not started, a warning in one that has.
func (d *Demuxer) longJunk() error {
	switch {
	case !d.started():
		return fmt.Errorf("%w: no frame in %d bytes", ErrNotMP3, d.junkRun)
	case d.junkRun > MaxLiveJunk:
		return fmt.Errorf("%w: no frame in the %d bytes since the last frame (which ended at offset %d)", ErrNotMP3, d.total-d.lastEnd, d.lastEnd)
	case !d.lost:
		d.lost = true
		d.stats.JunkRuns++
		d.log.Warn("mux: lost sync: skipping junk", "after", d.lastEnd, "skipped", d.total-d.lastEnd)
	}
	return nil
}

// truncate drops what is left of the stream, the start of a frame.
func (d *Demuxer) truncate() {
	n := d.end - d.off
	d.consume(n)
	d.stats.Truncated += int64(n)
}

// finish is called at the end of the stream with fewer than HeaderSize
// bytes left.
func (d *Demuxer) finish() error {
	if n := d.end - d.off; n > 0 {
		if d.aligned && d.buf[d.off] == 0xFF {
			d.truncate()
		} else {
			d.consume(n)
			d.stats.Skipped += int64(n)
		}
	}
	if d.stats.Frames == 0 && d.stats.InfoFrames == 0 {
		if d.unsupportedErr != nil {
			return d.unsupportedErr
		}
		return fmt.Errorf("%w: no frame in %d bytes", ErrNotMP3, d.total)
	}
	return io.EOF
}

// junkLen is how many bytes at the start of b (whose first byte is junk)
// cannot start a frame or a tag.
func junkLen(b []byte) int {
	for i := 1; i < len(b); i++ {
		switch b[i] {
		case 0xFF, 'I', 'T', 'A':
			return i
		}
	}
	return len(b)
}

// confirms reports whether next, the bytes after a frame with header h,
// start with a header of the same format or with a tag.
func confirms(h Header, next []byte) bool {
	if h2, err := ParseHeader(next); err == nil {
		return h2.Format() == h.Format()
	}
	return tagStart(next)
}

// tagStart reports whether the four bytes at the start of b look like the
// start of a tag.
func tagStart(b []byte) bool {
	switch string(b[:3]) {
	case "TAG":
		return true
	case "ID3":
		return b[3] >= 2 && b[3] <= 4
	case "APE":
		return b[3] == 'T'
	}
	return false
}

// tag returns the size of the tag at the start of the buffer, or 0 if there
// is none.
func (d *Demuxer) tag() (int, error) {
	need := 0
	switch d.buf[d.off] {
	case 'I':
		need = 10
	case 'T':
		need = 3
	case 'A':
		need = 32
	default:
		return 0, nil
	}
	if err := d.fill(need); err == io.EOF {
		return 0, nil
	} else if err != nil {
		return 0, err
	}
	b := d.buf[d.off:d.end]
	switch {
	case need == 3 && string(b[:3]) == "TAG":
		return 128, nil // ID3v1
	case need == 10:
		return ID3v2Size(b), nil
	case need == 32 && string(b[:8]) == "APETAGEX":
		return apeSize(b), nil
	}
	return 0, nil
}

// ID3v2Size returns the size of the whole ID3v2 tag that b starts with:
// the 10-byte header, the body and, in ID3v2.4, the footer when the header
// says there is one. It returns 0 when b does not start with an ID3v2 tag
// header (versions 2.2 to 2.4), or holds fewer than its 10 bytes.
func ID3v2Size(b []byte) int {
	if len(b) < 10 || string(b[:3]) != "ID3" || b[3] < 2 || b[3] > 4 || b[4] == 0xFF {
		return 0
	}
	n := 0
	for _, c := range b[6:10] {
		if c >= 0x80 {
			return 0
		}
		n = n<<7 | int(c)
	}
	n += 10
	if b[3] == 4 && b[5]&0x10 != 0 { // footer present
		n += 10
	}
	return n
}

// apeSize returns the size of the APEv2 tag whose 32-byte header or footer
// starts b, or 0 if b does not start with one. A footer is skipped alone:
// the items before it have been skipped as junk.
func apeSize(b []byte) int {
	le32 := func(p []byte) int {
		return int(uint32(p[0]) | uint32(p[1])<<8 | uint32(p[2])<<16 | uint32(p[3])<<24)
	}
	size, flags := le32(b[12:]), le32(b[20:])
	if size < 32 || size > maxAPETag {
		return 0
	}
	if flags&(1<<29) != 0 { // this is the header: items and footer follow
		return 32 + size
	}
	return 32
}

// skipTag starts skipping a tag of n bytes.
func (d *Demuxer) skipTag(n int) {
	d.stats.Tags++
	d.tags++
	d.tagRun += int64(n)
	d.discard = n
}

// skipTagRest skips what is left of the current tag. A tag cut short by
// the end of the stream is not an error.
func (d *Demuxer) skipTagRest() error {
	for d.discard > 0 {
		if d.off == d.end {
			if err := d.fill(1); err == io.EOF {
				d.discard = 0
				return nil
			} else if err != nil {
				return err
			}
		}
		n := min(d.discard, d.end-d.off)
		d.consume(n)
		d.discard -= n
		d.stats.TagBytes += int64(n)
	}
	return nil
}

// tryUnsupported handles a sync word that ParseHeader rejected. If it
// starts a frame of MPEG audio p2pradio does not carry, and the next header
// confirms it, the frame is skipped and counted; enough of them in a row
// end the stream with ErrUnsupported. Anything else is junk.
func (d *Demuxer) tryUnsupported() error {
	b := d.buf[d.off:d.end]
	size, key := otherFrame(b)
	if key == 0 {
		d.skipJunk(1)
		return nil
	}
	if size == 0 { // free format: the frame ends where the same header recurs
		if err := d.fill(maxFreeFrame + HeaderSize); err != nil && err != io.EOF {
			return err
		}
		b = d.buf[d.off:d.end]
		h := be32(b)
		for i := HeaderSize; i+HeaderSize <= len(b) && i <= maxFreeFrame; i++ {
			if b[i] == 0xFF && be32(b[i:])&freeMask == h&freeMask {
				size = i
				break
			}
		}
	} else {
		if err := d.fill(size + HeaderSize); err != nil && err != io.EOF {
			return err
		}
		b = d.buf[d.off:d.end]
		if len(b) < size+HeaderSize {
			size = 0
		} else if _, key2 := otherFrame(b[size:]); key2 != key {
			size = 0
		}
	}
	if size == 0 {
		d.skipJunk(1)
		return nil
	}
	run := d.unsupported + 1
	d.skipJunk(size)
	d.unsupported = run
	d.unsupportedErr = fmt.Errorf("%w: %s", ErrUnsupported, describeOther(b))
	if run >= unsupportedRun {
		return d.unsupportedErr
	}
	return nil
}

// freeMask selects what stays the same from one free-format frame header
// to the next: sync, version, layer, CRC, bitrate, sample rate, mode.
const freeMask = 0xFFFFFCC0

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// otherFrame looks at a frame header that ParseHeader rejects. For MPEG
// audio that p2pradio does not carry it returns the frame's size (0 for
// free format) and a key that the next frame's header must share. For
// anything else, key is 0.
func otherFrame(b []byte) (size int, key uint32) {
	h := be32(b)
	ver, layer := (h>>19)&3, (h>>17)&3
	bi, sri := int(h>>12)&0xf, (h>>10)&3
	if h>>21 != 0x7ff || ver == 1 || layer == 0 || bi == 0xf || sri == 3 || h&3 == 2 {
		return 0, 0
	}
	if layer == 1 && bi != 0 {
		return 0, 0 // supported: ParseHeader's business
	}
	key = h & 0xFFFE0C00 // sync, version, layer, sample rate
	if bi == 0 {
		return 0, key
	}
	rate := ratesV1[sri] >> [4]int{2, 0, 1, 0}[ver]
	pad := int(h>>9) & 1
	switch {
	case layer == 3 && ver == 3: // Layer I, MPEG-1
		br := [15]int{0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448}
		size = (12*br[bi]*1000/rate + pad) * 4
	case layer == 3: // Layer I, MPEG-2 and 2.5
		br := [15]int{0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256}
		size = (12*br[bi]*1000/rate + pad) * 4
	case layer == 2 && ver == 3: // Layer II, MPEG-1
		br := [15]int{0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384}
		size = 144*br[bi]*1000/rate + pad
	default: // Layer II, MPEG-2 and 2.5 (Layer III is free format here)
		size = 144*bitratesV2[bi]*1000/rate + pad
	}
	return size, key
}

// describeOther describes the unsupported frame header at the start of b.
func describeOther(b []byte) string {
	h := be32(b)
	v := [4]Version{MPEG25, 0, MPEG2, MPEG1}[(h>>19)&3]
	s := fmt.Sprintf("%v Layer %s at %d Hz", v, [4]string{"", "III", "II", "I"}[(h>>17)&3],
		ratesV1[(h>>10)&3]>>[4]int{2, 0, 1, 0}[(h>>19)&3])
	if (h>>12)&0xf == 0 {
		s += ", free-format bitrate"
	}
	return s
}
