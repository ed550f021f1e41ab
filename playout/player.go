package playout

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/p2pradio/p2pradio/internal/stats"
	"github.com/p2pradio/p2pradio/mux"
)

// Defaults for the zero fields of Config.
const (
	DefaultTarget   = time.Second
	DefaultLead     = 150 * time.Millisecond
	DefaultRebuffer = 4 * time.Second
	DefaultResync   = time.Second
)

// minWait bounds how often the Player polls a ClockedSink, whose queue
// drains by a clock the Player cannot wait on.
const minWait = 2 * time.Millisecond

// retryWait is how long the Player waits to retry when a slot could not
// even be concealed (Frames knows no format yet).
const retryWait = 10 * time.Millisecond

// Config configures a Player. The zero value is usable: it plays into
// Discard with the defaults below.
type Config struct {
	// Sink receives the PCM. The Player owns it from New on and closes it
	// when Run returns (or on Close, if Run was never called). Nil means a
	// Discard.
	Sink Sink
	// Target is how much audio to buffer before playback starts, and again
	// after a rebuffer. Zero means DefaultTarget (1 s).
	Target time.Duration
	// Lead is how far ahead of the playout clock PCM is handed to the sink;
	// with a ClockedSink, how much the sink's queue is kept at. Zero means
	// DefaultLead (150 ms).
	Lead time.Duration
	// Margin sets a frame's deadline: a frame still missing Margin before
	// it is due is concealed. It must be less than Lead; zero means Lead/2.
	Margin time.Duration
	// Rebuffer is how long concealment may go on uninterrupted before the
	// Player stops and buffers Target again. Zero means DefaultRebuffer
	// (4 s); a negative value means never.
	Rebuffer time.Duration
	// Resync is how far beyond Target playback may fall behind the live
	// edge before the Player skips ahead, when its Frames is a LiveFrames
	// (a *mux.Reassembler is): a listener starved of CPU, behind a sink
	// that blocked, or drifted late by underruns then drops the audio it
	// can no longer play in time, at a chunk boundary, and plays on Target
	// behind the newest audio. After a rebuffer it likewise resumes Target
	// behind the live edge, not where it stopped. Zero means DefaultResync
	// (1 s); a negative value means never (a rebuffer still resumes at the
	// live edge).
	Resync time.Duration
	// Batch lets the Player hand the sink up to Lead plus Batch of audio
	// at once, so that it wakes about once per Batch instead of once per
	// frame (timer wake-ups are most of a NoDecode listener's cost). Frames
	// are still taken in order and a missing one is waited for, and
	// concealed, at its deadline as without Batch; received frames are just
	// handed over up to Batch earlier, and Lag is measured as if each had
	// been handed over Lead before it is due. With a ClockedSink the queue
	// grows up to Lead plus Batch. Zero means a frame at a time; negative
	// is an error.
	Batch time.Duration
	// Logger receives structured logs; nil means silent.
	Logger *slog.Logger
	// NoDecode skips decoding: the sink gets silence of each frame's
	// length, while pacing, concealment and every figure work as usual. It
	// lets a simulation run many listeners on few cores (decoding 128
	// kbit/s costs about 0.2% of a core per listener with libmpg123, 3%
	// with go-mp3).
	NoDecode bool
	// Engine is the MP3 decoder. Zero means DefaultEngine: libmpg123
	// (Mpg123) where the build has cgo, which decodes exactly as the mpg123
	// and ffmpeg programs do; go-mp3 (GoMP3) otherwise. An engine this
	// build lacks (Mpg123 without cgo) is an error.
	Engine Engine
	// OnTitle, if set, is called from Run's goroutine with the stream title
	// when a frame carrying a new one is handed to the sink. It must return
	// quickly (hand the title to a channel or a variable), as audio waits.
	OnTitle func(title string)
}

// Stats describes a Player's playback so far, with the definitions of
// DESIGN.md ("Figures").
type Stats struct {
	// FramesPlayed counts frames played from received audio.
	FramesPlayed int64
	// FramesConcealed counts frames that had not arrived by their deadline
	// and were played as silence.
	FramesConcealed int64
	// FramesMuted counts frames received but played as silence: their bit
	// reservoir was missing (Slot.Muted) or they failed to decode.
	FramesMuted int64
	// DecodeErrors counts frames that failed to decode and were played as
	// silence (also counted in FramesMuted, or FramesConcealed).
	DecodeErrors int64
	// Underruns counts frames handed to the sink after they were due.
	Underruns int64
	// Rebuffers counts the times playback stopped to buffer Target again.
	Rebuffers int64
	// Resyncs counts the times playback, having fallen more than
	// Config.Resync beyond Target behind the live edge, skipped ahead.
	Resyncs int64
	// FramesMissed counts the frames' worth of playing time, since
	// playback began, during which the sink had nothing to play: the wait
	// of a rebuffer or a resync, and the gap of an underrun (with a
	// ClockedSink, as timed by the system clock from when its queue was to
	// run out).
	// They are misses, like concealed frames: frames due that were not
	// played, whether they were skipped to rejoin the live edge or never
	// received.
	FramesMissed int64
	// Buffered is the audio received and not yet handed to the sink.
	Buffered time.Duration
	// Playing is true once playback started and while not rebuffering.
	Playing bool
	// Started is when the first PCM was handed to the sink; zero before.
	Started time.Time
	// Startup is from the call of Run to Started.
	Startup time.Duration
	// Lag is, for the last frame handed to the sink that carried a
	// production time, the time of the handoff (with Config.Batch, the
	// later of it and Lead before the frame is due) minus the time the
	// broadcaster's input produced it. MaxLag is the largest such value.
	Lag, MaxLag time.Duration
	// LagP50 and LagP95 are quantiles of the lag over every frame played.
	LagP50, LagP95 time.Duration
	// FirstTimestamp is the stream timestamp (samples) of the first frame
	// handed to the sink.
	FirstTimestamp int64
	// Position is the playing time handed to the sink.
	Position time.Duration
	// Format is the format of the last frame handed to the sink.
	Format mux.Format
	// Title is the stream title of the last frame handed to the sink.
	Title string
}

// Due is the number of frames due since playback began.
func (s Stats) Due() int64 {
	return s.FramesPlayed + s.FramesConcealed + s.FramesMuted + s.FramesMissed
}

// Continuity is the share of frames due that were played from received
// audio, from 0 to 1; it is 0 before any frame was due.
func (s Stats) Continuity() float64 {
	if s.Due() == 0 {
		return 0
	}
	return float64(s.FramesPlayed) / float64(s.Due())
}

// A Player decodes a Frames into a Sink at the pace of the playout clock;
// see the package documentation for the contract it keeps. Run plays;
// Stats and Close may be called from any goroutine, while Run runs too.
type Player struct {
	frames  Frames
	live    LiveFrames // frames, when it is one
	sink    Sink
	clocked ClockedSink // sink, when it is one
	target  time.Duration
	lead    time.Duration
	margin  time.Duration
	batch   time.Duration
	rebuf   time.Duration // <= 0: never
	resync  time.Duration // <= 0: never
	log     *slog.Logger
	onTitle func(string)

	// Used by Run's goroutine only.
	dec   Decoder
	pcm   []byte
	zeros []byte     // NoDecode's PCM: never written
	held  []mux.Slot // taken from frames while rebuffering, played first
	clk   clock

	sinkOnce sync.Once
	sinkErr  error

	mu      sync.Mutex
	stats   Stats
	lags    stats.Histogram // its own lock
	heldDur time.Duration
	ran     bool
	closed  bool
	cancel  context.CancelCauseFunc
	done    chan struct{}
}

// New returns a Player taking frames from frames. It does no I/O.
func New(frames Frames, cfg Config) (*Player, error) {
	if frames == nil {
		return nil, fmt.Errorf("%w: nil Frames", ErrBadConfig)
	}
	if cfg.Target < 0 || cfg.Lead < 0 || cfg.Margin < 0 || cfg.Batch < 0 {
		return nil, fmt.Errorf("%w: negative Target, Lead, Margin or Batch", ErrBadConfig)
	}
	p := &Player{
		frames:  frames,
		sink:    cfg.Sink,
		target:  cfg.Target,
		lead:    cfg.Lead,
		margin:  cfg.Margin,
		batch:   cfg.Batch,
		rebuf:   cfg.Rebuffer,
		resync:  cfg.Resync,
		log:     cfg.Logger,
		onTitle: cfg.OnTitle,
	}
	if p.sink == nil {
		p.sink = &Discard{}
	}
	p.clocked, _ = p.sink.(ClockedSink)
	if !cfg.Engine.Available() {
		return nil, fmt.Errorf("%w: decoder %v is not in this build", ErrBadConfig, cfg.Engine)
	}
	p.dec.Engine = cfg.Engine
	p.live, _ = frames.(LiveFrames)
	p.dec.silent = cfg.NoDecode
	if p.target == 0 {
		p.target = DefaultTarget
	}
	if p.lead == 0 {
		p.lead = DefaultLead
	}
	if p.margin == 0 {
		p.margin = p.lead / 2
	}
	if p.margin >= p.lead {
		return nil, fmt.Errorf("%w: Margin %v is not less than Lead %v", ErrBadConfig, p.margin, p.lead)
	}
	if p.rebuf == 0 {
		p.rebuf = DefaultRebuffer
	}
	if p.resync == 0 {
		p.resync = DefaultResync
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	return p, nil
}

// Stats returns the figures so far. It is safe from any goroutine.
func (p *Player) Stats() Stats {
	buffered := p.frames.Buffered()
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Buffered = buffered + p.heldDur
	s.LagP50, s.LagP95 = p.lags.Quantile(0.5), p.lags.Quantile(0.95)
	return s
}

// Run plays until the stream ends (Frames returns io.EOF: Run returns nil
// once the sink has taken every frame and closed), ctx is done (Run
// returns its cause), Close is called (ErrClosed) or the sink fails (its
// error). It closes the sink before it returns. Run may be called once.
func (p *Player) Run(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	if p.ran {
		p.mu.Unlock()
		return ErrRunning
	}
	p.ran = true
	ctx, cancel := context.WithCancelCause(ctx)
	p.cancel, p.done = cancel, make(chan struct{})
	p.mu.Unlock()
	defer close(p.done)
	defer cancel(nil)
	defer p.dec.Close()

	err := p.run(ctx)
	if ctx.Err() != nil {
		err = context.Cause(ctx)
	}
	p.mu.Lock()
	p.stats.Playing = false
	p.mu.Unlock()
	if cerr := p.closeSink(); err == nil && cerr != nil {
		err = fmt.Errorf("playout: closing sink: %w", cerr)
	}
	return err
}

// Close stops Run, closes the sink (so that a WritePCM blocked on a device
// returns) and waits for Run to return. It is idempotent.
func (p *Player) Close() error {
	p.mu.Lock()
	if p.closed {
		done := p.done
		p.mu.Unlock()
		if done != nil {
			<-done
		}
		return nil
	}
	p.closed = true
	cancel, done := p.cancel, p.done
	p.mu.Unlock()
	if cancel != nil {
		cancel(ErrClosed)
	}
	err := p.closeSink()
	if done != nil {
		<-done
	}
	return err
}

func (p *Player) closeSink() error {
	p.sinkOnce.Do(func() { p.sinkErr = p.sink.Close() })
	return p.sinkErr
}

// clock is the playout clock of a Player that paces by the system clock:
// the audio handed to the sink, and when playing time zero was (or would
// have been) due.
type clock struct {
	t0      time.Time
	base    time.Duration // playing time written at earlier rates
	samples int64         // written at rate
	rate    int
}

func (c *clock) written() time.Duration {
	if c.rate == 0 {
		return c.base
	}
	return c.base + samplesDuration(c.samples, c.rate)
}

func (c *clock) add(samples int64, rate int) {
	if rate != c.rate {
		c.base = c.written()
		c.samples, c.rate = 0, rate
	}
	c.samples += samples
}

// samplesDuration is the playing time of n samples at rate Hz, without
// overflow for any stream that fits in int64 samples.
func samplesDuration(n int64, rate int) time.Duration {
	r := int64(rate)
	return time.Duration(n/r)*time.Second + time.Duration(n%r*int64(time.Second)/r)
}

// align restarts the clock so that the next frame is due at now.
func (c *clock) align(now time.Time) { c.t0 = now.Add(-c.written()) }

// ahead is how much audio the sink holds beyond what it should have
// played by now: negative when the next frame is already overdue.
func (p *Player) ahead(now time.Time) time.Duration {
	if p.clocked != nil {
		return p.clocked.Queued()
	}
	return p.clk.written() - now.Sub(p.clk.t0)
}

// loop state of run.
type loop struct {
	buffering bool // waiting for Target
	restart   bool // the next frame (re)starts the clock
	ended     bool // the stream has ended (EndedFrames), no more will come
	eof       bool // Frames returned io.EOF
	started   bool // the first frame was handed to the sink
	topping   bool // woken at Lead: hand over up to Lead+Batch
	conceal   time.Duration
	dry       time.Time // since when no frame could be handed over, late
	dryAt     time.Time // when the sink runs out of what it was given
	missed    time.Duration
}

func (p *Player) run(ctx context.Context) error {
	begin := time.Now()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	// wait returns when ctx is done, after d (if d >= 0) or, if ready, when
	// frames signals new audio.
	wait := func(d time.Duration, ready bool) error {
		var tc <-chan time.Time
		if d >= 0 {
			timer.Reset(d)
			tc = timer.C
		}
		var rc <-chan struct{}
		if ready {
			rc = p.frames.Ready()
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-rc:
		case <-tc:
		}
		timer.Stop()
		return nil
	}

	l := loop{buffering: true, restart: true}
	for {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		if l.buffering {
			if err := p.fill(&l); err != nil {
				return err
			}
			if ready := p.ready(&l); !l.ended && !l.eof && !ready {
				if err := wait(-1, true); err != nil {
					return err
				}
				continue
			}
			l.buffering, l.restart = false, true
			p.log.Info("playout: playing", "buffered", p.frames.Buffered()+p.heldDuration(), "ended", l.ended || l.eof)
		}

		now := time.Now()
		ahead := time.Duration(0)
		if !l.restart || p.clocked != nil {
			ahead = p.ahead(now)
		}
		limit := p.lead
		if l.topping {
			limit += p.batch
		}
		if !l.restart && ahead > limit {
			// Sleep until the sink is down to Lead, then top it up.
			l.topping = false
			if err := wait(p.pace(ahead-p.lead), false); err != nil {
				return err
			}
			continue
		}
		if p.live != nil && p.resync > 0 && !l.restart && !l.eof &&
			p.live.Behind()+max(ahead, 0) > p.target+p.resync && p.live.Skip(p.target) {
			// Behind the live edge by what Frames holds and the sink
			// still has to play: skipped ahead; start again from there.
			p.startRebuffer(&l, true)
			continue
		}
		l.topping = true
		slot, ok, err := p.take(&l, false)
		if err == nil && !ok && (l.restart || ahead <= p.margin) {
			slot, ok, err = p.take(&l, true)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("playout: frames: %w", err)
		}
		if !ok {
			d := ahead - p.margin
			if d <= 0 {
				// Even concealment failed: wait for audio, and rebuffer if
				// the sink has run dry for long.
				d = retryWait
				if ahead <= 0 && !l.restart {
					if l.dry.IsZero() {
						l.dry = now
					} else if p.rebuf > 0 && now.Sub(l.dry) >= p.rebuf {
						p.startRebuffer(&l, false)
						continue
					}
				}
			}
			if err := wait(p.pace(d), true); err != nil {
				return err
			}
			continue
		}
		if err := p.play(&l, slot, begin); err != nil {
			return err
		}
		if p.rebuf > 0 && l.conceal >= p.rebuf {
			p.startRebuffer(&l, false)
		}
	}
}

// ready reports whether playback may (re)start. With a LiveFrames it first
// moves the playhead to the live edge: after a rebuffer or a resync always
// (playback resumes Target behind the newest audio, dropping what is too
// late to play and any hole at the playhead); before the first frame only
// when the playhead is more than Resync beyond Target behind (an old burst
// from a lagging peer). Playback starts when Target is buffered without a
// hole, or, after a rebuffer or resync, as soon as the chunk at the
// playhead is there and the newest audio is Target ahead of it: a hole
// left is concealed (or repaired) in time.
func (p *Player) ready(l *loop) bool {
	if p.live != nil {
		if l.started || p.resync > 0 && p.live.Behind() > p.target+p.resync {
			p.live.Skip(p.target)
		}
	}
	buffered := p.frames.Buffered() + p.heldDuration()
	if buffered >= p.target {
		return true
	}
	return p.live != nil && l.started && buffered > 0 && p.live.Behind() >= p.target
}

// pace rounds a wait up to minWait for a ClockedSink.
func (p *Player) pace(d time.Duration) time.Duration {
	if p.clocked != nil && d < minWait {
		return minWait
	}
	return d
}

// startRebuffer stops playback to buffer Target again: after a long
// outage, or (resync) to skip ahead to the live edge.
func (p *Player) startRebuffer(l *loop, resync bool) {
	l.buffering, l.conceal, l.dry = true, 0, time.Time{}
	l.dryAt = p.runsOut(l, time.Now())
	p.mu.Lock()
	if resync {
		p.stats.Resyncs++
	} else {
		p.stats.Rebuffers++
	}
	p.stats.Playing = false
	p.mu.Unlock()
	if resync {
		p.log.Info("playout: behind the live edge, skipping ahead", "target", p.target, "resync", p.resync)
	} else {
		p.log.Info("playout: rebuffering", "target", p.target)
	}
}

// fill takes the frames that arrived while rebuffering into held, so that
// the end of the stream is noticed. Before the first frame was played it
// does not call Next, which would fix the playhead, and relies on
// EndedFrames instead.
func (p *Player) fill(l *loop) error {
	if !l.started || p.live != nil {
		// A LiveFrames skips to the live edge before playback resumes: the
		// frames at its playhead now may never be played.
		if e, ok := p.frames.(EndedFrames); ok && e.Ended() {
			l.ended = true
		}
		return nil
	}
	for !l.eof && p.heldDuration() < p.target {
		slot, ok, err := p.frames.Next(false)
		if errors.Is(err, io.EOF) {
			l.eof = true
			break
		}
		if err != nil {
			return fmt.Errorf("playout: frames: %w", err)
		}
		if !ok {
			break
		}
		p.held = append(p.held, slot)
		d := frameDuration(slot.Frame)
		p.mu.Lock()
		p.heldDur += d
		p.mu.Unlock()
	}
	return nil
}

func (p *Player) heldDuration() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.heldDur
}

// take returns the next slot: a held one first, then from frames.
func (p *Player) take(l *loop, conceal bool) (mux.Slot, bool, error) {
	if len(p.held) > 0 {
		s := p.held[0]
		p.held[0] = mux.Slot{}
		p.held = p.held[1:]
		if len(p.held) == 0 {
			p.held = p.held[:0:0]
		}
		d := frameDuration(s.Frame)
		p.mu.Lock()
		p.heldDur -= d
		p.mu.Unlock()
		return s, true, nil
	}
	if l.eof {
		return mux.Slot{}, false, io.EOF
	}
	return p.frames.Next(conceal)
}

// frameDuration is the playing time of f, 0 if f is not a valid frame.
func frameDuration(f mux.Frame) time.Duration {
	if _, err := mux.ParseFrame(f); err != nil {
		return 0
	}
	return f.Format().FrameDuration()
}

// decode returns the PCM of slot's frame, in a buffer reused by the next
// call. Without decoding it is a slice of zeros that stays zero, as sinks
// do not modify the PCM they are given: nothing is written per frame.
func (p *Player) decode(slot mux.Slot) ([]byte, mux.Format, error) {
	if p.dec.silent {
		n, format, err := p.dec.silence(slot)
		if len(p.zeros) < n {
			p.zeros = make([]byte, n)
		}
		return p.zeros[:n], format, err
	}
	pcm, format, err := p.dec.Decode(p.pcm[:0], slot)
	p.pcm = pcm[:0]
	return pcm, format, err
}

// play decodes slot and hands its PCM to the sink.
func (p *Player) play(l *loop, slot mux.Slot, begin time.Time) error {
	if slot.Prime {
		// Before the first exact frame: fill the decoder's bit reservoir and
		// history, play nothing.
		p.decode(slot)
		return nil
	}
	pcm, format, derr := p.decode(slot)
	if derr != nil {
		p.log.Debug("playout: frame not decoded", "timestamp", slot.Timestamp, "err", derr)
	}
	if len(pcm) == 0 {
		return nil // not a frame, and no format known to fill its time
	}
	samples := int64(len(pcm) / 4)
	dur := samplesDuration(samples, format.SampleRate)

	now := time.Now()
	// handoff is when the frame is handed over a frame at a time: now, or,
	// for a frame handed over early in a Batch, Lead before it is due.
	handoff := now
	underrun := false
	var ahead time.Duration // before this frame
	if !l.restart || p.clocked != nil {
		ahead = p.ahead(now)
	}
	if l.restart {
		at := now
		if l.started {
			if now.After(l.dryAt) {
				l.missed += now.Sub(l.dryAt) // a rebuffer's or a resync's wait
			} else {
				at = l.dryAt // after what the sink still holds
			}
		}
		p.clk.align(at)
	} else {
		switch {
		case p.clocked != nil:
			underrun = ahead <= 0
			if underrun && now.After(l.dryAt) {
				// The device played silence since its queue ran out, about
				// when the last write's queue was to play out.
				l.missed += now.Sub(l.dryAt)
			}
		case ahead < 0:
			underrun = true
			l.missed -= ahead
			p.clk.align(now) // as a device would: it played silence meanwhile
		}
		if ahead > p.lead {
			handoff = now.Add(ahead - p.lead)
		}
	}
	if underrun {
		p.log.Debug("playout: underrun", "timestamp", slot.Timestamp)
	}

	var titleChanged bool
	p.mu.Lock()
	switch {
	case slot.Concealed:
		p.stats.FramesConcealed++
	case slot.Muted || derr != nil:
		p.stats.FramesMuted++
	default:
		p.stats.FramesPlayed++
	}
	if derr != nil {
		p.stats.DecodeErrors++
	}
	if underrun {
		p.stats.Underruns++
	}
	if fd := samplesDuration(samples, format.SampleRate); l.missed >= fd {
		n := int64(l.missed / fd)
		p.stats.FramesMissed += n
		l.missed -= time.Duration(n) * fd
	}
	if !l.started && p.stats.Started.IsZero() {
		p.stats.Started = now
		p.stats.Startup = now.Sub(begin)
		p.stats.FirstTimestamp = slot.Timestamp
	}
	p.stats.Playing = true
	if !slot.Concealed && slot.Produced != 0 {
		lag := handoff.Sub(time.UnixMicro(slot.Produced))
		p.stats.Lag = lag
		p.stats.MaxLag = max(p.stats.MaxLag, lag)
		p.lags.Record(lag)
	}
	next := p.clk
	next.add(samples, format.SampleRate)
	p.stats.Position = next.written()
	p.stats.Format = format
	// A title is cleared only explicitly (TitleChanged); an empty Title
	// otherwise means none is known (yet).
	if slot.Title != p.stats.Title && (slot.TitleChanged || slot.Title != "") {
		p.stats.Title = slot.Title
		titleChanged = true
	}
	p.mu.Unlock()
	if titleChanged && p.onTitle != nil {
		p.onTitle(slot.Title)
	}

	l.started, l.restart, l.dry = true, false, time.Time{}
	if slot.Concealed {
		l.conceal += dur
	} else {
		l.conceal = 0
	}
	if err := p.sink.WritePCM(pcm, format.SampleRate); err != nil {
		return fmt.Errorf("playout: sink: %w", err)
	}
	p.clk.add(samples, format.SampleRate)
	if p.clocked != nil {
		// When the device will run out: by its queue, or, if the write
		// blocked until the queue ran dry (a stalled device, a starved
		// process), when what it had was to play out.
		after := time.Now()
		if q := p.clocked.Queued(); q > 0 {
			l.dryAt = after.Add(q)
		} else {
			l.dryAt = now.Add(max(ahead, 0) + dur)
			if l.dryAt.After(after) {
				l.dryAt = after
			}
		}
	}
	return nil
}

// runsOut is when the sink runs out of the audio it was given: by the
// playout clock or a ClockedSink's queue; for a ClockedSink whose queue is
// already empty, when it ran out, as estimated at the last write.
func (p *Player) runsOut(l *loop, now time.Time) time.Time {
	ahead := p.ahead(now)
	if p.clocked == nil || ahead > 0 || l.dryAt.IsZero() || l.dryAt.After(now) {
		return now.Add(ahead)
	}
	return l.dryAt
}
