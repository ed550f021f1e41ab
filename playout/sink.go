package playout

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// SinkFunc adapts a function to a Sink whose Close does nothing. The
// function must not modify pcm nor keep it after it returns.
type SinkFunc func(pcm []byte, sampleRate int) error

var _ Sink = SinkFunc(nil)

// WritePCM calls f(pcm, sampleRate).
func (f SinkFunc) WritePCM(pcm []byte, sampleRate int) error { return f(pcm, sampleRate) }

// Close does nothing.
func (f SinkFunc) Close() error { return nil }

// checkPCM reports whether pcm and sampleRate describe whole stereo 16-bit
// sample frames at a positive rate.
func checkPCM(pcm []byte, sampleRate int) error {
	if len(pcm)%4 != 0 {
		return fmt.Errorf("%w: %d bytes is not a whole number of 16-bit stereo sample frames", ErrFormat, len(pcm))
	}
	if sampleRate <= 0 {
		return fmt.Errorf("%w: sample rate %d", ErrFormat, sampleRate)
	}
	return nil
}

// Discard is a Sink that drops the PCM and counts it. The zero value is
// ready to use; its methods are safe from any goroutine.
type Discard struct {
	bytes  atomic.Int64
	frames atomic.Int64 // sample frames
	nanos  atomic.Int64 // playing time
}

var _ Sink = (*Discard)(nil)

// WritePCM counts pcm.
func (d *Discard) WritePCM(pcm []byte, sampleRate int) error {
	if err := checkPCM(pcm, sampleRate); err != nil {
		return err
	}
	n := int64(len(pcm) / 4)
	d.bytes.Add(int64(len(pcm)))
	d.frames.Add(n)
	d.nanos.Add(n * int64(time.Second) / int64(sampleRate))
	return nil
}

// Close does nothing.
func (d *Discard) Close() error { return nil }

// Bytes is the number of PCM bytes written.
func (d *Discard) Bytes() int64 { return d.bytes.Load() }

// Duration is the playing time written.
func (d *Discard) Duration() time.Duration { return time.Duration(d.nanos.Load()) }

// MemorySink is a Sink that keeps all the PCM in memory, with the time and
// size of every write: the sink of tests. The zero value is ready to use;
// its methods are safe from any goroutine. It grows without bound.
type MemorySink struct {
	mu     sync.Mutex
	pcm    []byte
	writes []Write
	closed bool
}

// Write describes one call of MemorySink.WritePCM.
type Write struct {
	At         time.Time // when WritePCM was called
	Offset     int       // of the write's first byte in PCM()
	Bytes      int
	SampleRate int
}

var _ Sink = (*MemorySink)(nil)

// WritePCM appends a copy of pcm. It returns ErrClosed after Close.
func (m *MemorySink) WritePCM(pcm []byte, sampleRate int) error {
	if err := checkPCM(pcm, sampleRate); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.writes = append(m.writes, Write{At: time.Now(), Offset: len(m.pcm), Bytes: len(pcm), SampleRate: sampleRate})
	m.pcm = append(m.pcm, pcm...)
	return nil
}

// Close marks the sink closed; the PCM stays readable.
func (m *MemorySink) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return nil
}

// Closed reports whether Close was called.
func (m *MemorySink) Closed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// PCM returns a copy of everything written.
func (m *MemorySink) PCM() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.pcm...)
}

// Writes returns a copy of the list of writes.
func (m *MemorySink) Writes() []Write {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Write(nil), m.writes...)
}

// WAVSink is a Sink that writes a standard RIFF/WAVE file of 16-bit stereo
// PCM; its methods are safe from any goroutine. The header is written with the first PCM (or at Close, for a file
// with no audio, at 44100 Hz) and its sizes are fixed up at Close.
//
// One file has one sample rate: WritePCM at a rate other than the first
// returns an error wrapping ErrFormat and writes nothing (a Player then
// stops; start a new file to go on). The RIFF format cannot describe more
// than 4 GiB: a write that would pass that limit fails the same way.
type WAVSink struct {
	mu     sync.Mutex
	w      io.WriteSeeker
	file   *os.File // owned, closed by Close; nil when the caller owns w
	rate   int
	data   int64 // PCM bytes written
	header bool
	closed bool
	err    error // sticky write error
}

var _ Sink = (*WAVSink)(nil)

const (
	wavHeaderSize = 44
	maxWAVData    = 1<<32 - 1 - (wavHeaderSize - 8)
)

// NewWAVSink returns a WAVSink writing to w from its current position. Close
// fixes up the header but does not close w.
func NewWAVSink(w io.WriteSeeker) *WAVSink { return &WAVSink{w: w} }

// CreateWAV creates (or truncates) the file at path and returns a WAVSink
// writing to it; Close closes the file.
func CreateWAV(path string) (*WAVSink, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &WAVSink{w: f, file: f}, nil
}

// WritePCM appends pcm to the file.
func (s *WAVSink) WritePCM(pcm []byte, sampleRate int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.err != nil {
		return s.err
	}
	if err := checkPCM(pcm, sampleRate); err != nil {
		return err
	}
	if s.header && sampleRate != s.rate {
		return fmt.Errorf("%w: WAV file is at %d Hz, PCM at %d Hz", ErrFormat, s.rate, sampleRate)
	}
	if s.data+int64(len(pcm)) > maxWAVData {
		return fmt.Errorf("%w: WAV file would exceed 4 GiB", ErrFormat)
	}
	if !s.header {
		s.rate = sampleRate
		if err := s.writeHeader(); err != nil {
			return err
		}
	}
	n, err := s.w.Write(pcm)
	s.data += int64(n)
	if err != nil {
		s.err = err
		return err
	}
	return nil
}

func (s *WAVSink) writeHeader() error {
	var h [wavHeaderSize]byte
	copy(h[0:], "RIFF")
	binary.LittleEndian.PutUint32(h[4:], uint32(wavHeaderSize-8+s.data))
	copy(h[8:], "WAVEfmt ")
	binary.LittleEndian.PutUint32(h[16:], 16) // fmt chunk size
	binary.LittleEndian.PutUint16(h[20:], 1)  // PCM
	binary.LittleEndian.PutUint16(h[22:], 2)  // channels
	binary.LittleEndian.PutUint32(h[24:], uint32(s.rate))
	binary.LittleEndian.PutUint32(h[28:], uint32(s.rate*4)) // byte rate
	binary.LittleEndian.PutUint16(h[32:], 4)                // block align
	binary.LittleEndian.PutUint16(h[34:], 16)               // bits per sample
	copy(h[36:], "data")
	binary.LittleEndian.PutUint32(h[40:], uint32(s.data))
	if _, err := s.w.Write(h[:]); err != nil {
		s.err = err
		return err
	}
	s.header = true
	return nil
}

// Close writes the final sizes into the header and, for a WAVSink made by
// CreateWAV, closes the file. It is idempotent.
func (s *WAVSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	err := s.finish()
	if s.file != nil {
		err = errors.Join(err, s.file.Close())
	}
	return err
}

func (s *WAVSink) finish() error {
	if s.err != nil {
		return s.err
	}
	if !s.header {
		s.rate = 44100
		return s.writeHeader()
	}
	end, err := s.w.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	start := end - s.data - wavHeaderSize
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(wavHeaderSize-8+s.data))
	if err := writeAt(s.w, b[:], start+4); err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(b[:], uint32(s.data))
	if err := writeAt(s.w, b[:], start+40); err != nil {
		return err
	}
	_, err = s.w.Seek(end, io.SeekStart)
	return err
}

func writeAt(w io.WriteSeeker, b []byte, off int64) error {
	if _, err := w.Seek(off, io.SeekStart); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}
