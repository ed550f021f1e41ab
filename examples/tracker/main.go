// Command tracker runs a p2pradio rendezvous on its own: listeners register
// with it and learn candidate parents; it is never on the data path. A
// broadcaster uses it with -tracker (see examples/broadcast), and listeners
// find it in the station address.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/internal/cli"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "UDP address for QUIC (port 0 picks a free port)")
	verbose := flag.Bool("v", false, "log events to standard error")
	flag.Parse()
	if err := run(*listen, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "tracker:", err)
		os.Exit(1)
	}
}

func run(listen string, verbose bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	log := cli.Logger(verbose)
	tr, err := control.NewQUIC(control.QUICConfig{ListenAddr: listen, Logger: log})
	if err != nil {
		return err
	}
	defer tr.Close()
	t := control.NewTracker(control.TrackerConfig{Logger: log})
	fmt.Println(tr.Addr())
	go func() {
		st := cli.NewStatus(os.Stderr, 10*time.Second)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				st.Done()
				return
			case <-tick.C:
				st.Print(fmt.Sprintf("nodes registered: %d", len(t.Nodes())))
			}
		}
	}()
	return control.ServeTracker(ctx, tr, t)
}
