package speaker

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/p2pradio/p2pradio/playout"
)

// Defaults for the zero fields of Config.
const (
	DefaultBuffer = 500 * time.Millisecond
	DefaultStall  = 2 * time.Second
)

const (
	// deviceFrames is the buffer oto keeps per player, in sample frames
	// (93 ms at 44.1 kHz). oto fills it at once when playback starts, so it
	// must cover the device's start-up burst: ALSA takes its whole buffer
	// (two periods of 1024 sample frames) and more through plugins. Once
	// playing, oto tops it up from the queue whenever it falls below this.
	deviceFrames = 4096
	// readyTimeout bounds the wait for the device to open.
	readyTimeout = 10 * time.Second
	// drainSlack is how much longer than its queued audio Close waits for
	// it to play out.
	drainSlack = 250 * time.Millisecond
	// drainPoll is how often Close looks whether the queue has played out.
	drainPoll = 5 * time.Millisecond
)

// Config configures a Speaker. The zero value is usable.
type Config struct {
	// Buffer is the capacity of the queue between WritePCM and the device;
	// WritePCM blocks while it is full. It must hold a Player's Lead.
	// Zero means DefaultBuffer (500 ms).
	Buffer time.Duration
	// Stall is how long WritePCM waits for the device to take any PCM
	// before it fails with ErrStalled. Zero means DefaultStall (2 s).
	Stall time.Duration
	// Logger receives structured logs; nil means silent.
	Logger *slog.Logger
}

// Stats describes a Speaker's playback so far.
type Stats struct {
	// SampleRate is the rate the Speaker plays at; 0 before the first PCM.
	SampleRate int
	// Written is the playing time taken by WritePCM.
	Written time.Duration
	// Queued is the playing time taken and not yet played.
	Queued time.Duration
	// Underruns counts the times the device found nothing to play.
	Underruns int64
}

// A Speaker is a playout.Sink (a playout.ClockedSink) that plays PCM on the
// sound card. Its methods are safe from any goroutine. It starts no
// goroutine of its own; oto's run for the whole process.
type Speaker struct {
	buffer time.Duration
	stall  time.Duration
	log    *slog.Logger

	src   source
	done  chan struct{} // closed by Close
	space chan struct{} // signalled when the device takes PCM

	closeOnce sync.Once
	closeErr  error

	mu        sync.Mutex
	out       output // nil until the first WritePCM
	rate      int
	ring      []byte // the queue: size bytes from head, wrapping
	head      int
	size      int
	startAt   int // bytes oto reads when playback starts
	started   bool
	closed    bool
	dry       bool // in an underrun
	underruns int64
	written   int64 // sample frames
}

var _ playout.ClockedSink = (*Speaker)(nil)

// output is the part of an oto player a Speaker uses.
type output interface {
	Play()
	Pause()
	BufferedSize() int
	Err() error
}

// Probe reports whether the process can open the sound device for
// playback, without playing anything or opening oto's context: an error
// wrapping ErrDevice if it cannot (no sound card, the device busy, a build
// without cgo on Linux). A program calls it at start-up to tell the user at
// once, rather than when the first audio arrives. On Linux it opens and
// closes ALSA's default device as oto would; elsewhere it reports no error,
// and a missing device shows at the first WritePCM.
//
// On Linux, Probe and the first WritePCM also keep libasound's own error
// messages off standard error, for the whole process: the errors are
// returned instead.
func Probe() error { return probeDevice() }

// New returns a Speaker. It does no I/O: the device opens with the first
// WritePCM, at its sample rate.
func New(cfg Config) (*Speaker, error) {
	if cfg.Buffer < 0 || cfg.Stall < 0 {
		return nil, fmt.Errorf("speaker: negative Buffer or Stall: %w", playout.ErrBadConfig)
	}
	s := &Speaker{
		buffer: cfg.Buffer,
		stall:  cfg.Stall,
		log:    cfg.Logger,
		done:   make(chan struct{}),
		space:  make(chan struct{}, 1),
	}
	s.src.s = s
	if s.buffer == 0 {
		s.buffer = DefaultBuffer
	}
	if s.stall == 0 {
		s.stall = DefaultStall
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// WritePCM queues pcm for the device, blocking while the queue is full. The
// first call opens the device at sampleRate (or joins the process's audio
// context, which must run at that rate: else ErrSampleRate); a later call
// at another rate fails with ErrSampleRate. It returns playout.ErrClosed
// once Close is called, even while it blocks.
func (s *Speaker) WritePCM(pcm []byte, sampleRate int) error {
	if len(pcm)%4 != 0 || sampleRate <= 0 {
		return fmt.Errorf("%w: %d bytes at %d Hz", playout.ErrFormat, len(pcm), sampleRate)
	}
	if err := s.open(sampleRate); err != nil {
		return err
	}
	var timer *time.Timer
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return playout.ErrClosed
		}
		n := s.push(pcm)
		pcm = pcm[n:]
		s.written += int64(n / 4)
		start := !s.started
		if start {
			// oto's first read must fill its whole buffer: a source
			// that cannot makes it spin. Lead the first PCM with silence.
			s.started = true
			s.padFront(s.startAt - s.size)
		}
		out := s.out
		s.mu.Unlock()
		if start {
			s.log.Debug("speaker: playing", "rate", sampleRate)
			out.Play()
		}
		if len(pcm) == 0 {
			return nil
		}
		if n > 0 {
			continue
		}
		if timer == nil {
			timer = time.NewTimer(s.stall)
			defer timer.Stop()
		} else {
			timer.Reset(s.stall)
		}
		select {
		case <-s.space:
			timer.Stop()
		case <-s.done:
			return playout.ErrClosed
		case <-timer.C:
			if err := out.Err(); err != nil {
				return fmt.Errorf("%w: %w", ErrDevice, err)
			}
			return fmt.Errorf("%w: no PCM taken for %v", ErrStalled, s.stall)
		}
	}
}

// open opens the device at rate on the first call.
func (s *Speaker) open(rate int) error {
	s.mu.Lock()
	out, cur, closed := s.out, s.rate, s.closed
	s.mu.Unlock()
	switch {
	case closed:
		return playout.ErrClosed
	case out != nil && rate != cur:
		return fmt.Errorf("%w: the speaker plays at %d Hz, the PCM is at %d Hz", ErrSampleRate, cur, rate)
	case out != nil:
		return nil
	}
	out, err := newOutput(s.done, rate, &s.src, deviceFrames*4, readyTimeout)
	if err != nil {
		return err
	}
	capacity := max(int(s.buffer*time.Duration(rate)/time.Second)*4, 2*deviceFrames*4)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return playout.ErrClosed
	}
	s.out, s.rate = out, rate
	s.ring = make([]byte, capacity)
	s.startAt = deviceFrames * 4
	s.log.Info("speaker: device open", "rate", rate, "buffer", s.buffer)
	return nil
}

// padFront puts n bytes of silence before the queued PCM; s.mu is held.
func (s *Speaker) padFront(n int) {
	if n <= 0 {
		return
	}
	s.head = (s.head - n + len(s.ring)) % len(s.ring)
	if end := s.head + n; end <= len(s.ring) {
		clear(s.ring[s.head:end])
	} else {
		clear(s.ring[s.head:])
		clear(s.ring[:end-len(s.ring)])
	}
	s.size += n
}

// push copies what fits of pcm into the ring; s.mu is held.
func (s *Speaker) push(pcm []byte) int {
	n := min(len(pcm), len(s.ring)-s.size)
	tail := (s.head + s.size) % len(s.ring)
	c := copy(s.ring[tail:], pcm[:n])
	copy(s.ring, pcm[c:n])
	s.size += n
	return n
}

// source is what oto reads the queue through. Its Read never blocks,
// since a blocked source stalls every oto player.
type source struct{ s *Speaker }

// Read hands oto up to len(p) bytes of whole sample frames. When the
// queue is empty it returns 0, nil: oto polls again shortly, and plays
// silence only if its own buffer runs dry meanwhile (an underrun). After
// Close, once the queue is empty, it returns io.EOF.
func (src *source) Read(p []byte) (int, error) {
	s := src.s
	s.mu.Lock()
	if s.size == 0 {
		closed, dry, out := s.closed, s.dry, s.out
		s.mu.Unlock()
		if closed {
			return 0, io.EOF
		}
		// Called by oto without its lock held: BufferedSize is safe.
		if !dry && out != nil && out.BufferedSize() == 0 {
			s.mu.Lock()
			if !s.dry && s.size == 0 && !s.closed {
				s.dry = true
				s.underruns++
				s.log.Debug("speaker: underrun")
			}
			s.mu.Unlock()
		}
		return 0, nil
	}
	n := min(len(p)&^3, s.size)
	c := copy(p[:n], s.ring[s.head:])
	copy(p[c:n], s.ring)
	s.head = (s.head + n) % len(s.ring)
	s.size -= n
	s.dry = false
	s.mu.Unlock()
	select {
	case s.space <- struct{}{}:
	default:
	}
	return n, nil
}

// Queued is the playing time written and not yet played: the queue and
// oto's buffer (not the few milliseconds in the device itself).
func (s *Speaker) Queued() time.Duration {
	s.mu.Lock()
	size, out, rate := s.size, s.out, s.rate
	s.mu.Unlock()
	if out == nil {
		return 0
	}
	return bytesDuration(size+out.BufferedSize(), rate)
}

func bytesDuration(n, rate int) time.Duration {
	return time.Duration(int64(n/4) * int64(time.Second) / int64(rate))
}

// Stats returns the figures so far.
func (s *Speaker) Stats() Stats {
	q := s.Queued()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{SampleRate: s.rate, Queued: q, Underruns: s.underruns}
	if s.rate > 0 {
		r := int64(s.rate)
		st.Written = time.Duration(s.written/r)*time.Second + time.Duration(s.written%r*int64(time.Second)/r)
	}
	return st
}

// Close stops taking PCM (a blocked WritePCM returns playout.ErrClosed),
// lets the queued audio play out (waiting at most its duration and a
// quarter second), then pauses and releases the player. It is idempotent
// and returns the device's error, if any.
func (s *Speaker) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		close(s.done)
		out := s.out
		s.mu.Unlock()
		if out == nil {
			return
		}
		deadline := time.Now().Add(s.Queued() + drainSlack)
		for s.Queued() > 0 && out.Err() == nil && time.Now().Before(deadline) {
			time.Sleep(drainPoll)
		}
		out.Pause()
		s.mu.Lock()
		s.ring, s.head, s.size = nil, 0, 0
		s.mu.Unlock()
		if err := out.Err(); err != nil {
			s.closeErr = fmt.Errorf("%w: %w", ErrDevice, err)
		}
	})
	return s.closeErr
}
