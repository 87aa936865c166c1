#!/usr/bin/env bash
# Runs every test of the workspace, as CI does: installs what the client tests need (Debian's
# Chromium, Node.js, the pinned npm packages of tests/browser, a Python environment with the
# pinned packages of tests/interop) when missing, builds the binaries that the end-to-end tests
# start, runs the doc tests, then all unit, store, hub, end-to-end, browser and interop tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, installed only when missing (as root, or with sudo).
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${missing[*]} (apt)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The pinned npm packages of tests/browser, installed again when the lock file changes.
browser=tests/browser
if ! cmp -s "$browser/package-lock.json" "$browser/node_modules/.installed-lock.json"; then
  (cd "$browser" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  cp "$browser/package-lock.json" "$browser/node_modules/.installed-lock.json"
fi

# Python's httpx-sse, pinned, in a virtual environment under the target directory.
venv="${CARGO_TARGET_DIR:-target}/interop-venv"
requirements=tests/interop/requirements.txt
if ! cmp -s "$requirements" "$venv/requirements.txt"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi

cargo build --workspace --bins --locked
cargo test --workspace --locked --doc
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
