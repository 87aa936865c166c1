#!/usr/bin/env bash
# Paced fan-out latency (1 channel × N subscribers × R events/s) seen by two witnesses: pere-bench's
# own clients (`pere-bench fanout`) and clients that share no code with them (`pere-bench
# witness`: reqwest and eventsource-stream). Each round runs both on a fresh PERE (memory store)
# and on fresh nginx + Nchan with 1 and 2 workers, in a rotating order; prints each run, then the
# medians and the PERE / Nchan ratios per witness. Both publish on PUBLISHERS connections, each
# event at its scheduled time (with one, each push waits for the last answer, which hides a
# server's late answers from the latency).
# Environment: ROUNDS=3, SUBSCRIBERS=1000, RATE=100, DURATION=10, PUBLISHERS=4.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
RATE=${RATE:-100}
DURATION=${DURATION:-10}
PUBLISHERS=${PUBLISHERS:-4}
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p pere-server -p pere-bench
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

free_port() {
  local port
  for _ in $(seq 200); do
    port=$((20000 + RANDOM % 10000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return 0; fi
  done
  return 1
}

start() { # server name -> PID, URL
  local port dir
  port=$(free_port)
  dir=$(mktemp -d -p "$work")
  case $1 in
    pere-memory)
      target/release/pere-server -o 127.0.0.1 -p "$port" --quiet --store memory \
        --retention-events 1000 --data-dir "$dir/data" >"$dir/out" 2>&1 &
      PID=$! ;;
    nchan-w*)
      sed -e "s|__MODULE__|$NCHAN_MODULE|" -e "s|__WORKERS__|${1#nchan-w}|" -e "s|__PORT__|$port|" \
        -e "s|__TMP__|$dir|g" bench/nchan.conf >"$dir/nginx.conf"
      nginx -c "$dir/nginx.conf" -p "$dir" -e "$dir/error.log" >"$dir/out" 2>&1 &
      PID=$! ;;
  esac
  URL=http://127.0.0.1:$port
  for _ in $(seq 200); do
    curl -s -o /dev/null -X POST "$URL/feedback/ready" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$1 did not start" >&2
  return 1
}

servers=(pere-memory nchan-w1 nchan-w2)
declare -A p50 p99
for round in $(seq "$ROUNDS"); do
  for i in "${!servers[@]}"; do
    server=${servers[$(( (i + round) % ${#servers[@]} ))]}
    for witness in fanout witness; do
      start "$server"
      channel="w${round}x$witness"
      if [[ $witness == fanout ]]; then
        report=$(target/release/pere-bench fanout -u "$URL" -n "$SUBSCRIBERS" -r "$RATE" -d "$DURATION" \
          -k "$PUBLISHERS" --prefix "$channel" --json -q)
        lat=$(jq -r '"\(.latency_us.p50 / 1000) \(.latency_us.p99 / 1000) \(.deliveries.lost)"' <<<"$report")
      else
        report=$(target/release/pere-bench witness -u "$URL" -n "$SUBSCRIBERS" -r "$RATE" -d "$DURATION" \
          -k "$PUBLISHERS" --channel "$channel")
        lat=$(jq -r '"\(.latency_ms.p50) \(.latency_ms.p99) \(.deliveries.lost)"' <<<"$report")
      fi
      kill "$PID"; wait "$PID" 2>/dev/null || true
      read -r a b lost <<<"$lat"
      p50[$server-$witness]+="$a "; p99[$server-$witness]+="$b "
      echo "round $round $server $witness: p50 $a ms, p99 $b ms, lost $lost"
    done
  done
done

median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "| witness | server | p50 (ms, median) | p99 (ms, median) | p99 / nchan-w1 | p99 / nchan-w2 |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for witness in fanout witness; do
  w1=$(echo "${p99[nchan-w1-$witness]}" | median); w2=$(echo "${p99[nchan-w2-$witness]}" | median)
  for server in "${servers[@]}"; do
    m50=$(echo "${p50[$server-$witness]}" | median); m99=$(echo "${p99[$server-$witness]}" | median)
    r1=$(awk -v a="$m99" -v b="$w1" 'BEGIN {printf "%.2f×", a / b}')
    r2=$(awk -v a="$m99" -v b="$w2" 'BEGIN {printf "%.2f×", a / b}')
    echo "| $witness | $server | $m50 | $m99 | $r1 | $r2 |"
  done
done
