// Package cli holds what the example programs share: opening an input from
// a command-line argument and printing a status line that updates in place
// on a terminal and prints plain lines otherwise.
package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/p2pradio/p2pradio/input"
	"github.com/p2pradio/p2pradio/internal/testaudio"
)

// OpenInput opens what arg names: "" for the built-in demo audio, "-" for
// standard input, an http(s) URL for an Icecast/SHOUTcast stream, anything
// else a file (paced in real time, looped if loop is set).
func OpenInput(ctx context.Context, arg string, loop bool) (input.Source, error) {
	switch {
	case arg == "":
		path, err := DemoFile()
		if err != nil {
			return nil, err
		}
		return input.OpenFile(path, input.FileConfig{Loop: loop})
	case arg == "-":
		return input.NewReader(Stdin()), nil
	case strings.HasPrefix(arg, "http://") || strings.HasPrefix(arg, "https://"):
		return input.OpenURL(ctx, arg, input.HTTPConfig{})
	default:
		return input.OpenFile(arg, input.FileConfig{Loop: loop})
	}
}

// Status prints a status line to w: in place when w is a terminal, else as
// a plain line at most every interval.
type Status struct {
	w        io.Writer
	tty      bool
	interval time.Duration
	last     time.Time
	width    int
}

// NewStatus returns a Status writing to w.
func NewStatus(w *os.File, interval time.Duration) *Status {
	fi, err := w.Stat()
	tty := err == nil && fi.Mode()&os.ModeCharDevice != 0
	return &Status{w: w, tty: tty, interval: interval}
}

// Print shows line.
func (s *Status) Print(line string) {
	if s.tty {
		pad := ""
		if n := s.width - len(line); n > 0 {
			pad = strings.Repeat(" ", n)
		}
		s.width = len(line)
		fmt.Fprintf(s.w, "\r%s%s", line, pad)
		return
	}
	if time.Since(s.last) < s.interval {
		return
	}
	s.last = time.Now()
	fmt.Fprintln(s.w, line)
}

// Done ends the status line.
func (s *Status) Done() {
	if s.tty && s.width > 0 {
		fmt.Fprintln(s.w)
	}
}

// Duration formats d as m:ss.
func Duration(d time.Duration) string {
	d = d.Round(time.Second)
	return fmt.Sprintf("%d:%02d", int(d.Minutes()), int(d.Seconds())%60)
}

// DemoFile writes the built-in demo audio to a file in the temporary folder
// (once per content) and returns its path.
func DemoFile() (string, error) {
	sum := sha256.Sum256(testaudio.Demo)
	path := filepath.Join(os.TempDir(), fmt.Sprintf("p2pradio-demo-%x.mp3", sum[:6]))
	if b, err := os.ReadFile(path); err == nil && bytes.Equal(b, testaudio.Demo) {
		return path, nil
	}
	tmp, err := os.CreateTemp(os.TempDir(), "p2pradio-demo-*.mp3")
	if err != nil {
		return "", err
	}
	if _, err := tmp.Write(testaudio.Demo); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	return path, os.Rename(tmp.Name(), path)
}

// Logger returns a text logger on standard error at Info level when
// verbose (Debug level when P2PRADIO_LOG=debug), else a silent one.
func Logger(verbose bool) *slog.Logger {
	if !verbose {
		return slog.New(slog.DiscardHandler)
	}
	level := slog.LevelInfo
	if os.Getenv("P2PRADIO_LOG") == "debug" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// Watch runs run in its own goroutine and shows line() on a Status every
// interval until run returns, then once more. It returns run's error; the
// end of the context (interrupt, -duration) is not an error.
func Watch(run func() error, interval, plainEvery time.Duration, line func() string) error {
	done := make(chan error, 1)
	go func() { done <- run() }()
	st := NewStatus(os.Stderr, plainEvery)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			st.Print(line())
			st.Done()
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return nil
			}
			return err
		case <-t.C:
			st.Print(line())
		}
	}
}
