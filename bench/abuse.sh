#!/usr/bin/env bash
# What one anonymous client can make the server hold, and what it costs: memory per fresh
# channel (following receipts and presence, one push), per device, per admin view; idle CPU by
# channel count; feeds filling every connection. Starts a fresh server per measurement on each
# store, runs bench/abuse.py against it, and writes bench/ABUSE.md.
#
# Usage: bench/abuse.sh [stores, default "memory sqlite"]
set -euo pipefail
cd "$(dirname "$0")/.."
stores=${1:-memory sqlite}
cargo build --release -q -p pere-server
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$work"' EXIT

start() { # $1 store, then flags; sets PID and URL
  local store=$1
  shift
  rm -rf "$work/data"
  target/release/pere-server -o 127.0.0.1 -p 0 --quiet --store "$store" --data-dir "$work/data" "$@" >"$work/out" 2>"$work/err" &
  PID=$!
  for _ in $(seq 100); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.05; done
  URL=$(grep -o 'http://[0-9.:]*' "$work/out" | head -1)
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""; }

run() { # $1 store, $2 scenario, $3 n, then server flags
  local store=$1 scenario=$2 n=$3
  shift 3
  start "$store" "$@"
  python3 bench/abuse.py "$scenario" "$URL" "$PID" "$n" | sed "s/^{/{\"store\":\"$store\",/"
  if [ "$scenario" = descriptors ]; then
    echo "{\"store\":\"$store\",\"scenario\":\"descriptors-log\",\"error_lines\":$(grep -c 'ERROR>' "$work/err" || true)}"
  fi
  stop
}

results=$work/results.jsonl
for store in $stores; do
  run "$store" channels 6000 | tee -a "$results"
  run "$store" devices 20000 | tee -a "$results"
  run "$store" admin_views 10000 | tee -a "$results"
  run "$store" idle_cpu 23000 | tee -a "$results"
  run "$store" descriptors 3000 --max-connections 2000 --connection-reserve 100 | tee -a "$results"
done

{
  echo "# What a client can make PERE hold"
  echo
  echo "Written by \`bench/abuse.sh\` ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD), $(nproc) cores)."
  echo "One fresh server (\`--quiet\`) per line; memory is the server's RSS from /proc, settled 2 s."
  echo
  echo "| store | scenario | result |"
  echo "| --- | --- | --- |"
  while read -r line; do
    store=$(jq -r .store <<<"$line"); scenario=$(jq -r .scenario <<<"$line")
    echo "| $store | $scenario | $(jq -c 'del(.store, .scenario)' <<<"$line" | sed 's/[{}"]//g; s/,/, /g; s/:/: /g') |"
  done <"$results"
  echo
  echo "Targets (issue): a fresh channel (receipts and presence followed, one push) at most 8 KiB;"
  echo "6 concurrent views of a 10,000-device channel at most 16 MiB; an idle server with 23,000"
  echo "channels at most 3% of a core; feeds past the cap refused with 503 and Retry-After while"
  echo "/health and pushes are still served."
} > bench/ABUSE.md
cat bench/ABUSE.md
