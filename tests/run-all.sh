#!/usr/bin/env bash
# Runs every test of the workspace, as CI does: builds the binaries (and examples) that the
# end-to-end tests start, runs the doc tests, then all unit, store, hub and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --examples --locked
cargo test --workspace --locked --doc
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
