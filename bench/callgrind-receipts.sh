#!/usr/bin/env bash
# Where a receipt's server time goes, in instructions (robust on a loaded machine): runs the
# release pere-server under `valgrind --tool=callgrind`, zeroes the counters once it listens
# (opening the DEVICES feeds is thus counted, a small share), publishes at RATE events/s for
# SECONDS_ to DEVICES devices that acknowledge in STYLE (per-event, coalesced, or none: fan-out
# without receipts), then prints instructions per delivery, in all and for the main parts of the
# receipt path. Run it with `none` too: the difference is what the receipts cost.
#
# Usage: bench/callgrind-receipts.sh [per-event|coalesced|none] [memory|sqlite]
# Variables: DEVICES (50), RATE (10), SECONDS_ (10), KEEP (a directory to keep the output in),
# SERVER (another pere-server binary to measure, say a build from before a change; not rebuilt).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/callgrind-report.sh
. bench/callgrind-report.sh
style=${1:-per-event}
store=${2:-memory}
devices=${DEVICES:-50}
rate=${RATE:-10}
seconds=${SECONDS_:-10}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
server=${SERVER:-target/release/pere-server}
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p pere-server -p pere-bench
work=$(mktemp -d)
pid=""
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
  "$server" -o 127.0.0.1 -p 0 --quiet --store "$store" --data-dir "$work/data" \
  --retention-events 100000 >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 600); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.1; done
base=$(grep -o 'http://[0-9.:]*' "$work/out" | head -1)
[ -n "$base" ] || { cat "$work/err" >&2; exit 1; }
callgrind_control -z "$pid" >/dev/null
if [ "$style" = none ]; then
  scenario=(fanout)
else
  scenario=(receipts --receipt-style "$style")
fi
target/release/pere-bench "${scenario[@]}" -u "$base" -n "$devices" -r "$rate" -d "$seconds" \
  --drain 30 --json -q >"$work/bench.json"
callgrind_control -d "$pid" >/dev/null
kill "$pid"; wait "$pid" 2>/dev/null || true
pid=""
dump=$(ls -t "$work"/cg.out.* | head -1)
delivered=$(jq -r '.deliveries.distinct' "$work/bench.json")
acked=$(jq -r '.receipts.ok // 0' "$work/bench.json")
requests=$(jq -r '.receipts.requests // 0' "$work/bench.json")
[ "$delivered" -gt 0 ] || { echo "nothing delivered: $(cat "$work/bench.json")" >&2; exit 1; }
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$dump" "$KEEP/callgrind-receipts-$style-$store.out"; fi
total=$(callgrind_total "$dump")
echo "style $style, store $store: $delivered deliveries, $acked acknowledged by $requests requests;"
echo "$(( total / delivered )) instructions per delivery (all threads)"
callgrind_per_unit "$dump" "$delivered" 50 "${TOP:-80}" "${TOP:-40}" ", per delivery"
