package mux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	tmp3 "github.com/tcolgate/mp3"
)

func headerBytes(h uint32) []byte { return binary.BigEndian.AppendUint32(nil, h) }

func TestParseHeader(t *testing.T) {
	tests := []struct {
		name      string
		h         uint32
		format    Format
		bitrate   int
		size      int
		side      int
		protected bool
	}{
		{"128k 44.1k joint stereo", 0xFFFB9064, Format{MPEG1, 44100, 2}, 128, 417, 32, false},
		{"128k 44.1k padded", 0xFFFB9264, Format{MPEG1, 44100, 2}, 128, 418, 32, false},
		{"128k 44.1k with CRC", 0xFFFA9064, Format{MPEG1, 44100, 2}, 128, 417, 32, true},
		{"128k 48k mono", 0xFFFB94C4, Format{MPEG1, 48000, 1}, 128, 384, 17, false},
		{"32k 32k stereo", 0xFFFB1800, Format{MPEG1, 32000, 2}, 32, 144, 32, false},
		{"320k 32k padded: the largest frame", 0xFFFBEA00, Format{MPEG1, 32000, 2}, 320, MaxFrameSize, 32, false},
		{"320k 48k dual channel", 0xFFFBE480, Format{MPEG1, 48000, 2}, 320, 960, 32, false},
		{"MPEG-2 48k 22.05k mono (mono22k.mp3)", 0xFFF360C4, Format{MPEG2, 22050, 1}, 48, 156, 9, false},
		{"MPEG-2 64k 24k stereo", 0xFFF38400, Format{MPEG2, 24000, 2}, 64, 192, 17, false},
		{"MPEG-2 8k 16k mono with CRC", 0xFFF218C0, Format{MPEG2, 16000, 1}, 8, 36, 9, true},
		{"MPEG-2 160k 16k padded", 0xFFF3EA00, Format{MPEG2, 16000, 2}, 160, 721, 17, false},
		{"MPEG-2 8k 22.05k padded", 0xFFF31240, Format{MPEG2, 22050, 2}, 8, 27, 17, false},
		{"MPEG-2.5 80k 11.025k joint stereo", 0xFFE39064, Format{MPEG25, 11025, 2}, 80, 522, 17, false},
		{"MPEG-2.5 160k 8k padded: as large", 0xFFE3EA00, Format{MPEG25, 8000, 2}, 160, MaxFrameSize, 17, false},
		{"MPEG-2.5 8k 12k mono", 0xFFE314C0, Format{MPEG25, 12000, 1}, 8, 48, 9, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := ParseHeader(headerBytes(tt.h))
			require.NoError(t, err)
			require.Equal(t, Header(tt.h), h)
			require.Equal(t, tt.format, h.Format())
			require.Equal(t, tt.format.Version, h.Version())
			require.Equal(t, tt.format.SampleRate, h.SampleRate())
			require.Equal(t, tt.format.Channels, h.Channels())
			require.Equal(t, tt.bitrate, h.Bitrate())
			require.Equal(t, tt.size, h.Size())
			require.Equal(t, tt.side, h.SideInfoSize())
			require.Equal(t, tt.protected, h.Protected())
			require.Equal(t, tt.h&0x200 != 0, h.Padded())
			off := 4
			if tt.protected {
				off = 6
			}
			require.Equal(t, tt.size-off-tt.side, h.MainDataSize())
			require.Equal(t, tt.format.SamplesPerFrame(), h.Samples())
		})
	}
}

func TestParseHeaderErrors(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrShortFrame},
		{"three bytes", []byte{0xFF, 0xFB, 0x90}, ErrShortFrame},
		{"no sync", headerBytes(0x7FFB9064), ErrNoSync},
		{"half sync", headerBytes(0xFFDB9064), ErrNoSync},
		{"reserved version", headerBytes(0xFFEB9064), ErrNoSync},
		{"Layer I", headerBytes(0xFFFF9064), ErrNoSync},
		{"Layer II", headerBytes(0xFFFD9064), ErrNoSync},
		{"reserved layer", headerBytes(0xFFF99064), ErrNoSync},
		{"bad bitrate", headerBytes(0xFFFBF064), ErrNoSync},
		{"reserved sample rate", headerBytes(0xFFFB9C64), ErrNoSync},
		{"reserved emphasis", headerBytes(0xFFFB9066), ErrNoSync},
		{"free format", headerBytes(0xFFFB0064), ErrUnsupported},
		{"MPEG-2 free format", headerBytes(0xFFF30064), ErrUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseHeader(tt.b)
			require.ErrorIs(t, err, tt.want)
		})
	}
}

// TestParseHeaderEveryHeader tries all 2^21 headers that start with a
// sync word. Every accepted one describes a frame that fits MaxFrameSize
// and holds its side information; every rejected one that is real MPEG
// audio is recognised by the Demuxer as unsupported.
func TestParseHeaderEveryHeader(t *testing.T) {
	valid := 0
	var b [4]byte
	for x := uint32(0); x < 1<<21; x++ {
		h := 0xFFE00000 | x
		binary.BigEndian.PutUint32(b[:], h)
		ph, err := ParseHeader(b[:])
		_, key := otherFrame(b[:])
		if err != nil {
			want := ErrNoSync // Layers I and II, or not MPEG audio
			if key != 0 && (h>>17)&3 == 1 {
				want = ErrUnsupported // Layer III: free format
			}
			if !errors.Is(err, want) {
				t.Fatalf("%#x: got %v, want %v", h, err, want)
			}
			continue
		}
		valid++
		n, d := ph.Size(), ph.Format().FrameDuration()
		switch {
		case key != 0:
			t.Fatalf("%#x: both supported and not", h)
		case n > MaxFrameSize || n < ph.sideInfoOffset()+ph.SideInfoSize():
			t.Fatalf("%#x: frame of %d bytes", h, n)
		case d < 24*time.Millisecond || d > 72*time.Millisecond:
			t.Fatalf("%#x: frame of %v", h, d)
		}
	}
	// 3 versions, 14 bitrates, 3 rates, 2^3 (CRC, pad, private),
	// 2^6 (mode, mode extension, copyright, original), 3 emphases.
	require.Equal(t, 3*14*3*8*64*3, valid)
}

// TestHeaderMatchesTcolgate compares sizes, samples, side information and
// the header fields with github.com/tcolgate/mp3 for every combination of
// the fields that matter, including the unsupported Layer II frames whose
// size the Demuxer needs to skip them.
func TestHeaderMatchesTcolgate(t *testing.T) {
	checked := 0
	for ver := range uint32(4) {
		for layer := uint32(1); layer <= 2; layer++ { // III, II
			for bi := uint32(1); bi < 15; bi++ {
				for sri := range uint32(3) {
					for pad := range uint32(2) {
						for crc := range uint32(2) {
							for mode := range uint32(4) {
								if ver == 1 {
									continue
								}
								h := 0xFFE00000 | ver<<19 | layer<<17 | (1-crc)<<16 | bi<<12 | sri<<10 | pad<<9 | mode<<6
								compareTcolgate(t, h)
								checked++
							}
						}
					}
				}
			}
		}
	}
	require.Equal(t, 3*2*14*3*2*2*4, checked)
}

func compareTcolgate(t *testing.T, h uint32) {
	t.Helper()
	in := append(headerBytes(h), make([]byte, 3000)...)
	var f tmp3.Frame
	skipped := 0
	require.NoError(t, tmp3.NewDecoder(bytes.NewReader(in)).Decode(&f, &skipped), "%#x", h)
	require.Zero(t, skipped)
	th := f.Header()

	ph, err := ParseHeader(in)
	if err != nil {
		size, key := otherFrame(in)
		require.NotZero(t, key, "%#x", h)
		require.Equal(t, f.Size(), size, "%#x: size", h)
		return
	}
	require.Equal(t, f.Size(), ph.Size(), "%#x: size", h)
	require.Equal(t, f.Samples(), ph.Samples(), "%#x: samples", h)
	side, err := f.SideInfoLength()
	require.NoError(t, err)
	require.Equal(t, side, ph.SideInfoSize(), "%#x: side info", h)
	require.Equal(t, th.BitRate(), tmp3.FrameBitRate(ph.Bitrate()*1000), "%#x: bitrate", h)
	require.Equal(t, th.SampleRate(), tmp3.FrameSampleRate(ph.SampleRate()), "%#x: sample rate", h)
	require.Equal(t, th.Protection(), ph.Protected(), "%#x: CRC", h)
	require.Equal(t, th.Pad(), ph.Padded(), "%#x: padding", h)
	require.Equal(t, th.ChannelMode() == tmp3.SingleChannel, ph.Channels() == 1, "%#x: channels", h)
}

func TestFormat(t *testing.T) {
	f := Format{MPEG1, 44100, 2}
	require.Equal(t, 1152, f.SamplesPerFrame())
	require.Equal(t, 26122448*time.Nanosecond, f.FrameDuration())
	require.Equal(t, time.Second, f.Duration(44100))
	require.Equal(t, "MPEG-1 44100 Hz 2ch", f.String())
	g := Format{MPEG2, 22050, 1}
	require.Equal(t, 576, g.SamplesPerFrame())
	require.Equal(t, f.FrameDuration(), g.FrameDuration())
	require.Equal(t, "MPEG-2 22050 Hz 1ch", g.String())
	require.Zero(t, Format{}.FrameDuration())
	require.Zero(t, Format{}.Duration(100))
	require.Equal(t, "MPEG-2.5", MPEG25.String())
	require.Equal(t, "Version(9)", Version(9).String())
}
