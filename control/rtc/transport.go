package rtc

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/logging"
	"github.com/pion/webrtc/v4"

	"github.com/p2pradio/p2pradio/control"
)

// Config configures a Transport. Key is required; every other zero field
// means its documented default.
type Config struct {
	// Key is the node's identity, proven to every peer.
	Key ed25519.PrivateKey
	// ICEServers are STUN or TURN URLs ("stun:host:port"). Nil means host
	// candidates only.
	ICEServers []string
	// IPFilter says which addresses ICE may use, local (to gather
	// candidates on) and remote (candidates to check); LoopbackOnly keeps
	// it to loopback (tests, a node that serves only its own machine). Nil
	// means every address. Loopback candidates are always gathered; mDNS
	// is never used.
	IPFilter func(net.IP) bool
	// Addr is what Addr returns: the name Dial's peers know this transport
	// by. Empty means "webrtc".
	Addr string
	// Signal carries an offer to the transport named addr and returns its
	// answer (there, Answer's result). Nil means Dial fails: the node only
	// answers.
	Signal func(ctx context.Context, addr, offer string) (answer string, err error)
	// MaxConns bounds the links, open or being set up; more offers are
	// refused. Zero means 256.
	MaxConns int
	// Logger receives structured logs (pion's warnings at debug level). Nil
	// means silent.
	Logger *slog.Logger
}

// Errors of the transport itself.
var (
	// ErrNoSignal is returned by Dial without Config.Signal.
	ErrNoSignal = errors.New("rtc: no signalling to dial with")
	// ErrBadOffer wraps what is wrong with an offer given to Answer.
	ErrBadOffer = errors.New("rtc: bad offer")
)

// LoopbackOnly is a Config.IPFilter that keeps ICE on loopback.
func LoopbackOnly(ip net.IP) bool { return ip.IsLoopback() }

// gatherTimeout bounds the wait for ICE gathering before an SDP is sent.
const gatherTimeout = 2 * time.Second

// acceptBacklog is how many proven links wait for Accept.
const acceptBacklog = 32

// Transport makes and answers WebRTC links. It is safe for use by many
// goroutines.
type Transport struct {
	cfg      Config
	log      *slog.Logger
	api      *webrtc.API
	pcConfig webrtc.Configuration
	accepted chan *Conn
	// proof, when set (tests), makes the key proof instead of the key;
	// nil from it sends none.
	proof func(own, peer string) []byte
	// proofTimeout is proofTimeout (shorter in tests).
	proofTimeout time.Duration

	mu     sync.Mutex
	conns  map[*Conn]struct{}
	closed bool
	wg     sync.WaitGroup
	done   chan struct{}
}

var _ control.Transport = (*Transport)(nil)

// New checks cfg and creates a Transport. It does no I/O: sockets are
// bound per link.
func New(cfg Config) (*Transport, error) {
	if len(cfg.Key) != ed25519.PrivateKeySize {
		return nil, errors.New("rtc: Config.Key is required")
	}
	if cfg.Addr == "" {
		cfg.Addr = "webrtc"
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 256
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	var se webrtc.SettingEngine
	se.LoggerFactory = loggerFactory{cfg.Logger}
	se.SetIncludeLoopbackCandidate(true)
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4, webrtc.NetworkTypeUDP6})
	se.SetICETimeouts(2*time.Second, 5*time.Second, time.Second)
	se.SetSCTPMaxMessageSize(128 << 10) // above MaxControl and MaxData: those close the link
	if cfg.IPFilter != nil {
		se.SetIPFilter(cfg.IPFilter)
		se.SetRemoteIPFilter(cfg.IPFilter)
	}
	t := &Transport{
		cfg:          cfg,
		log:          cfg.Logger,
		api:          webrtc.NewAPI(webrtc.WithSettingEngine(se)),
		accepted:     make(chan *Conn, acceptBacklog),
		proofTimeout: proofTimeout,
		conns:        map[*Conn]struct{}{},
		done:         make(chan struct{}),
	}
	if len(cfg.ICEServers) > 0 {
		t.pcConfig.ICEServers = []webrtc.ICEServer{{URLs: cfg.ICEServers}}
	}
	return t, nil
}

// Addr is Config.Addr.
func (t *Transport) Addr() string { return t.cfg.Addr }

// Key is the transport's identity key.
func (t *Transport) Key() ed25519.PublicKey { return t.cfg.Key.Public().(ed25519.PublicKey) }

// add registers a new link; false when the transport is closed or full.
func (t *Transport) add(c *Conn) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.closed:
		return control.ErrClosed
	case len(t.conns) >= t.cfg.MaxConns:
		return fmt.Errorf("%w: %d links", control.ErrRefused, len(t.conns))
	}
	t.conns[c] = struct{}{}
	return nil
}

func (t *Transport) forget(c *Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

// goFunc runs f on a goroutine that Close waits for, unless the transport
// is closed.
func (t *Transport) goFunc(f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed {
		t.wg.Go(f)
	}
}

// start creates a link and registers it.
func (t *Transport) start() (*Conn, error) {
	c, err := t.newConn()
	if err != nil {
		return nil, err
	}
	if err := t.add(c); err != nil {
		c.pc.Close()
		return nil, err
	}
	return c, nil
}

// localSDP sets desc as the local description and returns it with the
// candidates gathered within gatherTimeout.
func (c *Conn) localSDP(ctx context.Context, desc webrtc.SessionDescription) (string, error) {
	gathered := webrtc.GatheringCompletePromise(c.pc)
	if err := c.pc.SetLocalDescription(desc); err != nil {
		return "", err
	}
	timer := time.NewTimer(gatherTimeout)
	defer timer.Stop()
	select {
	case <-gathered:
	case <-timer.C:
	case <-ctx.Done():
		return "", ctx.Err()
	case <-c.done:
		return "", c.Err()
	}
	return c.pc.LocalDescription().SDP, nil
}

// Dial offers a link to the transport named addr through Config.Signal
// and returns it once both keys are proven. When wantKey is not nil the
// peer must prove it.
func (t *Transport) Dial(ctx context.Context, addr string, wantKey ed25519.PublicKey) (control.Conn, error) {
	if t.cfg.Signal == nil {
		return nil, ErrNoSignal
	}
	c, err := t.start()
	if err != nil {
		return nil, err
	}
	conn, err := t.dial(ctx, c, addr)
	if err != nil {
		code := control.CodeProtocol
		if ctx.Err() != nil {
			code = control.CodeCanceled
		}
		c.Close(code, "dial failed")
		if t.isClosed() {
			return nil, control.ErrClosed
		}
		return nil, err
	}
	if wantKey != nil && !conn.RemoteKey().Equal(wantKey) {
		c.Close(control.CodeProtocol, "wrong key")
		return nil, control.ErrKeyMismatch
	}
	return conn, nil
}

func (t *Transport) dial(ctx context.Context, c *Conn, addr string) (*Conn, error) {
	offer, err := c.pc.CreateOffer(nil)
	if err != nil {
		return nil, err
	}
	sdp, err := c.localSDP(ctx, offer)
	if err != nil {
		return nil, err
	}
	answer, err := t.cfg.Signal(ctx, addr, sdp)
	if err != nil {
		return nil, err
	}
	if err := c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		return nil, fmt.Errorf("rtc: bad answer: %w", err)
	}
	if err := c.handshake(ctx, time.Now()); err != nil {
		return nil, err
	}
	return c, nil
}

// Answer takes an offer, returns the answer and sets the link up in the
// background: once the peer's key is proven, Accept returns it.
func (t *Transport) Answer(ctx context.Context, offer string) (string, error) {
	c, err := t.start()
	if err != nil {
		return "", err
	}
	sdp, err := t.answer(ctx, c, offer)
	if err != nil {
		c.Close(control.CodeProtocol, "bad offer")
		return "", err
	}
	started := time.Now()
	t.goFunc(func() {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-t.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		if err := c.handshake(ctx, started); err != nil {
			t.log.Debug("webrtc link not set up", "err", err)
			c.Close(control.CodeProtocol, err.Error())
			return
		}
		select {
		case t.accepted <- c:
		default:
			c.Close(control.CodeRefused, "accept backlog full")
		}
	})
	return sdp, nil
}

func (t *Transport) answer(ctx context.Context, c *Conn, offer string) (string, error) {
	if err := c.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadOffer, err)
	}
	if _, err := fingerprint(offer); err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadOffer, err)
	}
	answer, err := c.pc.CreateAnswer(nil)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadOffer, err)
	}
	return c.localSDP(ctx, answer)
}

// Accept waits for the next answered link whose peer proved its key.
func (t *Transport) Accept(ctx context.Context) (control.Conn, error) {
	select {
	case c := <-t.accepted:
		return c, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.done:
		return nil, control.ErrClosed
	}
}

func (t *Transport) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

// Close closes every link (code control.CodeShutdown) and the transport,
// and waits for its goroutines. It is idempotent.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		t.wg.Wait()
		return nil
	}
	t.closed = true
	close(t.done)
	conns := make([]*Conn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { c.Close(control.CodeShutdown, "shutting down") })
	}
	wg.Wait()
	t.wg.Wait()
	return nil
}

// loggerFactory hands pion's warnings and errors to a slog.Logger at
// debug level, and drops the rest.
type loggerFactory struct{ log *slog.Logger }

func (f loggerFactory) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{f.log.With("pion", scope)}
}

type pionLogger struct{ log *slog.Logger }

func (pionLogger) Trace(string)          {}
func (pionLogger) Tracef(string, ...any) {}
func (pionLogger) Debug(string)          {}
func (pionLogger) Debugf(string, ...any) {}
func (pionLogger) Info(string)           {}
func (pionLogger) Infof(string, ...any)  {}
func (l pionLogger) Warn(msg string)     { l.log.Debug(msg) }
func (l pionLogger) Warnf(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...))
}
func (l pionLogger) Error(msg string) { l.log.Debug(msg) }
func (l pionLogger) Errorf(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...))
}
