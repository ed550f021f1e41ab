package mux

import (
	"bytes"
	"crypto/ed25519"
	"sync"
)

// SignatureCache remembers chunks whose signature verified, so that many
// nodes in one process (a simulation of a swarm) check each chunk's
// signature once. A hit needs the very same bytes and station key, so it
// accepts exactly what Verify accepts. It holds the last Size chunks. It is
// safe for use by many goroutines; a real deployment, one node per process,
// has no use for it.
type SignatureCache struct {
	mu      sync.Mutex
	entries map[[SignatureSize]byte]cached
	order   [][SignatureSize]byte
	next    int
}

type cached struct {
	station string
	raw     []byte
	c       *Chunk // the chunk that verified
}

// NewSignatureCache returns a cache of size entries (at least 1).
func NewSignatureCache(size int) *SignatureCache {
	size = max(size, 1)
	return &SignatureCache{entries: make(map[[SignatureSize]byte]cached, size), order: make([][SignatureSize]byte, size)}
}

// Verify is c.Verify(station), remembered.
func (s *SignatureCache) Verify(c *Chunk, station ed25519.PublicKey) error {
	b := c.Bytes()
	s.mu.Lock()
	e, ok := s.entries[c.Signature]
	s.mu.Unlock()
	if ok && e.station == string(station) && bytes.Equal(e.raw, b) {
		return nil
	}
	if err := c.Verify(station); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.entries[c.Signature]; !ok {
		delete(s.entries, s.order[s.next])
		s.order[s.next] = c.Signature
		s.next = (s.next + 1) % len(s.order)
		// The chunk's own bytes, not a copy: they never change (see
		// Chunk). Where nodes share them (control.MemConfig.ShareData) a
		// hit compares a buffer with itself, which is immediate.
		s.entries[c.Signature] = cached{station: string(station), raw: b, c: c}
	}
	return nil
}

// Lookup returns the chunk that verified with station's key whose encoding
// is the very buffer b (not an equal copy), else nil. Where the nodes of a
// simulation share the buffers of their data messages
// (control.MemConfig.ShareData), every node would parse the same bytes into
// the same chunk: they share that one (a chunk does not change once
// parsed), parsed and checked once.
func (s *SignatureCache) Lookup(b []byte, station ed25519.PublicKey) *Chunk {
	if len(b) < SignatureSize {
		return nil
	}
	sig := [SignatureSize]byte(b[len(b)-SignatureSize:])
	s.mu.Lock()
	e, ok := s.entries[sig]
	s.mu.Unlock()
	if !ok || e.station != string(station) || len(e.raw) != len(b) || &e.raw[0] != &b[0] {
		return nil
	}
	return e.c
}
