package playout_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/p2pradio/p2pradio/mux"
	"github.com/p2pradio/p2pradio/playout"
)

// Decode the first frames of a CBR file (no tags) with one Decoder: each
// frame yields 1152 stereo 16-bit samples.
func ExampleDecoder() {
	b, err := os.ReadFile("../testdata/cbr128.mp3")
	if err != nil {
		log.Fatal(err)
	}
	var d playout.Decoder // libmpg123 where built with cgo, else go-mp3
	defer d.Close()
	var pcm []byte
	for range 3 {
		f, err := mux.ParseFrame(b)
		if err != nil {
			log.Fatal(err)
		}
		b = b[len(f):]
		var format mux.Format
		pcm, format, err = d.Decode(pcm, mux.Slot{Frame: f})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(format, len(pcm))
	}
	// Output:
	// MPEG-1 44100 Hz 2ch 4608
	// MPEG-1 44100 Hz 2ch 9216
	// MPEG-1 44100 Hz 2ch 13824
}

// Write one second of silence to a WAV file.
func ExampleCreateWAV() {
	path := filepath.Join(os.TempDir(), "p2pradio-example.wav")
	defer os.Remove(path)
	w, err := playout.CreateWAV(path)
	if err != nil {
		log.Fatal(err)
	}
	if err := w.WritePCM(make([]byte, 44100*4), 44100); err != nil {
		log.Fatal(err)
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.Size())
	// Output: 176444
}
