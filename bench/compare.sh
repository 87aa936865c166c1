#!/usr/bin/env bash
# Compares PERE with Nchan (nginx) on the same scenarios and writes bench/RESULTS.md.
#
# Every run starts a fresh server, loads it with pere-bench (or wrk), and stops it. Servers
# alternate within each round (their order rotates from round to round), so every ratio compares
# runs made a few seconds apart; the tables give medians over the rounds. See bench/README.md.
#
# Environment (all optional):
#   ROUNDS=3                  rounds (each runs every scenario on every server)
#   PERE_STORES="memory sqlite"  PERE stores to run (the default durable store is sqlite)
#   NCHAN_WORKERS="1 2"       nginx worker_processes variants
#   SCENARIOS="idle idle-channels fanout-1k fanout-10k saturate push push-100 receipts receipts-max"
#   DURATION=10               seconds of load per run
#   IDLE_SUBSCRIBERS=10000    subscribers of the idle scenario
#   RECEIPT_RATE=10           events/s in the paced receipts scenario (× 1000 subscribers = receipts/s)
#   PERE_BASELINE=path        another pere-server build (say, of the commit before a change): its
#                             runs are the servers `base-<store>`, alternating with this build's,
#                             and the summary gets a second table of ratios to them
#   RESULTS=bench/RESULTS.md  where the summary goes
#   REPORTS=target/bench-reports/<time>  where the raw JSON reports and logs go
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
PERE_STORES=${PERE_STORES:-memory sqlite}
NCHAN_WORKERS=${NCHAN_WORKERS:-"1 2"}
SCENARIOS=${SCENARIOS:-"idle idle-channels fanout-1k fanout-10k saturate push push-100 receipts receipts-max"}
DURATION=${DURATION:-10}
IDLE_SUBSCRIBERS=${IDLE_SUBSCRIBERS:-10000}
RECEIPT_RATE=${RECEIPT_RATE:-10}
RESULTS=${RESULTS:-bench/RESULTS.md}
REPORTS=${REPORTS:-target/bench-reports/$(date +%Y%m%d-%H%M%S)}
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so

say() { printf '%s\n' "$*" >&2; }

# 10,000 subscribers need 10,000 descriptors in the generator and in the server.
ulimit -n "$(ulimit -Hn)"

install_missing() {
  local need=()
  command -v nginx >/dev/null || need+=(nginx-light)
  [ -e "$NCHAN_MODULE" ] || need+=(libnginx-mod-nchan)
  command -v wrk >/dev/null || need+=(wrk)
  command -v jq >/dev/null || need+=(jq)
  command -v curl >/dev/null || need+=(curl)
  if [ ${#need[@]} -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    say "installing ${need[*]}"
    $sudo apt-get update
    # The nginx package may start the system's nginx on port 80; ours is a separate process.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${need[@]}"
  fi
}

install_missing
say "building pere-server and pere-bench (release)"
# What is measured is what is built now, whatever gets committed while the comparison runs.
COMMIT=$(git rev-parse HEAD)
DIRTY=$(git status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock | awk '{print $2}' | paste -sd ' ' -)
BUILT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
cargo build --release -p pere-server -p pere-bench
PERE_SERVER=$PWD/target/release/pere-server
BENCH=$PWD/target/release/pere-bench

WORK=$(mktemp -d -t pere-compare.XXXXXX)
mkdir -p "$REPORTS"
REPORTS=$(cd "$REPORTS" && pwd)
COMMANDS=$REPORTS/commands.txt
: >"$COMMANDS"
. bench/servers.sh

cleanup() {
  stop_server
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Notes a command line for RESULTS.md.
note_command() {
  printf '%q ' "$@" >>"$COMMANDS"
  printf '\n' >>"$COMMANDS"
}

# Notes a command line and runs it.
logged() {
  note_command "$@"
  "$@"
}

# A free port outside the ephemeral range, so no client socket can hold it.

start_server() {
  case $1 in
    pere-*) start_pere "${1#pere-}" ;;
    base-*) start_pere "${1#base-}" "$PERE_BASELINE" ;;
    nchan-w*) start_nchan "${1#nchan-w}" ;;
  esac
}

# A realistic event for push-100: 100 bytes of JSON, as a publisher of orders or metrics sends.
PUSH_100_BODY='{"order":"A-20261130-000042","status":"shipped","carrier":"dhl","items":3,"total":149.90,"eta":"2d"}'

# Scenario 4 with wrk: pushes/s with no subscribers (body $2, else push.lua's 15 bytes); the
# report has the shape summarize reads.
run_wrk() {
  local out=$1 body=${2:-} before after wrk_out
  before=$(logged "$BENCH" probe --server-pid "$SERVER_PID")
  wrk_out=$(WRK_BODY=$body logged wrk -t2 -c50 -d"${DURATION}s" --latency -s bench/push.lua "$SERVER_URL/push/wrk$RANDOM")
  after=$(logged "$BENCH" probe --server-pid "$SERVER_PID")
  printf '%s\n' "$wrk_out" >"${out%.json}.log"
  printf '%s\n' "$wrk_out" | awk -v dur="$DURATION" -v before="$before" -v after="$after" '
    function us(v) {
      if (v ~ /us$/) return v + 0;
      if (v ~ /ms$/) return v * 1000;
      if (v ~ /s$/) return v * 1000000;
      return v;
    }
    /^ +50%/ { p50 = us($2) }
    /^ +90%/ { p90 = us($2) }
    /^ +99%/ { p99 = us($2) }
    /requests in/ { requests = $1 }
    /Non-2xx or 3xx responses:/ { errors += $NF }
    /Socket errors:/ { gsub(/,/, ""); errors += $4 + $6 + $8 + $10 }
    /^Requests\/sec:/ { rps = $2 }
    END {
      printf "{\"scenario\":\"wrk-push\",\"config\":{\"connections\":50,\"threads\":2,\"duration_s\":%s},", dur;
      printf "\"pushes_per_s\":%s,\"requests\":%d,\"errors\":%d,", rps + 0, requests, errors;
      printf "\"latency_us\":{\"p50\":%s,\"p90\":%s,\"p99\":%s},", p50 + 0, p90 + 0, p99 + 0;
      printf "\"probe_before\":%s,\"probe_after\":%s}\n", before, after;
    }' | jq -c '.server = {cpu_s: (.probe_after.cpu_s - .probe_before.cpu_s)}
                | .server.cpu_us_per_push = (if .requests > 0 then .server.cpu_s * 1e6 / .requests else 0 end)' >"$out"
}

# Runs scenario $1 against the running server; the JSON report goes to $2.
run_scenario() {
  local scenario=$1 out=$2 label=$3 common
  common=(--url "$SERVER_URL" --server-pid "$SERVER_PID" --label "$label" --json)
  case $scenario in
    idle) logged "$BENCH" idle -n "$IDLE_SUBSCRIBERS" -d 2 --settle 2 "${common[@]}" ;;
    idle-channels) logged "$BENCH" idle -n 1000 -c 1000 -d 1 --settle 2 "${common[@]}" ;;
    fanout-1k) logged "$BENCH" fanout -n 1000 -r 100 -d "$DURATION" "${common[@]}" ;;
    fanout-10k) logged "$BENCH" fanout -n 10000 -r 10 -d "$DURATION" "${common[@]}" ;;
    saturate) logged "$BENCH" saturate -n 1000 -d "$DURATION" "${common[@]}" ;;
    receipts) logged "$BENCH" receipts -n 1000 -r "$RECEIPT_RATE" -d "$DURATION" "${common[@]}" ;;
    receipts-max) logged "$BENCH" receipts -n 1000 -r 0 --max-ahead 8 -d "$DURATION" "${common[@]}" ;;
    push) run_wrk "$out"; return ;;
    push-100) run_wrk "$out" "$PUSH_100_BODY"; return ;;
    *) say "unknown scenario $scenario"; return 1 ;;
  esac >"$out" 2>"${out%.json}.log"
}

title() {
  case $1 in
    idle) echo "1a-idle" ;;
    idle-channels) echo "1b-idle-channels" ;;
    fanout-1k) echo "2a-fanout-1k" ;;
    fanout-10k) echo "2b-fanout-10k" ;;
    saturate) echo "3-saturate" ;;
    push) echo "4-push" ;;
    push-100) echo "4b-push-100" ;;
    receipts) echo "5a-receipts-paced" ;;
    receipts-max) echo "5b-receipts-max" ;;
    *) echo "$1" ;;
  esac
}

SERVERS=()
for store in $PERE_STORES; do SERVERS+=("pere-$store"); done
if [ -n "${PERE_BASELINE:-}" ]; then
  for store in $PERE_STORES; do SERVERS+=("base-$store"); done
fi
for workers in $NCHAN_WORKERS; do SERVERS+=("nchan-w$workers"); done

STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
total=$(( $(wc -w <<<"$SCENARIOS") * ROUNDS * ${#SERVERS[@]} ))
n=0
failures=()
for scenario in $SCENARIOS; do
  for round in $(seq "$ROUNDS"); do
    # Rotate the order of servers every round.
    order=()
    for i in "${!SERVERS[@]}"; do
      order+=("${SERVERS[$(( (i + round - 1) % ${#SERVERS[@]} ))]}")
    done
    for server in "${order[@]}"; do
      n=$((n + 1))
      dir=$REPORTS/$(title "$scenario")/$server
      mkdir -p "$dir"
      began=$SECONDS
      if start_server "$server" && run_scenario "$scenario" "$dir/$round.json" "$server"; then
        say "[$n/$total] $scenario round $round $server: $((SECONDS - began)) s"
      else
        say "[$n/$total] $scenario round $round $server: FAILED (see $dir/$round.log)"
        failures+=("$scenario round $round $server")
        rm -f "$dir/$round.json"
      fi
      stop_server
    done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# The summary.
{
  echo "# PERE vs Nchan: benchmark results"
  echo
  echo "Written by \`bench/compare.sh\` ($STARTED, $ROUNDS rounds). Raw reports: \`${REPORTS#"$PWD"/}\`"
  echo "(not committed). How to run and what each scenario measures: \`bench/README.md\`."
  echo
  echo "## Machine and build"
  echo
  echo "- CPU: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
  echo "- Memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo); open files per process: $(ulimit -n)"
  echo "- OS: $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r)"
  echo "- Load average (1, 5, 15 min) before: $LOAD_BEFORE; after: $LOAD_AFTER"
  echo "- PERE built $BUILT from commit \`$COMMIT\`${DIRTY:+ plus uncommitted changes to $DIRTY}, $(rustc --version)"
  echo "- Nchan: $(dpkg-query -W -f '${Package} ${Version}' libnginx-mod-nchan 2>/dev/null || echo unknown), $(nginx -v 2>&1)"
  echo "- wrk: $(wrk --version 2>&1 | head -n 1 | cut -d' ' -f1-2)"
  echo
  echo "## Sandbox facts"
  echo
  echo "- $(nproc) cores shared by the server, the load generator (pere-bench or wrk) and whatever"
  echo "  else runs on the machine (other developers' builds): absolute figures are noisy and"
  echo "  are those of a server that gets at most part of 2 cores. Compare the ratios."
  echo "- At most 20,000 open files per process, so at most ~19,000 subscribers per server"
  echo "  process; no network but loopback (127.0.0.0/8)."
  echo "- Each run starts a fresh server; runs alternate between servers, in a rotating order."
  echo
  echo "## How to read the tables"
  echo
  echo "Each cell is the median over the rounds, with the smallest and largest in parentheses."
  echo "A ratio column is the median of the per-round ratios of two servers (same round = runs a"
  echo "few seconds apart). ✓: the first server is better by more than 5%; ✗: worse."
  echo "Servers: \`pere-<store>\` is \`pere-server --store <store> --quiet --retention-events 1000\`;"
  echo "\`nchan-wN\` is nginx with Nchan and \`worker_processes N\` (\`bench/nchan.conf\`)."
  echo
  echo "## Results"
  echo
  "$BENCH" summarize "$REPORTS"
  if [ -n "${PERE_BASELINE:-}" ]; then
    echo "## This build against the baseline build"
    echo
    echo "\`base-<store>\` is \`$PERE_BASELINE\` with the same flags."
    echo
    "$BENCH" summarize --baseline base "$REPORTS"
  fi
  if [ ${#failures[@]} -gt 0 ]; then
    echo "## Failed runs"
    echo
    for f in "${failures[@]}"; do echo "- $f"; done
    echo
  fi
  echo "## Commands"
  echo
  echo "Every distinct command line of this comparison (ports, PIDs and temporary paths are"
  echo "those of one run):"
  echo
  echo '```'
  sed -E -e 's|/tmp/pere-compare\.[A-Za-z0-9]+|$WORK|g' -e "s|$PWD/||g" \
    -e 's|127\.0\.0\.1:[0-9]+|127.0.0.1:PORT|g' -e 's|--server-pid [0-9]+|--server-pid PID|g' \
    -e 's#(nginx|data)-[A-Za-z0-9]{6}#\1-XXXXXX#g' -e 's#/push/wrk[0-9]+#/push/wrkN#' "$COMMANDS" | awk '!seen[$0]++'
  echo '```'
} >"$RESULTS.new"
# The HTTP/2 section is measured apart (bench/h2-idle.sh): keep it.
if [ -f "$RESULTS" ]; then
  sed -n '/^<!-- h2-idle: begin/,/^<!-- h2-idle: end -->/p' "$RESULTS" | sed '1s/^/\n/' >>"$RESULTS.new"
fi
mv "$RESULTS.new" "$RESULTS"
say "wrote $RESULTS (raw reports in $REPORTS)"
