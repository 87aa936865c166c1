#!/usr/bin/env bash
# What SQLite alone spends on the durable row of one receipt, apart from PERE: the CPU time of
# inserting ROWS receipt rows in one statement (no HTTP, no statement per row, one commit), with
# the `sqlite3` shell, on a copy of the database a PERE server makes (its `receipts` table and
# indexes), and on a bare table with the same columns, no index and no AUTOINCREMENT (the least a
# row per receipt can cost). The shell's own work (the rows generated, the expressions) is
# measured alone and taken off. Medians over RUNS runs, CPU = user + system as the shell's
# `.timer` reports it.
#
# These are floors: PERE's writer also binds each receipt, steps a statement per receipt and
# commits per batch. Compare them with what a receipt may cost on top of the memory store
# (`bench/receipts.sh`), to see whether a goal on SQLite receipts is within reach.
#
# Usage: bench/sqlite-receipt-floor.sh   Variables: ROWS (100000), RUNS (5), NO_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${ROWS:-100000}
runs=${RUNS:-5}
command -v sqlite3 >/dev/null || { apt-get update -qq && apt-get install -y -qq sqlite3; }
[ -n "${NO_BUILD:-}" ] || cargo build --release -q -p pere-server
work=$(mktemp -d)
pid=""
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

# PERE's schema, as a server makes it on an empty data directory.
target/release/pere-server -o 127.0.0.1 -p 0 --quiet --store sqlite --data-dir "$work/data" \
  >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.1; done
grep -q "listening on" "$work/out" || { cat "$work/err" >&2; exit 1; }
kill "$pid"; wait "$pid" 2>/dev/null || true
pid=""

numbers="WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $rows)"
# 100 devices per event, events in order: the order receipts arrive in.
columns="'CHANNEL_1', (i - 1) / 100 + 1, 'device-' || ((i - 1) % 100), 'rx ok', 1700000000000 + i"
declare -A sql=(
  [alone]="$numbers SELECT count(*) FROM (SELECT $columns FROM n);"
  [pere]="$numbers INSERT INTO receipts (channel, event_id, device, status, time) SELECT $columns FROM n;"
  [bare]="$numbers INSERT INTO bare (channel, event_id, device, status, time) SELECT $columns FROM n;"
)

# CPU seconds (user + system) of one case's statement, on a fresh copy of the database.
cpu_of() {
  local db="$work/run.db"
  rm -f "$db" "$db-wal" "$db-shm"
  cp "$work/data/pere.db" "$db"
  sqlite3 "$db" "PRAGMA journal_mode = WAL;" \
    "CREATE TABLE bare (channel TEXT NOT NULL, event_id INTEGER NOT NULL, device TEXT NOT NULL, status TEXT NOT NULL, time INTEGER NOT NULL);" >/dev/null
  printf '%s\n' "PRAGMA synchronous = NORMAL;" ".timer on" "${sql[$1]}" | sqlite3 "$db" 2>&1 |
    awk '/^Run Time:/ { cpu = $6 + $8 } END { printf "%.6f\n", cpu }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

declare -A cpu
for case in alone pere bare; do
  cpu[$case]=$(for _ in $(seq "$runs"); do cpu_of "$case"; done | median)
done

echo "SQLite $(sqlite3 --version | cut -d' ' -f1), $rows rows per statement, median of $runs runs"
for case in pere bare; do
  awk -v c="${cpu[$case]}" -v a="${cpu[alone]}" -v n="$rows" -v name="$case" 'BEGIN {
    label = (name == "pere") ? "PERE'\''s receipts table (2 indexes, AUTOINCREMENT)" : "a bare table (no index, no AUTOINCREMENT)"
    printf "%-52s %.2f µs of CPU per row\n", label, (c - a) * 1e6 / n }'
done
