package mux

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	gomp3 "github.com/hajimehoshi/go-mp3"
	"github.com/stretchr/testify/require"
)

func TestParseFrame(t *testing.T) {
	cbr := readTestdata(t, "cbr128.mp3")
	f, err := ParseFrame(cbr)
	require.NoError(t, err)
	require.Len(t, f, 417)
	require.Equal(t, Frame(cbr[:417]), f)
	require.Same(t, &cbr[0], &f[0], "a sub-slice, not a copy")

	g, err := ParseFrame(cbr[:417])
	require.NoError(t, err)
	require.Equal(t, f, g)

	for _, n := range []int{0, 3, 4, 5, 36, 416} {
		_, err := ParseFrame(cbr[:n])
		require.ErrorIs(t, err, ErrShortFrame, "%d bytes", n)
	}
	_, err = ParseFrame(cbr[1:])
	require.ErrorIs(t, err, ErrNoSync)
	_, err = ParseFrame(append(headerBytes(0xFFFB0064), make([]byte, 1000)...))
	require.ErrorIs(t, err, ErrUnsupported, "free format")

	require.Equal(t, Format{MPEG1, 44100, 2}, f.Format())
	require.Equal(t, Header(0xFFFB9064), f.Header())
	require.Equal(t, 1152, f.Samples())
	require.Equal(t, 417-4-32, f.MainDataSize())
}

// withSide makes a frame with header h whose side information (after the
// CRC, if any) starts with side.
func withSide(t *testing.T, h uint32, side ...byte) Frame {
	t.Helper()
	hd, err := ParseHeader(headerBytes(h))
	require.NoError(t, err)
	b := make([]byte, hd.Size())
	copy(b, headerBytes(h))
	copy(b[hd.sideInfoOffset():], side)
	f, err := ParseFrame(b)
	require.NoError(t, err)
	return f
}

func TestMainDataBegin(t *testing.T) {
	tests := []struct {
		name string
		f    Frame
		want int
	}{
		{"MPEG-1: 9 bits", withSide(t, 0xFFFB9064, 0xAB, 0x80), 0xAB<<1 | 1},
		{"MPEG-1: the low bit only", withSide(t, 0xFFFB9064, 0x00, 0xFF), 1},
		{"MPEG-1: maximum", withSide(t, 0xFFFB9064, 0xFF, 0xFF), 511},
		{"MPEG-1 with CRC", withSide(t, 0xFFFA9064, 0x80, 0x00), 256},
		{"MPEG-2: 8 bits", withSide(t, 0xFFF360C4, 0xC8, 0xFF), 200},
		{"MPEG-2 with CRC", withSide(t, 0xFFF260C4, 0xFF), 255},
		{"zero", withSide(t, 0xFFF360C4), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, tt.f.MainDataBegin())
		})
	}
}

// TestMainDataBeginReservoir: in every test file each frame's bit
// reservoir pointer reaches back no further than the main data the frames
// before it carried (the first frame's is 0), and the encoders did use the
// whole 9 (MPEG-1) or 8 (MPEG-2) bits.
func TestMainDataBeginReservoir(t *testing.T) {
	for _, name := range []string{"cbr128.mp3", "vbr_id3_xing.mp3", "mono22k.mp3", "speech.mp3"} {
		t.Run(name, func(t *testing.T) {
			fs, _ := demuxBytes(t, readTestdata(t, name))
			reservoir, most := 0, 0
			for i, f := range fs {
				require.LessOrEqual(t, f.MainDataBegin(), reservoir, "frame %d", i)
				most = max(most, f.MainDataBegin())
				reservoir += f.MainDataSize()
			}
			if fs[0].Header().Version() == MPEG1 {
				require.Equal(t, 511, most)
			} else {
				require.Equal(t, 255, most)
			}
		})
	}
}

func TestIsInfo(t *testing.T) {
	tag := func(h uint32, off int, s string) Frame {
		hd, err := ParseHeader(headerBytes(h))
		require.NoError(t, err)
		b := make([]byte, hd.Size())
		copy(b, headerBytes(h))
		copy(b[off:], s)
		return Frame(b)
	}
	tests := []struct {
		name string
		f    Frame
		want bool
	}{
		{"Xing, MPEG-1 stereo", tag(0xFFFB9064, 36, "Xing"), true},
		{"Info, MPEG-1 stereo", tag(0xFFFB9064, 36, "Info"), true},
		{"Xing, MPEG-1 mono", tag(0xFFFB90C4, 21, "Xing"), true},
		{"Xing, MPEG-2 mono", tag(0xFFF360C4, 13, "Xing"), true},
		{"Info, MPEG-2 stereo", tag(0xFFF36044, 21, "Info"), true},
		{"Xing, MPEG-1 stereo with CRC", tag(0xFFFA9064, 38, "Xing"), true},
		{"Info, MPEG-1 stereo with CRC, where lame -p puts it", tag(0xFFFA9064, 36, "Info"), true},
		{"VBRI", tag(0xFFFB9064, 36, "VBRI"), true},
		{"VBRI, mono", tag(0xFFFB90C4, 36, "VBRI"), true},
		{"Xing at the mono offset of a stereo frame", tag(0xFFFB9064, 21, "Xing"), false},
		{"Xing at the stereo offset of a mono frame", tag(0xFFFB90C4, 36, "Xing"), false},
		{"lower case", tag(0xFFFB9064, 36, "xing"), false},
		{"silence", Silent(Format{MPEG1, 44100, 2}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, tt.f.IsInfo())
		})
	}

	// The real thing: the first frames of the VBR files, which mpg123
	// does not count as audio either (see TestDemuxTestdata).
	vbr := readTestdata(t, "vbr_id3_xing.mp3")
	id3 := 10 + (int(vbr[6])<<21 | int(vbr[7])<<14 | int(vbr[8])<<7 | int(vbr[9]))
	f, err := ParseFrame(vbr[id3:])
	require.NoError(t, err)
	require.True(t, f.IsInfo())
	f, err = ParseFrame(readTestdata(t, "speech.mp3"))
	require.NoError(t, err)
	require.True(t, f.IsInfo())
	f, err = ParseFrame(readTestdata(t, "matrix/8000_d_cbr64.mp3")) // lame -p
	require.NoError(t, err)
	require.True(t, f.Header().Protected())
	require.True(t, f.IsInfo())
	fs, _ := demuxBytes(t, readTestdata(t, "cbr128.mp3"))
	for i, f := range fs {
		require.False(t, f.IsInfo(), "frame %d", i)
	}
}

// TestSilent: Silent frames are valid, need no bit reservoir, and decode
// (with go-mp3, which lacks MPEG-2.5, and mpg123 when installed) to exact
// silence of exactly their duration.
func TestSilent(t *testing.T) {
	formats := []Format{
		{MPEG1, 44100, 2}, {MPEG1, 44100, 1}, {MPEG1, 48000, 2}, {MPEG1, 32000, 2},
		{MPEG2, 22050, 1}, {MPEG2, 22050, 2}, {MPEG2, 24000, 2}, {MPEG2, 16000, 1},
		{MPEG25, 11025, 2}, {MPEG25, 12000, 1}, {MPEG25, 8000, 2},
	}
	const n = 40
	for _, format := range formats {
		t.Run(format.String(), func(t *testing.T) {
			s := Silent(format)
			f, err := ParseFrame(s)
			require.NoError(t, err)
			require.Len(t, f, len(s))
			require.Equal(t, format, s.Format())
			require.Zero(t, s.MainDataBegin())
			require.False(t, s.IsInfo())
			require.Equal(t, 1, int(s.Header()>>12)&0xf, "lowest bitrate")

			data := bytes.Repeat(s, n)
			path := filepath.Join(t.TempDir(), "silent.mp3")
			require.NoError(t, os.WriteFile(path, data, 0o644))
			if format.Version == MPEG25 {
				require.Equal(t, n*format.SamplesPerFrame(), refSamples(t, path), "mpg123")
				return
			}
			dec, err := gomp3.NewDecoder(bytes.NewReader(data))
			require.NoError(t, err)
			require.Equal(t, format.SampleRate, dec.SampleRate())
			pcm, err := io.ReadAll(dec)
			require.NoError(t, err)
			require.Len(t, pcm, n*format.SamplesPerFrame()*4, "go-mp3 gives 16-bit stereo")
			require.Equal(t, make([]byte, len(pcm)), pcm, "not silent")
			require.InDelta(t, n*format.FrameDuration(), format.Duration(int64(len(pcm)/4)), n, "duration")

			require.Equal(t, n*format.SamplesPerFrame(), refSamples(t, path), "mpg123")
		})
	}
}
