#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each; FUZZ_SECS=N or the first
# argument to change it) and prints executions and findings per target. Needs a nightly toolchain
# and cargo-fuzz (`cargo install cargo-fuzz`). Corpora stay in fuzz/corpus/<target>, crashes in
# fuzz/artifacts/<target>; every crash must become a regression test (see tests/properties.rs and
# the unit tests next to the parser). Exits non-zero when any target found a crash.
set -uo pipefail
cd "$(dirname "$0")/.."
secs="${1:-${FUZZ_SECS:-60}}"
targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build >/dev/null 2>&1 || cargo +nightly fuzz build
status=0
for t in $targets; do
  log="fuzz/artifacts/$t.log"
  mkdir -p "fuzz/artifacts/$t" "fuzz/corpus/$t"
  before=$(ls "fuzz/artifacts/$t" | wc -l)
  cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -max_len=4096 -timeout=5 \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  after=$(ls "fuzz/artifacts/$t" | wc -l)
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
  corpus=$(ls "fuzz/corpus/$t" | wc -l)
  findings=$((after - before))
  printf '%-16s %4ss  executions=%-10s %-10s corpus=%-6s new_crashes=%s rc=%s\n' \
    "$t" "$secs" "${execs:-?}" "${cov:-cov: ?}" "$corpus" "$findings" "$rc"
  if [ "$rc" -ne 0 ] || [ "$findings" -ne 0 ]; then
    status=1
    grep -m5 -E 'panicked|ERROR|SUMMARY' "$log" || true
  fi
done
exit $status
