package input

import (
	"bytes"
	"encoding/binary"
	"testing"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/mux"
)

// id3Tag builds an ID3v2 tag of version ver from frames already encoded.
func id3Tag(ver, flags byte, body []byte) []byte {
	n := len(body)
	return append([]byte{'I', 'D', '3', ver, 0, flags, byte(n >> 21 & 0x7f), byte(n >> 14 & 0x7f), byte(n >> 7 & 0x7f), byte(n & 0x7f)}, body...)
}

// id3Frame encodes one frame for version ver.
func id3Frame(ver byte, id string, flags uint16, data []byte) []byte {
	n := len(data)
	switch ver {
	case 2:
		return append([]byte{id[0], id[1], id[2], byte(n >> 16), byte(n >> 8), byte(n)}, data...)
	case 3:
		h := []byte(id)
		h = binary.BigEndian.AppendUint32(h, uint32(n))
		h = binary.BigEndian.AppendUint16(h, flags)
		return append(h, data...)
	}
	h := append([]byte(id), byte(n>>21&0x7f), byte(n>>14&0x7f), byte(n>>7&0x7f), byte(n&0x7f))
	h = binary.BigEndian.AppendUint16(h, flags)
	return append(h, data...)
}

func utf16le(s string, bom bool) []byte {
	var b []byte
	if bom {
		b = []byte{0xff, 0xfe}
	}
	for _, u := range utf16.Encode([]rune(s)) {
		b = binary.LittleEndian.AppendUint16(b, u)
	}
	return b
}

func TestID3v2Title(t *testing.T) {
	other := id3Frame(4, "TPE1", 0, []byte("\x03Artist"))
	tests := []struct {
		name string
		tag  []byte
		want string
	}{
		{"v2.4 utf-8", id3Tag(4, 0, append(other, id3Frame(4, "TIT2", 0, []byte("\x03Título\x00"))...)), "Título"},
		{"v2.4 two strings", id3Tag(4, 0, id3Frame(4, "TIT2", 0, []byte("\x03One\x00Two"))), "One"},
		{"v2.3 latin-1", id3Tag(3, 0, id3Frame(3, "TIT2", 0, []byte("\x00Caf\xe9"))), "Café"},
		{"v2.3 utf-16 bom", id3Tag(3, 0, id3Frame(3, "TIT2", 0, append([]byte{1}, utf16le("Ünïcode ♪", true)...))), "Ünïcode ♪"},
		{"v2.4 utf-16be", id3Tag(4, 0, id3Frame(4, "TIT2", 0, []byte{2, 0, 'H', 0, 'i', 0, 0})), "Hi"},
		{"v2.2", id3Tag(2, 0, id3Frame(2, "TT2", 0, []byte("\x00Old"))), "Old"},
		{"v2.3 extended header", id3Tag(3, 0x40, append([]byte{0, 0, 0, 6, 0, 0, 0, 0, 0, 0}, id3Frame(3, "TIT2", 0, []byte("\x00Ext"))...)), "Ext"},
		{"v2.4 extended header", id3Tag(4, 0x40, append([]byte{0, 0, 0, 6, 1, 0}, id3Frame(4, "TIT2", 0, []byte("\x03Ext"))...)), "Ext"},
		{"v2.4 data length indicator", id3Tag(4, 0, id3Frame(4, "TIT2", 1, []byte("\x00\x00\x00\x04\x03DLI"))), "DLI"},
		{"v2.3 unsynchronised", id3Tag(3, 0x80, bytes.ReplaceAll(id3Frame(3, "TIT2", 0, []byte("\x00\xffx")), []byte{0xff}, []byte{0xff, 0})), "ÿx"},
		{"v2.3 compressed", id3Tag(3, 0, id3Frame(3, "TIT2", 0x0080, []byte("\x00\x00\x00\x05zzzz"))), ""},
		{"no title", id3Tag(4, 0, other), ""},
		{"padding", id3Tag(4, 0, append(other, make([]byte, 100)...)), ""},
		{"frame overruns the tag", id3Tag(4, 0, id3Frame(4, "TIT2", 0, []byte("\x03abc"))[:12]), ""},
		{"cut short", id3Tag(4, 0, append(other, id3Frame(4, "TIT2", 0, []byte("\x03abc"))...))[:20], ""},
		{"not a tag", []byte("TAG and more bytes"), ""},
		{"bad version", append([]byte("ID3\x09\x00\x00\x00\x00\x00\x10"), make([]byte, 16)...), ""},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, id3v2Title(tt.tag), tt.name)
	}
	// The real file written by ffmpeg.
	require.Equal(t, "VBR test", id3v2Title(readTestdata(t, "vbr_id3_xing.mp3")))
}

func TestID3v1Title(t *testing.T) {
	data := readTestdata(t, "speech.mp3")
	require.Equal(t, "Speech test", id3v1Title(data[len(data)-128:]))
	require.Empty(t, id3v1Title(data[:128]))
	require.Empty(t, id3v1Title([]byte("TAG")))
}

func FuzzID3v2Title(f *testing.F) {
	f.Add(id3Tag(4, 0, id3Frame(4, "TIT2", 0, []byte("\x03title"))))
	f.Add(id3Tag(3, 0xc0, append([]byte{0, 0, 0, 6, 0, 0, 0, 0, 0, 0}, id3Frame(3, "TIT2", 0x20, []byte("\x01\xff\xfet\x00"))...)))
	f.Add(id3Tag(2, 0, id3Frame(2, "TT2", 0, []byte("\x02\x00a"))))
	f.Fuzz(func(t *testing.T, tag []byte) {
		title := id3v2Title(tag)
		require.True(t, utf8.ValidString(title))
		require.LessOrEqual(t, len(title), mux.MaxTitleLen)
	})
}
