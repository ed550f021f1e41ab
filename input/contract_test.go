package input

import (
	"bytes"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testSource checks what every Source promises. open returns a new source
// whose stream starts with want and then goes on (or blocks) without
// ending, so that only Close can end it.
func testSource(t *testing.T, open func(t *testing.T) Source, want []byte) {
	t.Run("reads", func(t *testing.T) {
		src := open(t)
		defer src.Close()
		// Title is safe from another goroutine while Read runs.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					_ = src.Title()
				}
			}
		})
		got := make([]byte, 0, len(want))
		sizes := []int{1, 7, 417, 4096, 1 << 16}
		for i := 0; len(got) < len(want); i++ {
			buf := make([]byte, min(sizes[i%len(sizes)], len(want)-len(got)))
			n, err := src.Read(buf)
			require.NoError(t, err)
			require.LessOrEqual(t, n, len(buf))
			got = append(got, buf[:n]...)
		}
		close(stop)
		wg.Wait()
		require.True(t, bytes.Equal(want, got), "the stream differs from the input")
		n, err := src.Read(nil)
		require.NoError(t, err)
		require.Zero(t, n)
	})

	t.Run("close unblocks read", func(t *testing.T) {
		src := open(t)
		errc := make(chan error, 1)
		go func() {
			buf := make([]byte, 4096)
			for {
				if _, err := src.Read(buf); err != nil {
					errc <- err
					return
				}
			}
		}()
		time.Sleep(50 * time.Millisecond) // let Read block (or not: either way)
		require.NoError(t, src.Close())
		select {
		case err := <-errc:
			require.ErrorIs(t, err, ErrClosed)
		case <-time.After(5 * time.Second):
			t.Fatal("Read still blocked 5 s after Close")
		}
	})

	t.Run("after close", func(t *testing.T) {
		src := open(t)
		title := src.Title()
		require.NoError(t, src.Close())
		require.NoError(t, src.Close(), "Close is idempotent")
		_, err := src.Read(make([]byte, 10))
		require.ErrorIs(t, err, ErrClosed)
		require.Equal(t, title, src.Title())
	})
}

// readN reads exactly n bytes from src.
func readN(t *testing.T, src io.Reader, n int) []byte {
	t.Helper()
	buf := make([]byte, n)
	_, err := io.ReadFull(src, buf)
	require.NoError(t, err)
	return buf
}
