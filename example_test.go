package p2pradio_test

import (
	"context"
	"fmt"
	"time"

	"github.com/p2pradio/p2pradio"
	"github.com/p2pradio/p2pradio/input"
	"github.com/p2pradio/p2pradio/playout"
)

// A station and one listener on loopback: the broadcaster reads a file in
// real time; the listener joins by the station's address, plays into a
// sink and relays to whoever joins after it.
func ExampleNew() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	src, err := input.OpenFile("testdata/cbr128.mp3", input.FileConfig{Loop: true})
	if err != nil {
		panic(err)
	}
	station, err := p2pradio.New(p2pradio.Config{Source: src}) // QUIC on 127.0.0.1, any port
	if err != nil {
		panic(err)
	}
	defer station.Close()
	go station.Run(ctx)

	listener, err := p2pradio.New(p2pradio.Config{
		Station: station.Address().String(), // p2pradio://<key>@127.0.0.1:<port>
		Sink:    &playout.Discard{},         // or speaker.New, playout.NewWAVSink ...
	})
	if err != nil {
		panic(err)
	}
	defer listener.Close()
	go listener.Run(ctx)

	for listener.Stats().Playout.FramesPlayed == 0 {
		time.Sleep(50 * time.Millisecond)
	}
	st := listener.Stats()
	fmt.Println("depth", st.Depth, "playing", st.Playout.Playing)
	// Output: depth 1 playing true
}
