// Package testaudio embeds the station's built-in demo audio: 30 s of
// music-like tones, MPEG-1 Layer III at 128 kbit/s, 44.1 kHz stereo, made by
// testdata/make.sh with ffmpeg's libmp3lame.
package testaudio

import _ "embed"

// Demo is the demo MP3 file's bytes.
//
//go:embed demo.mp3
var Demo []byte
