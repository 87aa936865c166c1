#!/usr/bin/env bash
# Store throughput: pushes/s and receipts/s with 50 concurrent keep-alive clients (wrk), for the
# memory store, SQLite (durability normal, the default) and SQLite (durability full), alternating,
# three rounds each. Writes the medians to bench/store-results.md.
#
# Usage: bench/store.sh [seconds per measurement, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release -q -p pere-server
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

start_server() { # $@: store flags; sets PID and BASE
  target/release/pere-server -o 127.0.0.1 -p 0 --quiet --retention-events 100000 "$@" >"$work/out" 2>&1 &
  PID=$!
  for _ in $(seq 100); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.05; done
  BASE=$(grep -o 'http://[0-9.:]*' "$work/out" | head -1)
}

measure() { # $1 url, $2 body, $3 content type -> requests/s
  WRK_BODY="$2" WRK_TYPE="$3" wrk -t1 -c50 -d"${secs}s" -s bench/post.lua "$1" | awk '/Requests\/sec/ {print $2}'
}

declare -A results
stores=("memory|--store memory" "sqlite-normal|--store sqlite --durability normal" "sqlite-full|--store sqlite --durability full")
for round in 1 2 3; do
  for entry in "${stores[@]}"; do
    name=${entry%%|*}; flags=${entry#*|}
    rm -rf "$work/data"
    # shellcheck disable=SC2086
    start_server $flags --data-dir "$work/data"
    curl -s -o /dev/null -X POST "$BASE/push/B" -d first
    pushes=$(measure "$BASE/push/B" '{"n":1,"data":"jvg2dchijlkob1afuauaohtbzzhd7ayp"}' application/json)
    receipts=$(measure "$BASE/feedback/B" '{"device":"H1","id":1,"status":"rx ok"}' application/json)
    kill "$PID"; wait "$PID" 2>/dev/null || true
    results[$name]+="$pushes $receipts;"
    echo "round $round $name: pushes/s $pushes receipts/s $receipts" >&2
  done
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
{
  echo "| store | pushes/s (median of 3) | runs | receipts/s (median of 3) | runs |"
  echo "| --- | ---: | --- | ---: | --- |"
  for entry in "${stores[@]}"; do
    name=${entry%%|*}
    runs=${results[$name]}
    p=$(echo "$runs" | tr ';' '\n' | awk 'NF {print $1}')
    r=$(echo "$runs" | tr ';' '\n' | awk 'NF {print $2}')
    echo "| $name | $(echo "$p" | median) | $(echo $p | tr ' ' '/') | $(echo "$r" | median) | $(echo $r | tr ' ' '/') |"
  done
  echo
  echo "Command: \`bench/store.sh $secs\` (wrk -t1 -c50, ${secs} s per measurement, server and wrk on the same $(nproc) cores), commit $(git rev-parse --short HEAD), $(date -u +%Y-%m-%d)."
} > bench/store-results.md
cat bench/store-results.md
