package p2pradio

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/p2pradio/p2pradio/internal/netlab"
)

// labStatus reads a node's /status.json from inside its namespace.
func labStatus(ctx context.Context, h *netlab.Host, addr string) (Status, error) {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		return h.Dial(ctx, network, a)
	}}, Timeout: 2 * time.Second}
	var st Status
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/status.json", nil)
	resp, err := c.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// startLabBroadcaster starts the broadcast program on h with args and
// returns the station address it prints first.
func startLabBroadcaster(t *testing.T, ctx context.Context, h *netlab.Host, bin string, args ...string) string {
	t.Helper()
	cmd := h.Command(ctx, bin, args...)
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	_, err = h.Start(cmd)
	require.NoError(t, err)
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err)
	return strings.TrimSpace(line)
}

// TestNATLab runs the example programs in a lab of network namespaces: a
// broadcaster on a public host with one child slot, and four listeners,
// each in its own home behind a router doing iptables MASQUERADE (port
// preserving), 10 ms from the internet. Every listener plays, at least two
// are fed by a listener in another home over a direct QUIC path (opened by
// a punch the rendezvous coordinates), and the broadcaster feeds one child.
func TestNATLab(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the examples and a lab of namespaces")
	}
	homes := make([]netlab.HomeConfig, 4)
	for i := range homes {
		homes[i].Delay = 10 * time.Millisecond
	}
	lab := netlab.NewForTest(t, netlab.Config{Prefix: "p2pnat", Homes: homes})
	dir := t.TempDir()
	bcast, listen := buildExample(t, dir, "broadcast"), buildExample(t, dir, "listen")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	pub := lab.Public[0]
	pa := pub.Addr.String()
	station := startLabBroadcaster(t, ctx, pub, bcast, "-listen", pa+":7000", "-upload", "150", "-http", pa+":8000")
	t.Logf("station %s", station)

	started := make([]time.Time, len(lab.Homes))
	for i, home := range lab.Homes {
		h := home.Hosts[0]
		c := h.Command(ctx, listen, "-discard", "-listen", "0.0.0.0:7001", "-http", "0.0.0.0:8001", station)
		_, err := h.Start(c)
		require.NoError(t, err)
		started[i] = time.Now()
		time.Sleep(500 * time.Millisecond)
	}

	// Every listener plays within 5 s of its start (the joins behind the
	// broadcaster's one slot need punches), and keeps playing.
	time.Sleep(15 * time.Second)
	fedByHome := 0
	ids := make(map[string]bool)
	var sts []Status
	for i, home := range lab.Homes {
		h := home.Hosts[0]
		st, err := labStatus(ctx, h, "127.0.0.1:8001")
		require.NoError(t, err, "listener %d", i)
		b, _ := json.Marshal(st)
		t.Logf("listener %d: %s", i, b)
		require.Equal(t, "unreachable", st.Reach, "listener %d is behind its NAT", i)
		require.Equal(t, "port-preserving", st.NAT, "listener %d", i)
		require.NotNil(t, st.Playing, "listener %d", i)
		require.True(t, *st.Playing, "listener %d plays", i)
		require.NotNil(t, st.StartupS)
		require.LessOrEqual(t, *st.StartupS, 5.0, "listener %d started within 5 s", i)
		require.NotNil(t, st.Continuity)
		require.GreaterOrEqual(t, *st.Continuity, 0.99, "listener %d", i)
		require.NotEmpty(t, st.Parents, "listener %d", i)
		ids[st.ID] = true
		sts = append(sts, st)
	}
	for _, st := range sts {
		if ids[st.Parents[0].ID] {
			fedByHome++ // its parent is a listener in another home
		}
	}
	require.GreaterOrEqual(t, fedByHome, 2, "listeners fed by a listener in another home")
	bs, err := labStatus(ctx, pub, pa+":8000")
	require.NoError(t, err)
	require.Len(t, bs.Children, 1, "the broadcaster feeds its one slot")
	up := bs.UptimeS
	rate := float64(bs.Bytes.Sent) * 8 / 1000 / up
	t.Logf("broadcaster: sent %d B in %.1f s = %.0f kbit/s (budget 150)", bs.Bytes.Sent, up, rate)
	require.LessOrEqual(t, rate, 150.0*1.1, "the broadcaster keeps to its budget")
}

// TestNetworkBlackoutComesBack: a listener whose network drops every
// packet for 10 s (iptables on the internet's router, in a lab of
// namespaces) plays again within 2 s of the link's return.
func TestNetworkBlackoutComesBack(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the examples and a lab of namespaces")
	}
	lab := netlab.NewForTest(t, netlab.Config{Prefix: "p2pblk", Public: 2})
	dir := t.TempDir()
	bcast, listen := buildExample(t, dir, "broadcast"), buildExample(t, dir, "listen")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	pub, lh := lab.Public[0], lab.Public[1]
	pa, la := pub.Addr.String(), lh.Addr.String()
	station := startLabBroadcaster(t, ctx, pub, bcast, "-listen", pa+":7000")
	_, err := lh.Start(lh.Command(ctx, listen, "-discard", "-listen", la+":7001", "-http", la+":8001", station))
	require.NoError(t, err)

	frames := func() (int64, bool) {
		st, err := labStatus(ctx, lh, la+":8001")
		if err != nil || st.Playing == nil || !*st.Playing {
			return 0, false
		}
		return st.Frames.Played, true
	}
	require.Eventually(t, func() bool { f, ok := frames(); return ok && f > 100 }, 20*time.Second, 100*time.Millisecond)

	rule := []string{"FORWARD", "-s", la, "-j", "DROP"}
	back := []string{"FORWARD", "-d", la, "-j", "DROP"}
	for _, r := range [][]string{rule, back} {
		_, err := lab.Inet.Run(ctx, "iptables", append([]string{"-I"}, r...)...)
		require.NoError(t, err)
	}
	time.Sleep(10 * time.Second)
	for _, r := range [][]string{rule, back} {
		_, err := lab.Inet.Run(ctx, "iptables", append([]string{"-D"}, r...)...)
		require.NoError(t, err)
	}
	restored := time.Now()
	again := playingAgain(restored, 8*time.Second, frames)
	t.Logf("playing again %v after the link returned", again)
	require.NotZero(t, again, "the listener plays again")
	require.LessOrEqual(t, again, 2*time.Second, "within 2 s of the link's return")
	f0, _ := frames()
	time.Sleep(5 * time.Second)
	f1, ok := frames()
	require.True(t, ok)
	perSecond := 44100.0 / 1152
	t.Logf("%d frames in 5 s (%.0f due)", f1-f0, 5*perSecond)
	require.InDelta(t, 5*perSecond, float64(f1-f0), 0.05*5*perSecond, "it keeps playing")
}

// TestNATLabRandomPorts: three listeners behind port-randomising routers
// (MASQUERADE --random-fully), which no punch opens, and a broadcaster
// with one slot: one listener plays, the others wait and say why; a
// public relay arrives, takes the slot (the NATed listener there cannot
// relay) and feeds the others, who play within 5 s of its arrival.
func TestNATLabRandomPorts(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the examples and a lab of namespaces")
	}
	homes := make([]netlab.HomeConfig, 3)
	for i := range homes {
		homes[i] = netlab.HomeConfig{RandomPorts: true, Delay: 10 * time.Millisecond}
	}
	lab := netlab.NewForTest(t, netlab.Config{Prefix: "p2prnd", Public: 2, Homes: homes})
	dir := t.TempDir()
	bcast, listen := buildExample(t, dir, "broadcast"), buildExample(t, dir, "listen")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	pub := lab.Public[0]
	pa := pub.Addr.String()
	station := startLabBroadcaster(t, ctx, pub, bcast, "-listen", pa+":7000", "-upload", "150")
	for _, home := range lab.Homes {
		h := home.Hosts[0]
		_, err := h.Start(h.Command(ctx, listen, "-discard", "-listen", "0.0.0.0:7001", "-http", "0.0.0.0:8001", station))
		require.NoError(t, err)
		time.Sleep(500 * time.Millisecond)
	}
	statuses := func() []Status {
		var out []Status
		for _, home := range lab.Homes {
			st, err := labStatus(ctx, home.Hosts[0], "127.0.0.1:8001")
			require.NoError(t, err)
			out = append(out, st)
		}
		return out
	}
	playing := func(st Status) bool { return st.Playing != nil && *st.Playing && st.Depth > 0 }
	time.Sleep(10 * time.Second)
	waiting := 0
	for i, st := range statuses() {
		require.Equal(t, "port-randomising", st.NAT, "listener %d", i)
		if !playing(st) {
			waiting++
			t.Logf("listener %d waits: %s", i, st.Waiting)
			require.Contains(t, st.Waiting, "no reachable parent", "listener %d says why", i)
		}
	}
	require.Equal(t, 2, waiting, "the broadcaster's one slot is used, the others wait")

	relay := lab.Public[1]
	ra := relay.Addr.String()
	_, err := relay.Start(relay.Command(ctx, listen, "-discard", "-listen", ra+":7001", "-upload", "1000", station))
	require.NoError(t, err)
	arrived := time.Now()
	require.Eventually(t, func() bool {
		for _, st := range statuses() {
			if !playing(st) {
				return false
			}
		}
		return true
	}, 8*time.Second, 200*time.Millisecond, "every listener plays after the relay arrived")
	t.Logf("all playing %v after the relay arrived", time.Since(arrived))
	require.LessOrEqual(t, time.Since(arrived), 5*time.Second+200*time.Millisecond)
}
