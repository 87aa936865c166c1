# Starting and stopping the servers the benchmarks compare, sourced by `compare.sh` and
# `receipts.sh` and `floor.sh`. The sourcing script sets WORK (a scratch directory), PERE_SERVER,
# NCHAN_MODULE (and FLOOR_SERVER for `start_floor`), and may define `note_command` to record each server's command line.
# shellcheck shell=bash

SERVER_PID=""
SERVER_URL=""

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

free_port() {
  local port
  for _ in $(seq 200); do
    port=$((20000 + RANDOM % 10000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  say "no free port found"
  return 1
}

# start_pere STORE [BINARY]: STORE is memory or sqlite, or either with -wN (memory-w1, say) to
# run it on N worker threads (--workers N) rather than one per core.
start_pere() {
  local store=$1 binary=${2:-$PERE_SERVER} args workers=""
  if [[ $store == *-w[0-9]* ]]; then
    workers=${store##*-w}
    store=${store%-w*}
  fi
  args=(-o 127.0.0.1 -p 0 --store "$store" --quiet --retention-events 1000)
  [ -z "$workers" ] || args+=(--workers "$workers")
  if [ "$store" != memory ]; then
    args+=(--data-dir "$(mktemp -d -p "$WORK" data-XXXXXX)")
  fi
  command -v note_command >/dev/null && note_command "$binary" "${args[@]}"
  # The last server's line must not be taken for this one's: the new process truncates the file
  # only once it runs.
  rm -f "$WORK/pere.out" "$WORK/pere.err"
  "$binary" "${args[@]}" >"$WORK/pere.out" 2>"$WORK/pere.err" &
  SERVER_PID=$!
  await_listening pere-server 'PERE server listening on' "$WORK/pere"
}

# Sets SERVER_URL from the line "PREFIX http://…" that the server started as SERVER_PID prints
# on OUT.out, or says why it did not start (OUT.out, OUT.err) and fails.
await_listening() {
  local name=$1 prefix=$2 out=$3
  for _ in $(seq 200); do
    SERVER_URL=$(sed -n "s|^$prefix \(http://[^ ]*\).*|\1|p" "$out.out" 2>/dev/null | head -n 1)
    [ -n "$SERVER_URL" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  say "$name did not start:"
  cat "$out.out" "$out.err" >&2
  return 1
}

start_nchan() {
  local workers=$1 port dir
  port=$(free_port)
  dir=$(mktemp -d -p "$WORK" nginx-XXXXXX)
  sed -e "s|__MODULE__|$NCHAN_MODULE|" -e "s|__WORKERS__|$workers|" -e "s|__PORT__|$port|" \
    -e "s|__TMP__|$dir|g" bench/nchan.conf >"$dir/nginx.conf"
  command -v note_command >/dev/null && note_command nginx -c "$dir/nginx.conf" -p "$dir" -e "$dir/error.log"
  nginx -c "$dir/nginx.conf" -p "$dir" -e "$dir/error.log" >"$dir/out" 2>&1 &
  SERVER_PID=$!
  SERVER_URL=http://127.0.0.1:$port
  for _ in $(seq 200); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "$SERVER_URL/feedback/ready" 2>/dev/null)" = 204 ]; then
      return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  say "nginx did not start:"
  cat "$dir/out" "$dir/error.log" >&2
  return 1
}

# The floor (`sse-floor`, crates/pere-bench/src/bin): a server that only holds sockets and
# writes frames, with no PERE code.
start_floor() {
  command -v note_command >/dev/null && note_command "$FLOOR_SERVER" 127.0.0.1:0
  "$FLOOR_SERVER" 127.0.0.1:0 >"$WORK/floor.out" 2>"$WORK/floor.err" &
  SERVER_PID=$!
  await_listening sse-floor 'listening on' "$WORK/floor"
}
