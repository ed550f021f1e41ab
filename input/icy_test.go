package input

import (
	"bytes"
	"fmt"
	"io"
	"testing"
	"testing/iotest"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/mux"
)

// icyEncode interleaves ICY metadata into audio as a server does: after
// every metaint bytes of audio, the block meta(i) for the i-th block
// (padded to 16 bytes; nil gives an empty block, length byte 0).
func icyEncode(audio []byte, metaint int, meta func(i int) []byte) []byte {
	var out []byte
	for i := 0; ; i++ {
		n := min(metaint, len(audio))
		out = append(out, audio[:n]...)
		audio = audio[n:]
		if n < metaint {
			return out
		}
		m := meta(i)
		m = m[:min(len(m), maxMetaBlock)]
		blocks := (len(m) + 15) / 16
		out = append(out, byte(blocks))
		out = append(out, m...)
		out = append(out, make([]byte, blocks*16-len(m))...)
	}
}

func TestParseStreamTitle(t *testing.T) {
	tests := []struct {
		meta  string
		title string
		ok    bool
	}{
		{"StreamTitle='Artist - Song';StreamUrl='';\x00\x00\x00", "Artist - Song", true},
		{"StreamTitle='Artist - Song';", "Artist - Song", true},
		{"StreamTitle='';StreamUrl='http://x/';", "", true},
		{"StreamTitle='It's';", "It's", true},
		{"StreamTitle='It's';StreamUrl='';", "It's", true},
		{"StreamTitle='Rock';n'Roll';StreamUrl='';", "Rock';n'Roll", true},
		{"StreamTitle='a;b';", "a;b", true},
		{"StreamTitle='Song';  \x00", "Song", true},
		{"StreamTitle='No end", "No end", true},
		{"StreamTitle='Closed'", "Closed", true},
		{"StreamTitle=Bare words;StreamUrl='';", "Bare words", true},
		{"StreamTitle=\"Double\";", "Double", true},
		{"StreamUrl='http://x/';StreamTitle='Second';", "Second", true},
		{"StreamTitle='Caf\xe9 M\xfcller';", "Café Müller", true}, // ISO-8859-1
		{"StreamTitle='Café';", "Café", true},
		{"StreamTitle='tab\there\r\n';", "tab here", true},
		{"StreamTitle='x';\x00StreamTitle='hidden';", "x", true},
		{"StreamUrl='';", "", false},
		{"garbage \xff\xfe\x00", "", false},
		{"", "", false},
		{"\x00StreamTitle='after NUL';", "", false},
		{"StreamTitle=", "", true},
		{"StreamTitle='", "", true},
	}
	for _, tt := range tests {
		title, ok := parseStreamTitle([]byte(tt.meta))
		require.Equal(t, tt.ok, ok, "%q", tt.meta)
		require.Equal(t, tt.title, title, "%q", tt.meta)
	}
	long := "StreamTitle='" + string(bytes.Repeat([]byte("é"), 2000)) + "';"
	title, ok := parseStreamTitle([]byte(long))
	require.True(t, ok)
	require.LessOrEqual(t, len(title), mux.MaxTitleLen)
	require.True(t, utf8.ValidString(title))
}

func TestICYReader(t *testing.T) {
	audio := make([]byte, 10000)
	for i := range audio {
		audio[i] = byte(i * 7)
	}
	metas := func(i int) []byte {
		switch i % 4 {
		case 0:
			return []byte(fmt.Sprintf("StreamTitle='Song %d';StreamUrl='';", i))
		case 1:
			return nil // empty block: no change
		case 2:
			return bytes.Repeat([]byte{'x'}, maxMetaBlock) // the largest block
		}
		return []byte("StreamTitle='It's';")
	}
	for _, metaint := range []int{1, 16, 1000, 4096, 9999, 10000, 20000} {
		wire := icyEncode(audio, metaint, metas)
		readers := map[string]func(io.Reader) io.Reader{
			"whole":   func(r io.Reader) io.Reader { return r },
			"onebyte": iotest.OneByteReader,
			"half":    iotest.HalfReader,
		}
		for name, wrap := range readers {
			t.Run(fmt.Sprintf("%d/%s", metaint, name), func(t *testing.T) {
				var got [][]byte
				ir := newICYReader(wrap(bytes.NewReader(wire)), metaint, func(m []byte) {
					got = append(got, append([]byte(nil), m...))
				})
				out, err := io.ReadAll(ir)
				require.NoError(t, err)
				require.Equal(t, audio, out)
				var want [][]byte
				for i := 0; i < len(audio)/metaint; i++ {
					if m := metas(i); len(m) > 0 {
						want = append(want, append(m, make([]byte, (16-len(m)%16)%16)...))
					}
				}
				require.Equal(t, want, got)
			})
		}
	}
}

func TestICYReaderTruncated(t *testing.T) {
	audio := bytes.Repeat([]byte{1}, 100)
	wire := icyEncode(audio, 50, func(int) []byte { return []byte("StreamTitle='x';") })
	// 50 audio, [1][16 meta], 50 audio, [1][16 meta]
	tests := []struct {
		cut  int
		want error
	}{
		{50, io.EOF},              // before a length byte: a clean end
		{51, io.ErrUnexpectedEOF}, // after it
		{60, io.ErrUnexpectedEOF}, // inside the metadata
		{67, io.EOF},              // after the block
		{80, io.EOF},              // inside audio
		{len(wire), io.EOF},       // at the end
		{len(wire) - 1, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		ir := newICYReader(bytes.NewReader(wire[:tt.cut]), 50, nil)
		out, err := io.ReadAll(ir)
		if tt.want == io.EOF {
			require.NoError(t, err, "cut %d", tt.cut)
		} else {
			require.ErrorIs(t, err, tt.want, "cut %d", tt.cut)
		}
		require.Equal(t, audio[:len(out)], out, "cut %d", tt.cut)
	}
	// metaint 0: no metadata, bytes pass through.
	out, err := io.ReadAll(newICYReader(bytes.NewReader(wire), 0, nil))
	require.NoError(t, err)
	require.Equal(t, wire, out)
}

// FuzzICY checks the metadata-stripping reader and the title parser: any
// bytes are safe, and for a well-formed stream the output is exactly the
// audio (never a byte of a metadata block) and every block is reported.
func FuzzICY(f *testing.F) {
	f.Add([]byte("some audio bytes here"), []byte("StreamTitle='It's';"), uint16(5), uint8(3))
	f.Add(bytes.Repeat([]byte{0xff, 0xfb}, 300), []byte("StreamTitle='Rock';n'Roll';StreamUrl='';"), uint16(16), uint8(1))
	f.Add([]byte{}, []byte{}, uint16(0), uint8(0))
	f.Add([]byte("x"), bytes.Repeat([]byte{'\''}, 5000), uint16(1), uint8(255))
	f.Fuzz(func(t *testing.T, audio, meta []byte, metaint16 uint16, chunk uint8) {
		// Any bytes as a stream, any metaint: no panic, no more out than in.
		ir := newICYReader(bytes.NewReader(audio), int(metaint16), func(m []byte) {
			title, _ := parseStreamTitle(m)
			require.True(t, utf8.ValidString(title))
			require.LessOrEqual(t, len(title), mux.MaxTitleLen)
		})
		out, _ := io.ReadAll(ir)
		require.LessOrEqual(t, len(out), len(audio))
		title, _ := parseStreamTitle(meta)
		require.True(t, utf8.ValidString(title))
		require.LessOrEqual(t, len(title), mux.MaxTitleLen)

		// A well-formed stream: blocks alternate between meta and empty.
		metaint := int(metaint16)%2000 + 1
		blocks := func(i int) []byte {
			if i%2 == 0 {
				return meta
			}
			return nil
		}
		wire := icyEncode(audio, metaint, blocks)
		var got [][]byte
		r := io.Reader(bytes.NewReader(wire))
		if chunk > 0 {
			r = &chunkReader{r: r, n: int(chunk)}
		}
		ir = newICYReader(r, metaint, func(m []byte) { got = append(got, append([]byte(nil), m...)) })
		out, err := io.ReadAll(ir)
		require.NoError(t, err)
		require.Equal(t, audio, out)
		m := meta[:min(len(meta), maxMetaBlock)]
		padded := append(append([]byte(nil), m...), make([]byte, (16-len(m)%16)%16)...)
		for i, g := range got {
			require.Equal(t, padded, g, "block %d", i)
		}
		if len(m) > 0 {
			require.Len(t, got, (len(audio)/metaint+1)/2)
		} else {
			require.Empty(t, got)
		}
	})
}

// chunkReader returns at most n bytes per Read.
type chunkReader struct {
	r io.Reader
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	return c.r.Read(p[:min(len(p), c.n)])
}
