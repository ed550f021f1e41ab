package output

import (
	"strings"
	"unicode/utf8"
)

// ICY (SHOUTcast/Icecast) metadata: a client that sends "Icy-MetaData: 1"
// gets, after every icy-metaint bytes of audio, one length byte N and N*16
// bytes of text, NUL-padded, such as
//
//	StreamTitle='Artist - Song';
//
// N = 0 (a lone zero byte) means "nothing new".
const (
	// DefaultMetaint is the audio bytes between two ICY metadata blocks,
	// Icecast's default.
	DefaultMetaint = 16000
	// maxICYBlock is the largest metadata block: the length byte counts
	// units of 16 bytes.
	maxICYBlock = 255 * 16
	icyPrefix   = "StreamTitle='"
	icySuffix   = "';"
)

// AppendICYTitle appends the ICY metadata block announcing title to b:
// its length byte and StreamTitle='title'; padded with NULs to a multiple
// of 16 bytes. NUL bytes in title are dropped, and a title too long for a
// block is cut at a UTF-8 character boundary. Quotes are not escaped, as
// Icecast does not escape them: ICY readers take the last "';" as the end.
func AppendICYTitle(b []byte, title string) []byte {
	title = strings.ReplaceAll(title, "\x00", "")
	room := maxICYBlock - len(icyPrefix) - len(icySuffix)
	if len(title) > room {
		cut := room
		for cut > 0 && !utf8.RuneStart(title[cut]) {
			cut--
		}
		title = title[:cut]
	}
	n := len(icyPrefix) + len(title) + len(icySuffix)
	units := (n + 15) / 16
	b = append(b, byte(units))
	b = append(b, icyPrefix...)
	b = append(b, title...)
	b = append(b, icySuffix...)
	for range units*16 - n {
		b = append(b, 0)
	}
	return b
}

// icyWriter interleaves ICY metadata with the audio of one listener. The
// zero metaint means plain audio.
type icyWriter struct {
	metaint int
	left    int    // audio bytes before the next block
	sent    string // the title last announced
}

func newICYWriter(metaint int) icyWriter { return icyWriter{metaint: metaint, left: metaint} }

// append appends audio to b with a metadata block wherever one falls due;
// title is the title in effect for this audio.
func (w *icyWriter) append(b, audio []byte, title string) []byte {
	if w.metaint <= 0 {
		return append(b, audio...)
	}
	for len(audio) > 0 {
		if w.left == 0 {
			if title != w.sent {
				b = AppendICYTitle(b, title)
				w.sent = title
			} else {
				b = append(b, 0)
			}
			w.left = w.metaint
		}
		k := min(len(audio), w.left)
		b = append(b, audio[:k]...)
		audio = audio[k:]
		w.left -= k
	}
	return b
}
