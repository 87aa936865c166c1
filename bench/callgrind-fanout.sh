#!/usr/bin/env bash
# Where the time of a paced delivery goes, in instructions (robust on a loaded machine, unlike
# timings): runs a server under `valgrind --tool=callgrind` (PERE on the memory or SQLite store,
# or `sse-floor`, the server with no PERE code that writes each push to every socket from the
# publishing task), opens FEEDS feeds on one channel with `pere-bench fanout`, publishes EVENTS
# events at RATE/s, and prints the server's instructions per delivery, in all and for the main
# parts of the path. Opening the feeds is counted too; with the defaults it is about 1% of the
# total.
#
# Usage: bench/callgrind-fanout.sh [memory|sqlite|floor]
# Variables: FEEDS (200), EVENTS (200), RATE (10), TOP (60), KEEP (a directory to keep the
# callgrind output in), NO_BUILD=1 (use the release binaries already built).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/callgrind-report.sh
. bench/callgrind-report.sh
server=${1:-memory}
feeds=${FEEDS:-200}
events=${EVENTS:-200}
rate=${RATE:-10}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p pere-server -p pere-bench
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

case $server in
  floor) command=(target/release/sse-floor 127.0.0.1:0) ;;
  memory | sqlite)
    command=(target/release/pere-server -o 127.0.0.1 -p 0 --quiet --store "$server" --data-dir "$work/data") ;;
  *) echo "usage: $0 [memory|sqlite|floor]" >&2; exit 2 ;;
esac
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "${command[@]}" >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 600); do grep -q "listening on" "$work/out" "$work/err" 2>/dev/null && break; sleep 0.1; done
base=$(grep -ho 'http://[0-9.:]*' "$work/out" "$work/err" | head -1)
[ -n "$base" ] || { cat "$work/err" >&2; exit 1; }
target/release/pere-bench fanout -u "$base" -n "$feeds" -m "$events" -r "$rate" --settle 2 --drain 30 --json -q \
  >"$work/bench.json"
callgrind_control -d "$pid" >/dev/null
kill "$pid"; wait "$pid" 2>/dev/null || true
dump=$(ls -t "$work"/cg.out.* | head -1)
deliveries=$(jq -r .deliveries.distinct "$work/bench.json")
lost=$(jq -r .deliveries.lost "$work/bench.json")
[ "$deliveries" -gt 0 ] || { echo "no delivery: $(cat "$work/bench.json")" >&2; exit 1; }
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$dump" "$KEEP/callgrind-fanout-$server.out"; fi
total=$(callgrind_total "$dump")
echo "$server: $deliveries deliveries ($lost lost), $(( total / deliveries )) instructions per delivery (all threads)"
callgrind_per_unit "$dump" "$deliveries" 20 "${TOP:-60}" "${TOP:-40}"
