#!/usr/bin/env bash
# Paced fan-out against the floor (issue 23, item 2): server CPU per delivery and p99 latency of
# PERE (memory and SQLite stores), of `sse-floor` (a server that only holds sockets and writes
# each push to them from the publishing task, with no PERE code) and of Nchan, in one run.
# DEVICES feeds on one channel, EVENTS events at RATE/s. Servers alternate within a round and
# their order rotates between rounds; the table gives medians over the rounds, and ratios are
# medians of the ratios of one round. Traffic goes to 127.0.0.1 only. Writes RESULTS.
#
# Environment (all optional):
#   ROUNDS=3  DEVICES=1000  RATE=100  DURATION=10   SERVERS="pere-memory pere-sqlite floor nchan-w1"
#   RESULTS=bench/floor-results.md   REPORTS=target/bench-reports/floor-<time>
#   NO_BUILD=1  use the release binaries already built
#   PERE_SERVER=path  another pere-server binary (say, a build from before a change)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DEVICES=${DEVICES:-1000}
RATE=${RATE:-100}
DURATION=${DURATION:-10}
SERVERS=(${SERVERS:-pere-memory pere-sqlite floor nchan-w1})
RESULTS=${RESULTS:-bench/floor-results.md}
REPORTS=${REPORTS:-target/bench-reports/floor-$(date +%Y%m%d-%H%M%S)}
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so

say() { printf '%s\n' "$*" >&2; }
ulimit -n "$(ulimit -Hn)"
command -v jq >/dev/null || { say "jq is needed"; exit 1; }
if [[ " ${SERVERS[*]} " == *" nchan-"* ]] && { ! command -v nginx >/dev/null || [ ! -e "$NCHAN_MODULE" ]; }; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  say "installing nginx-light and libnginx-mod-nchan"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx-light libnginx-mod-nchan
fi

COMMIT=$(git rev-parse HEAD)
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p pere-server -p pere-bench
PERE_SERVER=${PERE_SERVER:-$PWD/target/release/pere-server}
FLOOR_SERVER=$PWD/target/release/sse-floor
BENCH=$PWD/target/release/pere-bench

WORK=$(mktemp -d -t pere-floor.XXXXXX)
mkdir -p "$REPORTS"
REPORTS=$(cd "$REPORTS" && pwd)
. bench/servers.sh
trap 'stop_server; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq "$ROUNDS"); do
  for i in "${!SERVERS[@]}"; do
    server=${SERVERS[$(((i + round - 1) % ${#SERVERS[@]}))]}
    mkdir -p "$REPORTS/$server"
    out=$REPORTS/$server/$round.json
    case $server in
      pere-*) start_pere "${server#pere-}" ;;
      nchan-w*) start_nchan "${server#nchan-w}" ;;
      floor) start_floor ;;
    esac &&
      "$BENCH" fanout -r "$RATE" -n "$DEVICES" -d "$DURATION" --settle 1 --drain 10 \
        --url "$SERVER_URL" --server-pid "$SERVER_PID" --label "$server" --json -q \
        >"$out" 2>"${out%.json}.log" &&
      say "round $round $server: done" ||
      { say "round $round $server: FAILED (see ${out%.json}.log)"; rm -f "$out"; }
    stop_server
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
values() { for f in "$REPORTS/$1"/*.json; do [ -e "$f" ] && jq -r "$2" "$f"; done; }
# Median over rounds of FIELD(server A) / FIELD(server B).
ratio() {
  local r a b
  for r in $(seq "$ROUNDS"); do
    a=$REPORTS/$1/$r.json b=$REPORTS/$2/$r.json
    [ -e "$a" ] && [ -e "$b" ] && echo "$(jq -r "$3" "$a") $(jq -r "$3" "$b")" | awk '$2 > 0 {print $1 / $2}'
  done | median
}
fmt() { awk -v x="$1" 'BEGIN {if (x == "-") print "-"; else printf "%.2f", x}'; }
CPU='.server.cpu_us_per_delivery'
P99='.latency_us.p99'

{
  echo "# Paced fan-out against the floor"
  echo
  echo "Written by \`bench/floor.sh\` ($STARTED, $ROUNDS rounds, $DEVICES feeds on one channel,"
  echo "$RATE events/s for $DURATION s). Raw reports: \`${REPORTS#"$PWD"/}\` (not committed)."
  echo
  echo "- CPU: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), shared by server and generator"
  echo "- Load average before: $LOAD_BEFORE; after: $LOAD_AFTER"
  echo "- PERE from commit \`$COMMIT\`; Nchan: $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo none)"
  echo
  echo "| server | CPU µs per delivery | p50 µs | p99 µs | deliveries | lost |"
  echo "| --- | --- | --- | --- | --- | --- |"
  for server in "${SERVERS[@]}"; do
    ls "$REPORTS/$server"/*.json >/dev/null 2>&1 || continue
    echo "| $server | $(values "$server" "$CPU" | median) | $(values "$server" '.latency_us.p50' | median) | $(values "$server" "$P99" | median) | $(values "$server" '.deliveries.distinct' | median) | $(values "$server" '.deliveries.lost' | median) |"
  done
  echo
  echo "| ratio (median of per-round ratios) | value | target (issue 23) |"
  echo "| --- | --- | --- |"
  for store in memory sqlite; do
    [[ " ${SERVERS[*]} " == *" pere-$store "* ]] || continue
    [[ " ${SERVERS[*]} " == *" floor "* ]] &&
      echo "| CPU per delivery, pere-$store / floor | $(fmt "$(ratio "pere-$store" floor "$CPU")")× | ≤ 1.1× |"
    [[ " ${SERVERS[*]} " == *" nchan-w1 "* ]] &&
      echo "| p99, pere-$store / nchan-w1 | $(fmt "$(ratio "pere-$store" nchan-w1 "$P99")")× | ≤ 0.8× (retired: the floor's own below) |"
    [[ " ${SERVERS[*]} " == *" floor "* ]] &&
      echo "| p99, pere-$store / floor | $(fmt "$(ratio "pere-$store" floor "$P99")")× | – |"
  done
  # What the p99 goal against Nchan asks of any server on this machine: the floor writes each
  # event from the publishing task with no protocol at all.
  [[ " ${SERVERS[*]} " == *" floor "* && " ${SERVERS[*]} " == *" nchan-w1 "* ]] &&
    echo "| p99, floor / nchan-w1 | $(fmt "$(ratio floor nchan-w1 "$P99")")× | – |"
} >"$RESULTS"
cat "$RESULTS"
