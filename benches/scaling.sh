#!/usr/bin/env bash
# The shared cache's figures (docs/scaling.md): three claimsmith processes in front of
# one Auth0-shaped tenant, sharing one real redis-server, all on 127.0.0.1.
#
#   benches/scaling.sh               # prints every figure, then writes $OUT/figures.txt
#   TRIES=100 benches/scaling.sh     # eviction propagation over TRIES x 2 samples
#
# It runs tests/shared_cache.rs in release mode, one test at a time (so the timings do
# not share the two cores with another test), with CLAIMSMITH_TRIES=$TRIES, and keeps
# the `figure:` lines the tests print: IdP reads for N users over 3 replicas, reads for
# 30 simultaneous first requests, the calls the tenant saw under one shared budget,
# bulk client loads per ttl, eviction propagation p50/p99, and the latency of a load
# during which Redis is killed, stopped (SIGSTOP) or refuses the password. The same
# tests assert the counts (and that no request fails) on every `cargo test`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TRIES=${TRIES:-100}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$TARGET/scaling}
mkdir -p "$OUT"

if ! command -v redis-server >/dev/null; then
  echo "[scaling] installing redis-server" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

cd "$ROOT"
CLAIMSMITH_TRIES=$TRIES cargo test --release --test shared_cache -- --nocapture --test-threads=1 \
  2>&1 | tee "$OUT/run.log" | grep -E '^test |figure:' >&2
grep -o 'figure: .*' "$OUT/run.log" | sed 's/^figure: //' | tee "$OUT/figures.txt"
grep -q '^test result: ok' "$OUT/run.log" || { echo "[scaling] a test failed: see $OUT/run.log" >&2; exit 1; }
echo "[scaling] $(redis-server --version | cut -d' ' -f1-3), $(nproc) cores; figures in $OUT/figures.txt" >&2
