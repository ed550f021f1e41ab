package input

import (
	"bytes"
	"encoding/binary"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/p2pradio/p2pradio/mux"
)

// id3v2HeaderSize is the size of an ID3v2 tag header.
const id3v2HeaderSize = 10

// syncsafe decodes a 28-bit ID3v2 syncsafe integer (7 bits per byte).
func syncsafe(b []byte) int {
	return int(b[0]&0x7f)<<21 | int(b[1]&0x7f)<<14 | int(b[2]&0x7f)<<7 | int(b[3]&0x7f)
}

// id3v2Title returns the title (TIT2, or TT2 in ID3v2.2) of the ID3v2 tag
// that tag starts with, or "" if there is none. tag may be cut short; the
// title is looked for in what there is. Compressed and encrypted frames are
// skipped.
func id3v2Title(tag []byte) string {
	size := mux.ID3v2Size(tag)
	if size == 0 {
		return ""
	}
	ver, flags := tag[3], tag[5]
	size -= id3v2HeaderSize
	if ver == 4 && flags&0x10 != 0 {
		size -= id3v2HeaderSize // the footer
	}
	body := tag[id3v2HeaderSize:]
	if len(body) > size {
		body = body[:size]
	}
	if flags&0x80 != 0 {
		body = unsync(body)
	}
	if flags&0x40 != 0 && ver >= 3 && len(body) >= 4 { // extended header
		var n int
		if ver == 3 {
			n = 4 + int(binary.BigEndian.Uint32(body)&0x7fffffff)
		} else {
			n = syncsafe(body)
		}
		if n < 0 || n > len(body) {
			return ""
		}
		body = body[n:]
	}
	idLen, hdrLen, want := 4, 10, "TIT2"
	if ver == 2 {
		idLen, hdrLen, want = 3, 6, "TT2"
	}
	for len(body) >= hdrLen && body[0] != 0 {
		id := string(body[:idLen])
		var n int
		var fflags uint16
		switch ver {
		case 2:
			n = int(body[3])<<16 | int(body[4])<<8 | int(body[5])
		case 3:
			n = int(binary.BigEndian.Uint32(body[4:]) & 0x7fffffff)
			fflags = binary.BigEndian.Uint16(body[8:])
		default:
			n = syncsafe(body[4:])
			fflags = binary.BigEndian.Uint16(body[8:])
		}
		if n > len(body)-hdrLen {
			return ""
		}
		data := body[hdrLen : hdrLen+n]
		body = body[hdrLen+n:]
		if id != want {
			continue
		}
		switch ver {
		case 3:
			if fflags&0x00c0 != 0 { // compressed or encrypted
				return ""
			}
			if fflags&0x0020 != 0 && len(data) > 0 { // grouping identity
				data = data[1:]
			}
		case 4:
			if fflags&0x000c != 0 { // compressed or encrypted
				return ""
			}
			if fflags&0x0040 != 0 && len(data) > 0 { // grouping identity
				data = data[1:]
			}
			if fflags&0x0001 != 0 && len(data) >= 4 { // data length indicator
				data = data[4:]
			}
			if fflags&0x0002 != 0 {
				data = unsync(data)
			}
		}
		return id3Text(data)
	}
	return ""
}

// unsync undoes ID3v2 unsynchronisation: 0xFF 0x00 becomes 0xFF.
func unsync(b []byte) []byte {
	if !bytes.Contains(b, []byte{0xff, 0x00}) {
		return b
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		out = append(out, b[i])
		if b[i] == 0xff && i+1 < len(b) && b[i+1] == 0 {
			i++
		}
	}
	return out
}

// id3Text decodes an ID3v2 text frame: an encoding byte, then text, of which
// only the first of NUL-separated strings is kept.
func id3Text(data []byte) string {
	if len(data) == 0 {
		return ""
	}
	enc, text := data[0], data[1:]
	switch enc {
	case 1, 2: // UTF-16 with BOM, UTF-16BE
		bigEndian := enc == 2
		if len(text) >= 2 {
			switch {
			case text[0] == 0xff && text[1] == 0xfe:
				bigEndian, text = false, text[2:]
			case text[0] == 0xfe && text[1] == 0xff:
				bigEndian, text = true, text[2:]
			}
		}
		u := make([]uint16, 0, len(text)/2)
		for i := 0; i+1 < len(text); i += 2 {
			c := binary.LittleEndian.Uint16(text[i:])
			if bigEndian {
				c = binary.BigEndian.Uint16(text[i:])
			}
			if c == 0 {
				break
			}
			u = append(u, c)
		}
		return cleanTitle(string(utf16.Decode(u)))
	case 3: // UTF-8
		if i := bytes.IndexByte(text, 0); i >= 0 {
			text = text[:i]
		}
		return cleanTitle(string(text))
	default: // ISO-8859-1
		if i := bytes.IndexByte(text, 0); i >= 0 {
			text = text[:i]
		}
		return cleanTitle(latin1(text))
	}
}

// id3v1Title returns the title of the 128-byte ID3v1 tag b, or "" if b is
// not one.
func id3v1Title(b []byte) string {
	if len(b) != 128 || string(b[:3]) != "TAG" {
		return ""
	}
	t := b[3:33]
	if i := bytes.IndexByte(t, 0); i >= 0 {
		t = t[:i]
	}
	return cleanTitle(latin1(t))
}

// latin1 decodes ISO-8859-1.
func latin1(b []byte) string {
	var sb strings.Builder
	sb.Grow(len(b))
	for _, c := range b {
		sb.WriteRune(rune(c))
	}
	return sb.String()
}

// cleanTitle makes a title safe to carry and show: valid UTF-8, control
// characters turned into spaces, surrounding space trimmed, and at most
// mux.MaxTitleLen bytes (cut at a character boundary).
func cleanTitle(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
	s = strings.TrimSpace(s)
	if len(s) > mux.MaxTitleLen {
		n := mux.MaxTitleLen
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = strings.TrimSpace(s[:n])
	}
	return s
}
