#!/usr/bin/env bash
# Idle memory per feed: HTTP/1.1 feeds (one connection each, `pere-bench idle`) against HTTP/2
# streams (many per connection, `pere-bench idle-h2`), on a fresh memory-store server per run,
# alternating. Writes its section of bench/RESULTS.md (between the h2-idle markers, which
# compare.sh keeps) and prints it.
#
#   N=10000 ROUNDS=3 bench/h2-idle.sh
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
ROUNDS=${ROUNDS:-3}
RESULTS=${RESULTS:-bench/RESULTS.md}
SERVER=target/release/pere-server
BENCH=target/release/pere-bench

cargo build --release --locked -q -p pere-server -p pere-bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work=$(mktemp -d /tmp/pere-h2-idle.XXXXXX)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Starts a server with extra flags; sets server_pid and port.
start() {
  "$SERVER" -o 127.0.0.1 -p 0 --store memory --quiet --retention-events 1000 "$@" >"$work/server.out" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    port=$(sed -nE '1s|.*127\.0\.0\.1:([0-9]+).*|\1|p' "$work/server.out")
    if [ -n "$port" ]; then return; fi
    sleep 0.1
  done
  echo "the server did not start" >&2
  exit 1
}

stop() {
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

# Prints the per-stream PSS (KiB) of one run of a case.
run_case() {
  case "$1" in
    h1)
      start
      "$BENCH" idle -n "$N" -d 2 --settle 2 -q --json --url "http://127.0.0.1:$port" --server-pid "$server_pid" \
        >"$work/report.json"
      stop
      jq -r '.server.pss_kib_per_connection' "$work/report.json"
      ;;
    h2-100)
      start
      "$BENCH" idle-h2 -n "$N" --connections $((N / 100)) --url "http://127.0.0.1:$port" --server-pid "$server_pid" \
        >"$work/report.json"
      stop
      jq -r '.server.per_stream_kib.pss' "$work/report.json"
      ;;
    h2-1000)
      start --max-streams-per-connection 1000
      "$BENCH" idle-h2 -n "$N" --connections $((N / 1000)) --url "http://127.0.0.1:$port" --server-pid "$server_pid" \
        >"$work/report.json"
      stop
      jq -r '.server.per_stream_kib.pss' "$work/report.json"
      ;;
  esac
}

cases=(h1 h2-100 h2-1000)
declare -A seen
for round in $(seq "$ROUNDS"); do
  for i in "${!cases[@]}"; do
    c=${cases[$(((i + round) % ${#cases[@]}))]}
    value=$(run_case "$c")
    echo "round $round $c: $value KiB" >&2
    seen[$c]="${seen[$c]:-} $value"
  done
done

# median (min–max) of a list of numbers
summary() {
  tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{v[NR]=$1} END {m=(NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2; printf "%.2f (%.2f–%.2f)", m, v[1], v[NR]}'
}

section=$(
  echo "<!-- h2-idle: begin (written by bench/h2-idle.sh; compare.sh keeps it) -->"
  echo "## HTTP/2: idle memory per stream"
  echo
  echo "Written by \`bench/h2-idle.sh\` ($(date -u +%Y-%m-%dT%H:%M:%SZ), $ROUNDS rounds, commit"
  echo "\`$(git rev-parse --short HEAD)\`): $N feeds held on one channel of a fresh"
  echo "\`pere-server --store memory --quiet --retention-events 1000\`, server PSS after opening all"
  echo "less before, divided by the feeds; median (min–max). The same 2 shared cores as above."
  echo
  echo "| feeds carried as | KiB per feed (PSS) |"
  echo "| --- | ---: |"
  echo "| HTTP/1.1, one connection each (\`pere-bench idle\`, the dedicated feed loop) | $(summary "${seen[h1]}") |"
  echo "| HTTP/2, 100 streams per connection (\`pere-bench idle-h2 --connections $((N / 100))\`) | $(summary "${seen[h2-100]}") |"
  echo "| HTTP/2, 1,000 streams per connection (\`--max-streams-per-connection 1000\`) | $(summary "${seen[h2-1000]}") |"
  echo "<!-- h2-idle: end -->"
)
if [ -f "$RESULTS" ] && grep -q '^<!-- h2-idle: begin' "$RESULTS"; then
  sed -i '/^<!-- h2-idle: begin/,/^<!-- h2-idle: end -->/d' "$RESULTS"
fi
printf '\n%s\n' "$section" >>"$RESULTS"
echo "$section"
