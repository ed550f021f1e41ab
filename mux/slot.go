package mux

// A Slot is one frame's place on the playout timeline, as the Reassembler
// hands it to playout.
type Slot struct {
	// Frame is the frame to feed the decoder: real audio, or Silent when
	// Concealed.
	Frame Frame
	// Timestamp is the frame's first sample, counted from the stream start.
	Timestamp int64
	// Produced is when the broadcaster's input produced the frame, in
	// microseconds since the Unix epoch; 0 when Concealed.
	Produced int64
	// Concealed means the frame's audio was not received by its deadline:
	// Frame is a silent stand-in of the same format and duration.
	Concealed bool
	// Muted means the frame was received but cannot be decoded exactly:
	// its bit reservoir (MainDataBegin bytes of earlier frames) or the frame
	// before it was not received. Playout decodes it, to keep the decoder's
	// state, and plays silence in its place.
	Muted bool
	// Prime means the frame comes before the first frame that can be
	// decoded exactly when playback starts (after a join): feed it to the
	// decoder, for its bit reservoir and history, and play nothing for it.
	// It takes no time on the timeline and is not counted as due.
	Prime bool
	// Discontinuity means the stream broke before this frame (format change
	// or source restart): playout starts a new decoder.
	Discontinuity bool
	// Title is the stream title in force from this frame on; TitleChanged
	// is set on the first frame that carries a new one.
	Title        string
	TitleChanged bool
}
