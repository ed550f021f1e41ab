package mux

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// FuzzDemux: on any input the Demuxer ends with io.EOF, ErrNotMP3 or
// ErrUnsupported, never panics, returns only whole valid frames, accounts
// for every byte, and does the same when fed one byte at a time.
func FuzzDemux(f *testing.F) {
	for _, name := range testdataFiles() {
		b := readTestdata(f, name)
		f.Add(b[:min(len(b), 4000)])
		f.Add(b[max(0, len(b)-3000):])
	}
	junk := readTestdata(f, "junk.mp3")
	f.Add(junk[40*418-1000 : 40*418+1500])
	cbr, _ := demuxBytes(f, readTestdata(f, "cbr128.mp3"))
	mono, _ := demuxBytes(f, readTestdata(f, "mono22k.mp3"))
	f.Add(bytes.Join([][]byte{joinFrames(cbr[:2]), id3v2Tag(4, joinFrames(mono[:2]), true), joinFrames(cbr[2:4])}, nil))
	f.Add(joinFrames(cbr[:3], mono[:3], cbr[3:5]))
	f.Add(append(joinFrames(cbr[:3]), "TAG"...))
	f.Add(append(joinFrames(cbr[:3]), "APETAGEX\xd0\x07\x00\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xa0"...))
	f.Add(bytes.Repeat(append(headerBytes(0xFFE38044), make([]byte, 80)...), 4))
	f.Add(bytes.Repeat(append(headerBytes(0xFFFB0044), make([]byte, 300)...), 4))
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, data []byte) {
		frames, st, err := demuxAll(bytes.NewReader(data))
		if err != io.EOF && !errors.Is(err, ErrNotMP3) && !errors.Is(err, ErrUnsupported) {
			t.Fatalf("unexpected error %v", err)
		}
		size := int64(0)
		for i, fr := range frames {
			g, err := ParseFrame(fr)
			if err != nil || len(g) != len(fr) || cap(fr) != len(fr) {
				t.Fatalf("frame %d of %d bytes: %v", i, len(fr), err)
			}
			if fr.IsInfo() {
				t.Fatalf("frame %d is an info frame", i)
			}
			_ = fr.MainDataBegin()
			size += int64(len(fr))
		}
		if st.Frames != int64(len(frames)) || st.FrameBytes != size {
			t.Fatalf("stats %+v for %d frames of %d bytes", st, len(frames), size)
		}
		accounted := st.FrameBytes + st.Skipped + st.TagBytes + st.Truncated
		if accounted > int64(len(data)) || err == io.EOF && st.InfoFrames == 0 && accounted != int64(len(data)) {
			t.Fatalf("stats %+v for %d bytes", st, len(data))
		}

		frames1, st1, err1 := demuxAll(iotest.OneByteReader(bytes.NewReader(data)))
		if err1.Error() != err.Error() || st1 != st || len(frames1) != len(frames) {
			t.Fatalf("one byte at a time: %v %+v %d frames, at once: %v %+v %d frames",
				err1, st1, len(frames1), err, st, len(frames))
		}
		for i := range frames {
			if !bytes.Equal(frames[i], frames1[i]) {
				t.Fatalf("one byte at a time: frame %d differs", i)
			}
		}
	})
}

// FuzzParseChunk: ParseChunk never panics; a chunk it accepts encodes back
// to the same bytes, from its fields alone, and verifies only if it is one
// the station signed.
func FuzzParseChunk(f *testing.F) {
	key := testKey(1)
	pub := key.Public().(ed25519.PublicKey)
	signed := map[string]bool{}
	for _, c := range []*Chunk{
		testChunk(f, "cbr128.mp3", 10, 4, "Artist - Title"),
		testChunk(f, "mono22k.mp3", 0, 1, ""),
		testChunk(f, "speech.mp3", 5, 20, ""),
		testChunk(f, "vbr_id3_xing.mp3", 100, 3, "x"),
	} {
		signed[string(c.Bytes())] = true
		f.Add(bytes.Clone(c.Bytes()))
	}
	f.Add(make([]byte, chunkHeaderSize+SignatureSize))

	f.Fuzz(func(t *testing.T, b []byte) {
		in := bytes.Clone(b)
		c, err := ParseChunk(b)
		if err != nil {
			if c != nil || !errors.Is(err, ErrBadChunk) {
				t.Fatalf("ParseChunk: %v, %v", c, err)
			}
			return
		}
		if !bytes.Equal(c.Bytes(), in) {
			t.Fatal("Bytes differs from the input")
		}
		again := &Chunk{Seq: c.Seq, Timestamp: c.Timestamp, Produced: c.Produced, Flags: c.Flags,
			Title: c.Title, Frames: c.Frames, Signature: c.Signature}
		if !bytes.Equal(again.Bytes(), in) {
			t.Fatal("the chunk's fields encode to other bytes")
		}
		_, _, _ = c.Format(), c.Duration(), c.End()
		if err := c.Verify(pub); (err == nil) != signed[string(in)] {
			t.Fatalf("Verify: %v", err)
		}
	})
}
