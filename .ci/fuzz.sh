#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a short budget (FUZZ_SECONDS, default 30
# each) over the committed seed corpus. Needs nightly Rust; installs cargo-fuzz from
# crates.io when missing. Without nightly it says why and exits 0: the same targets
# run on stable in `cargo test --test fuzz_smoke` anyway.
#
#   bash .ci/fuzz.sh                 # all targets, 30 s each
#   FUZZ_SECONDS=300 bash .ci/fuzz.sh verify_token
#
# New corpus entries go to fuzz/target/corpus-run/ (not committed); a crash leaves
# its input in fuzz/artifacts/<target>/ and makes this script exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-30}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(verify_token verify_claims hygiene normalize config h1_request h1_response chunked h1_differential)
fi

if ! command -v rustup >/dev/null || ! rustup toolchain list | grep -q '^nightly'; then
  echo "== fuzz: skipped: no nightly toolchain (cargo-fuzz needs -Z sanitizer flags);"
  echo "   rustup cannot download one here. The targets still run on stable in tests/fuzz_smoke.rs."
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== fuzz: installing cargo-fuzz (crates.io)"
  if ! cargo +nightly install cargo-fuzz --locked; then
    echo "== fuzz: skipped: cargo-fuzz could not be installed"
    exit 0
  fi
fi

echo "== fuzz: $(cargo +nightly fuzz --version), ${seconds}s per target: ${targets[*]}"
cargo +nightly fuzz build
status=0
for t in "${targets[@]}"; do
  work="fuzz/target/corpus-run/$t"
  mkdir -p "$work"
  log="fuzz/target/fuzz-$t.log"
  # Seeds are read from the committed corpus; new inputs are written to $work only.
  if cargo +nightly fuzz run "$t" "$work" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=20000 -print_final_stats=1 \
      >"$log" 2>&1; then
    runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    cov=$(grep -E '^#[0-9]+.*DONE' "$log" | sed -E 's/.*cov: ([0-9]+).*/\1/' | tail -1)
    echo "== fuzz: $t: clean, ${runs:-?} executions in ${seconds}s (coverage ${cov:-?})"
  else
    status=1
    echo "== fuzz: $t: FAILED (log: $log; crashing input in fuzz/artifacts/$t/)"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -20 || true
  fi
done
exit $status
