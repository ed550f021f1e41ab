#!/usr/bin/env bash
# compare.sh: the CPU a p2pradio station spends per child, beside a real
# Icecast 2.4 serving the same number of listeners, on this machine, side by
# side. Not part of the test run.
#
#   examples/relaycost/compare.sh            # 100 listeners, 10 s warm-up, 30 s window
#   N=50 WARMUP=5 WINDOW=20 examples/relaycost/compare.sh
#   PROFILE=/tmp/station.pprof examples/relaycost/compare.sh   # also the station's CPU profile over the window
#   SKIP_ICECAST=1 examples/relaycost/compare.sh               # the station alone
#   STATION=/tmp/broadcast-old examples/relaycost/compare.sh   # another build of examples/broadcast
#   SIMULTANEOUS=1 examples/relaycost/compare.sh               # both at once, over the same window
#   STATION=/tmp/a/broadcast LISTENERS=/tmp/a/relaycost \
#   STATION_B=/tmp/b/broadcast LISTENERS_B=/tmp/b/relaycost \
#   SIMULTANEOUS=1 examples/relaycost/compare.sh               # two builds side by side, and Icecast
#
# 1. Icecast on loopback, fed by ffmpeg (a 128 kbit/s MP3 encoded in real
#    time), N curl listeners; Icecast's CPU over WINDOW seconds after WARMUP.
# 2. Our station (examples/broadcast) fed by the same ffmpeg command on its
#    standard input, N listeners started by examples/relaycost in one process,
#    each a leaf child of the station (no upload, no backups); the station's
#    CPU over the same window once all N play as its direct children.
# CPU is utime+stime of the server process from /proc/PID/stat. It prints
# both figures in ms of CPU per listener-second and their ratio.
# With SIMULTANEOUS=1 both servers run at once and are measured over the
# same window: on a machine shared with other work, both then see the same
# load (the CPU a process spends per packet grows with the machine's load),
# and the ratio holds up better than two figures taken minutes apart.
#
# It installs icecast2, ffmpeg and curl from Debian if missing (root or sudo).
# Icecast refuses to run as root: as root the config tells it to switch to
# nobody:nogroup once it has bound its port (<changeowner>).
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-100}
WARMUP=${WARMUP:-10}
WINDOW=${WINDOW:-30}
PROFILE=${PROFILE:-}
SKIP_ICECAST=${SKIP_ICECAST:-} # set to measure the station alone
STATION=${STATION:-}           # a prebuilt examples/broadcast to measure instead of this tree's
LISTENERS=${LISTENERS:-}       # a prebuilt examples/relaycost to run the listeners with
STATION_B=${STATION_B:-}       # a second build, measured beside the first over the same window
LISTENERS_B=${LISTENERS_B:-}   # its listeners (default: the same as the first's)
SIMULTANEOUS=${SIMULTANEOUS:-} # set to run and measure both servers at once

need=()
command -v icecast2 >/dev/null || [ -x /usr/bin/icecast2 ] || need+=(icecast2)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
ICECAST=$(command -v icecast2 || echo /usr/bin/icecast2)

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The ticks of CPU (user + system) a process has used.
cpu_ticks() {
  # Fields after "pid (comm) ": state is $1, utime $12, stime $13.
  sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
HZ=$(getconf CLK_TCK)

# measure_all PID...: prints the ms of CPU each used over one window of
# WINDOW seconds, then the window's length in seconds.
measure_all() {
  local c0=() c1=() t0 t1 p
  for p in "$@"; do c0+=("$(cpu_ticks "$p")"); done
  t0=$(date +%s.%N)
  sleep "$WINDOW"
  for p in "$@"; do c1+=("$(cpu_ticks "$p")"); done
  t1=$(date +%s.%N)
  awk -v c0="${c0[*]}" -v c1="${c1[*]}" -v t0="$t0" -v t1="$t1" -v hz="$HZ" 'BEGIN {
    n = split(c0, a, " "); split(c1, b, " ")
    for (i = 1; i <= n; i++) printf "%.1f ", (b[i] - a[i]) * 1000 / hz
    printf "%.3f\n", t1 - t0
  }'
}

free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    ss -Htuln "( sport = :$p )" 2>/dev/null | grep -q . || { echo "$p"; return; }
  done
}

encode() { # a live 128 kbit/s MP3 encoded in real time; its errors go to $tmp/ffmpeg.err
  ffmpeg -nostdin -loglevel error -re -f lavfi -i "sine=frequency=440:sample_rate=44100" \
    -ac 2 -c:a libmp3lame -b:a 128k "$@" 2>>"$tmp/ffmpeg.err"
}

echo "building the station and the listeners ..." >&2
if [ -n "$STATION" ]; then
  cp "$STATION" "$tmp/broadcast"
else
  go build -o "$tmp/broadcast" ./examples/broadcast
fi
if [ -n "$LISTENERS" ]; then
  cp "$LISTENERS" "$tmp/relaycost"
else
  go build -o "$tmp/relaycost" ./examples/relaycost
fi
if [ -n "$STATION_B" ]; then
  cp "$STATION_B" "$tmp/broadcast.b"
  cp "${LISTENERS_B:-$tmp/relaycost}" "$tmp/relaycost.b"
fi

# ---------------------------------------------------------------- Icecast
# run_icecast sets ice_ms and ice_s: Icecast's CPU (ms) over the window (s).
# With SIMULTANEOUS it only starts Icecast (pid in ice) and its listeners,
# which are measured beside the station.
run_icecast() {
  port=$(free_port)
  mkdir -p "$tmp/ice/log"
  owner=""
  if [ "$(id -u)" -eq 0 ]; then
    owner="<changeowner><user>nobody</user><group>nogroup</group></changeowner>"
    chmod 755 "$tmp" "$tmp/ice"
    chown nobody:nogroup "$tmp/ice/log"
  fi
  cat >"$tmp/ice/icecast.xml" <<EOF
<icecast>
  <location>loopback</location>
  <admin>nobody@localhost</admin>
  <limits>
    <clients>$((N + 10))</clients>
    <sources>2</sources>
    <queue-size>524288</queue-size>
    <client-timeout>30</client-timeout>
    <header-timeout>15</header-timeout>
    <source-timeout>10</source-timeout>
    <burst-on-connect>1</burst-on-connect>
    <burst-size>65535</burst-size>
  </limits>
  <authentication>
    <source-password>relaycost</source-password>
    <admin-user>admin</admin-user>
    <admin-password>relaycost</admin-password>
  </authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>$port</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>0</fileserve>
  <paths>
    <basedir>/usr/share/icecast2</basedir>
    <logdir>$tmp/ice/log</logdir>
    <webroot>/usr/share/icecast2/web</webroot>
    <adminroot>/usr/share/icecast2/admin</adminroot>
  </paths>
  <logging><accesslog>access.log</accesslog><errorlog>error.log</errorlog><loglevel>2</loglevel></logging>
  <security><chroot>0</chroot>$owner</security>
</icecast>
EOF
  "$ICECAST" -c "$tmp/ice/icecast.xml" >"$tmp/ice/stdout" 2>&1 &
  ice=$!
  pids+=("$ice")
  for _ in $(seq 50); do
    ss -Htln "( sport = :$port )" | grep -q . && break
    sleep 0.1
  done
  ss -Htln "( sport = :$port )" | grep -q . || { cat "$tmp/ice/stdout" "$tmp/ice/log/error.log" >&2; echo "icecast did not start" >&2; exit 1; }
  encode -content_type audio/mpeg -f mp3 "icecast://source:relaycost@127.0.0.1:$port/stream.mp3" &
  pids+=("$!")
  for _ in $(seq 50); do
    rc=0
    curl -sf -o /dev/null --max-time 0.5 "http://127.0.0.1:$port/stream.mp3" 2>/dev/null || rc=$?
    [ $rc -eq 28 ] && break # the stream is there (curl timed out reading it)
    sleep 0.2
  done
  for _ in $(seq "$N"); do
    curl -s -o /dev/null "http://127.0.0.1:$port/stream.mp3" &
    pids+=("$!")
  done
  [ -z "$SIMULTANEOUS" ] || return 0
  sleep "$WARMUP"
  ice_listeners
  echo "icecast: $listeners listeners connected; measuring ${WINDOW}s ..." >&2
  read -r ice_ms ice_s < <(measure_all "$ice")
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
  warn_listeners
}

# ice_listeners sets listeners: the curl listeners connected to Icecast.
ice_listeners() {
  listeners=$(($(ss -Htn state established "( sport = :$port )" | wc -l) - 1)) # minus the source
}

warn_listeners() {
  if [ "$listeners" -ne "$N" ]; then
    echo "warning: $listeners of $N curl listeners connected" >&2
  fi
}

ice_ms=0 ice_s=1
[ -n "$SKIP_ICECAST" ] || run_icecast

# ---------------------------------------------------------------- p2pradio
# start_station NAME BROADCAST RELAYCOST: a station fed by ffmpeg and N
# listeners of it in one process; sets station (its pid) and waits until
# every listener plays as its direct child.
start_station() {
  local name=$1 bin=$2 lbin=$3 args=(-in - -upload $((N * 256 + 512)))
  if [ -n "$PROFILE" ] && [ "$name" = a ]; then
    pport=$(free_port)
    args+=(-pprof "127.0.0.1:$pport")
  fi
  encode -f mp3 - | "$bin" "${args[@]}" >"$tmp/addr.$name" 2>"$tmp/broadcast.$name.err" &
  station=$!
  pids+=("$station")
  for _ in $(seq 100); do
    [ -s "$tmp/addr.$name" ] && break
    sleep 0.1
  done
  local addr
  addr=$(head -n 1 "$tmp/addr.$name")
  [ -n "$addr" ] || { cat "$tmp/broadcast.$name.err" >&2; echo "station $name did not start" >&2; exit 1; }
  "$lbin" -n "$N" "$addr" >"$tmp/listeners.$name.out" 2>&1 &
  local lp=$!
  pids+=("$lp")
  lpids+=("$lp")
  for _ in $(seq 600); do
    grep -q '^ready' "$tmp/listeners.$name.out" && break
    kill -0 "$lp" 2>/dev/null || break
    sleep 0.1
  done
  grep -q '^ready' "$tmp/listeners.$name.out" || { cat "$tmp/listeners.$name.out" >&2; echo "the listeners of station $name did not all join" >&2; exit 1; }
  echo "p2pradio $name: $N listeners $(head -n 1 "$tmp/listeners.$name.out")" >&2
}

lpids=()
start_station a "$tmp/broadcast" "$tmp/relaycost"
station_a=$station
if [ -n "$STATION_B" ]; then
  start_station b "$tmp/broadcast.b" "$tmp/relaycost.b"
  station_b=$station
fi
echo "warming up ${WARMUP}s ..." >&2
sleep "$WARMUP"
if [ -n "$PROFILE" ]; then
  curl -s -o "$PROFILE" "http://127.0.0.1:$pport/debug/pprof/profile?seconds=$WINDOW" &
  prof=$!
fi
ice_pid=""
if [ -n "$SIMULTANEOUS" ] && [ -z "$SKIP_ICECAST" ]; then
  ice_listeners
  echo "icecast: $listeners listeners connected" >&2
  ice_pid=$ice
fi
echo "load before the window: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "measuring over the same ${WINDOW}s: ${ice_pid:+icecast }station a${STATION_B:+ and station b} ..." >&2
read -r -a got < <(measure_all $ice_pid "$station_a" ${STATION_B:+"$station_b"})
echo "load after the window: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
if [ -n "$ice_pid" ]; then
  ice_ms=${got[0]}
  got=("${got[@]:1}")
  warn_listeners
fi
our_ms=${got[0]} our_s=${got[-1]}
b_ms=${got[1]:-0}
[ -z "$ice_pid" ] || ice_s=$our_s
for lp in "${lpids[@]}"; do kill -INT "$lp" 2>/dev/null || true; done
for lp in "${lpids[@]}"; do wait "$lp" 2>/dev/null || true; done
for name in a ${STATION_B:+b}; do echo "listeners $name: $(tail -n 1 "$tmp/listeners.$name.out")" >&2; done
if [ -n "$PROFILE" ]; then
  wait "$prof" || true
  echo "station CPU profile of the window: $PROFILE (go tool pprof -top $PROFILE)" >&2
fi

awk -v n="$N" -v im="$ice_ms" -v is="$ice_s" -v om="$our_ms" -v os="$our_s" -v bm="$b_ms" -v b="${STATION_B:+1}" -v skip="$SKIP_ICECAST" 'BEGIN {
  ice = im / (n * is); our = om / (n * os); ob = bm / (n * os)
  if (!skip) printf "icecast2   %d listeners: %7.1f ms CPU in %.1f s = %.3f ms per listener-second\n", n, im, is, ice
  printf "p2pradio   %d children:  %7.1f ms CPU in %.1f s = %.3f ms per child-second\n", n, om, os, our
  if (!skip) printf "ratio p2pradio/icecast: %.1f\n", (ice > 0 ? our / ice : 0)
  if (b) {
    printf "p2pradio b %d children:  %7.1f ms CPU in %.1f s = %.3f ms per child-second\n", n, bm, os, ob
    if (!skip) printf "ratio p2pradio b/icecast: %.1f\n", (ice > 0 ? ob / ice : 0)
    printf "station b/a: %.2f\n", (our > 0 ? ob / our : 0)
  }
}'
