#!/usr/bin/env bash
# What a receipt costs, as devices really send them (issue 21, item 6): server CPU per
# acknowledged delivery against a delivery without receipts, on PERE's memory store and SQLite,
# and against Nchan's delivery + static `204`, all in one run. Writes bench/receipts-results.md.
#
# Cases, each with DEVICES subscribers on one channel, DURATION seconds of paced publishing:
#   fanout-10      no receipts, 10 events/s                         (every server)
#   fanout-100     no receipts, 100 events/s                        (PERE)
#   per-event-10   a receipt per delivery in the seed's form, each device on its own
#                  keep-alive connection, 10 events/s               (every server)
#   coalesced-100  one cumulative receipt in flight per device, 100 events/s   (PERE)
# Every run starts a fresh server and stops it (by its PID); servers alternate within a round
# and their order rotates between rounds; tables give medians over the rounds, and ratios are
# medians of the ratios of one round (runs seconds apart). Traffic goes to 127.0.0.1 only.
#
# Environment (all optional):
#   ROUNDS=3  DEVICES=1000  DURATION=10
#   PERE_STORES="memory sqlite"   NCHAN_WORKERS="1 2"   CASES="fanout-10 fanout-100 per-event-10 coalesced-100"
#   PERE_WORKERS="1 2"  run each PERE store on each of these numbers of worker threads
#                  (--workers; servers pere-memory-w1, ...) and compare PERE with Nchan at equal
#                  workers; empty (the default): the server's default, one per core
#   RESULTS=bench/receipts-results.md   REPORTS=target/bench-reports/receipts-<time>
#   NO_BUILD=1  use the release binaries already built
#   PERE_SERVER=path  another pere-server binary (say, a build from before a change)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DEVICES=${DEVICES:-1000}
DURATION=${DURATION:-10}
PERE_STORES=${PERE_STORES:-memory sqlite}
PERE_WORKERS=${PERE_WORKERS:-}
NCHAN_WORKERS=${NCHAN_WORKERS:-1 2}
CASES=${CASES:-fanout-10 fanout-100 per-event-10 coalesced-100}
RESULTS=${RESULTS:-bench/receipts-results.md}
REPORTS=${REPORTS:-target/bench-reports/receipts-$(date +%Y%m%d-%H%M%S)}
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so

say() { printf '%s\n' "$*" >&2; }
ulimit -n "$(ulimit -Hn)"

if [ -n "$NCHAN_WORKERS" ] && { ! command -v nginx >/dev/null || [ ! -e "$NCHAN_MODULE" ]; }; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  say "installing nginx-light and libnginx-mod-nchan"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx-light libnginx-mod-nchan
fi
command -v jq >/dev/null || { say "jq is needed"; exit 1; }

COMMIT=$(git rev-parse HEAD)
DIRTY=$(git status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock | awk '{print $2}' | paste -sd ' ' -)
[ -n "${NO_BUILD:-}" ] || cargo build --release -p pere-server -p pere-bench
PERE_SERVER=${PERE_SERVER:-$PWD/target/release/pere-server}
BENCH=$PWD/target/release/pere-bench

WORK=$(mktemp -d -t pere-receipts.XXXXXX)
mkdir -p "$REPORTS"
REPORTS=$(cd "$REPORTS" && pwd)
. bench/servers.sh

trap 'stop_server; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

# Nchan has no ledger to coalesce into: its cases are the two with a per-event equivalent.
runs_on() {
  case $1:$2 in
    nchan-*:fanout-10 | nchan-*:per-event-10 | pere-*:*) return 0 ;;
    *) return 1 ;;
  esac
}

run_case() {
  local case=$1 server=$2 out=$3 common
  common=(--url "$SERVER_URL" --server-pid "$SERVER_PID" --label "$server" --json -q
    -n "$DEVICES" -d "$DURATION" --settle 1 --drain 10)
  case $case in
    fanout-10) "$BENCH" fanout -r 10 "${common[@]}" ;;
    fanout-100) "$BENCH" fanout -r 100 "${common[@]}" ;;
    per-event-10) "$BENCH" receipts -r 10 --receipt-style per-event "${common[@]}" ;;
    coalesced-100) "$BENCH" receipts -r 100 --receipt-style coalesced "${common[@]}" ;;
  esac >"$out" 2>"${out%.json}.log"
}

# The suffix of PERE's server names for each worker setting: -wN, or nothing for the default.
SUFFIXES=()
if [ -n "$PERE_WORKERS" ]; then
  for workers in $PERE_WORKERS; do SUFFIXES+=("-w$workers"); done
else
  SUFFIXES=("")
fi
SERVERS=()
for store in $PERE_STORES; do
  for suffix in "${SUFFIXES[@]}"; do SERVERS+=("pere-$store$suffix"); done
done
for workers in $NCHAN_WORKERS; do SERVERS+=("nchan-w$workers"); done

STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq "$ROUNDS"); do
  for case in $CASES; do
    for i in "${!SERVERS[@]}"; do
      server=${SERVERS[$(((i + round - 1) % ${#SERVERS[@]}))]}
      runs_on "$server" "$case" || continue
      mkdir -p "$REPORTS/$case/$server"
      out=$REPORTS/$case/$server/$round.json
      began=$SECONDS
      if [[ $server == pere-* ]]; then start_pere "${server#pere-}"; else start_nchan "${server#nchan-w}"; fi &&
        run_case "$case" "$server" "$out" &&
        say "round $round $case $server: $((SECONDS - began)) s" ||
        { say "round $round $case $server: FAILED (see ${out%.json}.log)"; rm -f "$out"; }
      stop_server
    done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# The CPU a case spends per delivery that counts: acknowledged when devices acknowledge.
cost() {
  jq -r 'if .receipts then .server.cpu_us_per_acknowledged_delivery else .server.cpu_us_per_delivery end' "$1"
}
median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
values() { for f in "$REPORTS/$1/$2"/*.json; do [ -e "$f" ] && jq -r "$3" "$f"; done; }
# Median over rounds of cost(case A, server A) / cost(case B, server B).
ratio() {
  local r a b
  for r in $(seq "$ROUNDS"); do
    a=$REPORTS/$1/$2/$r.json b=$REPORTS/$3/$4/$r.json
    if [ -e "$a" ] && [ -e "$b" ]; then
      echo "$(cost "$a") $(cost "$b")" | awk '$2 > 0 {print $1 / $2}'
    fi
  done | median
}
workers_of() { if [ "$1" = -w1 ]; then echo "1 worker thread"; else echo "${1#-w} worker threads"; fi; }
verdict() { awk -v r="$1" -v max="$2" 'BEGIN {if (r == "-") print "no figure"; else if (r + 0 <= max) print "**met**"; else print "**not met**"}'; }
fmt() { awk -v x="$1" 'BEGIN {if (x == "-") print "-"; else printf "%.2f", x}'; }

{
  echo "# What a receipt costs, as devices send them"
  echo
  echo "Written by \`bench/receipts.sh\` ($STARTED, $ROUNDS rounds, $DEVICES devices on one channel,"
  echo "$DURATION s of publishing per run). Raw reports: \`${REPORTS#"$PWD"/}\` (not committed)."
  echo
  echo "- CPU: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), shared by server and generator"
  echo "- Load average before: $LOAD_BEFORE; after: $LOAD_AFTER"
  echo "- PERE from commit \`$COMMIT\`${DIRTY:+ plus uncommitted changes to $DIRTY}; Nchan: $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo none)"
  echo
  echo "Cost = server CPU (user + system, from \`/proc\`, kernel loopback sends included) per"
  echo "delivery without receipts, per **acknowledged** delivery with them. Medians over the rounds."
  echo
  echo "| case | server | CPU µs per (acknowledged) delivery | deliveries | acknowledged | receipt requests | server CPU s | generator CPU s | receipt RTT p99 µs | lost |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  for case in $CASES; do
    for server in "${SERVERS[@]}"; do
      runs_on "$server" "$case" || continue
      ls "$REPORTS/$case/$server"/*.json >/dev/null 2>&1 || continue
      printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$case" "$server" \
        "$(for f in "$REPORTS/$case/$server"/*.json; do cost "$f"; done | median)" \
        "$(values "$case" "$server" '.deliveries.distinct' | median)" \
        "$(values "$case" "$server" '.receipts.ok // "-"' | median)" \
        "$(values "$case" "$server" '.receipts.requests // "-"' | median)" \
        "$(values "$case" "$server" '.server.cpu_s' | median)" \
        "$(values "$case" "$server" '.generator.cpu_s' | median)" \
        "$(values "$case" "$server" '.receipts.rtt_us.p99 // "-"' | median)" \
        "$(values "$case" "$server" '.deliveries.lost' | median)"
    done
  done
  echo
  echo "## Against the goals (issue 21, item 6)"
  echo
  echo "| goal | ratio (median of per-round ratios) | target | verdict |"
  echo "| --- | --- | --- | --- |"
  for suffix in "${SUFFIXES[@]}"; do
    on=${suffix:+, $(workers_of "$suffix")}
    for store in $PERE_STORES; do
      r=$(ratio coalesced-100 "pere-$store$suffix" fanout-100 "pere-$store$suffix")
      echo "| coalesced receipts at 100/s vs no receipts at 100/s, $store$on | $(fmt "$r")× | ≤ 1.5× | $(verdict "$r" 1.5) |"
    done
    # With PERE_WORKERS, Nchan with as many worker processes as PERE has threads; else every Nchan.
    for workers in $NCHAN_WORKERS; do
      [ -z "$suffix" ] || [ "$suffix" = "-w$workers" ] || continue
      r=$(ratio per-event-10 "pere-memory$suffix" per-event-10 "nchan-w$workers")
      echo "| per-event receipts at 10/s, memory$on vs Nchan (\`worker_processes $workers\`) delivery + static 204 | $(fmt "$r")× | ≤ 1.5× | $(verdict "$r" 1.5) |"
    done
    if [[ " $PERE_STORES " == *" memory "* && " $PERE_STORES " == *" sqlite "* ]]; then
      r=$(ratio per-event-10 "pere-sqlite$suffix" per-event-10 "pere-memory$suffix")
      echo "| per-event receipts at 10/s, SQLite vs memory$on | $(fmt "$r")× | ≤ 1.2× | $(verdict "$r" 1.2) |"
    fi
  done
  echo
  echo "For reference, what a receipt adds to a delivery on the same server:"
  echo
  for server in "${SERVERS[@]}"; do
    r=$(ratio per-event-10 "$server" fanout-10 "$server")
    echo "- $server: per-event at 10/s over no receipts at 10/s: $(fmt "$r")×"
  done
  echo
  echo "Every delivery acknowledged? (receipts ok = distinct deliveries, nothing dropped or failed;"
  echo "coalesced: the server's answers acknowledged as many)"
  echo
  for f in "$REPORTS"/*/*/*.json; do
    jq -r 'select(.receipts) | "- \(.config.receipt_style) \(.label) \(input_filename | split("/")[-1]): delivered \(.deliveries.distinct), acknowledged \(.receipts.ok) (server says \(.receipts.server_acknowledged)), dropped \(.receipts.dropped), errors \(.receipts.errors)"' "$f"
  done | sed 's|\.json||'
} >"$RESULTS"
say "wrote $RESULTS (raw reports in $REPORTS)"
