package input

import (
	"bytes"
	"io"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// feed writes data to w in uneven pieces and then leaves w open.
func feed(t *testing.T, w io.Writer, data []byte) {
	for i, n := 0, 1; i < len(data); i, n = i+n, n*3%1000+1 {
		if _, err := w.Write(data[i:min(i+n, len(data))]); err != nil {
			return // the reader was closed
		}
	}
}

func TestReaderContract(t *testing.T) {
	data := readTestdata(t, "cbr128.mp3")
	t.Run("io.Pipe", func(t *testing.T) {
		testSource(t, func(t *testing.T) Source {
			pr, pw := io.Pipe()
			done := make(chan struct{})
			go func() { defer close(done); feed(t, pw, data) }()
			t.Cleanup(func() { pw.Close(); <-done })
			return NewReader(pr)
		}, data)
	})
	t.Run("os.Pipe", func(t *testing.T) {
		testSource(t, func(t *testing.T) Source {
			pr, pw, err := os.Pipe()
			require.NoError(t, err)
			done := make(chan struct{})
			go func() { defer close(done); feed(t, pw, data) }()
			t.Cleanup(func() { pw.Close(); <-done })
			return NewReader(pr)
		}, data)
	})
}

func TestReaderPassesThroughToEOF(t *testing.T) {
	// Any bytes pass unchanged, MP3 or not; the demuxer judges them.
	for _, name := range []string{"vbr_id3_xing.mp3", "junk.mp3", "truncated.mp3"} {
		data := readTestdata(t, name)
		r := NewReader(bytes.NewReader(data))
		got, err := io.ReadAll(r)
		require.NoError(t, err)
		require.Equal(t, data, got, name)
		require.Empty(t, r.Title())
		require.NoError(t, r.Close(), "a reader that is not a Closer closes fine")
		_, err = r.Read(make([]byte, 1))
		require.ErrorIs(t, err, ErrClosed)
	}
}

// closeErrReader is a reader whose Close fails.
type closeErrReader struct{ io.Reader }

func (closeErrReader) Close() error { return io.ErrClosedPipe }

func TestReaderCloseReturnsUnderlyingError(t *testing.T) {
	r := NewReader(closeErrReader{bytes.NewReader(nil)})
	require.ErrorIs(t, r.Close(), io.ErrClosedPipe)
	require.ErrorIs(t, r.Close(), io.ErrClosedPipe, "the same result again")
}
