// Package playout turns a continuous MP3 frame stream into PCM on a Sink at
// the pace of a playout clock, without stutter.
//
// A Player takes slots from a Frames (a *mux.Reassembler at a listener),
// decodes them with one long-lived Decoder, fed one frame at a time, and
// hands the PCM to a Sink: a WAV file (WAVSink), memory (MemorySink),
// nothing (Discard), any function (SinkFunc), or the sound card (package
// playout/speaker, the only part that needs cgo).
//
// The playout contract (see DESIGN.md): playback starts once Target of
// audio is buffered; from then on the frame at playing time P is due at
// start+P and is handed to the sink Lead before that. A frame that has not
// arrived by its deadline (Margin before it is due) is played as a concealed
// silent frame of the same duration, so the timeline and the decoder stay
// aligned; playback never stalls for a late frame. Only after Rebuffer of
// uninterrupted concealment does the Player stop and buffer Target again.
// With a ClockedSink (the speaker) the sink's queue, drained by the device's
// clock, replaces the system clock.
//
// Falling behind is normal (a starved process, a sink that blocked, a
// parent that went silent). With a LiveFrames (the Reassembler is one), a
// Player that fell more than Resync beyond Target behind the live edge, the
// newest audio received, skips ahead at a chunk boundary, and after a
// rebuffer it resumes Target behind the live edge rather than where it
// stopped; the frames after a jump first prime the decoder, so playback
// resumes without a click. The playing time the sink went without audio is
// counted in Stats.FramesMissed: continuity counts it as missed.
//
// The Decoder's Engine (Config.Engine) is libmpg123 by default, through
// cgo: the mpg123 program's decoder, so a listener hears exactly what
// mpg123 (and, within 1 LSB, ffmpeg) makes of the stream, for MPEG-1, 2
// and 2.5 Layer III. It needs libmpg123-dev to build; builds without cgo,
// or with the build tag nompg123, fall back to go-mp3 (pure Go, slower,
// off by up to a few percent of full scale on MPEG-2 joint stereo, and
// silent on MPEG-2.5). libmpg123 needs no global initialisation since
// version 1.27 (mpg123_init is a no-op), so the package keeps no state.
package playout
