package p2pradio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/p2pradio/p2pradio/mux"
)

// broadcast reads the source until it ends or ctx is done, cutting its
// frames into signed chunks that every output gets as soon as they are
// complete.
func (n *Node) broadcast(ctx context.Context) error {
	src := n.cfg.Source
	stop := context.AfterFunc(ctx, func() { src.Close() })
	defer stop()
	if n.tracker != nil {
		n.tracker.SetSelf(n.selfEntry())
	}
	d := mux.NewDemuxer(src)
	ch := mux.NewChunker(mux.ChunkerConfig{Duration: n.cfg.ChunkDuration, Key: n.key})
	var lastChunk time.Time
	for {
		f, err := d.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.EOF) {
				if c, _ := ch.Flush(); c != nil {
					n.accept(c, time.Time{})
				}
				n.log.Info("source ended", "frames", d.Stats().Frames)
				return nil
			}
			return fmt.Errorf("p2pradio: source: %w", err)
		}
		ch.SetTitle(src.Title())
		c, err := ch.Add(f, time.Now())
		if err != nil {
			return err
		}
		if c != nil {
			if gap := time.Since(lastChunk); gap > 300*time.Millisecond && c.Seq > 0 {
				n.log.Warn("source was late", "gap", gap, "seq", c.Seq)
			}
			lastChunk = time.Now()
			n.accept(c, time.Time{})
			if n.tracker != nil && c.Seq%10 == 0 {
				n.tracker.SetSelf(n.selfEntry())
			}
		}
	}
}
