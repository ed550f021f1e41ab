package main

import (
	"flag"
	"os"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"
)

// TestFakeTime runs the swarm, the same code and JSON as the command, in
// fake time (a testing/synctest bubble) on the in-memory network: for
// swarms larger than the machine can run in real time. Time advances only
// when every node waits, so the figures are those of machines that keep up;
// wall_s in the JSON says how long it took. It runs only when
// P2PRADIO_SWARM holds the command's flags:
//
//	P2PRADIO_SWARM="-listeners 10000 -join-rate 500 -duration 60s -json" \
//	  go test ./examples/swarm -run TestFakeTime -v -timeout 90m
func TestFakeTime(t *testing.T) {
	args := os.Getenv("P2PRADIO_SWARM")
	if args == "" {
		t.Skip("a figure run: set P2PRADIO_SWARM to the swarm's flags")
	}
	o := fakeTimeOptions(t, strings.Fields(args))
	wall := time.Now()
	synctest.Test(t, func(t *testing.T) {
		_, err := run(t.Context(), o)
		require.NoError(t, err)
	})
	t.Logf("wall time %v", time.Since(wall).Round(time.Second))
}

// TestFakeTimeSmall keeps the harness working: 30 listeners, 10 of them
// leaves, for 30 s of fake time.
func TestFakeTimeSmall(t *testing.T) {
	args := []string{"-listeners", "30", "-leaves", "0.34", "-duration", "30s", "-json"}
	if os.Getenv("P2PRADIO_TEST_LOG") != "" {
		args = append(args, "-v")
	}
	o := fakeTimeOptions(t, args)
	synctest.Test(t, func(t *testing.T) {
		sum, err := run(t.Context(), o)
		require.NoError(t, err)
		require.Equal(t, 30, sum.Counted)
		require.Zero(t, sum.Stopped)
		require.GreaterOrEqual(t, sum.Continuity.Min, 0.99)
		require.NotNil(t, sum.Leaves)
		require.Equal(t, 10, sum.Leaves.Counted)
		require.LessOrEqual(t, sum.MaxDepth, sum.DepthLimit)
		// Relays move above the leaves (one may still be on its way: a
		// node looks for a better place every 5 s).
		require.LessOrEqual(t, sum.Leaves.RelaysBelowMin, 1, "relays below the shallowest leaf")
		require.GreaterOrEqual(t, sum.Leaves.DepthP50, sum.Leaves.RelayDepthP50)
	})
}

// fakeTimeOptions parses the command's flags for a run in fake time, which
// is always on the in-memory network.
func fakeTimeOptions(t *testing.T, args []string) options {
	var o options
	fs := flag.NewFlagSet("swarm", flag.ContinueOnError)
	o.register(fs)
	require.NoError(t, fs.Parse(args))
	o.net, o.fakeTime = "mem", true
	return o
}
