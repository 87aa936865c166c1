#!/usr/bin/env bash
# Soak: 19,000 subscribers held on one server for 10 minutes (the most one process may hold
# here: 20,000 open files), with a trickle of events (one a second, each delivered to all) and
# the server's resident memory sampled every 30 s. Writes bench/SOAK.md.
#
# Usage: bench/soak.sh [subscribers, default 19000] [seconds, default 600] [store, default sqlite]
set -euo pipefail
cd "$(dirname "$0")/.."
subscribers=${1:-19000}
seconds=${2:-600}
store=${3:-sqlite}
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p pere-server -p pere-bench -p pere-pub
work=$(mktemp -d)
server_pid=""; bench_pid=""; pub_pid=""
cleanup() { for p in $pub_pid $bench_pid $server_pid; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

target/release/pere-server -o 127.0.0.1 -p 0 --quiet --store "$store" --data-dir "$work/data" >"$work/server.out" 2>&1 &
server_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/server.out" 2>/dev/null && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$work/server.out" | head -1)
rss() { awk '/VmRSS/ {print $2}' "/proc/$server_pid/status"; }
base=$(rss)

target/release/pere-bench idle -u "$url" -n "$subscribers" -d "$seconds" --settle 2 --server-pid "$server_pid" \
  --label soak --json --prefix soak >"$work/bench.json" 2>"$work/bench.err" &
bench_pid=$!
# Wait until every subscriber is connected (the server counts them), then publish a trickle.
for _ in $(seq 600); do
  open=$(curl -s "$url/admin/connections" | awk -F': ' '/total number/ {print $2+0}')
  [ "${open:-0}" -ge "$subscribers" ] && break
  sleep 0.5
done
target/release/pere-pub "${url#http://}" soakc0 --interval 1 --quiet &
pub_pid=$!

{
  echo "# Soak: $subscribers subscribers for $seconds s"
  echo
  echo "\`bench/soak.sh $subscribers $seconds $store\` on commit $(git rev-parse --short HEAD), $(date -u +%Y-%m-%d), $(nproc) cores."
  echo "Server: \`pere-server --store $store --quiet\`; one event a second published on the subscribers' channel"
  echo "(so every event goes to all $subscribers), keep-alive comments every 15 s. RSS sampled every 30 s."
  echo
  echo "| time (s) | open feeds | server RSS (MiB) |"
  echo "| ---: | ---: | ---: |"
  echo "| before | 0 | $(awk "BEGIN {printf \"%.1f\", $base/1024}") |"
} >"$work/SOAK.md"
start=$(date +%s)
while kill -0 "$bench_pid" 2>/dev/null; do
  now=$(( $(date +%s) - start ))
  open=$(curl -s "$url/admin/connections" | awk -F': ' '/total number/ {print $2+0}')
  echo "| $now | ${open:-?} | $(awk "BEGIN {printf \"%.1f\", $(rss)/1024}") |" >>"$work/SOAK.md"
  sleep 30
done
kill "$pub_pid" 2>/dev/null || true
{
  echo
  echo "pere-bench report (memory per connection is measured once all are open):"
  echo
  echo '```json'
  cat "$work/bench.json"
  echo '```'
} >>"$work/SOAK.md"
cp "$work/SOAK.md" bench/SOAK.md
cat bench/SOAK.md
