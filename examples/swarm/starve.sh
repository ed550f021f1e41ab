#!/usr/bin/env bash
# starve.sh: a swarm starved of CPU for a few seconds, and whether it comes back.
#
# Runs `go run ./examples/swarm` with LISTENERS QUIC listeners for DURATION, and
# from AT into the run burns both cores with BURNERS busy loops (default 2)
# for HOG seconds, at the swarm's own scheduling priority (same session, same
# nice). With two, the hog bit hard (hundreds of stalls) in 1 run of 4; with
# BURNERS=6 (over 100 stalls) in 10 of 14. Prints the swarm's JSON summary,
# then how many listeners had a parent at the end (by depth; -1: none). A
# swarm that recovers has every listener at depth >= 1 again by the end.
#
#   LISTENERS=300 HOG=3 examples/swarm/starve.sh [swarm flags, e.g. -stall-timeout 3s]
#   BURNERS=6 examples/swarm/starve.sh
#
# Run it on an otherwise idle machine: with Linux's autogroup scheduling, a
# busy session elsewhere takes its own share whatever this one does.
set -eu
cd "$(dirname "$0")/../.."
LISTENERS=${LISTENERS:-300} HOG=${HOG:-3} AT=${AT:-15} DURATION=${DURATION:-60s} BURNERS=${BURNERS:-2}
bin=$(mktemp -d)/swarm
trap 'rm -rf "$(dirname "$bin")"' EXIT
go build -o "$bin" ./examples/swarm
burn() { timeout "$HOG" sh -c 'while :; do :; done' || true; }
(sleep "$AT"; for _ in $(seq "$BURNERS"); do burn & done; wait) &
"$bin" -listeners "$LISTENERS" -duration "$DURATION" -json -worst 1 "$@" 2>"$bin.err"
wait
grep '^depths' "$bin.err" || true
