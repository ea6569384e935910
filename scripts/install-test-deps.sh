#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, from Debian packages,
# only when it is missing: mosquitto (the broker the broker tests start),
# mosquitto-clients (mosquitto_pub/mosquitto_sub for manual checks), chromium (the
# headless browser the status-page test drives; Debian's build, never a downloaded one) and
# faketime (libfaketime: tests/faults.rs moves the bridge's wall clock to show its timers do
# not follow it) and g++ (../shared/realfw/build.sh compiles the real firmware for
# tests/sim_vs_realfw.rs).
# Idempotent and non-interactive; runs apt-get as root, or through sudo when available.
set -euo pipefail

# Debian package -> a command it provides.
declare -A PROVIDES=(
  [mosquitto]=mosquitto
  [mosquitto-clients]=mosquitto_sub
  [chromium]=chromium
  [faketime]=faketime
  [g++]=g++
)

have() {
  command -v "$1" >/dev/null 2>&1 && return 0
  # mosquitto lives in /usr/sbin, which is not on every user's PATH.
  [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

missing=()
for pkg in mosquitto mosquitto-clients chromium faketime g++; do
  if have "${PROVIDES[$pkg]}"; then
    echo "install-test-deps: $pkg already installed"
  else
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-test-deps: nothing to do"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install-test-deps: need root or sudo to install: ${missing[*]}" >&2
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-deps: no apt-get here; install by hand: ${missing[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-test-deps: apt-get update"
"${as_root[@]}" apt-get update -qq
echo "install-test-deps: apt-get install ${missing[*]}"
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"

# The Debian package enables a system broker on port 1883; the tests start their own
# brokers on free ports and do not need it.
for pkg in "${missing[@]}"; do
  have "${PROVIDES[$pkg]}" || { echo "install-test-deps: $pkg still missing" >&2; exit 1; }
done
echo "install-test-deps: done"
