#!/usr/bin/env bash
# Runs every test of the workspace, as CI does: installs what the tests need that cargo does not
# bring (schemathesis), builds the binaries that the end-to-end tests start, runs the doc tests,
# then all unit, store, hub and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Schemathesis drives a live server from the OpenAPI document (tests/contract.rs): a pinned
# version in a virtual environment of its own in the target directory, installed when missing.
SCHEMATHESIS_VERSION=4.32.5
venv="${CARGO_TARGET_DIR:-$PWD/target}/schemathesis"
if ! "$venv/bin/st" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  rm -rf "$venv"
  # Debian's python3 makes virtual environments only with python3-venv.
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
export PERE_SCHEMATHESIS="$venv/bin/st"

cargo build --workspace --bins --locked
cargo test --workspace --locked --doc
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
