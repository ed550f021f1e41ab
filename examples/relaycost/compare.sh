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

# measure PID: prints "ms_cpu window_s" over WINDOW seconds.
measure() {
  local pid=$1 c0 c1 t0 t1
  c0=$(cpu_ticks "$pid"); t0=$(date +%s.%N)
  sleep "$WINDOW"
  c1=$(cpu_ticks "$pid"); t1=$(date +%s.%N)
  awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$HZ" \
    'BEGIN { printf "%.1f %.3f\n", (c1 - c0) * 1000 / hz, t1 - t0 }'
}

# measure2 PID1 PID2: prints "ms_cpu1 ms_cpu2 window_s" over one window.
measure2() {
  local a0 a1 b0 b1 t0 t1
  a0=$(cpu_ticks "$1"); b0=$(cpu_ticks "$2"); t0=$(date +%s.%N)
  sleep "$WINDOW"
  a1=$(cpu_ticks "$1"); b1=$(cpu_ticks "$2"); t1=$(date +%s.%N)
  awk -v a0="$a0" -v a1="$a1" -v b0="$b0" -v b1="$b1" -v t0="$t0" -v t1="$t1" -v hz="$HZ" \
    'BEGIN { printf "%.1f %.1f %.3f\n", (a1 - a0) * 1000 / hz, (b1 - b0) * 1000 / hz, t1 - t0 }'
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
go build -o "$tmp/relaycost" ./examples/relaycost

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
  read -r ice_ms ice_s < <(measure "$ice")
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
args=(-in - -upload $((N * 256 + 512)))
if [ -n "$PROFILE" ]; then
  pport=$(free_port)
  args+=(-pprof "127.0.0.1:$pport")
fi
encode -f mp3 - | "$tmp/broadcast" "${args[@]}" >"$tmp/addr" 2>"$tmp/broadcast.err" &
station=$!
pids+=("$station")
for _ in $(seq 100); do
  [ -s "$tmp/addr" ] && break
  sleep 0.1
done
addr=$(head -n 1 "$tmp/addr")
[ -n "$addr" ] || { cat "$tmp/broadcast.err" >&2; echo "the station did not start" >&2; exit 1; }
"$tmp/relaycost" -n "$N" "$addr" >"$tmp/listeners.out" 2>&1 &
pids+=("$!")
for _ in $(seq 600); do
  grep -q '^ready' "$tmp/listeners.out" && break
  kill -0 "${pids[-1]}" 2>/dev/null || break
  sleep 0.1
done
grep -q '^ready' "$tmp/listeners.out" || { cat "$tmp/listeners.out" >&2; echo "the listeners did not all join" >&2; exit 1; }
echo "p2pradio: $N listeners $(head -n 1 "$tmp/listeners.out"); warming up ${WARMUP}s, measuring ${WINDOW}s ..." >&2
sleep "$WARMUP"
if [ -n "$PROFILE" ]; then
  curl -s -o "$PROFILE" "http://127.0.0.1:$pport/debug/pprof/profile?seconds=$WINDOW" &
  prof=$!
fi
if [ -n "$SIMULTANEOUS" ] && [ -z "$SKIP_ICECAST" ]; then
  ice_listeners
  echo "icecast: $listeners listeners connected; measuring both over the same ${WINDOW}s ..." >&2
  read -r ice_ms our_ms our_s < <(measure2 "$ice" "$station")
  ice_s=$our_s
  warn_listeners
else
  read -r our_ms our_s < <(measure "$station")
fi
kill -INT "${pids[-1]}" 2>/dev/null || true
wait "${pids[-1]}" 2>/dev/null || true
tail -n 1 "$tmp/listeners.out" >&2
if [ -n "$PROFILE" ]; then
  wait "$prof" || true
  echo "station CPU profile of the window: $PROFILE (go tool pprof -top $PROFILE)" >&2
fi

awk -v n="$N" -v im="$ice_ms" -v is="$ice_s" -v om="$our_ms" -v os="$our_s" 'BEGIN {
  ice = im / (n * is); our = om / (n * os)
  printf "icecast2   %d listeners: %7.1f ms CPU in %.1f s = %.3f ms per listener-second\n", n, im, is, ice
  printf "p2pradio   %d children:  %7.1f ms CPU in %.1f s = %.3f ms per child-second\n", n, om, os, our
  printf "ratio p2pradio/icecast: %.1f\n", (ice > 0 ? our / ice : 0)
}'
