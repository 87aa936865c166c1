#!/usr/bin/env bash
# Runs every test of the workspace, as CI does: installs what the tests need that cargo does not
# bring (tests/setup.sh), builds the binaries and examples that the end-to-end tests start, runs
# the doc tests, then all unit, store, hub, end-to-end, contract and browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=tests/setup.sh
source tests/setup.sh

cargo build --workspace --bins --examples --locked
cargo test --workspace --locked --doc
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
