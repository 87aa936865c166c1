#!/usr/bin/env bash
# Installs what the tests need that cargo does not bring, each only when missing, quietly, and
# exports where the tests find it. Sourced by tests/run-all.sh; safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
mkdir -p "$target"

# Debian packages the tests drive, installed with apt when missing (as root, or with sudo).
apt_missing=()
need_apt() { apt_missing+=("$@"); }
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt python3-venv
[ -x /usr/bin/chromium ] || need_apt chromium
command -v curl >/dev/null 2>&1 || need_apt curl  # tests/h2.rs: HTTP/2 with prior knowledge
command -v node >/dev/null 2>&1 || need_apt nodejs
command -v npm >/dev/null 2>&1 || need_apt npm
command -v redis-server >/dev/null 2>&1 || need_apt redis-server  # the Redis tests start their own
command -v redis-cli >/dev/null 2>&1 || need_apt redis-tools  # tests/cluster.rs asks a TLS Redis
if [ ${#apt_missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${apt_missing[*]} (apt)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_missing[@]}" >/dev/null
  # The redis-server package may start a system instance; the tests start their own.
  $sudo service redis-server stop >/dev/null 2>&1 || true
fi

# Schemathesis drives a live server from the OpenAPI document (tests/contract.rs): a pinned
# version in a virtual environment of its own in the target directory.
SCHEMATHESIS_VERSION=4.32.5
venv="$target/schemathesis"
if ! "$venv/bin/st" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  echo "setup: installing schemathesis $SCHEMATHESIS_VERSION"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
export PERE_SCHEMATHESIS="$venv/bin/st"

# The pinned npm packages of the browser and interop tests (playwright-core drives Debian's
# Chromium, never a downloaded browser; Node's eventsource), installed again when the lock changes.
browser=tests/browser
if ! cmp -s "$browser/package-lock.json" "$browser/node_modules/.installed-lock.json"; then
  echo "setup: installing the npm packages of $browser"
  (cd "$browser" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  cp "$browser/package-lock.json" "$browser/node_modules/.installed-lock.json"
fi

# Python's httpx-sse, pinned, for the interop tests, in a virtual environment of its own.
venv="$target/interop-venv"
requirements=tests/interop/requirements.txt
if ! cmp -s "$requirements" "$venv/requirements.txt"; then
  echo "setup: installing the Python packages of tests/interop"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi
