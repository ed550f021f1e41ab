package input

import (
	"bytes"
	"io"
	"unicode/utf8"
)

const (
	// MaxMetaint bounds the icy-metaint a server may ask for. Icecast uses
	// 16000, SHOUTcast 8192 to 32768.
	MaxMetaint = 1 << 20
	// maxMetaBlock is the largest ICY metadata block: its length byte
	// counts units of 16 bytes.
	maxMetaBlock = 255 * 16
)

// icyReader strips the ICY metadata blocks from a SHOUTcast/Icecast stream:
// after every metaint bytes of audio comes one length byte N and N*16 bytes
// of metadata text. Read returns only the audio; each metadata block with
// text is handed to onMeta (which must not keep it) when it has been read.
type icyReader struct {
	r       io.Reader
	metaint int
	left    int // audio bytes before the next metadata block
	onMeta  func(meta []byte)
	meta    [maxMetaBlock]byte
}

// newICYReader returns a reader that strips metadata from r every metaint
// bytes; metaint 0 means the stream carries none.
func newICYReader(r io.Reader, metaint int, onMeta func([]byte)) *icyReader {
	return &icyReader{r: r, metaint: metaint, left: metaint, onMeta: onMeta}
}

// Read reads audio bytes. A stream that ends in the middle of a metadata
// block ends with io.ErrUnexpectedEOF; one that ends just before a
// metadata block's length byte ends with io.EOF.
func (ir *icyReader) Read(p []byte) (int, error) {
	if ir.metaint <= 0 {
		return ir.r.Read(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if ir.left == 0 {
		if err := ir.readMeta(); err != nil {
			return 0, err
		}
	}
	if len(p) > ir.left {
		p = p[:ir.left]
	}
	n, err := ir.r.Read(p)
	ir.left -= n
	return n, err
}

// readMeta reads one metadata block.
func (ir *icyReader) readMeta() error {
	var lb [1]byte
	if _, err := io.ReadFull(ir.r, lb[:]); err != nil {
		return err // io.EOF here is a clean end
	}
	n := int(lb[0]) * 16
	if _, err := io.ReadFull(ir.r, ir.meta[:n]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	ir.left = ir.metaint
	if n > 0 && ir.onMeta != nil {
		ir.onMeta(ir.meta[:n])
	}
	return nil
}

// parseStreamTitle finds StreamTitle in ICY metadata text (NUL-padded),
// such as
//
//	StreamTitle='Artist - Song';StreamUrl='';
//
// ok is false when the text has no StreamTitle; the title may then be kept
// as it was.
//
// Servers do not escape quotes, so a quoted title ends at the first quote
// and semicolon that are followed by the end of the text or by another
// "Key=" field:
//
//	StreamTitle='It's';                      -> It's
//	StreamTitle='Rock';n'Roll';StreamUrl=''; -> Rock';n'Roll
//
// A title without quotes ends at the first ';'. Text that is not valid UTF-8
// is taken as ISO-8859-1, as old SHOUTcast servers send it. The result is
// cleaned by cleanTitle.
func parseStreamTitle(meta []byte) (title string, ok bool) {
	if i := bytes.IndexByte(meta, 0); i >= 0 {
		meta = meta[:i]
	}
	const key = "StreamTitle="
	i := bytes.Index(meta, []byte(key))
	if i < 0 {
		return "", false
	}
	v := meta[i+len(key):]
	var val []byte
	if len(v) > 0 && (v[0] == '\'' || v[0] == '"') {
		q := v[0]
		v = v[1:]
		val = v // unterminated: the rest of the text
		for j := 0; j+1 < len(v); j++ {
			if v[j] == q && v[j+1] == ';' && endsField(v[j+2:]) {
				val = v[:j]
				break
			}
		}
		if len(val) == len(v) {
			// No "';": drop a closing quote at the very end.
			val = bytes.TrimRight(bytes.TrimRight(val, " \t\r\n"), string(q))
		}
	} else {
		val = v
		if j := bytes.IndexByte(v, ';'); j >= 0 {
			val = v[:j]
		}
	}
	if utf8.Valid(val) {
		return cleanTitle(string(val)), true
	}
	return cleanTitle(latin1(val)), true
}

// endsField reports whether rest, what follows a quoted value's "';", is the
// end of the metadata text or the start of the next "Key=" field.
func endsField(rest []byte) bool {
	rest = bytes.TrimLeft(rest, " \t\r\n")
	if len(rest) == 0 {
		return true
	}
	for k, c := range rest {
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c == '_':
		case c >= '0' && c <= '9' && k > 0:
		case c == '=' && k > 0:
			return true
		default:
			return false
		}
	}
	return false
}
