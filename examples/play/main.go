// Command play plays an MP3 file, an Icecast/SHOUTcast URL or standard
// input through p2pradio's input -> mux -> playout blocks: to the speakers,
// or to a WAV file.
//
//	go run ./examples/play testdata/cbr128.mp3
//	go run ./examples/play -wav out.wav testdata/vbr_id3_xing.mp3
//	ffmpeg -re -i song.flac -f mp3 - | go run ./examples/play -
//
// It decodes with libmpg123, as the mpg123 program does, where built with
// cgo (the default), and with go-mp3 otherwise.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/p2pradio/p2pradio"
	"github.com/p2pradio/p2pradio/internal/cli"
	"github.com/p2pradio/p2pradio/playout"
	"github.com/p2pradio/p2pradio/playout/speaker"
)

func main() {
	wav := flag.String("wav", "", "write the decoded audio to this WAV file instead of the speakers")
	loop := flag.Bool("loop", false, "play a file again and again")
	target := flag.Duration("target", playout.DefaultTarget, "audio to buffer before playback starts")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: play [flags] FILE|URL|-\n\nflags:\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, flag.Arg(0), *wav, *loop, *target)
	stop()
	if err != nil {
		if errors.Is(err, speaker.ErrDevice) {
			err = fmt.Errorf("%w\n(no sound card here? use -wav FILE)", err)
		}
		fmt.Fprintln(os.Stderr, "play:", err)
		os.Exit(1)
	}
}

// run plays arg into the WAV file wav, or to the speakers if wav is "",
// until it ends or ctx is done.
func run(ctx context.Context, arg, wav string, loop bool, target time.Duration) error {
	src, err := cli.OpenInput(ctx, arg, loop)
	if err != nil {
		return err
	}
	var sink playout.Sink
	if wav != "" {
		w, err := playout.CreateWAV(wav)
		if err != nil {
			src.Close()
			return err
		}
		sink = w
	} else {
		sp, err := speaker.New(speaker.Config{})
		if err != nil {
			src.Close()
			return fmt.Errorf("speaker: %w (use -wav FILE without a sound card)", err)
		}
		sink = sp
	}
	l, err := p2pradio.NewLocal(src, playout.Config{Sink: sink, Target: target})
	if err != nil {
		src.Close()
		sink.Close()
		return err
	}
	defer l.Close()
	return cli.Watch(func() error { return l.Run(ctx) }, 250*time.Millisecond, 5*time.Second,
		func() string { return line(l.Stats()) })
}

func line(s playout.Stats) string {
	state := "buffering"
	if s.Playing {
		state = "playing"
	}
	title := s.Title
	if title == "" {
		title = "-"
	}
	return fmt.Sprintf("%s %s  buffer %.1fs  continuity %.4f  %s",
		state, cli.Duration(s.Position), s.Buffered.Seconds(), s.Continuity(), title)
}
