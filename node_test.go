package p2pradio

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/input"
	"github.com/p2pradio/p2pradio/playout"
)

func TestSwarmInMemory(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		net := control.NewMemNetwork(control.MemConfig{Link: control.LinkConfig{Delay: 5 * time.Millisecond}})
		defer net.Close()
		src, err := input.OpenFile("testdata/cbr128.mp3", input.FileConfig{Loop: true})
		require.NoError(t, err)
		btr, err := net.NewTransport(nil)
		require.NoError(t, err)
		b, err := New(Config{Source: src, Transport: btr, UploadKbps: 300, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))})
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() { fmt.Println("broadcaster run:", b.Run(ctx)) }()
		var ls []*Node
		for i := range 6 {
			tr, err := net.NewTransport(nil)
			require.NoError(t, err)
			l, err := New(Config{Station: b.Address().String(), Transport: tr, UploadKbps: 300, Sink: &playout.MemorySink{}, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))})
			require.NoError(t, err, i)
			ls = append(ls, l)
			go func() { fmt.Println("listener run:", l.Run(ctx)) }()
		}
		fmt.Println(time.Now())
		time.Sleep(10 * time.Second)
		fmt.Println(time.Now(), b.Stats().ChunksReceived)
		buf := make([]byte, 1<<20)
		os.WriteFile("/tmp/stacks.txt", buf[:runtime.Stack(buf, true)], 0o644)
		for i, l := range ls {
			s := l.Stats()
			fmt.Printf("listener %d: depth %d parents %v children %d continuity %.4f startup %v played %d concealed %d muted %d\n",
				i, s.Depth, s.Parents, s.Children, s.Continuity, s.Startup, s.Playout.FramesPlayed, s.Playout.FramesConcealed, s.Playout.FramesMuted)
		}
		fmt.Printf("broadcaster children %d\n", b.Stats().Children)
		cancel()
		for _, l := range ls {
			l.Close()
		}
		b.Close()
	})
}
