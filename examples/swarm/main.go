// Command swarm runs a whole station in one process: a broadcaster on the
// built-in demo audio (or -in) plus N listeners, all over real QUIC on
// loopback (or the in-memory transport), and reports the figures that
// DESIGN.md defines: continuity, startup, lag, source upload ratio, depth,
// per-hop delay, recovery, CPU and memory.
//
//	go run ./examples/swarm -listeners 100 -duration 60s -json
package main

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pradio/p2pradio"
	"github.com/p2pradio/p2pradio/control"
	"github.com/p2pradio/p2pradio/internal/cli"
	"github.com/p2pradio/p2pradio/internal/stats"
	"github.com/p2pradio/p2pradio/mux"
	"github.com/p2pradio/p2pradio/playout"
)

type options struct {
	listeners int
	duration  time.Duration
	upload    int
	srcUpload int
	in        string
	net       string
	loss      float64
	rtt       time.Duration
	churn     float64
	kill      string
	json      bool
	decode    bool
	joinRate  float64
	warmup    time.Duration
	minAlive  time.Duration
	verbose   bool
	cpuprof   string
	memprof   string
	batch     time.Duration
	stall     time.Duration // listeners' StallTimeout (0: default)
	leaves    float64
	slow      float64 // fraction of listeners whose uplink carries only slowKbps
	slowKbps  int
	// natPreserving and natRandom: fractions of listeners behind NATs.
	natPreserving, natRandom float64
	worst                    int  // print the worst listeners by continuity to stderr
	fakeTime                 bool // run inside a testing/synctest bubble (see faketime_test.go)
	// onSteady and onEnd, when set, are called as the steady state's CPU
	// count begins and as the run ends (BenchmarkSwarmMem).
	onSteady, onEnd func()
	// verifyEach: every listener checks every chunk's signature itself,
	// as on machines of their own (about 60 us a chunk).
	verifyEach bool
}

func main() {
	var o options
	o.register(flag.CommandLine)
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if _, err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "swarm:", err)
		os.Exit(1)
	}
}

// register defines the command's flags on fs.
func (o *options) register(fs *flag.FlagSet) {
	fs.IntVar(&o.listeners, "listeners", 20, "number of listeners")
	fs.DurationVar(&o.duration, "duration", 30*time.Second, "how long to run after the broadcaster starts")
	fs.IntVar(&o.upload, "upload", 400, "each listener's upload budget, kbit/s")
	fs.IntVar(&o.srcUpload, "source-upload", 512, "the broadcaster's upload budget, kbit/s")
	fs.StringVar(&o.in, "in", "", "MP3 file to broadcast (default: the built-in demo audio), looped")
	fs.StringVar(&o.net, "net", "quic", "transport: quic (real QUIC on loopback) or mem (in-memory)")
	fs.Float64Var(&o.loss, "loss", 0, "packet loss per link, each way (0..1)")
	fs.DurationVar(&o.rtt, "rtt", 0, "round-trip time added to every link")
	fs.Float64Var(&o.churn, "churn", 0, "fraction of listeners killed abruptly per minute, each replaced by a fresh joiner")
	fs.StringVar(&o.kill, "kill", "", "F@T: kill a fraction F of the listeners at once at time T (e.g. 0.3@30s)")
	fs.BoolVar(&o.json, "json", false, "print a final JSON summary on stdout")
	fs.BoolVar(&o.decode, "decode", false, "decode the MP3 at every listener (costs about 1.2% of a core per listener)")
	fs.Float64Var(&o.joinRate, "join-rate", 20, "listeners joining per second at the start")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "how long the broadcaster runs before the first listener joins")
	fs.DurationVar(&o.minAlive, "min-alive", 30*time.Second, "with -churn, count continuity only for listeners alive at least this long")
	fs.BoolVar(&o.verbose, "v", false, "log the nodes' events to stderr")
	fs.StringVar(&o.cpuprof, "cpuprofile", "", "write a CPU profile of the run to this file")
	fs.BoolVar(&o.verifyEach, "verify-each", false, "every listener checks each chunk's signature itself, as on a machine of its own (default: each chunk once in the process)")
	fs.StringVar(&o.memprof, "memprofile", "", "write an allocation profile of the run to this file (go tool pprof -sample_index=alloc_space)")
	fs.DurationVar(&o.stall, "stall-timeout", 0, "each listener's p2pradio.Config.StallTimeout (0: the library's default)")
	fs.DurationVar(&o.batch, "batch", 100*time.Millisecond, "audio each player hands its sink at one wake-up beyond the lead (playout.Config.Batch; 0: a frame at a time)")
	fs.Float64Var(&o.slow, "slow", 0, "with -net quic: fraction of listeners whose uplink carries only -slow-kbps though they claim -upload (nodes that cannot keep up with their children)")
	fs.IntVar(&o.slowKbps, "slow-kbps", 160, "the uplink of a -slow listener, kbit/s")
	fs.Float64Var(&o.leaves, "leaves", 0, "fraction of listeners with no upload budget (leaves: they take no children)")
	fs.Float64Var(&o.natPreserving, "nat", 0, "with -net mem: fraction of listeners each behind its own port-preserving NAT (Linux MASQUERADE's behaviour)")
	fs.IntVar(&o.worst, "worst", 0, "print the N counted listeners with the lowest continuity to stderr (their NAT, depth, recoveries, why waiting), the depths of the live ones and the deepest counted ones")
	fs.Float64Var(&o.natRandom, "nat-random", 0, "with -net mem: fraction of listeners each behind its own port-randomising NAT (MASQUERADE --random-fully)")
}

// member is one listener of the swarm, alive or dead.
type member struct {
	node   *p2pradio.Node
	mem    *control.MemTransport
	sock   *killable
	cancel context.CancelFunc
	done   chan struct{}
	born   time.Time
	died   time.Time
	leaf   bool           // no upload budget
	slow   bool           // its uplink carries less than its budget claims
	nat    string         // "": public; else its NAT's kind
	final  p2pradio.Stats // taken when it died or at the end
}

type swarm struct {
	o       options
	ctx     context.Context
	station string
	log     *slog.Logger
	memNet  *control.MemNetwork
	sockets map[*control.QUICTransport]*killable
	sigs    *mux.SignatureCache

	mu      sync.Mutex
	members []*member
	spawned int
	// natKinds counts the listeners spawned public, behind a port-
	// preserving NAT and behind a port-randomising one.
	natKinds [3]float64
	killAt   time.Time // when -kill struck

	lastConcealed int64
	steady        time.Time // when the steady state's CPU count began
}

// steadyAfter is how long after the last joiner the steady state's CPU
// figure (cpu_ms_per_s_steady) starts counting: joins and the first
// climbs are over by then.
const steadyAfter = 10 * time.Second

// run runs the swarm until the duration has passed or ctx is done, prints
// its figures and returns them.
func run(ctx context.Context, o options) (*Summary, error) {
	if o.net != "quic" && o.net != "mem" {
		return nil, fmt.Errorf("-net must be quic or mem, not %q", o.net)
	}
	if o.slow < 0 || o.slow > 1 || (o.slow > 0 && (o.net != "quic" || o.slowKbps <= 0)) {
		return nil, fmt.Errorf("-slow must be in 0..1, with -net quic and a positive -slow-kbps")
	}
	if o.leaves < 0 || o.leaves > 1 {
		return nil, fmt.Errorf("-leaves must be in 0..1, not %v", o.leaves)
	}
	if o.natPreserving < 0 || o.natRandom < 0 || o.natPreserving+o.natRandom > 1 {
		return nil, fmt.Errorf("-nat and -nat-random must be fractions adding up to at most 1")
	}
	if o.natPreserving+o.natRandom > 0 && o.net != "mem" {
		return nil, fmt.Errorf("-nat and -nat-random need -net mem (the lab of real NATs is TestNATLab)")
	}
	wallStart := wallClock()
	if o.cpuprof != "" {
		f, err := os.Create(o.cpuprof)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}
	log := slog.New(slog.DiscardHandler)
	if o.verbose {
		level := slog.LevelInfo
		if os.Getenv("P2PRADIO_DEBUG") != "" {
			level = slog.LevelDebug
		}
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}
	s := &swarm{o: o, ctx: ctx, log: log, sockets: make(map[*control.QUICTransport]*killable), sigs: mux.NewSignatureCache(256)}
	link := control.LinkConfig{Delay: o.rtt / 2, Loss: o.loss}
	if o.net == "mem" {
		s.memNet = control.NewMemNetwork(control.MemConfig{Link: link, MaxConns: 1 << 16, ShareData: true})
		defer s.memNet.Close()
	}

	src, err := cli.OpenInput(ctx, o.in, true)
	if err != nil {
		return nil, err
	}
	bcfg := p2pradio.Config{Source: src, UploadKbps: o.srcUpload, Logger: log.With("node", "broadcaster")}
	if err := s.transport(&bcfg, link); err != nil {
		return nil, err
	}
	if s.memNet != nil && o.natPreserving+o.natRandom > 0 {
		// The rendezvous's dial-back and echo sockets, which tell the
		// listeners behind NATs from the others (without NATs every node
		// is reachable and the rendezvous offers nodes as they claim).
		for _, t := range []*control.Transport{&bcfg.Tracker.Prober, &bcfg.Tracker.Echo} {
			tr, err := s.memNet.NewTransport(nil)
			if err != nil {
				return nil, err
			}
			*t = tr
		}
	}
	b, err := p2pradio.New(bcfg)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	bdone := make(chan error, 1)
	start := time.Now()
	go func() { bdone <- b.Run(ctx) }()
	s.station = b.Address().String()
	if !o.json {
		fmt.Fprintf(os.Stderr, "station %s, %d listeners over %s for %v\n", s.station, o.listeners, o.net, o.duration)
	}

	killFrac, killAt, err := parseKill(o.kill)
	if err != nil {
		return nil, err
	}
	end := start.Add(o.duration)
	timer := func(d time.Duration) <-chan time.Time { return time.After(d) }
	select {
	case <-timer(o.warmup):
	case <-ctx.Done():
	}
	// Joiners arrive at joinRate per second.
	gap := time.Duration(float64(time.Second) / max(o.joinRate, 1))
	for i := 0; i < o.listeners && ctx.Err() == nil; i++ {
		if err := s.spawn(link); err != nil {
			return nil, fmt.Errorf("listener %d: %w", i, err)
		}
		time.Sleep(gap)
	}

	// The steady state: from steadyAfter past the last joiner to the end.
	steadyAt, steadyCPU := time.Now().Add(steadyAfter), time.Duration(0)
	status := cli.NewStatus(os.Stderr, 5*time.Second)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	churnEvery := time.Duration(0)
	if o.churn > 0 {
		churnEvery = time.Duration(float64(time.Minute) / (o.churn * float64(o.listeners)))
	}
	nextChurn := time.Now().Add(churnEvery)
	killed := false
	rng := rand.New(rand.NewPCG(1, 2))
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-bdone:
			return nil, fmt.Errorf("broadcaster stopped: %v", err)
		case now := <-tick.C:
			if now.After(end) {
				break loop
			}
			if churnEvery > 0 && now.After(nextChurn) {
				for now.After(nextChurn) {
					s.killRandom(rng, 1)
					if err := s.spawn(link); err != nil {
						return nil, err
					}
					nextChurn = nextChurn.Add(churnEvery)
				}
			}
			if killFrac > 0 && !killed && now.Sub(start) >= killAt {
				killed = true
				n := int(math.Round(killFrac * float64(o.listeners)))
				s.mu.Lock()
				s.killAt = now
				s.mu.Unlock()
				s.killRandom(rng, n)
			}
			if !steadyAt.IsZero() && now.After(steadyAt) {
				if o.onSteady != nil {
					o.onSteady()
				}
				steadyAt, steadyCPU = time.Time{}, cpuTime()
				s.steady = now
			}
			if o.json && !o.verbose {
				continue // nobody reads the line: it would cost every node's Stats twice a second
			}
			line := s.line(b, now.Sub(start))
			if !o.json {
				status.Print(line)
			}
		}
	}
	status.Done()
	if o.onEnd != nil {
		o.onEnd()
	}
	steadyEnd := cpuTime()
	sum := s.summary(b, time.Since(start))
	if !s.steady.IsZero() {
		d := time.Since(s.steady)
		sum.PerListener.SteadyCPUms = math.Round((steadyEnd-steadyCPU).Seconds()*1000/d.Seconds()/float64(max(sum.Alive, 1))*1000) / 1000
		sum.SteadyS = math.Round(d.Seconds()*10) / 10
	}
	if o.memprof != "" {
		if err := writeAllocs(o.memprof); err != nil {
			return nil, err
		}
	}
	if o.fakeTime {
		sum.FakeTime = true
		sum.WallS = math.Round((wallClock()-wallStart).Seconds()*10) / 10
	}
	s.stopAll()
	b.Close()
	if o.json {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return &sum, enc.Encode(sum)
	}
	out, _ := json.MarshalIndent(sum, "", "  ")
	fmt.Fprintln(os.Stderr, string(out))
	return &sum, nil
}

// writeAllocs writes the allocation profile of the run so far to path.
func writeAllocs(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func parseKill(s string) (float64, time.Duration, error) {
	if s == "" {
		return 0, 0, nil
	}
	f, t, ok := strings.Cut(s, "@")
	frac, err1 := strconv.ParseFloat(f, 64)
	at, err2 := time.ParseDuration(t)
	if !ok || err1 != nil || err2 != nil || frac <= 0 || frac > 1 {
		return 0, 0, fmt.Errorf("-kill wants F@T such as 0.3@30s, not %q", s)
	}
	return frac, at, nil
}

// transport gives a node its transport: QUIC on loopback (through the
// loss/delay emulator when asked) or a node of the in-memory network.
func (s *swarm) transport(cfg *p2pradio.Config, link control.LinkConfig) error {
	return s.transportUp(cfg, link, 0)
}

// transportUp is transport with the node's uplink limited to upBps bytes
// per second (0: unlimited).
func (s *swarm) transportUp(cfg *p2pradio.Config, link control.LinkConfig, upBps int64) error {
	if cfg.Key == nil {
		// The node's identity, its transport's: a broadcaster's is the
		// station's key.
		_, k, err := ed25519.GenerateKey(nil)
		if err != nil {
			return err
		}
		cfg.Key = k
	}
	if s.memNet != nil {
		tr, err := s.memNet.NewTransport(cfg.Key)
		if err != nil {
			return err
		}
		cfg.Transport = tr
		return nil
	}
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	// The socket buffers a node gets from NewQUIC with a socket of its own
	// (quic-go asks for 7 MiB; the kernel grants up to net.core.rmem_max),
	// which the wrappers below hide from it. With the default 208 KiB,
	// a node starved for a few hundred milliseconds overflowed its socket,
	// and the losses cost QUIC round trips of back-off (UdpRcvbufErrors).
	_ = udp.(*net.UDPConn).SetReadBuffer(socketBuffer)
	_ = udp.(*net.UDPConn).SetWriteBuffer(socketBuffer)
	var pc net.PacketConn = udp
	link.Bandwidth = upBps
	if link.Delay > 0 || link.Loss > 0 || link.Bandwidth > 0 {
		pc = control.NewLossyPacketConn(udp, link)
	}
	k := &killable{PacketConn: pc}
	qc := control.QUICConfig{PacketConn: k, Key: cfg.Key}
	if cfg.Source != nil {
		qc.MaxConns = 20000 // the broadcaster: children, peers and a rendezvous session per listener
	}
	tr, err := control.NewQUIC(qc)
	if err != nil {
		pc.Close()
		return err
	}
	cfg.Transport = tr
	s.mu.Lock()
	s.sockets[tr] = k
	s.mu.Unlock()
	return nil
}

// socketBuffer is what each listener's socket asks for (see transportUp).
const socketBuffer = 7 << 20

// killable is a node's UDP socket that can go silent at once, as when the
// listener's machine vanishes: nothing it sends arrives any more, not even
// the CONNECTION_CLOSE of its orderly shutdown.
type killable struct {
	net.PacketConn
	dead atomic.Bool
}

func (k *killable) WriteTo(b []byte, addr net.Addr) (int, error) {
	if k.dead.Load() {
		return len(b), nil
	}
	return k.PacketConn.WriteTo(b, addr)
}

func (s *swarm) spawn(link control.LinkConfig) error {
	// Every listener whose turn crosses a multiple of 1/leaves is a leaf.
	s.mu.Lock()
	i := float64(s.spawned)
	s.spawned++
	s.mu.Unlock()
	leaf := math.Floor((i+1)*s.o.leaves) > math.Floor(i*s.o.leaves)
	slow := math.Floor((i+1)*s.o.slow) > math.Floor(i*s.o.slow)
	// The NATs: each listener behind one is in its own home. Each turn
	// goes to the kind furthest behind its share, so that every prefix of
	// the listeners has the fractions asked for.
	var nat *control.MemNAT
	s.mu.Lock()
	share := [3]float64{1 - s.o.natPreserving - s.o.natRandom, s.o.natPreserving, s.o.natRandom}
	kind := 0
	for k := range share {
		if (i+1)*share[k]-s.natKinds[k] > (i+1)*share[kind]-s.natKinds[kind] {
			kind = k
		}
	}
	s.natKinds[kind]++
	s.mu.Unlock()
	switch kind {
	case 1:
		nat = s.memNet.NewNAT(control.NATConfig{Kind: control.NATPortPreserving})
	case 2:
		nat = s.memNet.NewNAT(control.NATConfig{Kind: control.NATPortRandom})
	}
	upload := s.o.upload
	if leaf {
		upload = -1
	}
	cfg := p2pradio.Config{
		Station:      s.station,
		UploadKbps:   upload,
		Sink:         &playout.Discard{},
		Playout:      playout.Config{NoDecode: !s.o.decode, Batch: s.o.batch},
		StallTimeout: s.o.stall,
	}
	if nat != nil {
		tr, err := nat.NewTransport(nil)
		if err != nil {
			return err
		}
		cfg.Transport = tr
	} else {
		var up int64
		if slow {
			up = int64(s.o.slowKbps) * 1000 / 8
		}
		if err := s.transportUp(&cfg, link, up); err != nil {
			return err
		}
	}
	if !s.o.verifyEach {
		// One process simulating many machines: check each chunk's
		// signature once, not once per node (over QUIC each node still
		// compares the bytes it received with those checked).
		cfg.SignatureCache = s.sigs
	}
	m := &member{born: time.Now(), done: make(chan struct{}), leaf: leaf, slow: slow}
	if nat != nil {
		m.nat = nat.Config().Kind.String()
	}
	if mt, ok := cfg.Transport.(*control.MemTransport); ok {
		m.mem = mt
	}
	if qt, ok := cfg.Transport.(*control.QUICTransport); ok {
		s.mu.Lock()
		m.sock = s.sockets[qt]
		s.mu.Unlock()
	}
	s.mu.Lock()
	cfg.Logger = s.log.With("node", len(s.members))
	s.mu.Unlock()
	n, err := p2pradio.New(cfg)
	if err != nil {
		return err
	}
	m.node = n
	ctx, cancel := context.WithCancel(s.ctx)
	m.cancel = cancel
	go func() {
		defer close(m.done)
		if err := n.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Warn("listener stopped", "err", err)
		}
	}()
	s.mu.Lock()
	s.members = append(s.members, m)
	s.mu.Unlock()
	return nil
}

// killRandom kills k live listeners abruptly: their links die without a
// goodbye (the in-memory node vanishes; a QUIC node's socket closes without
// CONNECTION_CLOSE), as when a listener's machine goes away.
func (s *swarm) killRandom(rng *rand.Rand, k int) {
	s.mu.Lock()
	var alive []*member
	for _, m := range s.members {
		if m.died.IsZero() {
			alive = append(alive, m)
		}
	}
	rng.Shuffle(len(alive), func(i, j int) { alive[i], alive[j] = alive[j], alive[i] })
	victims := alive[:min(k, len(alive))]
	now := time.Now()
	for _, m := range victims {
		m.died = now
		m.final = m.node.Stats()
	}
	s.mu.Unlock()
	for _, m := range victims {
		if m.mem != nil {
			m.mem.Kill()
		} else if m.sock != nil {
			m.sock.dead.Store(true)
		}
		m.cancel()
		go m.node.Close()
	}
}

func (s *swarm) stopAll() {
	s.mu.Lock()
	ms := append([]*member(nil), s.members...)
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Go(func() {
			m.cancel()
			m.node.Close()
		})
	}
	wg.Wait()
}

func (s *swarm) line(b *p2pradio.Node, elapsed time.Duration) string {
	s.mu.Lock()
	ms := append([]*member(nil), s.members...)
	s.mu.Unlock()
	var alive, playing, maxDepth int
	var concealed int64
	var conts []float64
	for _, m := range ms {
		if !m.died.IsZero() {
			continue
		}
		alive++
		st := m.node.Stats()
		if st.Playout.Playing {
			playing++
		}
		concealed += st.Playout.FramesConcealed + st.Playout.FramesMuted
		if st.Playout.Due() > 0 {
			conts = append(conts, st.Continuity)
		}
		maxDepth = max(maxDepth, st.Depth)
	}
	bs := b.Stats()
	if concealed != s.lastConcealed {
		s.log.Info("frames lost", "at", elapsed, "concealed+muted", concealed-s.lastConcealed)
		s.lastConcealed = concealed
	}
	return fmt.Sprintf("%s  listeners %d (playing %d)  source children %d  max depth %d  continuity min %.4f p50 %.4f",
		cli.Duration(elapsed), alive, playing, bs.Children, maxDepth, minOf(conts), stats.Quantile(conts, 0.5))
}

func minOf(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	m := xs[0]
	for _, x := range xs {
		m = min(m, x)
	}
	return m
}

// Summary is the -json output.
type Summary struct {
	Listeners         int         `json:"listeners"`
	Counted           int         `json:"counted"`
	DurationS         float64     `json:"duration_s"`
	Net               string      `json:"net"`
	Loss              float64     `json:"loss,omitempty"`
	RTTms             float64     `json:"rtt_ms,omitempty"`
	Churn             float64     `json:"churn,omitempty"`
	Kill              string      `json:"kill,omitempty"`
	Continuity        Continuity  `json:"continuity"`
	StartupMs         Quantiles   `json:"startup_ms"`
	LagMs             Quantiles   `json:"lag_ms"`
	SourceUploadRatio float64     `json:"source_upload_ratio"`
	SourceChildren    int         `json:"source_children"`
	MaxDepth          int         `json:"max_depth"`
	Leaves            *Leaves     `json:"leaves,omitempty"`
	DepthLimit        int         `json:"depth_limit"`
	HopDelayMs        HopDelay    `json:"hop_delay_ms"`
	RecoveryMs        Quantiles   `json:"recovery_ms"`
	Stopped           int         `json:"stopped"`
	Shed              int64       `json:"shed"`
	Slow              *Slow       `json:"slow,omitempty"`
	Frames            Frames      `json:"frames"`
	CPUs              float64     `json:"cpu_s"`
	HeapMB            float64     `json:"heap_mb"`
	PerListener       PerListener `json:"per_listener"`
	// CPUShare is cpu_s over duration_s: cores the process used on average
	// (at most the machine's; below what the swarm needs when the machine
	// is shared). Load1 is the machine's load average at the end.
	CPUShare float64 `json:"cpu_share"`
	Load1    float64 `json:"load1"`
	// Alive is how many listeners were alive at the end; SteadyS how long
	// the steady state's CPU figure (PerListener.SteadyCPUms) counted.
	Alive   int     `json:"alive"`
	SteadyS float64 `json:"steady_s,omitempty"`
	// A fake-time run (faketime_test.go): durations are the bubble's; cpu_s
	// and wall_s are the machine's.
	FakeTime bool    `json:"fake_time,omitempty"`
	WallS    float64 `json:"wall_s,omitempty"`
}

// Leaves compares the depths of the listeners with no upload budget with
// those of the relays (both alive and joined at the end): capable
// uploaders should sit above the leaves.
type Leaves struct {
	Counted        int     `json:"counted"`
	DepthMin       int     `json:"depth_min"`
	DepthP50       float64 `json:"depth_p50"`
	RelayDepthP50  float64 `json:"relay_depth_p50"`
	RelayDepthMax  int     `json:"relay_depth_max"`
	RelaysBelowMin int     `json:"relays_below_shallowest_leaf"`
}

// Slow compares the listeners fed by a -slow node (at the end) with the
// rest, and says how many children the slow ones shed.
type Slow struct {
	Nodes         int        `json:"nodes"`
	Shed          int64      `json:"shed"`
	ChildrenAtEnd int        `json:"children_at_end"`
	Continuity    Continuity `json:"continuity"` // of the slow nodes themselves
}

// Frames adds up the counted listeners' frames by what became of them.
type Frames struct {
	Played    int64 `json:"played"`
	Concealed int64 `json:"concealed"`
	Muted     int64 `json:"muted"`
	Underruns int64 `json:"underruns"`
	Repairs   int64 `json:"repairs_requested"`
	Rebuffers int64 `json:"rebuffers"`
}

type Continuity struct {
	Min  float64 `json:"min"`
	P50  float64 `json:"p50"`
	Mean float64 `json:"mean"`
}

type Quantiles struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	Max float64 `json:"max"`
}

type HopDelay struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
}

type PerListener struct {
	// CPUms is the whole run's CPU (warmup, joins, the broadcaster, the
	// harness) per listener per second of the run; SteadyCPUms that of the
	// steady state (steadyAfter past the last joiner to the end) per live
	// listener.
	CPUms       float64 `json:"cpu_ms_per_s"`
	SteadyCPUms float64 `json:"cpu_ms_per_s_steady,omitempty"`
	HeapKB      float64 `json:"heap_kb"`
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e4) / 100 }

// stoppedAfter is how long a listener may take to start before it counts
// as stopped (a joiner spawned just before the end has not started yet).
const stoppedAfter = 5 * time.Second

func (s *swarm) summary(b *p2pradio.Node, elapsed time.Duration) Summary {
	now := time.Now()
	s.mu.Lock()
	ms_ := append([]*member(nil), s.members...)
	killAt := s.killAt
	s.mu.Unlock()
	sum := Summary{
		Listeners: s.o.listeners, DurationS: math.Round(elapsed.Seconds()*10) / 10, Net: s.o.net,
		Loss: s.o.loss, RTTms: ms(s.o.rtt), Churn: s.o.churn, Kill: s.o.kill,
		DepthLimit: int(math.Ceil(math.Log2(float64(max(s.o.listeners, 2))))) + 2,
	}
	var conts, leafDepths, relayDepths, slowConts []float64
	var slowShed int64
	var slowChildren int
	var startups, lagP50, lagP95, lagMax, hopP50, hopP99, recov []time.Duration
	var received int64
	type counted struct {
		i     int
		m     *member
		st    p2pradio.Stats
		alive bool
	}
	var worst []counted
	for i, m := range ms_ {
		st := m.final
		alive := m.died.IsZero()
		if alive {
			st = m.node.Stats()
			sum.Alive++
		}
		received += st.BytesReceived
		end := now
		if !alive {
			end = m.died
		}
		if alive && st.Playout.Due() == 0 && now.Sub(m.born) > stoppedAfter {
			sum.Stopped++ // alive for a while but never played
		}
		if st.Playout.Due() == 0 {
			continue
		}
		if s.o.churn > 0 && end.Sub(m.born) < s.o.minAlive {
			continue
		}
		sum.Counted++
		conts = append(conts, st.Continuity)
		worst = append(worst, counted{i, m, st, alive})
		sum.Frames.Played += st.Playout.FramesPlayed
		sum.Frames.Concealed += st.Playout.FramesConcealed
		sum.Frames.Muted += st.Playout.FramesMuted
		sum.Frames.Underruns += st.Playout.Underruns
		sum.Frames.Rebuffers += st.Playout.Rebuffers
		sum.Frames.Repairs += st.Repairs
		sum.Shed += st.Shed
		if m.slow {
			slowConts = append(slowConts, st.Continuity)
			slowShed += st.Shed
			slowChildren += st.Children
		}
		if s.o.verbose && st.Continuity < 1 {
			s.log.Info("listener below 1", "node", i, "continuity", st.Continuity, "depth", st.Depth, "concealed", st.Playout.FramesConcealed,
				"muted", st.Playout.FramesMuted, "underruns", st.Playout.Underruns, "repairs", st.Repairs, "recoveries", st.Recoveries, "startup", st.Startup)
		}
		startups = append(startups, st.Startup)
		lagP50 = append(lagP50, st.LagP50)
		lagP95 = append(lagP95, st.LagP95)
		lagMax = append(lagMax, st.LagMax)
		if st.Children > 0 {
			hopP50 = append(hopP50, st.HopP50)
			hopP99 = append(hopP99, st.HopP99)
		}
		if st.Recoveries > 0 && (killAt.IsZero() || alive) {
			recov = append(recov, st.RecoveryMax)
		}
		sum.MaxDepth = max(sum.MaxDepth, st.Depth)
		switch {
		case st.Depth < 0 || !alive:
			// rejoining at this moment, or gone: no place in the tree
		case m.leaf:
			leafDepths = append(leafDepths, float64(st.Depth))
		default:
			relayDepths = append(relayDepths, float64(st.Depth))
		}
	}
	if len(leafDepths) > 0 {
		shallowest := slices.Min(leafDepths)
		l := &Leaves{Counted: len(leafDepths), DepthMin: int(shallowest), DepthP50: stats.Quantile(leafDepths, 0.5),
			RelayDepthP50: stats.Quantile(relayDepths, 0.5)}
		for _, d := range relayDepths {
			l.RelayDepthMax = max(l.RelayDepthMax, int(d))
			if d > shallowest {
				l.RelaysBelowMin++
			}
		}
		sum.Leaves = l
	}
	sort.Float64s(conts)
	slices.SortFunc(worst, func(a, b counted) int { return cmp.Compare(a.st.Continuity, b.st.Continuity) })
	if s.o.worst > 0 {
		// The depths of the live listeners by NAT kind.
		hist := make(map[string]map[int]int)
		for _, m := range ms_ {
			if !m.died.IsZero() {
				continue
			}
			k := m.nat
			if m.leaf {
				k += "/leaf"
			}
			if hist[k] == nil {
				hist[k] = make(map[int]int)
			}
			hist[k][m.node.Stats().Depth]++
		}
		for k, h := range hist {
			fmt.Fprintf(os.Stderr, "depths %q: %v\n", k, h)
		}
	}
	if s.o.worst > 0 {
		// The counted listeners at the deepest depth, alive or at death
		// (most runs' deepest is a listener killed while a subtree above
		// it had just rejoined deeper).
		for _, w := range worst {
			if w.st.Depth != sum.MaxDepth {
				continue
			}
			when := "alive"
			if !w.alive {
				when = fmt.Sprintf("died %v", w.m.died.Sub(now).Round(100*time.Millisecond))
			}
			fmt.Fprintf(os.Stderr, "deepest: listener %d depth %d born %v %s\n", w.i, w.st.Depth, w.m.born.Sub(now).Round(time.Second), when)
		}
	}
	for _, w := range worst[:min(s.o.worst, len(worst))] {
		st := w.st
		nat := w.m.nat
		if nat == "" {
			nat = "public"
		}
		fmt.Fprintf(os.Stderr, "listener %d: continuity %.4f nat %s leaf %v alive %v born %v depth %d concealed %d muted %d rebuffers %d repairs %d recoveries %d recovery max %v startup %v waiting %q\n",
			w.i, st.Continuity, nat, w.m.leaf, w.alive, w.m.born.Sub(now).Round(time.Second), st.Depth, st.Playout.FramesConcealed, st.Playout.FramesMuted,
			st.Playout.Rebuffers, st.Repairs, st.Recoveries, st.RecoveryMax, st.Startup, st.Waiting)
	}
	sum.Continuity = Continuity{Min: minOf(conts), P50: stats.Quantile(conts, 0.5), Mean: stats.Mean(conts)}
	if s.o.slow > 0 {
		sort.Float64s(slowConts)
		sum.Slow = &Slow{Nodes: len(slowConts), Shed: slowShed, ChildrenAtEnd: slowChildren,
			Continuity: Continuity{Min: minOf(slowConts), P50: stats.Quantile(slowConts, 0.5), Mean: stats.Mean(slowConts)}}
	}
	sum.StartupMs = Quantiles{ms(stats.Quantile(startups, 0.5)), ms(stats.Quantile(startups, 0.95)), ms(stats.Quantile(startups, 1))}
	sum.LagMs = Quantiles{ms(stats.Quantile(lagP50, 0.5)), ms(stats.Quantile(lagP95, 0.95)), ms(stats.Quantile(lagMax, 1))}
	sum.HopDelayMs = HopDelay{ms(stats.Quantile(hopP50, 0.5)), ms(stats.Quantile(hopP99, 0.99))}
	sum.RecoveryMs = Quantiles{ms(stats.Quantile(recov, 0.5)), ms(stats.Quantile(recov, 0.95)), ms(stats.Quantile(recov, 1))}
	bs := b.Stats()
	sum.SourceChildren = bs.Children
	if received > 0 {
		sum.SourceUploadRatio = math.Round(float64(bs.BytesSent)/float64(received)*10000) / 10000
	}
	if cpu := cpuTime(); cpu > 0 {
		sum.CPUs = math.Round(cpu.Seconds()*100) / 100
		sum.PerListener.CPUms = math.Round(cpu.Seconds()*1000/elapsed.Seconds()/float64(max(len(ms_), 1))*100) / 100
		sum.CPUShare = math.Round(cpu.Seconds()/elapsed.Seconds()*100) / 100
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			sum.Load1, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	runtime.GC()
	var mstats runtime.MemStats
	runtime.ReadMemStats(&mstats)
	sum.HeapMB = math.Round(float64(mstats.HeapInuse)/(1<<20)*10) / 10
	sum.PerListener.HeapKB = math.Round(float64(mstats.HeapInuse) / 1024 / float64(max(len(ms_), 1)))
	return sum
}
