// Command broadcast runs a p2pradio station: it reads MP3 from a file, an
// Icecast/SHOUTcast URL or standard input, signs it and relays it to the
// listeners that join. The station address is the first line of its
// standard output; the status line goes to standard error.
//
//	go run ./examples/broadcast                      # the built-in demo audio, looped
//	go run ./examples/broadcast -in song.mp3 -loop -listen 0.0.0.0:7000
//	ffmpeg -re -i in.flac -f mp3 - | go run ./examples/broadcast -in -
//	go run ./examples/broadcast -http 127.0.0.1:8000  # page, stream.mp3, status.json, metrics
package main

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net/http"
	_ "net/http/pprof" // served by -pprof only
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/p2pradio/p2pradio"
	"github.com/p2pradio/p2pradio/internal/cli"
	"github.com/p2pradio/p2pradio/internal/web"
	"github.com/p2pradio/p2pradio/metrics"
	"github.com/p2pradio/p2pradio/output"
)

func main() {
	in := flag.String("in", "", "MP3 source: a file, an http(s) Icecast/SHOUTcast URL, or - for standard input (default: the built-in demo audio)")
	loop := flag.Bool("loop", false, "play a file source again and again (the demo audio always loops)")
	listen := flag.String("listen", "127.0.0.1:0", "UDP address for QUIC (port 0 picks a free port)")
	upload := flag.Int("upload", 512, "upload budget for direct listeners, kbit/s")
	keyFile := flag.String("key", "", "file holding the station's ed25519 key (hex seed); created if missing. Without it the station gets a new identity each run")
	tracker := flag.String("tracker", "", "use this external rendezvous (host:port, see examples/tracker) instead of the embedded one")
	verbose := flag.Bool("v", false, "log events to standard error")
	httpAddr := flag.String("http", "", "serve the station page, the stream (/stream.mp3), /status.json and /metrics on this TCP address")
	pprofAddr := flag.String("pprof", "", "serve Go's profiler (/debug/pprof/) on this TCP address")
	flag.Parse()
	if *pprofAddr != "" {
		go func() { fmt.Fprintln(os.Stderr, "broadcast: pprof:", http.ListenAndServe(*pprofAddr, nil)) }()
	}
	if err := run(*in, *loop || *in == "", *listen, *upload, *keyFile, *tracker, *verbose, *httpAddr); err != nil {
		fmt.Fprintln(os.Stderr, "broadcast:", err)
		os.Exit(1)
	}
}

func run(in string, loop bool, listen string, upload int, keyFile, tracker string, verbose bool, httpAddr string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	key, err := loadKey(keyFile)
	if err != nil {
		return err
	}
	src, err := cli.OpenInput(ctx, in, loop)
	if err != nil {
		return err
	}
	var stream *output.HTTP
	var outputs []output.Output
	if httpAddr != "" {
		stream = output.NewHTTP(output.HTTPConfig{Logger: cli.Logger(verbose)})
		outputs = append(outputs, stream)
	}
	n, err := p2pradio.New(p2pradio.Config{
		Outputs:    outputs,
		Source:     src,
		Key:        key,
		ListenAddr: listen,
		UploadKbps: upload,
		NoTracker:  tracker != "",
		Rendezvous: tracker,
		Logger:     cli.Logger(verbose),
	})
	if err != nil {
		src.Close()
		return err
	}
	defer n.Close()
	fmt.Println(n.Address())
	if stream != nil {
		h := n.Handler(p2pradio.HTTPConfig{Stream: stream, Metrics: metrics.Handler(n, metrics.Config{Stream: stream})})
		url, stopHTTP, err := web.Serve(httpAddr, h)
		if err != nil {
			return err
		}
		defer stopHTTP()
		fmt.Fprintf(os.Stderr, "station page %s  stream %sstream.mp3\n", url, url)
	}
	start := time.Now()
	return cli.Watch(func() error { return n.Run(ctx) }, time.Second, 10*time.Second, func() string {
		s := n.Stats()
		title := s.Title
		if title == "" {
			title = "-"
		}
		return fmt.Sprintf("on air %s  chunks %d  children %d/%d  sent %.1f MB  %s",
			cli.Duration(time.Since(start)), s.ChunksReceived, s.Children, s.Slots, float64(s.BytesSent)/1e6, title)
	})
}

// loadKey reads the station key from path, or makes one and saves it there.
func loadKey(path string) (ed25519.PrivateKey, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		_, key, err := ed25519.GenerateKey(nil)
		if err != nil {
			return nil, err
		}
		return key, os.WriteFile(path, []byte(hex.EncodeToString(key.Seed())+"\n"), 0o600)
	}
	if err != nil {
		return nil, err
	}
	seed, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("%s: not a hex ed25519 seed", path)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}
