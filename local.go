package p2pradio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/p2pradio/p2pradio/input"
	"github.com/p2pradio/p2pradio/mux"
	"github.com/p2pradio/p2pradio/playout"
)

// Local plays a source on this machine through the same blocks a network
// node uses, without any network: input -> mux (demux, chunk, reassemble)
// -> playout.
type Local struct {
	src    input.Source
	reasm  *mux.Reassembler
	player *playout.Player

	closeOnce sync.Once
}

// NewLocal prepares to play src into cfg.Sink (nil means discard). Local
// owns src and the sink from now on.
func NewLocal(src input.Source, cfg playout.Config) (*Local, error) {
	l := &Local{src: src, reasm: mux.NewReassembler(mux.ReassemblerConfig{})}
	p, err := playout.New(l.reasm, cfg)
	if err != nil {
		return nil, err
	}
	l.player = p
	return l, nil
}

// Run plays until the source ends and everything was played (then it
// returns nil), ctx is done, or the source fails.
func (l *Local) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { l.src.Close() })
	defer stop()
	played := make(chan error, 1)
	go func() { played <- l.player.Run(ctx) }()

	d := mux.NewDemuxer(l.src)
	ch := mux.NewChunker(mux.ChunkerConfig{})
	var err error
	for {
		var f mux.Frame
		if f, err = d.Next(); err != nil {
			break
		}
		ch.SetTitle(l.src.Title())
		c, cerr := ch.Add(f, time.Now())
		if cerr != nil {
			err = cerr
			break
		}
		if c != nil {
			l.reasm.Push(c)
		}
	}
	if c, _ := ch.Flush(); c != nil {
		l.reasm.Push(c)
	}
	l.reasm.End()
	if errors.Is(err, io.EOF) || ctx.Err() != nil {
		err = nil
	} else {
		err = fmt.Errorf("p2pradio: input: %w", err)
		cancel()
	}
	perr := <-played
	if err == nil && perr != nil && !errors.Is(perr, context.Canceled) {
		err = perr
	}
	return err
}

// Stats returns the player's figures.
func (l *Local) Stats() playout.Stats { return l.player.Stats() }

// Close stops playing and releases the source and the sink.
func (l *Local) Close() error {
	l.closeOnce.Do(func() {
		l.src.Close()
		l.player.Close()
	})
	return nil
}
