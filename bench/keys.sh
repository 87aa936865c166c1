#!/usr/bin/env bash
# Pushes per second with a fresh Idempotency-Key per push against without one, on one server
# per store, alternating within each round (wrk, 50 connections, ~100-byte JSON bodies, no
# subscribers); prints each round's rates and the median ratio keyed / unkeyed.
# Environment: ROUNDS=5, DURATION=5 (seconds per run), PERE_STORES="memory sqlite".
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
PERE_STORES=${PERE_STORES:-"memory sqlite"}
BODY='{"order":"A-1042","customer":"C-77","items":3,"total":"129.90","currency":"EUR","state":"paid"}'
cargo build --release -q -p pere-server
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rate() { # url keyed -> requests/s
  WRK_BODY=$BODY WRK_KEYED=$2 wrk -t2 -c50 -d"${DURATION}s" -s bench/push-keyed.lua "$1" |
    awk '/Requests\/sec/ {print $2}'
}

for store in $PERE_STORES; do
  ./target/release/pere-server -p 0 --quiet --store "$store" --data-dir "$work/$store" >"$work/$store.log" 2>&1 &
  pid=$!
  for _ in $(seq 50); do grep -q listening "$work/$store.log" && break; sleep 0.1; done
  url="$(grep -o 'http://[0-9.:]*' "$work/$store.log" | head -1)/push/keys"
  ratios=()
  for round in $(seq "$ROUNDS"); do
    if (( round % 2 )); then plain=$(rate "$url" 0); keyed=$(rate "$url" 1)
    else keyed=$(rate "$url" 1); plain=$(rate "$url" 0); fi
    ratio=$(awk -v k="$keyed" -v p="$plain" 'BEGIN {printf "%.3f", k / p}')
    ratios+=("$ratio")
    echo "$store round $round: unkeyed $plain/s, keyed $keyed/s, ratio $ratio"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "$store: median keyed / unkeyed = $median"
done
