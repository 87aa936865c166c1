#!/usr/bin/env bash
# Idle memory per channel: one ~100-byte push into each of N channels (SQLite store), wait until
# the hub has unloaded them, read the server's VmRSS; then restart it on the same data directory
# and time its first answer to /health. Prints a Markdown table (bench/idle-channels.py does the
# work; it stops only the servers it started).
#
#   N=100000 bench/idle-channels.sh                       # this tree's release build
#   BASE=/path/to/older/pere-server bench/idle-channels.sh # and an older build beside it
#
# A build without --idle-channel (before it existed) unloads after its default minute, so it
# is waited for that long.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-100000}
IDLE=${IDLE:-5}
THREADS=${THREADS:-4}

cargo build --release --locked -q -p pere-server
servers=()
if [ -n "${BASE:-}" ]; then servers+=("before=$BASE"); fi
servers+=("after=target/release/pere-server")
# Bounded: every wait in the script has a deadline; this bounds the whole.
timeout 1800 python3 bench/idle-channels.py --n "$N" --idle "$IDLE" --threads "$THREADS" \
  "${servers[@]}" "$@"
