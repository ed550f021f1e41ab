package main

import (
	"flag"
	"os"
	"runtime"
	"strconv"
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

// BenchmarkSwarmMem is the in-memory swarm's cost per listener, the
// command's -net mem in real time: 200 listeners (joining at 200/s) for
// 30 s, NoDecode playout as the command's default. It reports the CPU time
// and the allocations of the steady state (from 10 s after the last joiner
// to the end) per listener-second, the cores the process used over it and
// the lowest continuity (below 0.99: the machine, shared, did not give the
// swarm the CPU it needed, and the figures are off).
// P2PRADIO_BENCH_LISTENERS overrides the 200.
//
//	go test ./examples/swarm -run '^$' -bench SwarmMem -benchtime 1x
func BenchmarkSwarmMem(b *testing.B) {
	n := 200
	if v := os.Getenv("P2PRADIO_BENCH_LISTENERS"); v != "" {
		var err error
		n, err = strconv.Atoi(v)
		require.NoError(b, err)
	}
	var o options
	fs := flag.NewFlagSet("swarm", flag.ContinueOnError)
	o.register(fs)
	require.NoError(b, fs.Parse([]string{"-net", "mem", "-listeners", strconv.Itoa(n), "-join-rate", "200", "-duration", "30s", "-json"}))
	var cpu, allocs, bytes, listenerS, steadyS float64
	contMin := 1.0
	for b.Loop() {
		var ms0, ms1 runtime.MemStats
		var cpu0, cpu1 time.Duration
		o.onSteady = func() { runtime.ReadMemStats(&ms0); cpu0 = cpuTime() }
		o.onEnd = func() { runtime.ReadMemStats(&ms1); cpu1 = cpuTime() }
		null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		require.NoError(b, err)
		stdout := os.Stdout
		os.Stdout = null // the JSON
		sum, err := run(b.Context(), o)
		os.Stdout = stdout
		null.Close()
		require.NoError(b, err)
		if sum.Continuity.Min < 0.99 {
			b.Logf("continuity min %.4f: the swarm did not get the CPU it needed", sum.Continuity.Min)
		}
		contMin = min(contMin, sum.Continuity.Min)
		ls := sum.SteadyS * float64(sum.Alive)
		require.Positive(b, ls)
		cpu += (cpu1 - cpu0).Seconds() * 1000
		allocs += float64(ms1.Mallocs - ms0.Mallocs)
		bytes += float64(ms1.TotalAlloc - ms0.TotalAlloc)
		listenerS += ls
		steadyS += sum.SteadyS
	}
	b.ReportMetric(cpu/listenerS, "cpu-ms/listener-s")
	b.ReportMetric(allocs/listenerS, "allocs/listener-s")
	b.ReportMetric(bytes/listenerS, "B/listener-s")
	b.ReportMetric(cpu/1000/steadyS, "cores")
	b.ReportMetric(contMin, "continuity-min")
}
