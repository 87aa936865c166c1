#!/usr/bin/env bash
# Where the time of a single push goes, in instructions (robust on a loaded machine, unlike
# timings): runs the release pere-server under `valgrind --tool=callgrind`, zeroes the counters
# once it listens, sends PUSHES pushes of ~100-byte JSON bodies with a `device` header from one
# keep-alive connection (pere-bench push, no subscribers), dumps the counters and prints the
# instructions per push, in all and for the main parts of the path.
#
# Usage: bench/callgrind-push.sh [memory|sqlite] [server binary]
# Variables: PUSHES (5000), CONNECTIONS (1), RETENTION (100000: no pruning; compare.sh keeps 1000), KEEP (a directory to keep the callgrind output in).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/callgrind-report.sh
. bench/callgrind-report.sh
store=${1:-memory}
server=${2:-target/release/pere-server}
pushes=${PUSHES:-5000}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
[ -n "${2:-}" ] || cargo build --release -q -p pere-server
cargo build --release -q -p pere-bench
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
  "$server" -o 127.0.0.1 -p 0 --quiet --store "$store" --data-dir "$work/data" --retention-events "${RETENTION:-100000}" \
  >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 600); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.1; done
base=$(grep -o 'http://[0-9.:]*' "$work/out" | head -1)
[ -n "$base" ] || { cat "$work/err" >&2; exit 1; }
# A first push creates the channel; then the counters start from zero.
curl -s -o /dev/null -X POST -H 'content-type: application/json' "$base/push/b${$}xc0" -d '{}'
callgrind_control -z "$pid" >/dev/null
target/release/pere-bench push -u "$base" -k "${CONNECTIONS:-1}" -m "$pushes" -d 600 --pad 62 --prefix "b${$}x" --json -q \
  | jq -c '{pushes: .published.ok, errors: .published.errors}' >"$work/bench.json"
callgrind_control -d "$pid" >/dev/null
kill "$pid"; wait "$pid" 2>/dev/null || true
dump=$(ls -t "$work"/cg.out.* | head -1)
ok=$(jq -r .pushes "$work/bench.json")
[ "$ok" -gt 0 ] || { echo "no push succeeded: $(cat "$work/bench.json")" >&2; exit 1; }
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$dump" "$KEEP/callgrind-push-$store.out"; fi
total=$(callgrind_total "$dump")
echo "store $store: $ok pushes, $(( total / ok )) instructions per push (all threads)"
callgrind_per_unit "$dump" "$ok" 100 "${TOP:-80}" "${TOP:-40}"
