#!/usr/bin/env bash
# Runs every test of the workspace, as CI does: builds the binaries that the end-to-end tests
# start, runs the doc tests, then all unit, store, hub and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Redis store's tests start their own redis-server (Debian's package).
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server for the Redis tests" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  # The package may start a system instance; the tests use their own.
  service redis-server stop >/dev/null 2>&1 || true
fi

cargo build --workspace --bins --locked
cargo test --workspace --locked --doc
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
