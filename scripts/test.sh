#!/usr/bin/env bash
# Runs every check and test of coffeebot on a fresh Debian machine with Rust:
# installs what the tests need (mosquitto, Chromium, validation tools), then format, lints,
# the test suite (unit, property, integration against a real mosquitto and the simulated
# controller on real pseudo-terminals, the real firmware from ../shared/realfw when it is
# there, browser), the tests against a real Home Assistant (scripts/ha-env.sh: installed once
# into /var/cache/coffeebot-ha, reused while unchanged), the Raspberry Pi builds with the
# end-to-end checks against them under qemu-user, the deployment checks and the benchmark's
# short mode. Exits non-zero at the first failure.
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

step "Home Assistant (a real HA Core in a Debian forky root; scripts/ha-env.sh)"
started=$SECONDS
scripts/ha-env.sh test
echo "Home Assistant stage: $((SECONDS - started)) s"

if [ -x scripts/check-deploy.sh ]; then
  step "deployment"
  scripts/check-deploy.sh
fi

# The Raspberry Pi targets: both release binaries built as the Dockerfile builds them, then the
# end-to-end checks that matter most (tests/essentials.rs: simulator and real firmware, a real
# mosquitto) run against each binary under qemu-user. A broken ARM build fails here.
# COFFEEBOT_SKIP_CROSS=1 skips the stage on a developer's machine; CI always runs it.
# COFFEEBOT_CROSS_TESTS: the test targets run against each binary (any suite that starts the
# bridge through tests/support/bridge.rs honours the override).
if [ "${COFFEEBOT_SKIP_CROSS:-0}" = 1 ] && [ "${CI:-}" != true ]; then
  step "Raspberry Pi targets: skipped (COFFEEBOT_SKIP_CROSS=1)"
else
  step "Raspberry Pi targets: build (scripts/cross.sh)"
  started=$SECONDS
  scripts/cross.sh
  # shellcheck source=/dev/null
  . target/cross/env
  read -r -a cross_tests <<<"${COFFEEBOT_CROSS_TESTS:-essentials}"
  test_args=()
  for t in "${cross_tests[@]}"; do test_args+=(--test "$t"); done
  for arch in AARCH64 ARMV7; do
    bin_var="COFFEEBOT_CROSS_BIN_$arch" qemu_var="COFFEEBOT_CROSS_QEMU_$arch"
    step "Raspberry Pi targets: ${cross_tests[*]} against ${!bin_var} under qemu-user"
    COFFEEBOT_TEST_BIN="${!bin_var}" COFFEEBOT_TEST_WRAPPER="${!qemu_var}" \
      cargo test --locked "${test_args[@]}" -- --nocapture --test-threads=2
  done
  echo "Raspberry Pi targets: $((SECONDS - started)) s"
fi

if [ -x scripts/bench.sh ]; then
  step "benchmark (short mode: proves it runs; no figure is asserted)"
  scripts/bench.sh --short
fi

step "all checks passed"
