package mux

import "fmt"

// Frame is one whole MP3 Layer III frame, header included. A Frame produced
// by this package has a valid header and exactly the length the header
// states; its methods may panic on a Frame made any other way, so construct
// frames from untrusted bytes with ParseFrame.
type Frame []byte

// ParseFrame checks that b starts with a frame header and holds the whole
// frame, and returns that frame (a sub-slice of b, not a copy).
func ParseFrame(b []byte) (Frame, error) {
	h, err := ParseHeader(b)
	if err != nil {
		return nil, err
	}
	n := h.Size()
	if n < h.sideInfoOffset()+h.SideInfoSize() {
		return nil, fmt.Errorf("%w: frame of %d bytes cannot hold its side information", ErrNoSync, n)
	}
	if len(b) < n {
		return nil, ErrShortFrame
	}
	return Frame(b[:n]), nil
}

// Header is the frame's header.
func (f Frame) Header() Header {
	return Header(uint32(f[0])<<24 | uint32(f[1])<<16 | uint32(f[2])<<8 | uint32(f[3]))
}

// Format is the decoder format of the frame.
func (f Frame) Format() Format { return f.Header().Format() }

// Samples is the number of samples per channel the frame decodes to.
func (f Frame) Samples() int { return f.Header().Samples() }

// MainDataBegin is how many bytes of earlier frames' main data this frame
// needs (its bit reservoir back-pointer): 9 bits in MPEG-1, 8 in MPEG-2.
func (f Frame) MainDataBegin() int {
	h := f.Header()
	s := f[h.sideInfoOffset():]
	if h.Version() == MPEG1 {
		return int(s[0])<<1 | int(s[1])>>7
	}
	return int(s[0])
}

// MainDataSize is the number of main data bytes the frame itself carries.
func (f Frame) MainDataSize() int { return f.Header().MainDataSize() }

// IsInfo reports whether the frame is a Xing, Info or VBRI tag frame, which
// an encoder writes at the start of a file to describe it and which carries
// no audio.
func (f Frame) IsInfo() bool {
	h := f.Header()
	// The tag follows the side information; lame puts it there as if
	// there were no CRC even in a frame with one (lame -p), and mpg123 and
	// ffmpeg look for it there.
	for _, off := range []int{HeaderSize + h.SideInfoSize(), h.sideInfoOffset() + h.SideInfoSize()} {
		if off+4 <= len(f) {
			if t := string(f[off : off+4]); t == "Xing" || t == "Info" {
				return true
			}
		}
	}
	// VBRI sits 32 bytes after the header whatever the mode.
	if HeaderSize+32+4 <= len(f) && string(f[HeaderSize+32:HeaderSize+36]) == "VBRI" {
		return true
	}
	return false
}

// Silent returns a frame of format fmt that decodes to silence: the lowest
// bitrate the format allows, all side information and main data zero.
// Concealment feeds such frames to the decoder so that its timeline stays
// aligned with the stream.
func Silent(format Format) Frame {
	var h uint32 = 0x7ff << 21
	switch format.Version {
	case MPEG1:
		h |= 3 << 19
	case MPEG2:
		h |= 2 << 19
	} // MPEG-2.5: 0
	h |= 1 << 17 // Layer III
	h |= 1 << 16 // no CRC
	h |= 1 << 12 // lowest bitrate index
	rates := ratesV1
	rate := format.SampleRate
	switch format.Version {
	case MPEG2:
		rate *= 2
	case MPEG25:
		rate *= 4
	}
	for i, r := range rates {
		if r == rate {
			h |= uint32(i) << 10
		}
	}
	if format.Channels == 1 {
		h |= 3 << 6
	}
	n := Header(h).Size()
	f := make(Frame, n)
	f[0], f[1], f[2], f[3] = byte(h>>24), byte(h>>16), byte(h>>8), byte(h)
	return f
}
