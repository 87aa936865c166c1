#!/usr/bin/env bash
# Batch publishing against single pushes, in the same run: events per second published one per
# request and in NDJSON batches of BATCH events, ~100-byte JSON bodies with a `device` header, no
# subscribers, on the memory store and on SQLite (durability normal). The two alternate within
# each round, every measurement on a fresh server. Writes the medians to bench/batch-results.md.
#
# Usage: bench/batch.sh [seconds per measurement, default 5]
# Variables: ROUNDS (3), BATCH (100), SINGLE_CONNS (50), BATCH_CONNS (4).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${ROUNDS:-3}
batch=${BATCH:-100}
single_conns=${SINGLE_CONNS:-50}
batch_conns=${BATCH_CONNS:-4}
command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq; }
cargo build --release -q -p pere-server -p pere-bench
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

start_server() { # $@: store flags; sets PID and BASE
  target/release/pere-server -o 127.0.0.1 -p 0 --quiet --retention-events 100000 "$@" >"$work/out" 2>&1 &
  PID=$!
  for _ in $(seq 200); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.05; done
  BASE=$(grep -o 'http://[0-9.:]*' "$work/out" | head -1)
}

# ~100-byte bodies: {"t":<19 digits>,"seq":<n>,"pad":"<62 x>"} is 100 bytes for 5-digit seqs.
measure() { # $1 connections, $2 events per request -> events/s
  target/release/pere-bench push -u "$BASE" -k "$1" -d "$secs" --pad 62 --batch "$2" --drain 1 \
    --server-pid "$PID" --json -q | jq -r '.published.per_s'
}

declare -A results
stores=("memory|--store memory" "sqlite|--store sqlite --durability normal")
for round in $(seq "$rounds"); do
  for entry in "${stores[@]}"; do
    name=${entry%%|*}; flags=${entry#*|}
    # The order of the two alternates between rounds.
    modes=("single" "batch"); (( round % 2 == 0 )) && modes=("batch" "single")
    for mode in "${modes[@]}"; do
      rm -rf "$work/data"
      # shellcheck disable=SC2086
      start_server $flags --data-dir "$work/data"
      if [[ $mode == single ]]; then rate=$(measure "$single_conns" 1); else rate=$(measure "$batch_conns" "$batch"); fi
      kill "$PID"; wait "$PID" 2>/dev/null || true
      results[$name-$mode]+="$rate "
      echo "round $round $name $mode: events/s $rate" >&2
    done
  done
done

median() { tr ' ' '\n' | awk 'NF' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
{
  echo "| store | single pushes, events/s (median) | runs | batches of $batch, events/s (median) | runs | batch / single |"
  echo "| --- | ---: | --- | ---: | --- | ---: |"
  for entry in "${stores[@]}"; do
    name=${entry%%|*}
    s=$(echo "${results[$name-single]}" | median); b=$(echo "${results[$name-batch]}" | median)
    ratio=$(awk -v b="$b" -v s="$s" 'BEGIN { if (s > 0) printf "%.1f×", b / s; else print "-" }')
    echo "| $name | $s | $(echo ${results[$name-single]} | tr ' ' '/') | $b | $(echo ${results[$name-batch]} | tr ' ' '/') | $ratio |"
  done
  echo
  echo "Command: \`ROUNDS=$rounds BATCH=$batch bench/batch.sh $secs\` (pere-bench push, ~100-byte JSON bodies with a \`device\` header:" \
    "single pushes on $single_conns keep-alive connections, batches on $batch_conns; ${secs} s per measurement, a fresh server each," \
    "no subscribers, \`--quiet\`; server and generator on the same $(nproc) cores), commit $(git rev-parse --short HEAD), $(date -u +%Y-%m-%d)."
} > bench/batch-results.md
cat bench/batch-results.md
