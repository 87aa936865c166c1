#!/usr/bin/env bash
# Idle memory per feed, one build against another in one sitting: N idle HTTP/1.1 feeds (one
# connection and one device each, `pere-bench idle`) on one channel of a fresh server per run,
# on the memory store and on SQLite, the two builds alternating in a rotating order. Prints the
# per-feed PSS (server PSS with all open less before, divided by the feeds) of every run and a
# median (min–max) table; the raw reports stay in the scratch directory it names.
#
#   BASE=/path/to/older/pere-server N=10000 ROUNDS=3 bench/idle-feed.sh
#
# Without BASE only this tree's build is measured. `H2=1` adds HTTP/2 streams (`pere-bench
# idle-h2`, 100 streams per connection, memory store); `STORES=""` leaves the HTTP/1.1 feeds
# out (default `STORES="memory sqlite"`).
# `SETTLE=5`: seconds to wait once every feed is open before the memory is read: what an idle
# server holds (SQLite lets an idle device's record go two write-backs after its last change,
# about 2 s, and the server trims the C library's heap within its 2 s check after; 2 shows the
# feeds before that).
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-10000}
ROUNDS=${ROUNDS:-3}
H2=${H2:-0}
NEW=${NEW:-target/release/pere-server}
BENCH=${BENCH:-target/release/pere-bench}
BASE=${BASE:-}

say() { printf '%s\n' "$*" >&2; }
WORK=$(mktemp -d /tmp/pere-idle-feed.XXXXXX)
PERE_SERVER=$NEW
NCHAN_MODULE=""
# shellcheck source=bench/servers.sh
. bench/servers.sh
trap stop_server EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

builds=(new)
declare -A binary=([new]=$NEW)
if [ -n "$BASE" ]; then
  builds=(base new)
  binary[base]=$BASE
fi
read -ra stores <<<"${STORES-memory sqlite}"
cases=()
for build in "${builds[@]}"; do
  for store in "${stores[@]}"; do cases+=("$build/$store"); done
  if [ "$H2" = 1 ]; then cases+=("$build/h2"); fi
done

# One run of a case; prints its KiB per feed (PSS).
run_case() {
  local build=${1%/*} kind=${1#*/} report
  report="$WORK/$build-$kind-$2.json"
  if [ "$kind" = h2 ]; then
    start_pere memory "${binary[$build]}"
    "$BENCH" idle-h2 -n "$N" --connections $((N / 100)) --settle "${SETTLE:-5}" --url "$SERVER_URL" --server-pid "$SERVER_PID" >"$report"
    stop_server
    jq -r '.server.per_stream_kib.pss' "$report"
  else
    start_pere "$kind" "${binary[$build]}"
    "$BENCH" idle -n "$N" -d 2 --settle "${SETTLE:-5}" -q --json --url "$SERVER_URL" --server-pid "$SERVER_PID" >"$report"
    stop_server
    jq -r '.server.pss_kib_per_connection' "$report"
  fi
}

declare -A seen
for round in $(seq "$ROUNDS"); do
  for i in "${!cases[@]}"; do
    c=${cases[$(((i + round) % ${#cases[@]}))]}
    value=$(run_case "$c" "$round")
    say "round $round $c: $value KiB per feed"
    seen[$c]="${seen[$c]:-} $value"
  done
done

# median (min–max) of a list of numbers
summary() {
  tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{v[NR]=$1} END {m=(NR%2)?v[(NR+1)/2]:(v[NR/2]+v[NR/2+1])/2; printf "%.2f (%.2f–%.2f)", m, v[1], v[NR]}'
}

echo "$N idle feeds on one channel, $ROUNDS rounds, KiB per feed (PSS), median (min–max); reports in $WORK"
echo
printf '| build |'
for kind in "${stores[@]}" $([ "$H2" = 1 ] && echo h2); do printf ' %s |' "$kind"; done
echo
printf '| --- |'
for _ in "${stores[@]}" $([ "$H2" = 1 ] && echo h2); do printf ' ---: |'; done
echo
for build in "${builds[@]}"; do
  printf '| %s (`%s`) |' "$build" "${binary[$build]}"
  for kind in "${stores[@]}" $([ "$H2" = 1 ] && echo h2); do printf ' %s |' "$(summary "${seen[$build/$kind]}")"; done
  echo
done
