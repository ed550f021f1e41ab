// Command relaycost starts N listeners of one station in one process, each a
// leaf child (no upload budget, no backups), so that the station's CPU per
// child can be measured. compare.sh runs it beside a real Icecast server
// serving the same number of curl listeners and prints both figures.
//
//	go run ./examples/relaycost -n 100 p2pradio://<key>@127.0.0.1:7000
//
// It prints "ready" on standard output once every listener plays at depth 1
// (a direct child of the station), then a summary line when interrupted or
// after -duration.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/p2pradio/p2pradio"
	"github.com/p2pradio/p2pradio/mux"
	"github.com/p2pradio/p2pradio/playout"
)

func main() {
	n := flag.Int("n", 100, "listeners")
	duration := flag.Duration("duration", 0, "stop after this long (0: until interrupted)")
	readyTimeout := flag.Duration("ready-timeout", 60*time.Second, "give up when the listeners are not all direct children playing by then")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: relaycost [flags] p2pradio://KEY@HOST:PORT\n\nflags:\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 || *n < 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *n, *duration, *readyTimeout); err != nil {
		fmt.Fprintln(os.Stderr, "relaycost:", err)
		os.Exit(1)
	}
}

func run(station string, n int, duration, readyTimeout time.Duration) error {
	// ctx ends the run; the nodes run on until the summary is taken, so
	// that none has left its parent yet.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}
	nodesCtx, stopNodes := context.WithCancel(context.Background())
	defer stopNodes()
	// One signature check per chunk for the whole process, and no
	// decoding: this process's CPU is not what is measured, but it shares
	// the machine with the station.
	cache := mux.NewSignatureCache(256)
	nodes := make([]*p2pradio.Node, n)
	errs := make(chan error, n)
	for i := range nodes {
		nd, err := p2pradio.New(p2pradio.Config{
			Station:        station,
			UploadKbps:     -1,
			Backups:        -1,
			Playout:        playout.Config{NoDecode: true, Batch: 100 * time.Millisecond},
			SignatureCache: cache,
		})
		if err != nil {
			return err
		}
		defer nd.Close()
		nodes[i] = nd
		go func() { errs <- nd.Run(nodesCtx) }()
	}
	start := time.Now()
	for {
		ready := 0
		for _, nd := range nodes {
			if s := nd.Stats(); s.Depth == 1 && s.Startup > 0 {
				ready++
			}
		}
		if ready == n {
			fmt.Printf("ready after %v\n", time.Since(start).Round(10*time.Millisecond))
			break
		}
		if time.Since(start) > readyTimeout {
			return fmt.Errorf("only %d of %d listeners play as direct children after %v", ready, n, readyTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			return fmt.Errorf("a listener stopped: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	<-ctx.Done()
	minCont, sum, depth1 := 1.0, 0.0, 0
	for _, nd := range nodes {
		s := nd.Stats()
		minCont = min(minCont, s.Continuity)
		sum += s.Continuity
		if s.Depth == 1 {
			depth1++
		}
	}
	fmt.Printf("listeners %d  at depth 1 %d  continuity mean %.4f min %.4f\n", n, depth1, sum/float64(n), minCont)
	return nil
}
