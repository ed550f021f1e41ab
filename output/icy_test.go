package output

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func TestAppendICYTitle(t *testing.T) {
	for _, tc := range []struct {
		title string
		want  string // the text before the padding
	}{
		{"", "StreamTitle='';"},
		{"Artist - Song", "StreamTitle='Artist - Song';"},
		{"It's", "StreamTitle='It's';"},
		{"a\x00b", "StreamTitle='ab';"},
		{"Ünïcødé ♪", "StreamTitle='Ünïcødé ♪';"},
	} {
		b := AppendICYTitle([]byte{0xAA}, tc.title)
		require.Equal(t, byte(0xAA), b[0], "appends")
		b = b[1:]
		require.Equal(t, int(b[0])*16, len(b)-1, "length byte counts 16-byte units")
		text := b[1:]
		require.Equal(t, tc.want, string(bytes.TrimRight(text, "\x00")))
		require.Less(t, len(text)-len(tc.want), 16, "padding is less than one unit")
	}
}

func TestAppendICYTitleCutsLongTitlesAtCharacters(t *testing.T) {
	long := strings.Repeat("é", 3000) // 6000 bytes
	b := AppendICYTitle(nil, long)
	require.Equal(t, 255, int(b[0]))
	require.Len(t, b, 1+maxICYBlock)
	text := string(bytes.TrimRight(b[1:], "\x00"))
	require.True(t, strings.HasPrefix(text, icyPrefix) && strings.HasSuffix(text, icySuffix))
	require.True(t, utf8.ValidString(text))
}

func TestICYWriterInterleaves(t *testing.T) {
	w := newICYWriter(10)
	var b []byte
	b = w.append(b, []byte("0123456789abc"), "T") // block after 10 bytes
	b = w.append(b, []byte("defghij"), "T")       // the next block falls due with the next byte
	b = w.append(b, []byte("klmnopqrst"), "U")    // so it announces U
	b = w.append(b, []byte("x"), "U")             // no change: an empty block
	want := []byte("0123456789")
	want = AppendICYTitle(want, "T")
	want = append(want, "abcdefghij"...)
	want = AppendICYTitle(want, "U")
	want = append(want, "klmnopqrst"...)
	want = append(want, 0, 'x')
	require.Equal(t, want, b)

	plain := newICYWriter(0)
	require.Equal(t, []byte("abc"), plain.append(nil, []byte("abc"), "T"))
}
