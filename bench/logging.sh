#!/usr/bin/env bash
# What the activity log costs: pushes/s with a line per push written to a file, against --quiet,
# on the memory store (where the log's share of the work is largest), alternating, five rounds.
# 50 keep-alive clients (wrk) publish ~100-byte JSON bodies with a device header. Prints each
# round and the median ratio; the issue's bound is a cost of at most 5%.
#
# Usage: bench/logging.sh [seconds per measurement, default 10] [rounds, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-5}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release -q -p pere-server
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
body='{"order":"A-10442","customer":"C-2291","total":129.5,"currency":"EUR","lines":3,"priority":"normal"}'

measure() { # $1: name, then server flags -> pushes/s; the server's output goes to $work/$1.out
  local out=$work/$1.out
  shift
  target/release/pere-server -o 127.0.0.1 -p 0 --store memory --retention-events 1000 "$@" >"$out" 2>"$work/err" &
  local pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$out" 2>/dev/null && break; sleep 0.05; done
  local base
  base=$(grep -o 'http://[0-9.:]*' "$out" | head -1)
  WRK_BODY="$body" WRK_TYPE=application/json wrk -t1 -c50 -d"${secs}s" -s bench/post.lua "$base/push/L" |
    awk '/Requests\/sec/ {print $2}'
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

ratios=()
for round in $(seq "$rounds"); do
  if [ $((round % 2)) -eq 1 ]; then
    quiet=$(measure quiet --quiet); logged=$(measure logged)
  else
    logged=$(measure logged); quiet=$(measure quiet --quiet)
  fi
  lines=$(wc -l <"$work/logged.out")
  ratio=$(awk -v l="$logged" -v q="$quiet" 'BEGIN {printf "%.3f", l / q}')
  ratios+=("$ratio")
  echo "round $round: quiet $quiet pushes/s, logged $logged pushes/s ($lines lines), logged/quiet $ratio"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median logged/quiet: $median (wrk -t1 -c50, ${secs} s, $(nproc) cores shared, commit $(git rev-parse --short HEAD))"
