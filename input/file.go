package input

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/p2pradio/p2pradio/mux"
)

// maxTitleTag bounds how much of an ID3v2 tag is read to find the title.
const maxTitleTag = 1 << 20

// FileConfig configures a File. The zero value plays the file once,
// releasing each frame when it is due.
type FileConfig struct {
	// Loop restarts the file at its end, forever. The stream continues with
	// the file's bytes again from the first, tags included, and its clock
	// runs on without a gap.
	Loop bool
	// Lead lets a frame's bytes out up to Lead before the frame is due.
	// Because the schedule starts at the first Read, Lead is also a burst:
	// the first Lead of audio is released at once, and the stream then stays
	// Lead ahead of real time. Zero releases each frame exactly when due.
	Lead time.Duration
}

// File is a Source that plays an MP3 file in real time, as a live encoder
// would: the bytes of each frame are released when the frame is due, by a
// schedule of cumulative frame durations against a clock started at the
// first Read. A reader that falls behind gets the overdue bytes at once.
//
// All the file's bytes are passed through unchanged, ID3 tags, Xing frames
// and junk included (the demuxer skips them); only frames (Xing frames
// excepted) take time. The frames are found by a mux.Demuxer, the one the
// broadcaster uses; other bytes are released with the frame after them,
// and those after the last frame once it has played.
// The title is the file's ID3v2 title (TIT2), else its ID3v1 title, else
// the file name without its extension.
type File struct {
	path  string
	title string
	cfg   FileConfig
	fh    *os.File

	done      chan struct{}
	closeOnce sync.Once
	closeErr  error

	// Owned by the goroutine that calls Read.
	d         *mux.Demuxer // finds the frames of the current pass
	pos, end  int64        // the file's bytes pos..end are due at due
	due       time.Duration
	clock     playClock
	passAudio bool // the current pass over the file found a frame
	started   bool
	t0        time.Time
	timer     *time.Timer
	err       error // sticky: io.EOF or a failure
}

var _ Source = (*File)(nil)

// OpenFile opens the MP3 file at path. It fails with an error wrapping
// mux.ErrNotMP3 when no MP3 frame starts within the file's first 64 KiB
// (after an ID3v2 tag), and when path is not a regular file (use NewReader
// for a pipe or a device).
func OpenFile(path string, cfg FileConfig) (*File, error) {
	if cfg.Lead < 0 {
		return nil, fmt.Errorf("input: negative FileConfig.Lead %v", cfg.Lead)
	}
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("input: %w", err)
	}
	fail := func(err error) (*File, error) {
		_ = fh.Close()
		return nil, err
	}
	st, err := fh.Stat()
	if err != nil {
		return fail(fmt.Errorf("input: %w", err))
	}
	if !st.Mode().IsRegular() {
		return fail(fmt.Errorf("input: %s is not a regular file (read pipes and devices with NewReader): %w", path, mux.ErrNotMP3))
	}
	if _, err := newPass(fh).Next(); err != nil {
		if err == io.EOF { // a Xing frame, say, and no audio
			return fail(fmt.Errorf("input: %s: no audio frame: %w", path, mux.ErrNotMP3))
		}
		if errors.Is(err, mux.ErrUnsupported) {
			return fail(fmt.Errorf("input: %s: %w: %w", path, mux.ErrNotMP3, err))
		}
		return fail(fmt.Errorf("input: %s: %w", path, err))
	}
	title, err := fileTitle(fh, st.Size())
	if err != nil {
		return fail(fmt.Errorf("input: %w", err))
	}
	if title == "" {
		base := filepath.Base(path)
		title = cleanTitle(strings.TrimSuffix(base, filepath.Ext(base)))
	}
	return &File{
		path:  path,
		title: title,
		cfg:   cfg,
		fh:    fh,
		done:  make(chan struct{}),
		d:     newPass(fh),
	}, nil
}

// newPass returns a Demuxer over the file from its start. The file is read
// with ReadAt, so that Read can copy the bytes it releases from the file
// as well.
func newPass(fh *os.File) *mux.Demuxer { return mux.NewDemuxer(&offsetReader{r: fh}) }

// offsetReader reads an io.ReaderAt from the start.
type offsetReader struct {
	r   io.ReaderAt
	off int64
}

func (o *offsetReader) Read(p []byte) (int, error) {
	n, err := o.r.ReadAt(p, o.off)
	o.off += int64(n)
	if n > 0 && err == io.EOF {
		err = nil
	}
	return n, err
}

// fileTitle reads the title from a file's ID3v2 tag, else its ID3v1 tag.
func fileTitle(fh *os.File, size int64) (string, error) {
	var hdr [10]byte
	if _, err := fh.ReadAt(hdr[:], 0); err != nil && err != io.EOF {
		return "", err
	}
	if n := mux.ID3v2Size(hdr[:]); n > 0 {
		tag := make([]byte, min(n, maxTitleTag))
		m, err := fh.ReadAt(tag, 0)
		if err != nil && err != io.EOF {
			return "", err
		}
		if t := id3v2Title(tag[:m]); t != "" {
			return t, nil
		}
	}
	if size >= 128 {
		var v1 [128]byte
		if _, err := fh.ReadAt(v1[:], size-128); err != nil && err != io.EOF {
			return "", err
		}
		return id3v1Title(v1[:]), nil
	}
	return "", nil
}

// Read returns the file's next bytes that are due, blocking until the next
// frame is due if none is. It returns io.EOF once the last frame's playing
// time is over (never when looping), and ErrClosed after Close.
func (f *File) Read(p []byte) (int, error) {
	if f.closed() {
		return 0, ErrClosed
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !f.started {
		f.started = true
		f.t0 = time.Now()
	}
	n := 0
	for n < len(p) {
		if f.pos == f.end {
			if err := f.advance(); err != nil {
				if n > 0 {
					return n, nil
				}
				if err == io.EOF {
					// The stream ends when its last frame has played.
					if werr := f.waitUntil(f.clock.elapsed()); werr != nil {
						return 0, werr
					}
				}
				return 0, err
			}
			continue
		}
		if d := time.Until(f.t0.Add(f.due - f.cfg.Lead)); d > 0 {
			if n > 0 {
				return n, nil
			}
			if err := f.sleep(d); err != nil {
				return 0, err
			}
		}
		c, err := f.fh.ReadAt(p[n:n+int(min(int64(len(p)-n), f.end-f.pos))], f.pos)
		f.pos += int64(c)
		n += c
		if err != nil && c == 0 {
			if err == io.EOF { // the file shrank under us
				f.end = f.pos
				continue
			}
			return n, f.fail(err)
		}
	}
	return n, nil
}

// advance schedules the next bytes of the file: those up to the end of the
// next audio frame (tags, junk and Xing frames before it included), due
// when the frame is; at the end of the file, the rest, due when the last
// frame has played. It returns io.EOF when the file has been released to
// its end.
func (f *File) advance() error {
	if f.err != nil {
		return f.err
	}
	for {
		fr, err := f.d.Next()
		switch {
		case err == nil:
			f.due = f.clock.elapsed()
			f.clock.add(fr.Header())
			f.passAudio = true
		case err == io.EOF && f.pos < f.d.Offset():
			f.due = f.clock.elapsed() // the bytes after the last frame
		case err == io.EOF && f.cfg.Loop:
			if !f.passAudio {
				// The file changed under us; looping would spin.
				f.err = fmt.Errorf("input: %s: a pass over the file found no MP3 frame: %w", f.path, mux.ErrNotMP3)
				return f.err
			}
			f.passAudio = false
			f.d = newPass(f.fh)
			f.pos, f.end = 0, 0
			continue
		default:
			return f.fail(err)
		}
		f.end = f.d.Offset()
		return nil
	}
}

// fail records a sticky error from reading the file.
func (f *File) fail(err error) error {
	switch {
	case f.closed():
		return ErrClosed
	case err == io.EOF:
		f.err = io.EOF
	default:
		f.err = fmt.Errorf("input: %s: %w", f.path, err)
	}
	return f.err
}

// waitUntil blocks until the point due of the schedule.
func (f *File) waitUntil(due time.Duration) error {
	if d := time.Until(f.t0.Add(due - f.cfg.Lead)); d > 0 {
		return f.sleep(d)
	}
	return nil
}

// sleep blocks for d or until Close.
func (f *File) sleep(d time.Duration) error {
	if f.timer == nil {
		f.timer = time.NewTimer(d)
	} else {
		f.timer.Reset(d)
	}
	select {
	case <-f.timer.C:
		return nil
	case <-f.done:
		f.timer.Stop()
		return ErrClosed
	}
}

func (f *File) closed() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// Title returns the title found when the file was opened.
func (f *File) Title() string { return f.title }

// Close closes the file; a Read blocked waiting for a frame's time returns
// ErrClosed. Close is idempotent.
func (f *File) Close() error {
	f.closeOnce.Do(func() {
		close(f.done)
		if err := f.fh.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			f.closeErr = fmt.Errorf("input: %w", err)
		}
	})
	return f.closeErr
}

// playClock sums the playing time of frames exactly: samples are counted at
// the current sample rate and folded into whole seconds, so the schedule
// neither drifts nor overflows however long a loop runs.
type playClock struct {
	base    time.Duration
	samples int64
	rate    int64
}

// add counts one frame.
func (c *playClock) add(h mux.Header) {
	rate := int64(h.SampleRate())
	if rate != c.rate {
		c.base = c.elapsed()
		c.samples, c.rate = 0, rate
	}
	c.samples += int64(h.Samples())
	secs := c.samples / c.rate
	c.base += time.Duration(secs) * time.Second
	c.samples -= secs * c.rate
}

// elapsed is the playing time of the frames counted so far.
func (c *playClock) elapsed() time.Duration {
	if c.rate == 0 {
		return c.base
	}
	return c.base + time.Duration(c.samples*int64(time.Second)/c.rate)
}
