#!/usr/bin/env bash
# Receipt followers replaying a long history, and the node's other requests meanwhile: a channel
# with RECEIPTS receipts, FOLLOWERS `/receipts` streams opened at once from seq 0 (curl, each
# for OPEN_SECONDS), and `/health` asked every 100 ms. Prints, per server, the median and greatest
# `/health` time, the server's CPU seconds, and its memory before, with the followers, and after
# they closed. Servers are given as paths to pere-server builds (this build by default; set
# PERE_BASELINE to compare another, in the same run).
#
#   bench/followers.sh                      # FOLLOWERS=1000 RECEIPTS=20000 OPEN_SECONDS=20
#   STREAM=feed FROM= bench/followers.sh    # 1,000 live feeds instead, for their memory
#
# STREAM is receipts (default), feed or presence; FROM is the Last-Event-ID the streams send
# (0 by default: the whole history; empty: none, live only).
set -euo pipefail
cd "$(dirname "$0")/.."

FOLLOWERS=${FOLLOWERS:-1000}
RECEIPTS=${RECEIPTS:-20000}
OPEN_SECONDS=${OPEN_SECONDS:-20}
STREAM=${STREAM:-receipts}
FROM=${FROM-0}
SERVERS=(target/release/pere-server ${PERE_BASELINE:-})
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
ulimit -n "$(ulimit -Hn)"

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_s() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }

for server in "${SERVERS[@]}"; do
  port=$((20000 + RANDOM % 20000))
  "$server" -o 127.0.0.1 -p "$port" --store memory -q --retention-events $((RECEIPTS * 2)) \
    --connection-reserve 64 >"$WORK/server.log" 2>&1 &
  pid=$!
  until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.1; done
  base="http://127.0.0.1:$port"

  # The history: RECEIPTS events in batches, each acknowledged once, over one connection.
  line='{"order":1,"pad":"pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp"}'
  batch=$(for _ in $(seq 500); do echo "$line"; done)
  for _ in $(seq $((RECEIPTS / 500))); do
    curl -sf -H 'content-type: application/x-ndjson' --data-binary "$batch" "$base/push/F" >/dev/null
  done
  : >"$WORK/acks"
  for id in $(seq "$RECEIPTS"); do
    printf 'url = "%s/feedback/F"\nheader = "device: H1"\ndata = "id=%s&status=rx ok"\noutput = "/dev/null"\nnext\n' "$base" "$id" >>"$WORK/acks"
  done
  sed -i '$d' "$WORK/acks"   # no `next` after the last
  curl -s -K "$WORK/acks" >/dev/null

  before_rss=$(rss_kib "$pid")
  before_cpu=$(cpu_s "$pid")
  for _ in $(seq "$FOLLOWERS"); do
    curl -sN ${FROM:+-H "Last-Event-ID: $FROM"} --max-time "$OPEN_SECONDS" "$base/$STREAM/F" >/dev/null 2>&1 &
  done
  : >"$WORK/health"
  end=$((SECONDS + OPEN_SECONDS))
  while [ $SECONDS -lt $end ]; do
    curl -s -o /dev/null -w '%{time_total}\n' --max-time 5 "$base/health" >>"$WORK/health" || echo 5 >>"$WORK/health"
    sleep 0.1
  done
  with_rss=$(rss_kib "$pid")
  wait_followers=$(jobs -p | grep -v "^$pid\$" || true)
  for job in $wait_followers; do wait "$job" 2>/dev/null || true; done
  # The server looks every 2 s whether enough streams closed to give their memory back.
  sleep 3
  after_rss=$(rss_kib "$pid")
  cpu=$(awk -v a="$before_cpu" -v b="$(cpu_s "$pid")" 'BEGIN {printf "%.1f", b - a}')
  health=$(sort -n "$WORK/health" | awk '{v[NR] = $1} END {printf "median %.0f ms, max %.0f ms (%d probes)", v[int((NR + 1) / 2)] * 1000, v[NR] * 1000, NR}')
  echo "$server: /health $health; server CPU ${cpu} s; RSS ${before_rss} KiB before, ${with_rss} KiB with $FOLLOWERS followers, ${after_rss} KiB after they closed ($STREAM, from ${FROM:-now})"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
done
