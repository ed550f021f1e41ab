// Command listen joins a p2pradio station, plays it and relays it to other
// listeners.
//
//	go run ./examples/listen p2pradio://<key>@127.0.0.1:7000
//	go run ./examples/listen -wav out.wav -duration 30s ADDRESS
//	go run ./examples/listen -fallback-discard ADDRESS  # no sound card: relay anyway
//	go run ./examples/listen -discard -http 127.0.0.1:8001 ADDRESS  # page, stream.mp3, status.json, metrics
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/p2pradio/p2pradio"
	"github.com/p2pradio/p2pradio/control/portmap"
	"github.com/p2pradio/p2pradio/internal/cli"
	"github.com/p2pradio/p2pradio/internal/web"
	"github.com/p2pradio/p2pradio/metrics"
	"github.com/p2pradio/p2pradio/output"
	"github.com/p2pradio/p2pradio/playout"
	"github.com/p2pradio/p2pradio/playout/speaker"
)

func main() {
	wav := flag.String("wav", "", "write the audio to this WAV file instead of the speakers")
	discard := flag.Bool("discard", false, "decode but play nowhere (for relays and tests)")
	duration := flag.Duration("duration", 0, "stop after this long (0: until interrupted)")
	listen := flag.String("listen", "127.0.0.1:0", "UDP address for QUIC (port 0 picks a free port)")
	upload := flag.Int("upload", 400, "upload budget for relaying to other listeners, kbit/s (negative: none)")
	target := flag.Duration("target", playout.DefaultTarget, "audio to buffer before playback starts")
	verbose := flag.Bool("v", false, "log events to standard error")
	httpAddr := flag.String("http", "", "serve the station page, the stream (/stream.mp3), /status.json and /metrics on this TCP address")
	portMap := flag.String("portmap", "", "ask the home router to forward the QUIC port: auto (UPnP-IGD, then NAT-PMP), upnp or natpmp; empty: no")
	fallback := flag.Bool("fallback-discard", false, "when the sound device cannot be opened (or fails), warn and discard the audio instead of exiting")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: listen [flags] p2pradio://KEY@HOST:PORT\n\nflags:\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	var pm portmap.Mapper
	switch *portMap {
	case "":
	case "auto":
		pm = portmap.Auto()
	case "upnp":
		pm = portmap.NewUPnP()
	case "natpmp":
		pm = portmap.NewNATPMP()
	default:
		fmt.Fprintf(os.Stderr, "listen: -portmap %q: want auto, upnp or natpmp\n", *portMap)
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *wav, *discard, *fallback, *duration, *listen, *upload, *target, *verbose, *httpAddr, pm); err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		if errors.Is(err, speaker.ErrDevice) {
			fmt.Fprintf(os.Stderr, "(%s)\n", deviceHint)
		}
		os.Exit(1)
	}
}

func run(addr, wav string, discard, fallback bool, duration time.Duration, listen string, upload int, target time.Duration, verbose bool, httpAddr string, pm portmap.Mapper) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}
	sink, err := openSink(wav, discard, fallback, os.Stderr)
	if err != nil {
		return err
	}
	// A sink that fails stops the listener: the node would otherwise go on
	// relaying with its player stopped, saying "buffering" for ever.
	sink, failed := watch(sink, fallback, os.Stderr)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stopWatch := make(chan struct{})
	defer close(stopWatch)
	go func() {
		select {
		case err := <-failed:
			cancel(fmt.Errorf("playing: %w", err))
		case <-stopWatch:
		}
	}()
	var stream *output.HTTP
	var outputs []output.Output
	if httpAddr != "" {
		stream = output.NewHTTP(output.HTTPConfig{Logger: cli.Logger(verbose)})
		outputs = append(outputs, stream)
	}
	n, err := p2pradio.New(p2pradio.Config{
		Outputs:    outputs,
		Station:    strings.TrimSpace(addr),
		ListenAddr: listen,
		UploadKbps: upload,
		Sink:       sink,
		Playout:    playout.Config{Target: target},
		PortMap:    pm,
		Logger:     cli.Logger(verbose),
	})
	if err != nil {
		sink.Close()
		return err
	}
	defer n.Close()
	if stream != nil {
		h := n.Handler(p2pradio.HTTPConfig{Stream: stream, Metrics: metrics.Handler(n, metrics.Config{Stream: stream})})
		url, stopHTTP, err := web.Serve(httpAddr, h)
		if err != nil {
			return err
		}
		defer stopHTTP()
		fmt.Fprintf(os.Stderr, "station page %s  stream %sstream.mp3\n", url, url)
	}
	err = cli.Watch(func() error { return n.Run(ctx) }, 500*time.Millisecond, 10*time.Second,
		func() string { return line(n.Stats()) })
	if cause := context.Cause(ctx); err == nil && ctx.Err() != nil && !errors.Is(cause, context.Canceled) && !errors.Is(cause, context.DeadlineExceeded) {
		err = cause // the sink failed
	}
	return err
}

func line(s p2pradio.Stats) string {
	state := "joining"
	switch {
	case s.Playout.Playing:
		state = "playing"
	case s.Depth >= 0:
		state = "buffering"
	}
	title := s.Title
	if title == "" {
		title = "-"
	}
	return fmt.Sprintf("%s %s  parents %d  children %d/%d  depth %d  buffer %.1fs  lag %.1fs  continuity %.4f  %s",
		state, cli.Duration(s.Playout.Position), len(s.Parents), s.Children, s.Slots, s.Depth,
		s.Playout.Buffered.Seconds(), s.Playout.Lag.Seconds(), s.Continuity, title)
}
