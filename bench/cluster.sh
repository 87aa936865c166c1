#!/usr/bin/env bash
# Scale-out on Redis against one node on SQLite, same load, same run: fan-out latency and CPU per
# delivery, pushes/s, per-node and Redis CPU. Writes bench/cluster-results.md (see it for how to
# read the figures and what 1 million feeds would need).
#
# Setups, measured in turn within each round:
#   sqlite   one pere-server on SQLite (durability normal); all subscribers and pushes on it.
#   redis-2  two pere-server nodes on one redis-server (appendonly yes, appendfsync everysec:
#            like SQLite normal, a crash of the process loses nothing, a power cut up to 1 s).
#            Half the subscribers on each node; each half's events are pushed on the OTHER node,
#            so every delivery crosses Redis.
# Scenarios: fanout (paced: N subscribers over C channels, RATE events/s per channel) and push
# (unpaced pushes, no subscribers, 50 keep-alive connections in all).
#
# Environment (all optional): ROUNDS=2 N=1000 C=10 RATE=20 DURATION=10
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
N=${N:-1000}
C=${C:-10}
RATE=${RATE:-20}
DURATION=${DURATION:-10}
say() { printf '%s\n' "$*" >&2; }

command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p pere-server -p pere-bench
SERVER=$PWD/target/release/pere-server
BENCH=$PWD/target/release/pere-bench
WORK=$(mktemp -d -t pere-cluster.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_node NAME FLAGS...: starts pere-server; sets URL_<NAME> and PID_<NAME>.
start_node() {
  local name=$1; shift
  "$SERVER" -o 127.0.0.1 -p 0 --quiet --retention-events 100000 "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 200); do grep -q "listening on" "$WORK/$name.out" 2>/dev/null && break; sleep 0.05; done
  printf -v "URL_$name" '%s' "$(grep -o 'http://[0-9.:]*' "$WORK/$name.out" | head -1)"
  printf -v "PID_$name" '%s' "$pid"
}

stop_all() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

cpu_of() { "$BENCH" probe --server-pid "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cpu_s"])'; }

# record SETUP SCENARIO FILE...: one line of results from the reports and the CPU deltas.
record() {
  local setup=$1 scenario=$2; shift 2
  python3 - "$setup" "$scenario" "$WORK/cpu" "$@" >>"$WORK/results.jsonl" <<'EOF'
import json, sys
setup, scenario, cpu_file, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
reports = [json.load(open(f)) for f in files]
cpu = json.load(open(cpu_file))
deliveries = sum(r.get("deliveries", {}).get("count", 0) for r in reports)
pushes = sum(r["published"]["ok"] for r in reports)
line = {"setup": setup, "scenario": scenario, "deliveries": deliveries, "pushes": pushes,
        "lost": sum(r.get("deliveries", {}).get("lost", 0) for r in reports),
        "pushes_per_s": round(sum(r["published"]["per_s"] for r in reports), 1),
        "p50_ms": max(r.get("latency_us", {}).get("p50", 0) for r in reports) / 1000,
        "p99_ms": max(r.get("latency_us", {}).get("p99", 0) for r in reports) / 1000,
        "cpu_s": cpu}
print(json.dumps(line))
EOF
}

# measure SETUP SCENARIO: runs the scenario on the running setup.
measure() {
  local setup=$1 scenario=$2 before=() pids=()
  if [ "$setup" = sqlite ]; then pids=("$PID_S"); else pids=("$PID_A" "$PID_B" "$PID_R"); fi
  for pid in "${pids[@]}"; do before+=("$(cpu_of "$pid")"); done
  local common=(-d "$DURATION" --json -q --settle 0.5 --drain 5)
  if [ "$scenario" = fanout ]; then
    if [ "$setup" = sqlite ]; then
      "$BENCH" fanout -u "$URL_S" -n "$N" -c "$C" -r "$RATE" "${common[@]}" >"$WORK/r1.json"
      files=("$WORK/r1.json")
    else
      "$BENCH" fanout -u "$URL_B" --publish-url "$URL_A" -n $((N / 2)) -c $((C / 2)) -r "$RATE" "${common[@]}" --prefix ba >"$WORK/r1.json" &
      local first=$!
      "$BENCH" fanout -u "$URL_A" --publish-url "$URL_B" -n $((N / 2)) -c $((C / 2)) -r "$RATE" "${common[@]}" --prefix ab >"$WORK/r2.json"
      wait "$first"
      files=("$WORK/r1.json" "$WORK/r2.json")
    fi
  else
    if [ "$setup" = sqlite ]; then
      "$BENCH" push -u "$URL_S" -k 50 -c "$C" "${common[@]}" >"$WORK/r1.json"
      files=("$WORK/r1.json")
    else
      "$BENCH" push -u "$URL_A" -k 25 -c "$C" "${common[@]}" --prefix pa >"$WORK/r1.json" &
      local first=$!
      "$BENCH" push -u "$URL_B" -k 25 -c "$C" "${common[@]}" --prefix pb >"$WORK/r2.json"
      wait "$first"
      files=("$WORK/r1.json" "$WORK/r2.json")
    fi
  fi
  local i=0 deltas=()
  for pid in "${pids[@]}"; do
    deltas+=("$(python3 -c "print(round($(cpu_of "$pid") - ${before[$i]}, 3))")")
    i=$((i + 1))
  done
  if [ "$setup" = sqlite ]; then
    printf '{"node": %s}\n' "${deltas[0]}" >"$WORK/cpu"
  else
    printf '{"node_a": %s, "node_b": %s, "redis": %s}\n' "${deltas[0]}" "${deltas[1]}" "${deltas[2]}" >"$WORK/cpu"
  fi
  record "$setup" "$scenario" "${files[@]}"
  say "$(tail -1 "$WORK/results.jsonl")"
}

: >"$WORK/results.jsonl"
for round in $(seq "$ROUNDS"); do
  for scenario in fanout push; do
    # SQLite, one node.
    rm -rf "$WORK/data"
    start_node S --store sqlite --data-dir "$WORK/data"
    measure sqlite "$scenario"
    stop_all
    # Redis, two nodes.
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync everysec \
      --dir "$WORK" --logfile "$WORK/redis.log" --daemonize no &
    PID_R=$!
    PIDS+=("$PID_R")
    for _ in $(seq 100); do grep -q "Ready to accept" "$WORK/redis.log" 2>/dev/null && break; sleep 0.05; done
    start_node A --store "redis://127.0.0.1:$port/0"
    start_node B --store "redis://127.0.0.1:$port/0"
    measure redis-2 "$scenario"
    if [ "$scenario" = fanout ]; then
      # Redis's memory per device record (record, id index, membership), from the keys themselves.
      redis-cli -p "$port" --scan --pattern '{pere:ch:*' >"$WORK/keys"
      python3 - "$port" "$WORK/keys" >>"$WORK/memory.jsonl" <<'PY'
import subprocess, sys
port, keys = sys.argv[1], [k.strip() for k in open(sys.argv[2]) if k.strip()]
def cli(*args): return subprocess.run(["redis-cli", "-p", port, *args], capture_output=True, text=True).stdout.strip()
per_device = sum(int(cli("MEMORY", "USAGE", k, "SAMPLES", "0") or 0) for k in keys if k.endswith((":dev", ":devs", ":mem", ":memcur")))
events = sum(int(cli("MEMORY", "USAGE", k, "SAMPLES", "0") or 0) for k in keys if k.endswith(":ev"))
devices = sum(int(cli("HLEN", k) or 0) for k in keys if k.endswith(":dev"))
stored = sum(int(cli("XLEN", k) or 0) for k in keys if k.endswith(":ev"))
used = cli("INFO", "memory").split("used_memory:")[1].split()[0]
print({"devices": devices, "bytes_per_device": per_device // max(devices, 1), "events": stored,
       "bytes_per_event": events // max(stored, 1), "used_memory": int(used)})
PY
    fi
    stop_all
    rm -rf "$WORK/redis.log" "$WORK"/appendonly*
  done
  say "round $round done"
done

python3 - "$WORK/results.jsonl" "$N" "$C" "$RATE" "$DURATION" "$ROUNDS" "$(git rev-parse --short HEAD)" "$(nproc)" >bench/cluster-results.md <<'EOF'
import json, sys, statistics, datetime
path, n, c, rate, duration, rounds, commit, cores = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
def med(xs): return statistics.median(xs) if xs else 0
out = ["# Scale-out on Redis: two nodes against one SQLite node", "",
       f"`bench/cluster.sh` (ROUNDS={rounds} N={n} C={c} RATE={rate} DURATION={duration}), commit {commit}, "
       f"{datetime.date.today()}, everything (nodes, Redis, load generators) on the same {cores} cores. Medians over the rounds.", "",
       "## Fan-out (paced)", "",
       "| setup | deliveries | lost | p50 ms | p99 ms | CPU µs per delivery: node A | node B | Redis | all |",
       "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
for setup in ["sqlite", "redis-2"]:
    rs = [r for r in rows if r["setup"] == setup and r["scenario"] == "fanout"]
    if not rs: continue
    per = lambda key: med([r["cpu_s"].get(key, 0) * 1e6 / max(r["deliveries"], 1) for r in rs])
    if setup == "sqlite":
        a, b, red = per("node"), 0, 0
    else:
        a, b, red = per("node_a"), per("node_b"), per("redis")
    out.append(f"| {setup} | {med([r['deliveries'] for r in rs]):.0f} | {med([r['lost'] for r in rs]):.0f} | "
               f"{med([r['p50_ms'] for r in rs]):.2f} | {med([r['p99_ms'] for r in rs]):.2f} | {a:.2f} | "
               f"{'—' if setup == 'sqlite' else f'{b:.2f}'} | {'—' if setup == 'sqlite' else f'{red:.2f}'} | {a + b + red:.2f} |")
out += ["", "## Pushes (unpaced, 50 connections in all)", "",
        "| setup | pushes/s | CPU µs per push: node A | node B | Redis | all |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
for setup in ["sqlite", "redis-2"]:
    rs = [r for r in rows if r["setup"] == setup and r["scenario"] == "push"]
    if not rs: continue
    per = lambda key: med([r["cpu_s"].get(key, 0) * 1e6 / max(r["pushes"], 1) for r in rs])
    if setup == "sqlite":
        a, b, red = per("node"), 0, 0
    else:
        a, b, red = per("node_a"), per("node_b"), per("redis")
    out.append(f"| {setup} | {med([r['pushes_per_s'] for r in rs]):.0f} | {a:.1f} | "
               f"{'—' if setup == 'sqlite' else f'{b:.1f}'} | {'—' if setup == 'sqlite' else f'{red:.1f}'} | {a + b + red:.1f} |")
import os
mem_path = os.path.join(os.path.dirname(path), "memory.jsonl")
mems = [eval(l) for l in open(mem_path) if l.strip()] if os.path.exists(mem_path) else []
if mems:
    m = mems[-1]
    out += ["", "## Redis memory after the fan-out run", "",
            f"{m['devices']} device records: {m['bytes_per_device']} bytes each (record, id index, membership); "
            f"{m['events']} events retained: {m['bytes_per_event']} bytes each (stream entry, body included); "
            f"Redis's used_memory {m['used_memory'] / 1048576:.1f} MiB."]
out += ["", "Raw lines (one per run):", "", "```"] + [json.dumps(r) for r in rows] + ["```", ""]
print("\n".join(out))
EOF
cat bench/cluster-results.md
