// Package input provides the Sources a broadcaster takes its MP3 bytes from:
// a File paced in real time by the durations of its frames, a Reader for any
// live byte stream (stdin fed by ffmpeg or lame, a pipe), and HTTP for an
// Icecast or SHOUTcast URL, whose ICY metadata is stripped from the audio and
// surfaced as the stream title.
//
// A Source delivers bytes, not frames: finding frames, skipping ID3 tags and
// Xing frames, and resynchronising after junk is the demuxer's work (package
// mux). File looks at frames only to know when to release each byte.
package input
