#!/usr/bin/env bash
# The coffeebot benchmark (BENCHMARKS.md): builds the release binaries, makes sure mosquitto
# is installed, and runs coffeebot-bench against the release bridge: first with the simulated
# controller, then with the real firmware (../shared/realfw beside the repository, or
# $COFFEEBOT_REALFW) when it is there. Prints a table per device and writes
# target/bench/latest.json, target/bench/latest-realfw.json (and timestamped copies).
#
#   scripts/bench.sh                  full run, both devices (about 17 minutes on 2 cores)
#   scripts/bench.sh --short          seconds per figure: proves the benchmark works on both
#                                     devices (CI); no figure is meaningful or asserted
#   scripts/bench.sh --device realfw  one device only (sim or realfw)
#   scripts/bench.sh --device sim --scenarios alone,viewers,idle-connections
#                                     only these feed-cadence scenarios (no latency figures)
# Other arguments go to coffeebot-bench (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  scripts/install-test-deps.sh
fi

cargo build --release --locked --bins
bench=(target/release/coffeebot-bench --bridge target/release/coffeebot)

for arg in "$@"; do
  case $arg in
    --device|--device=*) exec "${bench[@]}" "$@" ;;
  esac
done

"${bench[@]}" --device sim "$@"
realfw=${COFFEEBOT_REALFW:-../shared/realfw}
if [ -x "$realfw/run.sh" ]; then
  "${bench[@]}" --device realfw "$@"
elif [ -n "${COFFEEBOT_REALFW_REQUIRED:-}" ]; then
  echo "bench.sh: no real firmware at $realfw, and COFFEEBOT_REALFW_REQUIRED is set" >&2
  exit 1
else
  echo "bench.sh: no real firmware at $realfw (set COFFEEBOT_REALFW): the realfw run is skipped" >&2
fi
