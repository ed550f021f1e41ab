// Command natlab builds a NAT lab of network namespaces (see package
// netlab), prints its hosts, and removes it all on Ctrl-C or after -for.
// Programs run inside a host with ip netns exec NAME, for example
//
//	go run ./internal/netlab/cmd/natlab -homes 2 &
//	ip netns exec netlab-1234-1-p1 go run ./examples/broadcast -listen 172.16.1.2:7000
//	ip netns exec netlab-1234-1-h1a go run ./examples/listen -discard ADDRESS
//
// It needs root, ip and iptables.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/p2pradio/p2pradio/internal/netlab"
)

func main() {
	var (
		homes   = flag.Int("homes", 2, "homes, each a LAN behind its own MASQUERADE router")
		hosts   = flag.Int("hosts", 1, "hosts per home")
		public  = flag.Int("public", 1, "public hosts")
		random  = flag.Bool("random-fully", false, "routers pick a random port per flow (MASQUERADE --random-fully)")
		delay   = flag.Duration("delay", 0, "delay each home's router adds to each packet, each way")
		loss    = flag.Float64("loss", 0, "fraction of packets each home's router drops")
		rate    = flag.Int("rate", 0, "each home's uplink and downlink in kbit/s (0: unlimited)")
		prefix  = flag.String("prefix", netlab.DefaultPrefix, "namespace name prefix")
		lasting = flag.Duration("for", 0, "remove the lab after this long (0: on Ctrl-C)")
	)
	flag.Parse()
	if *public == 0 {
		*public = -1
	}
	cfg := netlab.Config{Prefix: *prefix, Public: *public}
	for range *homes {
		cfg.Homes = append(cfg.Homes, netlab.HomeConfig{RandomPorts: *random, Hosts: *hosts, Delay: *delay, Loss: *loss, RateKbit: *rate})
	}
	lab, err := netlab.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "natlab:", err)
		os.Exit(1)
	}
	for _, h := range lab.Hosts() {
		addr := "-"
		if h.Addr.IsValid() {
			addr = h.Addr.String()
		}
		fmt.Printf("%-5s %-15s %s\n", h.Role, addr, h.Name)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *lasting > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *lasting)
		defer cancel()
	}
	fmt.Println("ready; Ctrl-C removes the lab")
	<-ctx.Done()
	if err := lab.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "natlab:", err)
		os.Exit(1)
	}
}
