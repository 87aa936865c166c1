#!/usr/bin/env bash
# Runs every test of the workspace, as CI does: builds the binaries that the end-to-end tests
# start, runs the doc tests, then all unit, store, hub and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# tests/h2.rs drives the server with curl (HTTP/2 with prior knowledge, which Debian's curl has).
if ! command -v curl >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq curl >/dev/null
fi

cargo build --workspace --bins --locked
cargo test --workspace --locked --doc
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
