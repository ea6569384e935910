#!/usr/bin/env bash
# Runs every check and test of coffeebot on a fresh Debian machine with Rust:
# installs what the tests need (mosquitto, Chromium, validation tools), then format, lints,
# the test suite (unit, property, integration against a real mosquitto and the simulated
# controller on real pseudo-terminals, the real firmware from ../shared/realfw when it is
# there, browser), the deployment checks and the benchmark's short mode. Exits non-zero at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s ==\n' "$*"; }

step "test dependencies"
scripts/install-test-deps.sh

step "format"
cargo fmt --all -- --check

step "lints"
cargo clippy --all-targets --locked -- -D warnings

# The real controller firmware (tests/realfw.rs), when its folder sits beside the checkout as
# in CI: built once here (g++ only; outputs go to /tmp), and required by the suite from then on,
# so that a broken setup fails instead of skipping.
realfw="$(cd .. && pwd)/shared/realfw"
if [ -x "$realfw/build.sh" ]; then
  step "real firmware (realfw)"
  "$realfw/build.sh"
  export COFFEEBOT_REALFW="$realfw" COFFEEBOT_REALFW_REQUIRED=1
else
  echo "test: no $realfw: the real-firmware suite (tests/realfw.rs) is skipped"
fi

step "tests"
rm -f target/tmp/realfw-figures.txt
cargo test --locked --all-targets
if [ -f target/tmp/realfw-figures.txt ]; then
  step "figures measured against the real firmware"
  cat target/tmp/realfw-figures.txt
fi

if [ -x scripts/check-deploy.sh ]; then
  step "deployment"
  scripts/check-deploy.sh
fi

if [ -x scripts/bench.sh ]; then
  step "benchmark (short mode: proves it runs; no figure is asserted)"
  scripts/bench.sh --short
fi

step "all checks passed"
