package p2pradio

import (
	"context"
	"errors"
	"fmt"
	"sync"

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

	err := mux.Pump(mux.NewDemuxer(l.src), mux.NewChunker(mux.ChunkerConfig{}), l.src.Title, func(c *mux.Chunk) { l.reasm.Push(c) })
	l.reasm.End()
	if err == nil || ctx.Err() != nil {
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
