package playout

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/mux"
)

// frameSamples is the length of one frame of cbr128.mp3 (26.1 ms at
// 44.1 kHz).
const frameSamples = 1152

// due is when frame i of cbr128.mp3 is due, from the start of playback.
func due(i int) time.Duration { return samplesDuration(int64(i*frameSamples), 44100) }

// runPlayer starts p.Run in the bubble and returns a channel with its
// result.
func runPlayer(p *Player, ctx context.Context) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx) }()
	return errc
}

func requireNear(t *testing.T, want, got time.Time, msgAndArgs ...any) {
	t.Helper()
	require.InDelta(t, 0, got.Sub(want), float64(time.Microsecond), msgAndArgs...)
}

func TestNewConfig(t *testing.T) {
	ff := newFakeFrames()
	for _, cfg := range []Config{
		{Target: -1}, {Lead: -1}, {Margin: -1}, {Batch: -1},
		{Lead: 100 * time.Millisecond, Margin: 100 * time.Millisecond},
		{Margin: DefaultLead},
	} {
		_, err := New(ff, cfg)
		require.ErrorIs(t, err, ErrBadConfig, "%+v", cfg)
	}
	_, err := New(nil, Config{})
	require.ErrorIs(t, err, ErrBadConfig)

	p, err := New(ff, Config{})
	require.NoError(t, err)
	require.Equal(t, DefaultTarget, p.target)
	require.Equal(t, DefaultLead, p.lead)
	require.Equal(t, DefaultLead/2, p.margin)
	require.Equal(t, DefaultRebuffer, p.rebuf)
	require.IsType(t, &Discard{}, p.sink)
	require.NoError(t, p.Close())
}

// TestPlayerStartupAndPacing: nothing is played (nor Next called) before
// Target is buffered; then every frame is handed to the sink Lead before it
// is due, never later.
func TestPlayerStartupAndPacing(t *testing.T) {
	frames := testFrames(t, "cbr128.mp3")[:120]
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFrames()
		sink := &MemorySink{}
		p, err := New(ff, Config{Sink: sink})
		require.NoError(t, err)
		begin := time.Now()
		errc := runPlayer(p, context.Background())

		ff.push(frames[:20]...) // 0.52 s < Target
		time.Sleep(3 * time.Second)
		require.Empty(t, sink.Writes())
		require.Zero(t, ff.calls(), "Next fixes the playhead: not before Target")
		st := p.Stats()
		require.True(t, st.Started.IsZero())
		require.False(t, st.Playing)
		require.Equal(t, 20*frames[0].Format().FrameDuration(), st.Buffered)

		ff.push(frames[20:]...) // 3.1 s >= Target
		ff.end()
		require.NoError(t, <-errc)

		start := begin.Add(3 * time.Second)
		st = p.Stats()
		require.Equal(t, start, st.Started)
		require.Equal(t, 3*time.Second, st.Startup)
		require.EqualValues(t, len(frames), st.FramesPlayed)
		require.Zero(t, st.Underruns)
		require.Equal(t, 1.0, st.Continuity())
		require.Equal(t, due(len(frames)), st.Position)

		writes := sink.Writes()
		require.Len(t, writes, len(frames))
		for i, w := range writes {
			require.Equal(t, frameSamples*4, w.Bytes)
			require.Equal(t, 44100, w.SampleRate)
			at := w.At.Sub(start)
			require.LessOrEqual(t, at, due(i), "frame %d handed over late", i)
			if due(i) >= DefaultLead {
				requireNear(t, start.Add(due(i)-DefaultLead), w.At, "frame %d handed over early", i)
			} else {
				require.Zero(t, at)
			}
		}
		require.Equal(t, decodeAll(t, frames), sink.PCM())
	})
}

// TestPlayerConcealsAtDeadline: a frame missing at its deadline is played
// as silence at that deadline; playback does not stall.
func TestPlayerConcealsAtDeadline(t *testing.T) {
	frames := testFrames(t, "cbr128.mp3")[:100]
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFrames()
		ff.push(frames[:50]...)
		ff.hole(1, frames[50])
		ff.push(frames[51:]...)
		ff.end()
		sink := &MemorySink{}
		p, err := New(ff, Config{Sink: sink})
		require.NoError(t, err)
		start := time.Now()
		require.NoError(t, p.Run(context.Background()))

		st := p.Stats()
		require.EqualValues(t, 99, st.FramesPlayed)
		require.EqualValues(t, 1, st.FramesConcealed)
		require.Zero(t, st.Underruns)
		require.InDelta(t, 0.99, st.Continuity(), 1e-9)

		writes := sink.Writes()
		require.Len(t, writes, 100)
		requireNear(t, start.Add(due(50)-DefaultLead/2), writes[50].At, "concealed at its deadline, Margin before due")
		for i, w := range writes {
			require.LessOrEqual(t, w.At.Sub(start), due(i), "frame %d late", i)
		}
		pcm := sink.PCM()
		require.Len(t, pcm, 100*frameSamples*4)
		n := frameSamples * 4
		require.True(t, isZero(pcm[50*n:51*n]))
		require.Equal(t, decodeAll(t, frames[:50]), pcm[:50*n])
		require.False(t, isZero(pcm[51*n:]))
	})
}

// TestPlayerLateFrameBeforeDeadline: a frame that arrives after it should
// have been handed over but before its deadline is played, at once.
func TestPlayerLateFrameBeforeDeadline(t *testing.T) {
	frames := testFrames(t, "cbr128.mp3")[:100]
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFrames()
		ff.pushSlots(slotsOf(frames[:50])...)
		ff.hole(1, frames[50])
		ff.pushSlots(slotsOf(frames[51:])...)
		sink := &MemorySink{}
		p, err := New(ff, Config{Sink: sink})
		require.NoError(t, err)
		start := time.Now()
		errc := runPlayer(p, context.Background())

		arrive := start.Add(due(50) - 100*time.Millisecond) // after due-Lead, before due-Margin
		time.Sleep(time.Until(arrive))
		ff.mu.Lock()
		require.True(t, ff.slots[0].hole, "the player waits at the missing frame")
		ff.mu.Unlock()
		ff.fill(0)
		ff.end()
		require.NoError(t, <-errc)

		st := p.Stats()
		require.EqualValues(t, 100, st.FramesPlayed)
		require.Zero(t, st.FramesConcealed)
		require.Zero(t, st.Underruns)
		writes := sink.Writes()
		require.Equal(t, arrive, writes[50].At)
		require.Equal(t, decodeAll(t, frames), sink.PCM())
	})
}

func slotsOf(frames []mux.Frame) []mux.Slot {
	s := make([]mux.Slot, len(frames))
	for i, f := range frames {
		s[i] = slotOf(f)
	}
	return s
}

// TestPlayerUnderrun: a sink that stalls makes the next frame late: one
// underrun is counted, and the clock slips as a device's would, so the
// frames after it are on time again.
func TestPlayerUnderrun(t *testing.T) {
	frames := testFrames(t, "cbr128.mp3")[:80]
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFrames()
		ff.push(frames...)
		ff.end()
		mem := &MemorySink{}
		n := 0
		sink := SinkFunc(func(pcm []byte, rate int) error {
			n++
			if n == 21 {
				time.Sleep(300 * time.Millisecond)
			}
			return mem.WritePCM(pcm, rate)
		})
		p, err := New(ff, Config{Sink: sink})
		require.NoError(t, err)
		require.NoError(t, p.Run(context.Background()))
		st := p.Stats()
		require.EqualValues(t, 1, st.Underruns)
		require.EqualValues(t, 80, st.FramesPlayed)
		require.Zero(t, st.FramesConcealed)
		require.Equal(t, decodeAll(t, frames), mem.PCM())
	})
}

// TestPlayerRebuffer: after Rebuffer of uninterrupted concealment the
// player stops, buffers Target again, and goes on.
func TestPlayerRebuffer(t *testing.T) {
	frames := testFrames(t, "cbr128.mp3")[:100]
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFrames()
		ff.push(frames[:60]...)
		sink := &MemorySink{}
		p, err := New(ff, Config{Sink: sink})
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		errc := runPlayer(p, ctx)

		// Stats from another goroutine, all along (for the race detector).
		var wg sync.WaitGroup
		wg.Go(func() {
			for ctx.Err() == nil {
				_ = p.Stats()
				time.Sleep(50 * time.Millisecond)
			}
		})

		time.Sleep(20 * time.Second)
		st := p.Stats()
		require.EqualValues(t, 60, st.FramesPlayed)
		// 154 frames of 26.12 ms is the first run of concealment >= 4 s.
		require.EqualValues(t, 154, st.FramesConcealed)
		require.EqualValues(t, 1, st.Rebuffers)
		require.False(t, st.Playing)
		require.Len(t, sink.Writes(), 60+154, "nothing is played while rebuffering")

		ff.push(frames[60:]...) // 1.04 s: Target again
		synctest.Wait()
		st = p.Stats()
		require.True(t, st.Playing)
		ff.end()
		require.NoError(t, <-errc)
		cancel()
		wg.Wait()
		st = p.Stats()
		require.EqualValues(t, 100, st.FramesPlayed)
		require.EqualValues(t, 154, st.FramesConcealed)
		require.EqualValues(t, 1, st.Rebuffers)
		require.Zero(t, st.Underruns, "a rebuffer is not an underrun")
		// The sink ran out after 214 frames and had nothing from then
		// until the push at 20 s: those frames were due too.
		missed := (20*time.Second - due(214)) / due(1)
		require.EqualValues(t, missed, st.FramesMissed)
		require.InDelta(t, 100.0/float64(254+missed), st.Continuity(), 1e-9)
		pcm := sink.PCM()
		n := frameSamples * 4
		require.True(t, isZero(pcm[60*n:214*n]))
		require.Len(t, pcm, (100+154)*n)
		require.False(t, isZero(pcm[214*n:]))
	})
}

// TestPlayerShortStream: a stream that ends before Target is played at once
// (EndedFrames) and Run returns nil once the sink has it all.
func TestPlayerShortStream(t *testing.T) {
	frames := testFrames(t, "cbr128.mp3")[:10]
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFrames()
		ff.push(frames...)
		ff.end()
		sink := &MemorySink{}
		p, err := New(ff, Config{Sink: sink})
		require.NoError(t, err)
		require.NoError(t, p.Run(context.Background()))
		require.True(t, sink.Closed())
		require.Equal(t, decodeAll(t, frames), sink.PCM())
		require.Zero(t, p.Stats().Startup)
		require.ErrorIs(t, p.Run(context.Background()), ErrRunning)
		require.NoError(t, p.Close())
	})
}

// TestPlayerNoDecode: without decoding, the sink gets silence of the exact
// length and the figures are kept as usual.
func TestPlayerNoDecode(t *testing.T) {
	frames := testFrames(t, "mono22k.mp3")[:50]
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFrames()
		ff.push(frames[:20]...)
		ff.hole(1, frames[20])
		ff.push(frames[21:]...)
		ff.end()
		sink := &MemorySink{}
		p, err := New(ff, Config{Sink: sink, NoDecode: true})
		require.NoError(t, err)
		require.NoError(t, p.Run(context.Background()))
		st := p.Stats()
		require.EqualValues(t, 49, st.FramesPlayed)
		require.EqualValues(t, 1, st.FramesConcealed)
		pcm := sink.PCM()
		require.Len(t, pcm, 50*576*4)
		require.True(t, isZero(pcm))
		require.Equal(t, 22050, sink.Writes()[0].SampleRate)
	})
}

// blockingSink's WritePCM blocks until Close, as a stuck device would.
type blockingSink struct {
	once    sync.Once
	closed  chan struct{}
	writing chan struct{}
}

func (s *blockingSink) WritePCM([]byte, int) error {
	select {
	case s.writing <- struct{}{}:
	default:
	}
	<-s.closed
	return ErrClosed
}

func (s *blockingSink) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

// TestPlayerClose: Close stops Run wherever it waits (for Target, or in a
// blocked WritePCM), closes the sink, and is idempotent.
func TestPlayerClose(t *testing.T) {
	frames := testFrames(t, "cbr128.mp3")[:50]
	t.Run("buffering", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			ff := newFakeFrames()
			sink := &MemorySink{}
			p, err := New(ff, Config{Sink: sink})
			require.NoError(t, err)
			errc := runPlayer(p, context.Background())
			time.Sleep(time.Second)
			require.NoError(t, p.Close())
			require.ErrorIs(t, <-errc, ErrClosed)
			require.True(t, sink.Closed())
			require.NoError(t, p.Close())
			require.ErrorIs(t, p.Run(context.Background()), ErrClosed)
		})
	})
	t.Run("blocked sink", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			ff := newFakeFrames()
			ff.push(frames...)
			sink := &blockingSink{closed: make(chan struct{}), writing: make(chan struct{}, 1)}
			p, err := New(ff, Config{Sink: sink})
			require.NoError(t, err)
			errc := runPlayer(p, context.Background())
			<-sink.writing
			require.NoError(t, p.Close())
			require.ErrorIs(t, <-errc, ErrClosed)
		})
	})
	t.Run("never run", func(t *testing.T) {
		sink := &MemorySink{}
		p, err := New(newFakeFrames(), Config{Sink: sink})
		require.NoError(t, err)
		require.NoError(t, p.Close())
		require.True(t, sink.Closed())
	})
	t.Run("context", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			ff := newFakeFrames()
			ff.push(frames...)
			sink := &MemorySink{}
			p, err := New(ff, Config{Sink: sink})
			require.NoError(t, err)
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			err = p.Run(ctx)
			require.ErrorIs(t, err, context.DeadlineExceeded)
			require.True(t, sink.Closed())
			// 500 ms played, plus Lead handed ahead.
			require.Len(t, sink.Writes(), 25)
		})
	})
}

// TestPlayerTitlesLagAndMuting: titles are reported when their frame is
// played (a concealed slot without one does not clear it), lag is measured
// from Produced, muted slots are counted and silent.
func TestPlayerTitlesLagAndMuting(t *testing.T) {
	frames := testFrames(t, "cbr128.mp3")[:60]
	synctest.Test(t, func(t *testing.T) {
		produced := time.Now().Add(-2 * time.Second)
		slots := slotsOf(frames)
		for i := range slots {
			slots[i].Produced = produced.UnixMicro()
			slots[i].Title = "A"
			if i >= 30 {
				slots[i].Title = "B"
			}
			slots[i].TitleChanged = i == 0 || i == 30
			slots[i].Muted = i == 10 || i == 11
		}
		ff := newFakeFrames()
		ff.pushSlots(slots[:40]...)
		ff.hole(1, frames[40]) // concealed: a slot without a title
		ff.pushSlots(slots[41:]...)
		ff.end()
		sink := &MemorySink{}
		var titles []string
		var titleAt []int
		p, err := New(ff, Config{Sink: sink, OnTitle: func(title string) {
			titles = append(titles, title)
			titleAt = append(titleAt, len(sink.Writes()))
		}})
		require.NoError(t, err)
		require.NoError(t, p.Run(context.Background()))

		require.Equal(t, []string{"A", "B"}, titles)
		require.Equal(t, []int{0, 30}, titleAt, "a title is reported as its first frame is played")
		st := p.Stats()
		require.Equal(t, "B", st.Title)
		require.EqualValues(t, 57, st.FramesPlayed)
		require.EqualValues(t, 2, st.FramesMuted)
		require.EqualValues(t, 1, st.FramesConcealed)
		require.InDelta(t, 57.0/60, st.Continuity(), 1e-9)
		last := sink.Writes()[59].At
		require.Equal(t, last.Sub(produced), st.Lag)
		require.Equal(t, st.Lag, st.MaxLag)
		require.Equal(t, mux.Format{Version: mux.MPEG1, SampleRate: 44100, Channels: 2}, st.Format)
		n := frameSamples * 4
		require.True(t, isZero(sink.PCM()[10*n:12*n]))
	})
}

// deviceSink is a ClockedSink whose device plays at speed times real time,
// from its first write.
type deviceSink struct {
	MemorySink
	speed   float64
	mu      sync.Mutex
	start   time.Time
	written time.Duration
	before  []time.Duration // Queued before each write
}

func (d *deviceSink) queued() time.Duration {
	if d.start.IsZero() {
		return 0
	}
	played := time.Duration(float64(time.Since(d.start)) * d.speed)
	return max(0, d.written-played)
}

func (d *deviceSink) Queued() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queued()
}

func (d *deviceSink) WritePCM(pcm []byte, rate int) error {
	d.mu.Lock()
	q := d.queued()
	d.before = append(d.before, q)
	if d.start.IsZero() {
		d.start = time.Now()
	} else if q == 0 {
		// The device ran dry: it restarts from here.
		d.start, d.written = time.Now(), 0
	}
	d.written += samplesDuration(int64(len(pcm)/4), rate)
	d.mu.Unlock()
	return d.MemorySink.WritePCM(pcm, rate)
}

// TestPlayerClockedSink: with a ClockedSink the device's clock, here 2%
// fast, paces playback: the queue stays between Margin and Lead plus a
// frame, without underruns, and the stream takes the device's time.
func TestPlayerClockedSink(t *testing.T) {
	frames := testFrames(t, "cbr128.mp3")[:200]
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFrames()
		ff.push(frames...)
		ff.end()
		sink := &deviceSink{speed: 1.02}
		p, err := New(ff, Config{Sink: sink})
		require.NoError(t, err)
		start := time.Now()
		require.NoError(t, p.Run(context.Background()))
		elapsed := time.Since(start)
		st := p.Stats()
		require.Zero(t, st.Underruns)
		require.EqualValues(t, 200, st.FramesPlayed)
		require.Len(t, sink.before, 200)
		for i, q := range sink.before {
			if i >= 6 { // after the first Lead, handed over at once
				require.Greater(t, q, DefaultLead/2, "write %d: the device queue ran low", i)
			}
			require.LessOrEqual(t, q, DefaultLead, "write %d: handed over too early", i)
		}
		// The last frame is handed over Lead (give or take a poll) before
		// the device, 2% fast, needs it.
		want := time.Duration(float64(due(200)) / 1.02)
		require.InDelta(t, float64(want-DefaultLead), float64(elapsed), float64(30*time.Millisecond))
		require.Equal(t, decodeAll(t, frames), sink.PCM())
	})
}

// TestPlayerSinkError: a sink's error stops Run and is returned.
func TestPlayerSinkError(t *testing.T) {
	frames := testFrames(t, "cbr128.mp3")[:50]
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFrames()
		ff.push(frames...)
		boom := errors.New("boom")
		n := 0
		p, err := New(ff, Config{Sink: SinkFunc(func([]byte, int) error {
			if n++; n == 3 {
				return boom
			}
			return nil
		})})
		require.NoError(t, err)
		require.ErrorIs(t, p.Run(context.Background()), boom)
	})
}

// TestPlayerBatch: with Batch the player hands received frames over in
// batches, waking far less often, yet plays and conceals the same frames at
// the same deadlines and reports the same figures as a frame at a time.
func TestPlayerBatch(t *testing.T) {
	frames := testFrames(t, "cbr128.mp3")[:200]
	type result struct {
		st     Stats
		writes []Write
		pcm    []byte
		start  time.Time
	}
	play := func(batch time.Duration) result {
		var r result
		synctest.Test(t, func(t *testing.T) {
			produced := time.Now().Add(-time.Second).UnixMicro()
			slots := slotsOf(frames)
			for i := range slots {
				slots[i].Produced = produced + due(i).Microseconds()
			}
			ff := newFakeFrames()
			ff.pushSlots(slots[:50]...)
			ff.hole(1, frames[50]) // concealed at its deadline
			ff.pushSlots(slots[51:120]...)
			ff.hole(1, frames[120]) // arrives late, before its deadline
			ff.pushSlots(slots[121:]...)
			sink := &MemorySink{}
			p, err := New(ff, Config{Sink: sink, Batch: batch})
			require.NoError(t, err)
			r.start = time.Now()
			errc := runPlayer(p, context.Background())
			time.Sleep(due(120) - 100*time.Millisecond)
			ff.mu.Lock()
			i := len(ff.slots) - (200 - 120)
			require.True(t, ff.slots[i].hole, "the player waits at the missing frame")
			ff.slots[i].slot = slots[120]
			ff.mu.Unlock()
			ff.fill(i)
			ff.end()
			require.NoError(t, <-errc)
			r.st, r.writes, r.pcm = p.Stats(), sink.Writes(), sink.PCM()
		})
		return r
	}
	one, batched := play(0), play(100*time.Millisecond)

	require.Equal(t, one.st, batched.st, "the same figures")
	require.EqualValues(t, 199, batched.st.FramesPlayed)
	require.EqualValues(t, 1, batched.st.FramesConcealed)
	require.Zero(t, batched.st.Underruns)
	require.Equal(t, one.pcm, batched.pcm)
	require.Len(t, batched.writes, 200)

	wakes := 0
	for i, w := range batched.writes {
		at, was := w.At.Sub(batched.start), one.writes[i].At.Sub(one.start)
		require.LessOrEqual(t, at, was, "frame %d handed over later than a frame at a time", i)
		require.GreaterOrEqual(t, at, was-100*time.Millisecond-frames[0].Format().FrameDuration(),
			"frame %d handed over more than Batch early", i)
		if i == 0 || w.At != batched.writes[i-1].At {
			wakes++
		}
	}
	// The concealed frame at its deadline, the late one on arrival.
	require.Equal(t, one.writes[50].At.Sub(one.start), batched.writes[50].At.Sub(batched.start))
	require.Equal(t, due(50)-DefaultLead/2, batched.writes[50].At.Sub(batched.start))
	require.Equal(t, due(120)-100*time.Millisecond, batched.writes[120].At.Sub(batched.start))
	t.Logf("handed over at %d distinct times, against %d a frame at a time", wakes, len(one.writes))
	require.Less(t, wakes, len(batched.writes)/3)
}
