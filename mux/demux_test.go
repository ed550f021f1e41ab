package mux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"testing/synctest"

	"github.com/stretchr/testify/require"
	tmp3 "github.com/tcolgate/mp3"
)

// TestDemuxTestdata checks every test file against mpg123: the frames
// returned decode to exactly as many samples as mpg123 --no-gapless
// produces, and the counts of what was skipped are the ones make.sh put in.
func TestDemuxTestdata(t *testing.T) {
	tests := []struct {
		name   string
		frames int
		want   DemuxStats // Frames and FrameBytes are checked separately
	}{
		{"cbr128.mp3", 308, DemuxStats{}},
		{"vbr_id3_xing.mp3", 308, DemuxStats{Tags: 1, TagBytes: 85, InfoFrames: 1}},
		{"mono22k.mp3", 232, DemuxStats{}},
		{"speech.mp3", 287, DemuxStats{Tags: 1, TagBytes: 128, InfoFrames: 1}},
		{"junk.mp3", 308, DemuxStats{Skipped: 3 * 137, Resyncs: 3}},
		{"truncated.mp3", 205, DemuxStats{}}, // Truncated: the bytes after the last whole frame
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := readTestdata(t, tt.name)
			fs, st := demuxBytes(t, data)
			require.Len(t, fs, tt.frames)

			size := int64(0)
			for i, f := range fs {
				g, err := ParseFrame(f)
				require.NoError(t, err, "frame %d", i)
				require.Len(t, g, len(f), "frame %d", i)
				require.False(t, f.IsInfo(), "frame %d", i)
				require.Equal(t, len(f), cap(f), "frame %d shares its slab with the next", i)
				require.True(t, bytes.Contains(data, f), "frame %d is not in the file", i)
				size += int64(len(f))
			}
			require.Equal(t, int64(len(fs)), st.Frames)
			require.Equal(t, size, st.FrameBytes)
			got := st
			got.Frames, got.FrameBytes = 0, 0
			if tt.name == "truncated.mp3" {
				require.Less(t, int64(len(data))-size, int64(len(fs[0])), "more than a frame left over")
				tt.want.Truncated = int64(len(data)) - size
			}
			require.Equal(t, tt.want, got)
			if st.InfoFrames == 0 {
				require.Equal(t, int64(len(data)), st.FrameBytes+st.Skipped+st.TagBytes+st.Truncated, "bytes unaccounted for")
			}
			require.Equal(t, refSamples(t, testdataPath(tt.name)), frameSamples(fs), "samples: mpg123 vs demuxer")
		})
	}
}

// TestDemuxMatchesTcolgate compares the frames, byte for byte, with those
// of github.com/tcolgate/mp3, an independent frame parser, on the files
// where its known traps (ID3v2 not skipped, Xing frames returned as audio)
// are worked around.
func TestDemuxMatchesTcolgate(t *testing.T) {
	tests := []struct {
		name     string
		skipID3  bool // tcolgate does not skip ID3v2: cut it off first
		dropInfo bool // tcolgate returns the Xing frame as audio
	}{
		{name: "cbr128.mp3"},
		{name: "mono22k.mp3"},
		{name: "junk.mp3"},
		{name: "truncated.mp3"},
		{name: "speech.mp3", dropInfo: true},
		{name: "vbr_id3_xing.mp3", skipID3: true, dropInfo: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := readTestdata(t, tt.name)
			ours, _ := demuxBytes(t, data)
			in := data
			if tt.skipID3 {
				require.Equal(t, "ID3", string(in[:3]))
				n := int(in[6])<<21 | int(in[7])<<14 | int(in[8])<<7 | int(in[9])
				in = in[10+n:]
			}
			dec := tmp3.NewDecoder(bytes.NewReader(in))
			var theirs [][]byte
			for {
				var f tmp3.Frame
				skipped := 0
				err := dec.Decode(&f, &skipped)
				if err != nil {
					require.True(t, err == io.EOF || err == io.ErrUnexpectedEOF, "tcolgate: %v", err)
					break
				}
				b, err := io.ReadAll(f.Reader())
				require.NoError(t, err)
				theirs = append(theirs, b)
			}
			if tt.dropInfo {
				require.True(t, Frame(theirs[0]).IsInfo())
				theirs = theirs[1:]
			}
			require.Len(t, ours, len(theirs))
			for i := range ours {
				require.Equal(t, theirs[i], []byte(ours[i]), "frame %d", i)
			}
		})
	}
}

// TestDemuxJunkAndTruncation: junk.mp3 yields exactly cbr128.mp3's frames,
// and a file cut anywhere yields every whole frame before the cut.
func TestDemuxJunkAndTruncation(t *testing.T) {
	clean, _ := demuxBytes(t, readTestdata(t, "cbr128.mp3"))
	junk, _ := demuxBytes(t, readTestdata(t, "junk.mp3"))
	require.Equal(t, clean, junk)
	trunc, _ := demuxBytes(t, readTestdata(t, "truncated.mp3"))
	require.Equal(t, clean[:len(trunc)], trunc)

	data := joinFrames(clean[:6])
	end5 := len(joinFrames(clean[:5]))
	for _, cut := range []int{end5, end5 + 1, end5 + 3, end5 + 4, end5 + 5, end5 + 100, len(data) - 1} {
		fs, st := demuxBytes(t, data[:cut])
		require.Equal(t, clean[:5], fs, "cut at %d", cut)
		require.Equal(t, int64(cut-end5), st.Truncated, "cut at %d", cut)
		require.Zero(t, st.Skipped, "cut at %d", cut)
	}
}

// TestDemuxReaders: delivering the bytes one at a time, with the data and
// io.EOF together, in halves, or with transient errors in between changes
// nothing.
func TestDemuxReaders(t *testing.T) {
	readers := map[string]func(io.Reader) io.Reader{
		"OneByte": iotest.OneByteReader,
		"DataErr": iotest.DataErrReader,
		"Half":    iotest.HalfReader,
		"OneByteDataErr": func(r io.Reader) io.Reader {
			return iotest.DataErrReader(iotest.OneByteReader(r))
		},
	}
	for _, name := range testdataFiles() {
		data := readTestdata(t, name)
		want, wantStats := demuxBytes(t, data)
		for rname, wrap := range readers {
			t.Run(name+"/"+rname, func(t *testing.T) {
				fs, st, err := demuxAll(wrap(bytes.NewReader(data)))
				require.ErrorIs(t, err, io.EOF)
				require.Equal(t, want, fs)
				require.Equal(t, wantStats, st)
			})
		}
		t.Run(name+"/TransientErrors", func(t *testing.T) {
			d := NewDemuxer(&errAfterReader{r: bytes.NewReader(data), k: 333, err: errTransient})
			var fs []Frame
			errs := 0
			for {
				f, err := d.Next()
				if errors.Is(err, errTransient) {
					errs++
					continue
				}
				if err != nil {
					require.ErrorIs(t, err, io.EOF)
					break
				}
				fs = append(fs, f)
			}
			require.Equal(t, want, fs)
			require.Equal(t, wantStats, d.Stats())
			require.GreaterOrEqual(t, errs, len(data)/333)
		})
	}
}

// TestDemuxTags: tags at the start, between frames and at the end are
// skipped without losing sync, even when they hold bytes that look like
// frames.
func TestDemuxTags(t *testing.T) {
	cbr, _ := demuxBytes(t, readTestdata(t, "cbr128.mp3"))
	mono, _ := demuxBytes(t, readTestdata(t, "mono22k.mp3"))
	a, b := cbr[:100], cbr[100:]
	// A tag body full of valid frames of another format: a parser that
	// hunts for sync inside the tag finds them.
	fake := joinFrames(mono[:20])
	id3v1 := append([]byte("TAG"), bytes.Repeat([]byte{0xFF, 0xFB}, 62)...)
	id3v1 = append(id3v1, 0xFF)
	apeItems := append([]byte{5, 0, 0, 0, 0, 0, 0, 0}, "Title\x00hello"...)
	ape := func(header bool) []byte {
		field := func(flags uint32) []byte {
			p := append([]byte("APETAGEX"), binary.LittleEndian.AppendUint32(nil, 2000)...)
			p = binary.LittleEndian.AppendUint32(p, uint32(len(apeItems)+32))
			p = binary.LittleEndian.AppendUint32(p, 1)
			p = binary.LittleEndian.AppendUint32(p, flags)
			return append(p, make([]byte, 8)...)
		}
		var tag []byte
		if header {
			tag = field(1<<31 | 1<<29)
		}
		tag = append(tag, apeItems...)
		return append(tag, field(1<<31)...)
	}
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name    string
		data    []byte
		tags    int64
		skipped int64
		resyncs int64
	}{
		{"ID3v2.3 at start", join(id3v2Tag(3, fake, false), joinFrames(cbr)), 1, 0, 0},
		{"ID3v2.3 in the middle", join(joinFrames(a), id3v2Tag(3, fake, false), joinFrames(b)), 1, 0, 0},
		{"ID3v2.4 with footer in the middle", join(joinFrames(a), id3v2Tag(4, fake, true), joinFrames(b)), 1, 0, 0},
		{"ID3v2.2 empty then ID3v2.4", join(joinFrames(a), id3v2Tag(2, nil, false), id3v2Tag(4, fake, false), joinFrames(b)), 2, 0, 0},
		{"ID3v1 in the middle", join(joinFrames(a), id3v1, joinFrames(b)), 1, 0, 0},
		{"ID3v1 at the end", join(joinFrames(cbr), id3v1), 1, 0, 0},
		{"ID3v2 at both ends", join(id3v2Tag(4, fake, true), joinFrames(cbr), id3v2Tag(3, fake, false)), 2, 0, 0},
		{"APEv2 with header at the end", join(joinFrames(cbr), ape(true)), 1, 0, 0},
		{"APEv2 with header in the middle", join(joinFrames(a), ape(true), joinFrames(b)), 1, 0, 0},
		// Without a header the items are junk, the footer a tag.
		{"APEv2 without header then ID3v1", join(joinFrames(cbr), ape(false), id3v1), 2, int64(len(apeItems)), 1},
		{"ID3v2 cut short by the end", join(joinFrames(cbr), id3v2Tag(3, fake, false)[:100]), 1, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs, st := demuxBytes(t, tt.data)
			require.Equal(t, cbr, fs)
			require.Equal(t, tt.tags, st.Tags)
			require.Equal(t, tt.skipped, st.Skipped)
			require.Equal(t, tt.resyncs, st.Resyncs)
			require.Equal(t, int64(len(tt.data)), st.FrameBytes+st.Skipped+st.TagBytes)

			one, st1, err := demuxAll(iotest.OneByteReader(bytes.NewReader(tt.data)))
			require.ErrorIs(t, err, io.EOF)
			require.Equal(t, fs, one)
			require.Equal(t, st, st1)
		})
	}
}

// TestDemuxFormatChange: a run of frames of a new format is returned, with
// no loss on either side; a lone frame of another format is not trusted.
func TestDemuxFormatChange(t *testing.T) {
	cbr, _ := demuxBytes(t, readTestdata(t, "cbr128.mp3"))
	mono, _ := demuxBytes(t, readTestdata(t, "mono22k.mp3"))
	require.NotEqual(t, cbr[0].Format(), mono[0].Format())

	fs, st := demuxBytes(t, joinFrames(cbr[:100], mono, cbr[100:]))
	require.Equal(t, append(append(append([]Frame{}, cbr[:100]...), mono...), cbr[100:]...), fs)
	require.Zero(t, st.Skipped)
	require.Zero(t, st.Resyncs)

	fs, st = demuxBytes(t, joinFrames(cbr[:50], mono[5:6], cbr[50:]))
	require.Equal(t, cbr, fs)
	require.Equal(t, int64(len(mono[5])), st.Skipped)
	require.Equal(t, int64(1), st.Resyncs)
}

// TestDemuxShortStreams: the confirm-by-next-header rule does not cost the
// frames of very short streams.
func TestDemuxShortStreams(t *testing.T) {
	cbr, _ := demuxBytes(t, readTestdata(t, "cbr128.mp3"))
	silent := Silent(Format{Version: MPEG2, SampleRate: 24000, Channels: 1})

	fs, _ := demuxBytes(t, cbr[0])
	require.Equal(t, cbr[:1], fs, "a stream of one frame")

	fs, _ = demuxBytes(t, joinFrames(cbr[:1], []Frame{cbr[1][:10]}))
	require.Equal(t, cbr[:1], fs, "one frame and the start of another")

	fs, _ = demuxBytes(t, joinFrames([]Frame{silent, silent, silent}))
	require.Equal(t, []Frame{silent, silent, silent}, fs, "silent frames")

	// After junk a lone frame has nothing to confirm it.
	_, _, err := demuxAll(bytes.NewReader(append([]byte("junk"), cbr[0]...)))
	require.ErrorIs(t, err, ErrNotMP3)
	// Unless a tag follows it.
	fs, _ = demuxBytes(t, append(append([]byte("junk"), cbr[0]...), id3v2Tag(3, nil, false)...))
	require.Equal(t, cbr[:1], fs)
}

// TestDemuxNotMP3: input without MP3 frames ends in ErrNotMP3 after a
// bounded read, and again on every later call.
func TestDemuxNotMP3(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 1<<20)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	text := []byte(strings.Repeat("The quick brown fox jumps over the lazy dog. ID3 TAG APE\n", 3000))
	cbr := readTestdata(t, "cbr128.mp3")
	// Valid sync words and headers everywhere, but never where the frame
	// before says the next one starts.
	headers := bytes.Repeat(append(append([]byte{}, cbr[:4]...), make([]byte, 200)...), 1000)

	tests := []struct {
		name string
		r    io.Reader
	}{
		{"empty", bytes.NewReader(nil)},
		{"short text", strings.NewReader("hello, world\n")},
		{"text", bytes.NewReader(text)},
		{"WAV", bytes.NewReader(testWAV(2))},
		{"random", bytes.NewReader(random)},
		{"headers without frames", bytes.NewReader(headers)},
		{"endless zeros", &endless{pattern: []byte{0}}},
		{"endless 0xFF", &endless{pattern: []byte{0xFF}}},
		// Each header says the next starts 417 bytes on: 417 % 5 != 0.
		{"endless sync words", &endless{pattern: []byte{0xFF, 0xFB, 0x90, 0x64, 0}}},
		{"endless ID3 lookalikes", &endless{pattern: []byte("ID3\x04\x00\x00\x80")}},
		{"endless empty ID3v2 tags", &endless{pattern: id3v2Tag(4, nil, false)}},
		{"endless ID3v1 tags", &endless{pattern: append([]byte("TAG"), make([]byte, 125)...)}},
		{"huge ID3v2 tags", &endless{pattern: []byte("ID3\x04\x00\x00\x7f\x7f\x7f\x7f")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cr := &countingReader{r: tt.r}
			d := NewDemuxer(cr)
			f, err := d.Next()
			require.Nil(t, f)
			require.ErrorIs(t, err, ErrNotMP3)
			require.LessOrEqual(t, cr.n, int64(MaxJunk+demuxBufSize+maxFreeFrame), "read too much")
			_, err2 := d.Next()
			require.Equal(t, err, err2, "error not sticky")
			require.Zero(t, d.Stats().Frames)
		})
	}
}

// testWAV makes a WAV file of seconds of 44.1 kHz stereo 16-bit sine.
func testWAV(seconds int) []byte {
	n := 44100 * seconds
	b := []byte("RIFF")
	b = binary.LittleEndian.AppendUint32(b, uint32(36+4*n))
	b = append(b, "WAVEfmt "...)
	b = binary.LittleEndian.AppendUint32(b, 16)
	b = binary.LittleEndian.AppendUint16(b, 1) // PCM
	b = binary.LittleEndian.AppendUint16(b, 2)
	b = binary.LittleEndian.AppendUint32(b, 44100)
	b = binary.LittleEndian.AppendUint32(b, 44100*4)
	b = binary.LittleEndian.AppendUint16(b, 4)
	b = binary.LittleEndian.AppendUint16(b, 16)
	b = append(b, "data"...)
	b = binary.LittleEndian.AppendUint32(b, uint32(4*n))
	for i := range n {
		s := uint16(int16(8000 * math.Sin(2*math.Pi*440*float64(i)/44100)))
		b = binary.LittleEndian.AppendUint16(b, s)
		b = binary.LittleEndian.AppendUint16(b, s)
	}
	return b
}

// fakeFrames makes n frames with header h, of the size the header gives
// (see otherFrame), their bodies zero.
func fakeFrames(t *testing.T, h uint32, n int) []byte {
	t.Helper()
	var hb [4]byte
	binary.BigEndian.PutUint32(hb[:], h)
	size, key := otherFrame(hb[:])
	require.NotZero(t, key)
	require.NotZero(t, size)
	f := make([]byte, size)
	copy(f, hb[:])
	return bytes.Repeat(f, n)
}

// TestDemuxUnsupported: Layer I, Layer II and free-format streams end in
// ErrUnsupported; a stray unsupported header among good frames does not.
func TestDemuxUnsupported(t *testing.T) {
	const (
		layer2 = 0xFFFDA000 | 0x44 // MPEG-1 Layer II, 160 kbit/s, 44.1 kHz
		layer1 = 0xFFFF9000 | 0x44 // MPEG-1 Layer I, 288 kbit/s, 44.1 kHz
	)
	cbr, _ := demuxBytes(t, readTestdata(t, "cbr128.mp3"))

	t.Run("synthetic", func(t *testing.T) {
		for _, h := range []uint32{layer2, layer1} {
			_, _, err := demuxAll(bytes.NewReader(fakeFrames(t, h, 10)))
			require.ErrorIs(t, err, ErrUnsupported, "%#x", h)
			// Too short a run to be sure, but nothing else either.
			_, _, err = demuxAll(bytes.NewReader(fakeFrames(t, h, 2)))
			require.ErrorIs(t, err, ErrUnsupported, "%#x", h)
			// Good frames, then the stream turns unsupported.
			fs, _, err := demuxAll(bytes.NewReader(append(joinFrames(cbr[:10]), fakeFrames(t, h, 10)...)))
			require.ErrorIs(t, err, ErrUnsupported, "%#x", h)
			require.Equal(t, cbr[:10], fs)
			// One or two stray frames among good ones are junk.
			fs, st := demuxBytes(t, bytes.Join([][]byte{joinFrames(cbr[:10]), fakeFrames(t, h, 2), joinFrames(cbr[10:])}, nil))
			require.Equal(t, cbr, fs, "%#x", h)
			require.Equal(t, int64(2*len(fakeFrames(t, h, 1))), st.Skipped, "%#x", h)
		}
	})

	tmp := t.TempDir()
	encoders := []struct {
		name string
		tool string
		args []string
	}{
		{"MPEG-1 Layer II by ffmpeg", "ffmpeg", []string{"-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=sample_rate=44100:duration=2",
			"-c:a", "mp2", "-f", "mp2", filepath.Join(tmp, "l2.mp2")}},
		{"free format by lame", "lame", []string{"--quiet", "--freeformat", "-b", "200", filepath.Join(tmp, "in.wav"), filepath.Join(tmp, "free.mp3")}},
	}
	require.NoError(t, os.WriteFile(filepath.Join(tmp, "in.wav"), testWAV(2), 0o644))
	for _, e := range encoders {
		t.Run(e.name, func(t *testing.T) {
			runTool(t, e.tool, e.args...)
			out := e.args[len(e.args)-1]
			f, err := os.Open(out)
			require.NoError(t, err)
			defer f.Close()
			fs, _, err := demuxAll(f)
			require.ErrorIs(t, err, ErrUnsupported)
			require.Empty(t, fs)
			t.Log(err)
		})
	}
}

// TestDemuxLive feeds a Demuxer the way a live stream arrives, piece by
// piece, and checks that each frame comes out as soon as it can: after the
// next header while the first frame is unconfirmed, then as soon as the
// frame's last byte is in.
func TestDemuxLive(t *testing.T) {
	cbr, _ := demuxBytes(t, readTestdata(t, "cbr128.mp3"))
	f := cbr[:6]
	synctest.Test(t, func(t *testing.T) {
		in := &chanReader{ch: make(chan []byte, 16)}
		d := NewDemuxer(in)
		out := make(chan Frame, 16)
		done := make(chan error, 1)
		go func() {
			for {
				fr, err := d.Next()
				if err != nil {
					done <- err
					close(out)
					return
				}
				out <- fr
			}
		}()
		steps := []struct {
			send   []byte
			frames int // returned in total
		}{
			{id3v2Tag(3, []byte("tag body"), false), 0},
			{f[0], 0},
			{f[1][:3], 0},
			{f[1][3:4], 1}, // frame 0 is confirmed by frame 1's header
			{f[1][4:], 2},  // in sync: frame 1 needs no more
			{f[2][:len(f[2])-1], 2},
			{f[2][len(f[2])-1:], 3},
			{[]byte{0, 1, 2, 3}, 3}, // junk: sync lost
			{f[3], 3},
			{f[4][:4], 4},
			{append(append([]byte{}, f[4][4:]...), f[5]...), 6},
		}
		for i, s := range steps {
			in.ch <- s.send
			synctest.Wait()
			require.Len(t, out, s.frames, "step %d", i)
		}
		close(in.ch)
		synctest.Wait()
		require.ErrorIs(t, <-done, io.EOF)
		var got []Frame
		for fr := range out {
			got = append(got, fr)
		}
		require.Equal(t, f, got)
		require.Equal(t, DemuxStats{Frames: 6, FrameBytes: int64(len(joinFrames(f))), Skipped: 4, Tags: 1, TagBytes: 18, Resyncs: 1}, d.Stats())
	})
}

// TestDemuxFramesStay: returned frames are copies that later calls do not
// overwrite, and appending to one does not touch the next.
func TestDemuxFramesStay(t *testing.T) {
	data := readTestdata(t, "cbr128.mp3")
	want := make([]byte, len(data))
	copy(want, data)
	d := NewDemuxer(bytes.NewReader(data))
	var fs []Frame
	for {
		f, err := d.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		fs = append(fs, f)
	}
	clear(data)
	_ = append(fs[0], 1, 2, 3)
	require.Equal(t, want, joinFrames(fs))
}

// TestDemuxBadReaders: readers that misbehave give errors, not panics or
// endless loops.
func TestDemuxBadReaders(t *testing.T) {
	_, err := NewDemuxer(readerFunc(func(p []byte) (int, error) { return 0, nil })).Next()
	require.ErrorIs(t, err, io.ErrNoProgress)
	_, err = NewDemuxer(readerFunc(func(p []byte) (int, error) { return -1, nil })).Next()
	require.Error(t, err)
	_, err = NewDemuxer(readerFunc(func(p []byte) (int, error) { return len(p) + 1, nil })).Next()
	require.Error(t, err)
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// BenchmarkDemux measures demuxing cbr128.mp3 from memory.
func BenchmarkDemux(b *testing.B) {
	data := readTestdata(b, "cbr128.mp3")
	r := bytes.NewReader(data)
	frames := 0
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		r.Reset(data)
		d := NewDemuxer(r)
		for {
			if _, err := d.Next(); err != nil {
				break
			}
			frames++
		}
	}
	b.ReportMetric(float64(frames)/b.Elapsed().Seconds(), "frames/s")
}

// TestDemuxMPEG25: an MPEG-2.5 stream (11.025 kHz, by ffmpeg's libmp3lame)
// demuxes into as many frames as mpg123 decodes.
func TestDemuxMPEG25(t *testing.T) {
	tmp := t.TempDir()
	path := filepath.Join(tmp, "m25.mp3")
	runTool(t, "ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=sample_rate=11025:duration=2",
		"-c:a", "libmp3lame", "-b:a", "16k", path)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	fs, _ := demuxBytes(t, b)
	require.NotEmpty(t, fs)
	for _, f := range fs {
		require.Equal(t, Format{MPEG25, 11025, 1}, f.Format())
	}
	require.Equal(t, len(fs)*576, refSamples(t, path))
}

// junkKinds are runs of junk a live stream may carry mid-stream: random
// bytes, text, PCM, sync-word lookalikes.
func junkKinds(n int) map[string][]byte {
	rng := rand.New(rand.NewPCG(3, 4))
	random := make([]byte, n)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	text := bytes.Repeat([]byte("The quick brown fox jumps over the lazy dog. ID3 TAG APE\n"), n/57+1)[:n]
	ff := bytes.Repeat([]byte{0xFF, 0xFB, 0x90, 0x64, 0}, n/5+1)[:n]
	return map[string][]byte{"random": random, "text": text, "WAV": testWAV(2)[:n], "sync words": ff}
}

// TestDemuxLongJunkMidStream: a long run of junk after the stream has
// started is skipped, counted and logged, and the frames after it come
// out; the same junk at the start is ErrNotMP3.
func TestDemuxLongJunkMidStream(t *testing.T) {
	cbr, _ := demuxBytes(t, readTestdata(t, "cbr128.mp3"))
	for name, junk := range junkKinds(100 << 10) {
		t.Run(name, func(t *testing.T) {
			in := bytes.Join([][]byte{joinFrames(cbr[:100]), junk, joinFrames(cbr[100:])}, nil)
			var logs bytes.Buffer
			d := NewDemuxerConfig(bytes.NewReader(in), DemuxConfig{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			fs, st, err := nextAll(d)
			require.ErrorIs(t, err, io.EOF)
			// The frame just before the junk is kept (it was in sync); a
			// fake frame at the end of the junk, confirmed by the real
			// header after it, may come out and the real one be lost.
			require.InDelta(t, len(cbr), len(fs), 1)
			require.Equal(t, cbr[:100], fs[:100])
			require.Equal(t, cbr[len(cbr)-50:], fs[len(fs)-50:])
			require.Equal(t, int64(1), st.JunkRuns)
			require.GreaterOrEqual(t, st.Skipped+st.TagBytes, int64(len(junk)-MaxFrameSize))
			require.Contains(t, logs.String(), "lost sync")
			require.Contains(t, logs.String(), "back in sync")
			t.Logf("%d frames of %d; skipped %d bytes, %d tags of %d bytes; log:\n%s", len(fs), len(cbr), st.Skipped, st.Tags, st.TagBytes, logs.String())

			// At the start, the same junk means the input is not MP3.
			_, _, err = demuxAll(bytes.NewReader(append(append([]byte{}, junk...), joinFrames(cbr)...)))
			require.ErrorIs(t, err, ErrNotMP3)
		})
	}
}

// TestDemuxEndlessJunkMidStream: junk that never ends after a good start
// ends the stream with ErrNotMP3 after MaxLiveJunk bytes, having read a
// bounded amount and held a bounded buffer.
func TestDemuxEndlessJunkMidStream(t *testing.T) {
	cbr, _ := demuxBytes(t, readTestdata(t, "cbr128.mp3"))
	cr := &countingReader{r: io.MultiReader(bytes.NewReader(joinFrames(cbr[:10])), &endless{pattern: []byte("not audio ")})}
	d := NewDemuxer(cr)
	n := 0
	var err error
	for err == nil {
		_, err = d.Next()
		n++
	}
	require.ErrorIs(t, err, ErrNotMP3)
	require.Contains(t, err.Error(), "bytes since the last frame")
	require.Equal(t, 11, n)
	require.LessOrEqual(t, cr.n, int64(len(joinFrames(cbr[:10]))+MaxLiveJunk+demuxBufSize))
	require.Len(t, d.buf, demuxBufSize, "the buffer did not grow")
}

func TestID3v2Size(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		want int
	}{
		{"v2.4", id3v2Tag(4, make([]byte, 128), false), 10 + 128},
		{"v2.4 with footer", id3v2Tag(4, make([]byte, 128), true), 10 + 128 + 10},
		{"v2.3: the footer flag is not defined", []byte("ID3\x03\x00\x10\x00\x00\x01\x00"), 10 + 128},
		{"v2.2", []byte("ID3\x02\x00\x00\x00\x00\x00\x05"), 15},
		{"largest", []byte("ID3\x04\x00\x10\x7f\x7f\x7f\x7f"), 10 + (1<<28 - 1) + 10},
		{"not syncsafe", []byte("ID3\x04\x00\x00\x80\x00\x00\x00"), 0},
		{"bad version", []byte("ID3\x05\x00\x00\x00\x00\x00\x00"), 0},
		{"bad revision", []byte("ID3\x04\xff\x00\x00\x00\x00\x00"), 0},
		{"short", []byte("ID3\x04\x00"), 0},
		{"not a tag", []byte("TAG\x04\x00\x00\x00\x00\x00\x00"), 0},
		{"file", readTestdata(t, "vbr_id3_xing.mp3"), 10 + 0x4b},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, ID3v2Size(tt.b), tt.name)
	}
}
