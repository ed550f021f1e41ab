package playout

import (
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/mux"
)

// splitFrames splits an MP3 file into its audio frames: an ID3v2 tag is
// skipped, Xing/Info/VBRI frames dropped, and junk between frames (or an
// ID3v1 tag, or a truncated last frame) skipped: after a skip, a candidate
// frame must be followed by another frame header or the end of the data.
func splitFrames(b []byte) []mux.Frame {
	frames, _ := splitFramesInfo(b)
	return frames
}

// splitFramesInfo is splitFrames that also returns the samples (per
// channel) of the Info frames it dropped.
func splitFramesInfo(b []byte) (frames []mux.Frame, infoSamples int) {
	if len(b) >= 10 && string(b[:3]) == "ID3" {
		size := int(b[6]&0x7f)<<21 | int(b[7]&0x7f)<<14 | int(b[8]&0x7f)<<7 | int(b[9]&0x7f)
		b = b[min(len(b), 10+size):]
	}
	locked := false // the last frame was accepted: the next one follows it
	for len(b) > 0 {
		f, err := mux.ParseFrame(b)
		if err == nil {
			rest := b[len(f):]
			if _, herr := mux.ParseHeader(rest); locked || len(rest) == 0 || herr == nil {
				if f.IsInfo() {
					infoSamples += f.Samples()
				} else {
					frames = append(frames, f)
				}
				b, locked = rest, true
				continue
			}
		}
		b, locked = b[1:], false
	}
	return frames, infoSamples
}

func testFrames(t testing.TB, name string) []mux.Frame {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", name))
	require.NoError(t, err)
	frames := splitFrames(b)
	require.NotEmpty(t, frames)
	return frames
}

// fakeFrames is a Frames for tests: the test pushes slots (or holes, which
// Next conceals) and ends the stream; it also implements EndedFrames.
type fakeFrames struct {
	ready chan struct{}

	mu     sync.Mutex
	slots  []fakeSlot // from the playhead on
	ended  bool
	format mux.Format
	nexts  int // calls of Next
}

type fakeSlot struct {
	slot mux.Slot
	hole bool // not arrived (yet)
}

var _ EndedFrames = (*fakeFrames)(nil)

func newFakeFrames() *fakeFrames { return &fakeFrames{ready: make(chan struct{}, 1)} }

func (f *fakeFrames) signal() {
	select {
	case f.ready <- struct{}{}:
	default:
	}
}

// push appends received frames, stamped as produced now.
func (f *fakeFrames) push(frames ...mux.Frame) {
	f.mu.Lock()
	for _, fr := range frames {
		f.slots = append(f.slots, fakeSlot{slot: mux.Slot{Frame: fr, Produced: time.Now().UnixMicro()}})
	}
	f.mu.Unlock()
	f.signal()
}

// pushSlots appends slots as given.
func (f *fakeFrames) pushSlots(slots ...mux.Slot) {
	f.mu.Lock()
	for _, s := range slots {
		f.slots = append(f.slots, fakeSlot{slot: s})
	}
	f.mu.Unlock()
	f.signal()
}

// hole appends n frames that have not arrived, each as long as like.
func (f *fakeFrames) hole(n int, like mux.Frame) {
	f.mu.Lock()
	for range n {
		f.slots = append(f.slots, fakeSlot{slot: mux.Slot{Frame: like}, hole: true})
	}
	f.mu.Unlock()
}

// fill makes the i-th slot from the playhead arrive.
func (f *fakeFrames) fill(i int) {
	f.mu.Lock()
	f.slots[i].hole = false
	f.slots[i].slot.Produced = time.Now().UnixMicro()
	f.mu.Unlock()
	f.signal()
}

func (f *fakeFrames) end() {
	f.mu.Lock()
	f.ended = true
	f.mu.Unlock()
	f.signal()
}

func (f *fakeFrames) Ready() <-chan struct{} { return f.ready }

func (f *fakeFrames) Ended() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ended
}

// Buffered counts the received slots from the playhead to the last
// received one, as the Reassembler does.
func (f *fakeFrames) Buffered() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var d, pending time.Duration
	for _, s := range f.slots {
		pending += s.slot.Frame.Format().FrameDuration()
		if !s.hole {
			d += pending
			pending = 0
		}
	}
	return d
}

func (f *fakeFrames) Next(conceal bool) (mux.Slot, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nexts++
	if len(f.slots) == 0 {
		if f.ended {
			return mux.Slot{}, false, io.EOF
		}
		if !conceal || f.format.SampleRate == 0 {
			return mux.Slot{}, false, nil
		}
		return mux.Slot{Frame: mux.Silent(f.format), Concealed: true}, true, nil
	}
	s := f.slots[0]
	if s.hole && !conceal {
		return mux.Slot{}, false, nil
	}
	f.slots = f.slots[1:]
	if s.hole {
		format := s.slot.Frame.Format()
		return mux.Slot{Frame: mux.Silent(format), Concealed: true}, true, nil
	}
	f.format = s.slot.Frame.Format()
	return s.slot, true, nil
}

func (f *fakeFrames) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nexts
}

func slotOf(f mux.Frame) mux.Slot { return mux.Slot{Frame: f} }
