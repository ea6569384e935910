#!/usr/bin/env bash
# Runs every check and test of coffeebot on a fresh Debian machine with Rust:
# installs what the tests need (mosquitto, Chromium, validation tools), then format, lints,
# the test suite (unit, property, integration against a real mosquitto and the simulated
# controller on real pseudo-terminals, browser), the tests against a real Home Assistant
# (scripts/ha-env.sh: installed once into /var/cache/coffeebot-ha, reused while unchanged),
# the deployment checks and the benchmark's short mode. Exits non-zero at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s ==\n' "$*"; }

step "test dependencies"
scripts/install-test-deps.sh

step "format"
cargo fmt --all -- --check

step "lints"
cargo clippy --all-targets --locked -- -D warnings

step "tests"
cargo test --locked --all-targets

step "Home Assistant (a real HA Core in a Debian forky root; scripts/ha-env.sh)"
started=$SECONDS
scripts/ha-env.sh test
echo "Home Assistant stage: $((SECONDS - started)) s"

if [ -x scripts/check-deploy.sh ]; then
  step "deployment"
  scripts/check-deploy.sh
fi

if [ -x scripts/bench.sh ]; then
  step "benchmark (short mode: proves it runs; no figure is asserted)"
  scripts/bench.sh --short
fi

step "all checks passed"
