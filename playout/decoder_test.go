package playout

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	mp3 "github.com/hajimehoshi/go-mp3"
	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/mux"
)

// decodeAll decodes frames, as plain slots, with one Decoder of the
// default engine.
func decodeAll(t testing.TB, frames []mux.Frame) []byte {
	t.Helper()
	return decodeWith(t, DefaultEngine, frames)
}

// decodeWith decodes frames, as plain slots, with one Decoder running e.
func decodeWith(t testing.TB, e Engine, frames []mux.Frame) []byte {
	t.Helper()
	d := Decoder{Engine: e}
	defer d.Close()
	var pcm []byte
	for i, f := range frames {
		var err error
		pcm, _, err = d.Decode(pcm, slotOf(f))
		require.NoError(t, err, "frame %d", i)
	}
	return pcm
}

// pcmLength is the exact PCM length of frames: Samples*4 bytes each.
func pcmLength(frames []mux.Frame) int {
	n := 0
	for _, f := range frames {
		n += f.Samples() * 4
	}
	return n
}

// playThrough plays frames through a Player into a MemorySink, in a
// synctest bubble (fake time), and returns the PCM.
func playThrough(t *testing.T, frames []mux.Frame) []byte {
	t.Helper()
	var pcm []byte
	synctest.Test(t, func(t *testing.T) {
		ff := newFakeFrames()
		ff.push(frames...)
		ff.end()
		sink := &MemorySink{}
		p, err := New(ff, Config{Sink: sink})
		require.NoError(t, err)
		require.NoError(t, p.Run(context.Background()))
		require.True(t, sink.Closed())
		st := p.Stats()
		require.EqualValues(t, len(frames), st.FramesPlayed)
		require.Zero(t, st.FramesConcealed+st.FramesMuted+st.Underruns+st.Rebuffers)
		pcm = sink.PCM()
	})
	return pcm
}

// mpg123 decodes the test file name with mpg123, stereo forced.
func mpg123(t *testing.T, name string) []byte {
	t.Helper()
	if _, err := exec.LookPath("mpg123"); err != nil {
		t.Skip("mpg123 not installed")
	}
	out, err := exec.Command("mpg123", "--no-gapless", "--stereo", "-q", "-s", filepath.Join("..", "testdata", name)).Output()
	require.NoError(t, err)
	return out
}

// maxDiff is the largest absolute difference between the 16-bit samples of
// a and b (of the same length) from sample frame `from` on.
func maxDiff(a, b []byte, from int) int {
	m := 0
	for i := from * 4; i+1 < len(a); i += 2 {
		d := int(int16(binary.LittleEndian.Uint16(a[i:]))) - int(int16(binary.LittleEndian.Uint16(b[i:])))
		m = max(m, d, -d)
	}
	return m
}

// TestDecodeMatchesMpg123 plays every test file through a Player into a
// MemorySink and compares the PCM with an independent decoder, mpg123: the
// same PCM with the default engine (libmpg123), within tol with go-mp3.
func TestDecodeMatchesMpg123(t *testing.T) {
	tests := []struct {
		name, ref  string
		tol        int // max abs difference, in LSB, over the whole file
		from, tol2 int // and from sample frame `from` on
		why        string
	}{
		{name: "cbr128.mp3", tol: 1},
		{name: "mono22k.mp3", tol: 1, why: "MPEG-2 mono"},
		{name: "truncated.mp3", tol: 1, why: "the cut last frame is dropped, as by mpg123"},
		// mpg123 resyncs after junk and drops the bit reservoir for three
		// frames; we keep it, so the junk file decodes as the clean one.
		{name: "junk.mp3", ref: "cbr128.mp3", tol: 1},
		// go-mp3 and mpg123 differ by up to 5 LSB on the loud opening
		// transient (frames 0 and 1, joint stereo short blocks); from there
		// on they agree to 1 LSB.
		{name: "vbr_id3_xing.mp3", tol: 8, from: 2 * 1152, tol2: 1},
		// MPEG-2 mono speech: go-mp3 rounds 0.02% of the loudest samples
		// (about 20000) 2 LSB away from mpg123.
		{name: "speech.mp3", tol: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			frames := testFrames(t, tt.name)
			got := playThrough(t, frames)
			require.Len(t, got, pcmLength(frames), "PCM length = frames x samples x 4")
			ref := tt.ref
			if ref == "" {
				ref = tt.name
			}
			want := mpg123(t, ref)
			require.Len(t, got, len(want))
			if DefaultEngine.Resolve() == Mpg123 {
				// The same decoder as the mpg123 program: bit for bit.
				require.Zero(t, maxDiff(got, want, 0))
				return
			}
			require.LessOrEqual(t, maxDiff(got, want, 0), tt.tol)
			if tt.from > 0 {
				require.LessOrEqual(t, maxDiff(got, want, tt.from), tt.tol2)
			}
		})
	}
}

// TestDecodeMatchesWholeFile checks that feeding go-mp3 one frame at a time
// gives exactly what it gives reading the file (the first 80 frames: go-mp3
// is slow under the race detector).
func TestDecodeMatchesWholeFile(t *testing.T) {
	const n = 80
	for _, name := range []string{"cbr128.mp3", "vbr_id3_xing.mp3", "mono22k.mp3", "speech.mp3", "junk.mp3"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b, err := os.ReadFile(filepath.Join("..", "testdata", name))
			require.NoError(t, err)
			b = b[:len(b):len(b)]
			frames, info := splitFramesInfo(b)
			frames = frames[:n]
			last := frames[n-1]
			end := cap(b) - cap(last) + len(last) // offset of the end of the last frame
			// Not a Seeker, as in Decoder. go-mp3 skips junk between
			// frames itself, and plays an Info frame as silence.
			dec, err := mp3.NewDecoder(struct{ io.Reader }{bytes.NewReader(b[:end])})
			require.NoError(t, err)
			want, err := io.ReadAll(dec)
			require.NoError(t, err)
			want = want[info*4:]
			got := decodeWith(t, GoMP3, frames)
			require.Len(t, got, pcmLength(frames))
			require.True(t, bytes.Equal(got, want), "PCM differs from go-mp3's decode of the file")
		})
	}
}

func isZero(b []byte) bool { return len(bytes.Trim(b, "\x00")) == 0 }

// TestDecodeMutedAndConcealed: muted and concealed slots yield silence of
// the right length; a muted frame is still decoded, so the frames after it
// are exactly as without muting.
func TestDecodeMutedAndConcealed(t *testing.T) {
	forEachEngine(t, testDecodeMutedAndConcealed)
}

func testDecodeMutedAndConcealed(t *testing.T, e Engine) {
	frames := testFrames(t, "cbr128.mp3")[:40]
	want := decodeWith(t, e, frames)
	n := frames[0].Samples() * 4

	d := Decoder{Engine: e}
	defer d.Close()
	var got []byte
	for i, f := range frames {
		s := slotOf(f)
		s.Muted = i >= 10 && i < 13
		var err error
		got, _, err = d.Decode(got, s)
		require.NoError(t, err)
	}
	require.Len(t, got, len(want))
	require.True(t, isZero(got[10*n:13*n]), "muted frames are silent")
	require.NotEqual(t, want[10*n:13*n], got[10*n:13*n])
	require.Equal(t, want[:10*n], got[:10*n])
	require.Equal(t, want[13*n:], got[13*n:], "frames after muted ones decode as if unmuted")

	// Concealed: the silent frame is fed, silence comes out, the timeline
	// keeps its length.
	d.Close()
	d = Decoder{Engine: e}
	got = got[:0]
	for i, f := range frames {
		s := slotOf(f)
		if i == 20 {
			s = mux.Slot{Frame: mux.Silent(f.Format()), Concealed: true}
		}
		var err error
		got, _, err = d.Decode(got, s)
		require.NoError(t, err)
	}
	require.Len(t, got, len(want))
	require.True(t, isZero(got[20*n:21*n]))
	require.Equal(t, want[:20*n], got[:20*n])
	require.False(t, isZero(got[21*n:]), "decoding goes on after a concealed frame")

	// A concealed first slot: silence, and no decoder is needed for it.
	d.Close()
	d = Decoder{Engine: e}
	got, format, err := d.Decode(nil, mux.Slot{Frame: mux.Silent(frames[0].Format()), Concealed: true})
	require.NoError(t, err)
	require.Equal(t, frames[0].Format(), format)
	require.Len(t, got, n)
	require.True(t, isZero(got))
}

// TestDecodeDiscontinuity: a Discontinuity, or a format change, starts a new
// decoder, which decodes exactly as a fresh one.
func TestDecodeDiscontinuity(t *testing.T) {
	forEachEngine(t, testDecodeDiscontinuity)
}

func testDecodeDiscontinuity(t *testing.T, e Engine) {
	cbr := testFrames(t, "cbr128.mp3")[:30]
	mono := testFrames(t, "mono22k.mp3")[:30]
	n := cbr[0].Samples() * 4

	freshTail := decodeWith(t, e, cbr[15:])
	d := Decoder{Engine: e}
	defer d.Close()
	var got []byte
	for i, f := range cbr {
		s := slotOf(f)
		s.Discontinuity = i == 15
		got, _, _ = d.Decode(got, s)
	}
	require.Equal(t, freshTail, got[15*n:], "after a Discontinuity the decoder starts afresh")
	continuous := decodeWith(t, e, cbr)
	require.NotEqual(t, continuous[15*n:16*n], got[15*n:16*n], "the fresh decoder really lacks the reservoir")

	// Format change without the flag: MPEG-1 stereo then MPEG-2 mono.
	d.Close()
	d = Decoder{Engine: e}
	got = got[:0]
	for _, f := range append(append([]mux.Frame{}, cbr...), mono...) {
		var format mux.Format
		var err error
		before := len(got)
		got, format, err = d.Decode(got, slotOf(f))
		require.NoError(t, err)
		require.Equal(t, f.Format(), format)
		require.Equal(t, f.Samples()*4, len(got)-before)
	}
	require.Equal(t, decodeWith(t, e, cbr), got[:len(cbr)*n])
	require.Equal(t, decodeWith(t, e, mono), got[len(cbr)*n:])
}

// TestDecodeHostile: frames with valid headers and random bodies, and
// slots that are not frames at all, never panic and keep the timeline.
func TestDecodeHostile(t *testing.T) {
	forEachEngine(t, testDecodeHostile)
}

func testDecodeHostile(t *testing.T, e Engine) {
	rng := rand.New(rand.NewPCG(1, 2))
	good := testFrames(t, "cbr128.mp3")[:20]
	d := Decoder{Engine: e}
	defer d.Close()
	var pcm []byte
	errs := 0
	const total = 400
	for i := range total {
		src := good[i%len(good)]
		f := append(mux.Frame(nil), src...)
		switch i % 4 {
		case 0: // random bytes after a valid header
			for j := 4; j < len(f); j++ {
				f[j] = byte(rng.Uint32())
			}
		case 1: // flip bits in side information and main data
			for range 8 {
				j := 4 + rng.IntN(len(f)-4)
				f[j] ^= 1 << rng.IntN(8)
			}
		case 2: // main_data_begin pointing far back, garbage granule info
			f[4], f[5] = 0xff, 0xff
		}
		before := len(pcm)
		var err error
		pcm, _, err = d.Decode(pcm, slotOf(f))
		if err != nil {
			errs++
			require.ErrorIs(t, err, ErrDecode)
		}
		require.Equal(t, f.Samples()*4, len(pcm)-before, "slot %d", i)
		if len(pcm) > 1<<20 {
			pcm = pcm[:0]
		}
	}
	t.Logf("%d of %d hostile frames reported an error", errs, total)

	// The decoder recovers: good frames after the hostile ones decode, from
	// the third on (the synthesis and overlap history of the garbage is
	// gone by then), as from a fresh decoder: exactly with go-mp3, within
	// 1 LSB with libmpg123, whose synthesis window may now start at another
	// phase of its ring buffer (so it rounds differently, as a listener who
	// joined at another frame does).
	n := good[0].Samples() * 4
	var after []byte
	for _, f := range good {
		after, _, _ = d.Decode(after, slotOf(f))
	}
	clean := decodeWith(t, e, good)
	require.Len(t, after, len(clean))
	require.LessOrEqual(t, maxDiff(after[3*n:], clean[3*n:], 0), 1, "decoding recovers after hostile frames")

	// A frame that makes go-mp3 panic (index out of range in its MPEG-2
	// scale factors; found by FuzzDecode): silence and an error, and the
	// next frame decodes with a fresh decoder. libmpg123 decodes it.
	boom := make(mux.Frame, mux.Header(0xfff340c4).Size())
	copy(boom, "\xff\xf3\x40\xc4000001\xac")
	before := len(pcm)
	pcm, _, err := d.Decode(pcm, slotOf(boom))
	require.Len(t, pcm, before+576*4)
	if e == GoMP3 {
		require.ErrorIs(t, err, ErrDecode)
		require.True(t, isZero(pcm[before:]))
	}
	got, _, err := d.Decode(nil, slotOf(good[0]))
	require.NoError(t, err)
	require.Equal(t, decodeWith(t, e, good[:1]), got)

	// Not frames at all: an error, and a frame of silence of the last format.
	for _, b := range [][]byte{nil, {0xff}, {0xff, 0xfb, 0x90}, bytes.Repeat([]byte{0xff}, 100), good[0][:100]} {
		before := len(pcm)
		pcm, _, err = d.Decode(pcm, slotOf(mux.Frame(b)))
		require.ErrorIs(t, err, ErrDecode)
		require.Equal(t, 1152*4, len(pcm)-before)
		require.True(t, isZero(pcm[before:]))
	}
	// ... and nothing before any frame was seen.
	fresh := Decoder{Engine: e}
	got, _, err = fresh.Decode(nil, slotOf(mux.Frame{1, 2, 3}))
	require.ErrorIs(t, err, ErrDecode)
	require.Empty(t, got)
	require.NoError(t, fresh.Close())
}

// forEachEngine runs test for each decoder engine this build has.
func forEachEngine(t *testing.T, test func(t *testing.T, e Engine)) {
	for _, e := range []Engine{Mpg123, GoMP3} {
		t.Run(e.String(), func(t *testing.T) {
			if !e.Available() {
				t.Skipf("%v is not in this build", e)
			}
			test(t, e)
		})
	}
}

// fuzzHeaders are valid Layer III headers of several formats: MPEG-1 and
// MPEG-2, stereo, joint stereo and mono, with and without CRC and padding.
var fuzzHeaders = [][4]byte{
	{0xff, 0xfb, 0x90, 0x64}, // MPEG-1 128k 44.1k joint stereo
	{0xff, 0xfb, 0x92, 0x04}, // padded, stereo
	{0xff, 0xfa, 0xe4, 0xc4}, // MPEG-1 320k 48k mono, CRC
	{0xff, 0xf3, 0x40, 0xc4}, // MPEG-2 32k 22.05k mono
	{0xff, 0xf3, 0x12, 0x44}, // MPEG-2 8k padded joint stereo
	{0xff, 0xf2, 0xe8, 0x04}, // MPEG-2 160k 16k stereo, CRC
}

// FuzzDecode splits arbitrary bytes into frames behind valid-looking headers
// and decodes them with arbitrary slot flags: the Decoder must never panic
// and always yield Samples*4 bytes per frame.
func FuzzDecode(f *testing.F) {
	cbr := testFrames(f, "cbr128.mp3")
	f.Add(bytes.Join([][]byte{cbr[0][1:], cbr[1][1:], cbr[2][1:]}, nil))
	f.Add([]byte{0x00, 0xff, 0xff, 0xff, 0xff, 0x31, 0x00})
	f.Add(bytes.Repeat([]byte{0x5a, 0xa5, 0xff, 0x00}, 300))
	f.Fuzz(func(t *testing.T, data []byte) {
		var d Decoder
		var pcm []byte
		for len(data) > 0 {
			ctl := data[0]
			data = data[1:]
			h := fuzzHeaders[int(ctl&0x7)%len(fuzzHeaders)]
			size := mux.Header(binary.BigEndian.Uint32(h[:])).Size()
			frame := make(mux.Frame, size)
			copy(frame, h[:])
			n := copy(frame[4:], data)
			data = data[n:]
			slot := mux.Slot{
				Frame:         frame,
				Muted:         ctl&0x08 != 0,
				Concealed:     ctl&0x10 != 0,
				Discontinuity: ctl&0x20 != 0,
			}
			if _, err := mux.ParseFrame(frame); err != nil {
				t.Fatalf("header %x does not parse: %v", h, err)
			}
			before := len(pcm)
			pcm, _, _ = d.Decode(pcm, slot)
			if got, want := len(pcm)-before, frame.Samples()*4; got != want {
				t.Fatalf("decoded %d bytes, want %d", got, want)
			}
			if (slot.Muted || slot.Concealed) && !isZero(pcm[before:]) {
				t.Fatal("muted or concealed slot is not silent")
			}
			pcm = pcm[:0]
		}
	})
}

// BenchmarkDecode decodes files with each engine, one frame at a time as
// a Player does, and reports the decoding CPU per second of audio
// (cpu-ms/s: one goroutine, so the elapsed time is CPU time) and the speed
// as a multiple of real time. Run it as
//
//	go test -run '^$' -bench Decode -benchtime 3s ./playout/
func BenchmarkDecode(b *testing.B) {
	for _, name := range []string{
		"cbr128.mp3",                    // MPEG-1 44.1 kHz joint stereo, 128 kbit/s
		"matrix/22050_j_cbr32_talk.mp3", // MPEG-2 talk radio
		"matrix/11025_s_vbr0.mp3",       // MPEG-2.5 (go-mp3 cannot)
	} {
		frames := testFrames(b, name)
		var audio time.Duration
		for _, f := range frames {
			audio += f.Format().FrameDuration()
		}
		for _, e := range []Engine{Mpg123, GoMP3} {
			b.Run(strings.TrimSuffix(filepath.Base(name), ".mp3")+"/"+e.String(), func(b *testing.B) {
				if !e.Available() {
					b.Skipf("%v is not in this build", e)
				}
				if e == GoMP3 && frames[0].Format().Version == mux.MPEG25 {
					b.Skip("go-mp3 does not decode MPEG-2.5")
				}
				pcm := make([]byte, 0, 1152*4)
				b.ReportAllocs()
				for b.Loop() {
					d := Decoder{Engine: e}
					for _, f := range frames {
						pcm, _, _ = d.Decode(pcm[:0], slotOf(f))
					}
					d.Close()
				}
				played := float64(audio) * float64(b.N)
				b.ReportMetric(float64(b.Elapsed())/played*1000, "cpu-ms/s")
				b.ReportMetric(played/float64(b.Elapsed()), "x_realtime")
			})
		}
	}
}

// TestDecodeSilentFrames: the Silent frames that conceal missing audio
// decode to silence of their length at every rate and channel count,
// MPEG-2.5 included (go-mp3 has no MPEG-2.5: it reports an error and
// yields the same silence).
func TestDecodeSilentFrames(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e Engine) {
		d := Decoder{Engine: e}
		defer d.Close()
		for _, v := range []mux.Version{mux.MPEG1, mux.MPEG2, mux.MPEG25} {
			for _, base := range []int{44100, 48000, 32000} {
				rate := map[mux.Version]int{mux.MPEG1: base, mux.MPEG2: base / 2, mux.MPEG25: base / 4}[v]
				for _, ch := range []int{1, 2} {
					format := mux.Format{Version: v, SampleRate: rate, Channels: ch}
					for range 3 {
						pcm, got, err := d.Decode(nil, slotOf(mux.Silent(format)))
						if e == GoMP3 && v == mux.MPEG25 {
							require.ErrorIs(t, err, ErrDecode)
						} else {
							require.NoError(t, err, "%v", format)
						}
						require.Equal(t, format, got)
						require.Len(t, pcm, format.SamplesPerFrame()*4)
						require.True(t, isZero(pcm), "%v", format)
					}
				}
			}
		}
	})
}
