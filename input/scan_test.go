package input

import (
	"bytes"
	"io"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/mux"
)

// scanAll splits data with a scanner.
func scanAll(t testing.TB, data []byte) (out []byte, frames int, kinds []segKind) {
	sc := newScanner(bytes.NewReader(data))
	var buf []byte
	for i := 0; ; i++ {
		require.LessOrEqual(t, i, len(data), "the scanner does not advance")
		seg, kind, _, err := sc.next(buf)
		buf = seg
		if err == io.EOF {
			require.Empty(t, seg)
			return out, frames, kinds
		}
		require.NoError(t, err)
		require.NotEmpty(t, seg)
		out = append(out, seg...)
		kinds = append(kinds, kind)
		if kind == segFrame {
			frames++
			_, err := mux.ParseFrame(seg)
			require.NoError(t, err)
		}
	}
}

func TestScannerFrames(t *testing.T) {
	tests := []struct {
		name   string
		frames int
	}{
		{"cbr128.mp3", 308},
		{"vbr_id3_xing.mp3", 309}, // the Xing frame too
		{"mono22k.mp3", 232},
		{"speech.mp3", 288}, // ffprobe counts 286: it trims lame's encoder delay
		{"junk.mp3", 308},
		{"truncated.mp3", 205},
	}
	for _, tt := range tests {
		data := readTestdata(t, tt.name)
		out, frames, kinds := scanAll(t, data)
		require.Equal(t, data, out, tt.name)
		require.Equal(t, tt.frames, frames, tt.name)
		if tt.name == "vbr_id3_xing.mp3" {
			require.Equal(t, segTag, kinds[0])
			require.Equal(t, segFrame, kinds[1])
		}
	}
}

// FuzzScan checks that the scanner passes any bytes through unchanged and
// always advances.
func FuzzScan(f *testing.F) {
	mp3 := readTestdata(f, "cbr128.mp3")
	f.Add(mp3[:3000])
	f.Add(append([]byte("ID3\x04\x00\x00\x00\x00\x00\x05abcde"), mp3[:1000]...))
	f.Add([]byte("ID3\x04\x00\x10\x7f\x7f\x7f\x7f"))
	f.Add([]byte{0xff, 0xfb, 0x90, 0x64})
	f.Fuzz(func(t *testing.T, data []byte) {
		out, _, _ := scanAll(t, data)
		require.True(t, bytes.Equal(data, out))
	})
}
