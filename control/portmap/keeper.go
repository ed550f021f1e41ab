package portmap

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// KeeperConfig configures a Keeper.
type KeeperConfig struct {
	// Mapper asks the router. Required.
	Mapper Mapper
	// Proto is "udp" or "tcp"; empty means "udp".
	Proto string
	// Port is the local port to map. Required.
	Port int
	// Lifetime is the lifetime asked for; zero means 10 minutes. The
	// mapping is renewed when half of what the router granted is left (a
	// permanent mapping is asked for again every Lifetime).
	Lifetime time.Duration
	// OnChange, when set, is called from Run's goroutine whenever the
	// state changes: a new or different mapping, a failure, the removal at
	// the end. It must not block for long.
	OnChange func(State)
	// Logger receives structured logs; nil means silent.
	Logger *slog.Logger
}

// State is what a Keeper holds: a mapping, or why it has none.
type State struct {
	Mapping Mapping // zero when none
	Err     error   // the last attempt's failure, nil when it worked
	// Renewed is when the mapping was last granted.
	Renewed time.Time
}

// Keeper holds one port mapping while Run runs. Its methods are safe from
// any goroutine.
type Keeper struct {
	cfg KeeperConfig
	log *slog.Logger

	mu    sync.Mutex
	state State
}

// Retry waits after a failed attempt: the first, doubled up to the last.
const (
	retryFirst = 5 * time.Second
	retryMax   = 5 * time.Minute
	// unmapTimeout bounds the removal when Run ends.
	unmapTimeout = 2 * time.Second
	// attemptTimeout bounds one attempt (discovery and the request).
	attemptTimeout = 10 * time.Second
)

// NewKeeper returns a Keeper; it does no I/O until Run.
func NewKeeper(cfg KeeperConfig) *Keeper {
	if cfg.Proto == "" {
		cfg.Proto = "udp"
	}
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = 10 * time.Minute
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Keeper{cfg: cfg, log: log}
}

// State returns the current state.
func (k *Keeper) State() State {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.state
}

func (k *Keeper) set(s State) {
	k.mu.Lock()
	changed := s.Mapping != k.state.Mapping || (s.Err == nil) != (k.state.Err == nil)
	k.state = s
	k.mu.Unlock()
	if changed && k.cfg.OnChange != nil {
		k.cfg.OnChange(s)
	}
}

// Run maps the port, keeps the mapping until ctx is done, then removes it
// (within 2 s) and returns.
func (k *Keeper) Run(ctx context.Context) {
	var held Mapping
	wait := retryFirst
	for {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		m, err := k.cfg.Mapper.Map(actx, k.cfg.Proto, k.cfg.Port, k.cfg.Lifetime)
		cancel()
		var next time.Duration
		switch {
		case ctx.Err() != nil:
			if err == nil {
				held = m
			}
		case err != nil:
			k.log.Info("port mapping failed", "port", k.cfg.Port, "err", err, "retry in", wait)
			// A mapping held before may still work until it expires; it
			// is no longer counted on.
			k.set(State{Err: err})
			held, next = Mapping{}, wait
			wait = min(2*wait, retryMax)
		default:
			if m != held {
				k.log.Info("port mapped", "mapping", m, "lifetime", m.Lifetime)
			}
			held, wait = m, retryFirst
			k.set(State{Mapping: m, Renewed: time.Now()})
			next = k.cfg.Lifetime
			if m.Lifetime > 0 {
				next = m.Lifetime / 2
			}
		}
		if ctx.Err() != nil {
			break
		}
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		if ctx.Err() != nil {
			break
		}
	}
	if held.External.IsValid() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), unmapTimeout)
		err := k.cfg.Mapper.Unmap(uctx, held)
		cancel()
		k.log.Info("port mapping removed", "mapping", held, "err", err)
	}
	k.set(State{})
}
