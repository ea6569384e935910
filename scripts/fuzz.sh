#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a fixed time budget (docs/fuzzing.md).
#
#   scripts/fuzz.sh                  every target, FUZZ_SECONDS each
#   scripts/fuzz.sh decoder core     only these targets
#
# Environment:
#   FUZZ_SECONDS=30     fuzzing time per target, in seconds (the build is not counted)
#   FUZZ_TOOLCHAIN=     rustup toolchain to build with (default: nightly if it works, else
#                       stable with RUSTC_BOOTSTRAP=1, which lets stable take -Zsanitizer)
#   FUZZ_ARGS=          extra libFuzzer flags, e.g. "-max_len=65536"
#
# Prints one line per target: `fuzz: <target>: <runs> runs in <s> s, ok` (or `CRASH`, with the
# artifact that reproduces it), and exits non-zero if any target crashed or failed to run.
# The corpus grows in fuzz/corpus/<target> and is kept between runs (not committed).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
seconds="${FUZZ_SECONDS:-30}"
log_dir="$root/fuzz/target/logs"

if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# cargo-fuzz passes -Zsanitizer=address, which only a nightly compiler accepts, or a stable one
# told it is bootstrapping the compiler itself.
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
  toolchain="$FUZZ_TOOLCHAIN"
elif rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=nightly
else
  toolchain=stable
  export RUSTC_BOOTSTRAP=1
  echo "fuzz: no usable nightly toolchain; using stable with RUSTC_BOOTSTRAP=1" >&2
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo "+$toolchain" fuzz list)
fi

echo "fuzz: building ${targets[*]} with $(rustup run "$toolchain" rustc --version)" >&2
for target in "${targets[@]}"; do
  cargo "+$toolchain" fuzz build "$target"
done

mkdir -p "$log_dir"
failed=0
for target in "${targets[@]}"; do
  log="$log_dir/$target.log"
  # -max_total_time bounds the fuzzing; the timeout is a net for a hung build or run.
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  if timeout "$((seconds + 600))" cargo "+$toolchain" fuzz run "$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1; then
    verdict=ok
  else
    verdict=CRASH
    failed=1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  secs="$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)"
  line="fuzz: $target: ${runs:-?} runs in ${secs:-?} s, $verdict"
  if [ "$verdict" != ok ]; then
    artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
    line="$line (log: $log${artifact:+; reproduce: cargo +$toolchain fuzz run $target $artifact})"
  fi
  echo "$line"
done
exit "$failed"
