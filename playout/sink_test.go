package playout

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSinkContract runs every Sink through what the interface promises:
// PCM is taken as given and not kept, bad PCM is refused with ErrFormat,
// Close is idempotent.
func TestSinkContract(t *testing.T) {
	sinks := map[string]func(t *testing.T) (Sink, func() []byte){
		"MemorySink": func(t *testing.T) (Sink, func() []byte) {
			m := &MemorySink{}
			return m, m.PCM
		},
		"WAVSink": func(t *testing.T) (Sink, func() []byte) {
			path := filepath.Join(t.TempDir(), "out.wav")
			w, err := CreateWAV(path)
			require.NoError(t, err)
			return w, func() []byte {
				b, err := os.ReadFile(path)
				require.NoError(t, err)
				return b[wavHeaderSize:]
			}
		},
		"Discard": func(t *testing.T) (Sink, func() []byte) { return &Discard{}, nil },
		"SinkFunc": func(t *testing.T) (Sink, func() []byte) {
			var got []byte
			return SinkFunc(func(pcm []byte, _ int) error {
				got = append(got, pcm...)
				return nil
			}), func() []byte { return got }
		},
	}
	for name, mk := range sinks {
		t.Run(name, func(t *testing.T) {
			s, read := mk(t)
			buf := []byte{1, 2, 3, 4, 5, 6, 7, 8}
			require.NoError(t, s.WritePCM(buf, 44100))
			copy(buf, []byte{9, 9, 9, 9, 9, 9, 9, 9}) // the sink must not keep buf
			require.NoError(t, s.WritePCM(buf[:4], 44100))
			if name != "SinkFunc" {
				require.ErrorIs(t, s.WritePCM([]byte{1, 2, 3}, 44100), ErrFormat)
				require.ErrorIs(t, s.WritePCM(buf, 0), ErrFormat)
			}
			require.NoError(t, s.Close())
			require.NoError(t, s.Close())
			if read != nil {
				require.Equal(t, []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9}, read())
			}
		})
	}
}

// wavFile is the parsed header of a canonical 44-byte-header WAV file.
type wavFile struct {
	riffSize, fmtSize         uint32
	format, channels          uint16
	rate, byteRate            uint32
	align, bits               uint16
	dataSize                  uint32
	riff, wave, fmtID, dataID string
	data                      []byte
}

func parseWAV(t *testing.T, b []byte) wavFile {
	t.Helper()
	require.GreaterOrEqual(t, len(b), wavHeaderSize)
	le := binary.LittleEndian
	return wavFile{
		riff: string(b[0:4]), riffSize: le.Uint32(b[4:]), wave: string(b[8:12]),
		fmtID: string(b[12:16]), fmtSize: le.Uint32(b[16:]), format: le.Uint16(b[20:]),
		channels: le.Uint16(b[22:]), rate: le.Uint32(b[24:]), byteRate: le.Uint32(b[28:]),
		align: le.Uint16(b[32:]), bits: le.Uint16(b[34:]), dataID: string(b[36:40]),
		dataSize: le.Uint32(b[40:]), data: b[wavHeaderSize:],
	}
}

func TestWAVSink(t *testing.T) {
	frames := testFrames(t, "mono22k.mp3")[:50]
	pcm := decodeAll(t, frames)
	path := filepath.Join(t.TempDir(), "out.wav")
	w, err := CreateWAV(path)
	require.NoError(t, err)
	n := frames[0].Samples() * 4
	for i := 0; i < len(pcm); i += n {
		require.NoError(t, w.WritePCM(pcm[i:i+n], 22050))
	}
	// One file, one rate: a change is refused and nothing is written.
	require.ErrorIs(t, w.WritePCM(pcm[:n], 44100), ErrFormat)
	require.NoError(t, w.Close())
	require.ErrorIs(t, w.WritePCM(pcm[:n], 22050), ErrClosed)

	b, err := os.ReadFile(path)
	require.NoError(t, err)
	h := parseWAV(t, b)
	require.Equal(t, wavFile{
		riff: "RIFF", riffSize: uint32(36 + len(pcm)), wave: "WAVE",
		fmtID: "fmt ", fmtSize: 16, format: 1, channels: 2, rate: 22050, byteRate: 22050 * 4,
		align: 4, bits: 16, dataID: "data", dataSize: uint32(len(pcm)), data: pcm,
	}, h)

	// An independent reader agrees, if one is installed.
	if _, err := exec.LookPath("sox"); err == nil {
		out, err := exec.Command("sox", "--i", path).CombinedOutput()
		require.NoError(t, err, "%s", out)
		require.Contains(t, string(out), "Sample Rate    : 22050")
		require.Contains(t, string(out), "Channels       : 2")
		require.Contains(t, string(out), "Precision      : 16-bit")
		require.Contains(t, string(out), "= 28800 samples")
	}
}

// memFile is an in-memory io.WriteSeeker.
type memFile struct {
	b   []byte
	off int64
}

func (f *memFile) Write(p []byte) (int, error) {
	if need := int(f.off) + len(p); need > len(f.b) {
		f.b = append(f.b, make([]byte, need-len(f.b))...)
	}
	copy(f.b[f.off:], p)
	f.off += int64(len(p))
	return len(p), nil
}

func (f *memFile) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += f.off
	case io.SeekEnd:
		off += int64(len(f.b))
	}
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	f.off = off
	return off, nil
}

func TestWAVSinkWriteSeeker(t *testing.T) {
	// A WAV written after a prefix the caller wrote: the header sizes are
	// fixed up where the header is.
	f := &memFile{}
	_, _ = f.Write([]byte("prefix"))
	w := NewWAVSink(f)
	require.NoError(t, w.WritePCM([]byte{1, 0, 2, 0}, 48000))
	require.NoError(t, w.Close())
	require.Equal(t, "prefix", string(f.b[:6]))
	h := parseWAV(t, f.b[6:])
	require.EqualValues(t, 4, h.dataSize)
	require.EqualValues(t, 40, h.riffSize)
	require.EqualValues(t, 48000, h.rate)
	require.EqualValues(t, 10+wavHeaderSize, f.off, "Close leaves w at the end")

	// No audio at all: a valid empty file.
	f = &memFile{}
	require.NoError(t, NewWAVSink(f).Close())
	h = parseWAV(t, f.b)
	require.Equal(t, "RIFF", h.riff)
	require.Zero(t, h.dataSize)
	require.EqualValues(t, 36, h.riffSize)
	require.Len(t, f.b, wavHeaderSize)
}

func TestMemorySinkAndDiscard(t *testing.T) {
	m := &MemorySink{}
	require.NoError(t, m.WritePCM(make([]byte, 8), 44100))
	require.NoError(t, m.WritePCM(make([]byte, 4), 22050))
	w := m.Writes()
	require.Len(t, w, 2)
	require.Equal(t, Write{At: w[1].At, Offset: 8, Bytes: 4, SampleRate: 22050}, w[1])
	require.NoError(t, m.Close())
	require.ErrorIs(t, m.WritePCM(make([]byte, 4), 44100), ErrClosed)
	require.Len(t, m.PCM(), 12)

	var d Discard
	require.NoError(t, d.WritePCM(make([]byte, 44100*4), 44100))
	require.NoError(t, d.WritePCM(make([]byte, 22050*2), 22050))
	require.EqualValues(t, 44100*4+22050*2, d.Bytes())
	require.Equal(t, 1500*time.Millisecond, d.Duration())
}
