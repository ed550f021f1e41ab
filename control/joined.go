package control

import (
	"context"
	"crypto/ed25519"
	"sync"
)

// Acceptor is a source of incoming connections: a Transport, or links
// that cannot be dialed back, such as browsers' (package control/rtc).
// Accept is called from one goroutine at a time and returns ErrClosed once
// the source is closed.
type Acceptor interface {
	Accept(ctx context.Context) (Conn, error)
}

// fromBrowser reports whether c is a browser's link: a connection with a
// method Browser() bool that says so (control/rtc's). A browser cannot be
// dialed back: the overlay serves it as a peer only, never as a session
// at the rendezvous, and never offers it to other nodes.
func fromBrowser(c Conn) bool {
	b, ok := c.(interface{ Browser() bool })
	return ok && b.Browser()
}

// Joined is a Transport that dials with one transport and accepts from it
// and from other sources; see Join.
type Joined struct {
	primary Transport
	sources []Acceptor

	start   sync.Once
	ch      chan Conn
	ctx     context.Context
	cancel  context.CancelFunc
	primEnd chan struct{} // closed when the primary's Accept ended
	wg      sync.WaitGroup
}

var _ Transport = (*Joined)(nil)

// Join returns a Transport whose Addr, Key and Dial are primary's and
// whose Accept returns the connections of primary and of every extra, as
// they come. The overlay treats them alike: an accepted link is budgeted
// and checked by what it says, whatever carried it.
//
// Joined owns none of them: closing it stops its accepting, and the
// owners of primary and the extras close those.
func Join(primary Transport, extra ...Acceptor) *Joined {
	ctx, cancel := context.WithCancel(context.Background())
	return &Joined{
		primary: primary,
		sources: append([]Acceptor{primary}, extra...),
		ch:      make(chan Conn),
		ctx:     ctx,
		cancel:  cancel,
		primEnd: make(chan struct{}),
	}
}

// Addr is the primary's.
func (j *Joined) Addr() string { return j.primary.Addr() }

// Key is the primary's.
func (j *Joined) Key() ed25519.PublicKey { return j.primary.Key() }

// Punch opens the primary's NAT mapping towards addr (see Puncher); it
// does nothing when the primary cannot punch. Without it, a node that
// accepts browsers would never be punched through to.
func (j *Joined) Punch(ctx context.Context, addr string, ttl int) error {
	if pu, ok := j.primary.(Puncher); ok {
		return pu.Punch(ctx, addr, ttl)
	}
	return nil
}

var _ Puncher = (*Joined)(nil)

// Dial dials with the primary.
func (j *Joined) Dial(ctx context.Context, addr string, wantKey ed25519.PublicKey) (Conn, error) {
	if j.ctx.Err() != nil {
		return nil, ErrClosed
	}
	return j.primary.Dial(ctx, addr, wantKey)
}

// Accept returns the next connection from any source. It returns
// ErrClosed once Joined or its primary is closed.
func (j *Joined) Accept(ctx context.Context) (Conn, error) {
	j.start.Do(func() {
		for i, src := range j.sources {
			j.wg.Go(func() { j.pump(src, i == 0) })
		}
	})
	select {
	case c := <-j.ch:
		return c, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-j.ctx.Done():
		return nil, ErrClosed
	case <-j.primEnd:
		return nil, ErrClosed
	}
}

// pump hands src's connections to Accept until src or Joined is closed.
func (j *Joined) pump(src Acceptor, primary bool) {
	if primary {
		defer close(j.primEnd)
	}
	for {
		c, err := src.Accept(j.ctx)
		if err != nil {
			return // closed (a source returns nothing else)
		}
		select {
		case j.ch <- c:
		case <-j.ctx.Done():
			c.Close(CodeShutdown, "shutting down")
			return
		}
	}
}

// Close stops accepting and waits for its goroutines; it closes neither
// the primary nor the extras. It is idempotent.
func (j *Joined) Close() error {
	j.cancel()
	j.wg.Wait()
	return nil
}
