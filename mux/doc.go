// Package mux is the MUX/DEMUX block of p2pradio: MP3 framing, and the
// signed chunks that carry frames through the overlay.
//
// At the broadcaster, a Demuxer splits the input's bytes into validated
// MP3 Layer III frames (MPEG-1, MPEG-2 and MPEG-2.5; ID3v1, ID3v2 and APEv2 tags,
// Xing/Info/VBRI frames and junk skipped), and a Chunker groups the frames
// into numbered, timestamped Chunks signed with the station's ed25519 key.
// At a listener, ParseChunk and Chunk.Verify check what peers send, and a
// Reassembler turns the chunks, arriving out of order, twice or never, back
// into one continuous stream of Slots for playout: missing frames concealed
// by Silent frames of the same duration, frames whose bit reservoir
// (Frame.MainDataBegin) was not received marked Muted.
//
// A Frame is one whole frame, header included; a Header its first four
// bytes; a Format what one decoder needs to stay the same (version, sample
// rate, channels). Everything that parses bytes from outside (ParseHeader,
// ParseFrame, ParseChunk, the Demuxer) returns errors wrapping the sentinels
// in errors.go and never panics.
//
// The Demuxer's rules, for live streams as for files:
//
//   - At the start, and after junk, a frame header is trusted only when the
//     header of the same Format (or a tag) follows exactly where the frame
//     ends. Once in sync, each frame is returned as soon as its last byte
//     arrives: the Demuxer never waits for more than the current frame and
//     the next header. So a frame followed by junk, or by the end of the
//     stream, is kept if it was in sync.
//   - A frame of a new Format must be confirmed like a frame after junk;
//     then its frames are returned, and the caller sees the Format change.
//   - A partial frame at the end is dropped and counted (io.EOF, not an
//     error). A stream that yields no frame within MaxJunk bytes is not MP3
//     (ErrNotMP3); a run of free-format, Layer I or Layer II frames is
//     ErrUnsupported.
//   - Once the stream has started, junk is never fatal short of MaxLiveJunk
//     bytes: a long run is logged (DemuxConfig.Logger), counted
//     (DemuxStats.JunkRuns) and skipped, and the stream goes on.
package mux
