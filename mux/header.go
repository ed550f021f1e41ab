package mux

import (
	"fmt"
	"time"
)

// Version is the MPEG audio version of a frame.
type Version uint8

// The MPEG versions whose Layer III frames p2pradio carries. MPEG-2.5 (8,
// 11.025 and 12 kHz) is the unofficial extension every decoder plays.
const (
	MPEG1  Version = 1
	MPEG2  Version = 2
	MPEG25 Version = 3
)

func (v Version) String() string {
	switch v {
	case MPEG1:
		return "MPEG-1"
	case MPEG2:
		return "MPEG-2"
	case MPEG25:
		return "MPEG-2.5"
	}
	return fmt.Sprintf("Version(%d)", uint8(v))
}

// HeaderSize is the size of an MP3 frame header in bytes.
const HeaderSize = 4

// MaxFrameSize bounds the size of one Layer III frame: 320 kbit/s at 32 kHz
// with padding is 1441 bytes, as is MPEG-2.5 at 160 kbit/s and 8 kHz;
// MPEG-2 at 160 kbit/s and 16 kHz is 721.
const MaxFrameSize = 1441

// Format is what must stay the same for one decoder to play a run of frames.
type Format struct {
	Version    Version
	SampleRate int // Hz
	Channels   int // 1 or 2
}

// SamplesPerFrame is the number of PCM samples (per channel) in one frame.
func (f Format) SamplesPerFrame() int {
	if f.Version == MPEG1 {
		return 1152
	}
	return 576
}

// FrameDuration is the playing time of one frame.
func (f Format) FrameDuration() time.Duration {
	if f.SampleRate == 0 {
		return 0
	}
	return time.Duration(f.SamplesPerFrame()) * time.Second / time.Duration(f.SampleRate)
}

// Duration converts a sample count at this format's rate to time.
func (f Format) Duration(samples int64) time.Duration {
	if f.SampleRate == 0 {
		return 0
	}
	return time.Duration(samples * int64(time.Second) / int64(f.SampleRate))
}

func (f Format) String() string {
	return fmt.Sprintf("%v %d Hz %dch", f.Version, f.SampleRate, f.Channels)
}

// Header is the 32-bit header that starts every MP3 frame. It is valid only
// when returned by ParseHeader without error.
type Header uint32

var (
	bitratesV1 = [16]int{0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, -1}
	bitratesV2 = [16]int{0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, -1}
	ratesV1    = [4]int{44100, 48000, 32000, -1}
)

// ParseHeader checks the four bytes at the start of b for an MPEG Layer III
// frame header that p2pradio can carry. It returns ErrShortFrame when b has
// fewer than four bytes, ErrNoSync when b does not start with a Layer III
// header, and an error wrapping ErrUnsupported for free format.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return 0, ErrShortFrame
	}
	h := Header(uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]))
	if h>>21 != 0x7ff { // 11 sync bits
		return 0, ErrNoSync
	}
	if (h>>19)&3 == 1 { // reserved version
		return 0, ErrNoSync
	}
	if (h>>17)&3 != 1 { // not Layer III
		return 0, ErrNoSync
	}
	bi := (h >> 12) & 0xf
	if bi == 0xf {
		return 0, ErrNoSync
	}
	if (h>>10)&3 == 3 { // reserved sample rate
		return 0, ErrNoSync
	}
	if h&3 == 2 { // reserved emphasis
		return 0, ErrNoSync
	}
	if bi == 0 {
		return h, fmt.Errorf("%w: free-format bitrate", ErrUnsupported)
	}
	return h, nil
}

// Version is the frame's MPEG version.
func (h Header) Version() Version {
	switch (h >> 19) & 3 {
	case 3:
		return MPEG1
	case 2:
		return MPEG2
	}
	return MPEG25
}

// Bitrate is the frame's bitrate in kbit/s.
func (h Header) Bitrate() int {
	i := (h >> 12) & 0xf
	if h.Version() == MPEG1 {
		return bitratesV1[i]
	}
	return bitratesV2[i]
}

// SampleRate is the frame's sample rate in Hz.
func (h Header) SampleRate() int {
	r := ratesV1[(h>>10)&3]
	switch h.Version() {
	case MPEG2:
		return r / 2
	case MPEG25:
		return r / 4
	}
	return r
}

// Padded reports whether the frame carries one padding byte.
func (h Header) Padded() bool { return (h>>9)&1 == 1 }

// Protected reports whether a 16-bit CRC follows the header.
func (h Header) Protected() bool { return (h>>16)&1 == 0 }

// Channels is 1 for mono and 2 for stereo, joint stereo and dual channel.
func (h Header) Channels() int {
	if (h>>6)&3 == 3 {
		return 1
	}
	return 2
}

// Format is the decoder format the frame needs.
func (h Header) Format() Format {
	return Format{Version: h.Version(), SampleRate: h.SampleRate(), Channels: h.Channels()}
}

// Samples is the number of samples per channel in the frame.
func (h Header) Samples() int { return h.Format().SamplesPerFrame() }

// Size is the length of the whole frame in bytes, header included.
func (h Header) Size() int {
	n := 144
	if h.Version() != MPEG1 {
		n = 72
	}
	size := n * h.Bitrate() * 1000 / h.SampleRate()
	if h.Padded() {
		size++
	}
	return size
}

// SideInfoSize is the length of the Layer III side information.
func (h Header) SideInfoSize() int {
	mono := h.Channels() == 1
	switch {
	case h.Version() == MPEG1 && mono:
		return 17
	case h.Version() == MPEG1:
		return 32
	case mono:
		return 9
	}
	return 17
}

// sideInfoOffset is where the side information starts in the frame.
func (h Header) sideInfoOffset() int {
	if h.Protected() {
		return HeaderSize + 2
	}
	return HeaderSize
}

// MainDataSize is the number of main data bytes this frame itself carries
// (what it adds to the bit reservoir of the frames after it).
func (h Header) MainDataSize() int {
	return h.Size() - h.sideInfoOffset() - h.SideInfoSize()
}
