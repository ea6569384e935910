#!/usr/bin/env bash
# The coffeebot benchmark (BENCHMARKS.md): builds the release binaries, makes sure mosquitto
# is installed, and runs coffeebot-bench against the release bridge. Prints a table and writes
# target/bench/latest.json (and a timestamped copy).
#
#   scripts/bench.sh           full run (about 6 minutes on 2 cores)
#   scripts/bench.sh --short   seconds per figure: proves the benchmark works (CI); no figure
#                              is meaningful or asserted
# Other arguments go to coffeebot-bench (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  scripts/install-test-deps.sh
fi

cargo build --release --locked --bins
exec target/release/coffeebot-bench --bridge target/release/coffeebot "$@"
