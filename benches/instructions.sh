#!/usr/bin/env bash
# Instructions per request of claimsmith (valgrind callgrind): a figure that, unlike
# req/s on a shared VM, does not move with the neighbours, so two builds can be
# compared change by change.
#
#   benches/load.sh                 # once: writes the configs, tokens and metadata
#   benches/instructions.sh         # Ir/request for /api/ (verified) and /off/
#   BIN=/tmp/old-claimsmith benches/instructions.sh   # another build, same setup
#   CONFIG=/tmp/old.toml BIN=/tmp/old-claimsmith benches/instructions.sh
#                                   # a build that does not know every key of today's
#
# claimsmith runs under callgrind with one worker; wrk (8 connections) warms it up
# until every token is in the token cache, the counters are zeroed, then SECONDS_MEASURED of load are counted and divided by
# the requests wrk completed. Valgrind's CPU has no SHA extensions, so SHA-256 (the
# token cache key) runs in software there and costs ~40k Ir per request it would not
# cost on the real CPU: the figure without it is printed too.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$TARGET/load}
BIN=${BIN:-$TARGET/release/claimsmith}
CONFIG=${CONFIG:-$OUT/cs/claimsmith.toml}
SECONDS_MEASURED=${SECONDS_MEASURED:-6}
P_UP=18080 P_CS=18100 P_CS_ADMIN=18101

[[ -f $OUT/cs/claimsmith.toml && -f $OUT/tokens.txt ]] || { echo "run benches/load.sh first (it writes $OUT)" >&2; exit 1; }
need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release --quiet --bin claimsmith)

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

nginx -p "$OUT/up" -e "$OUT/up/error.log" -c "$OUT/up/nginx.conf" &
PIDS+=($!)
export TOKENS_FILE=$OUT/tokens.txt
for path in api off; do
  cg=$OUT/callgrind-$path.out
  rm -f "$cg" "$cg".*
  TOKIO_WORKER_THREADS=1 RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$cg" \
    "$BIN" run --config "$CONFIG" 2>"$OUT/callgrind-$path.log" &
  pid=$!
  PIDS+=($pid)
  for _ in $(seq 200); do curl -fsS -o /dev/null "http://127.0.0.1:$P_CS_ADMIN/readyz" 2>/dev/null && break; sleep 0.2; done
  url=http://127.0.0.1:$P_CS/$path/orders
  # Warm up until every token is verified and cached (valgrind is slow at first).
  for _ in $(seq 15); do
    wrk -t1 -c8 -d2s -s "$ROOT/benches/rotate_tokens.lua" "$url" -- "/$path/orders" >/dev/null
    held=$(curl -fsS "http://127.0.0.1:$P_CS_ADMIN/metrics" | awk '/^claimsmith_token_cache_entries / {print $2}')
    [[ $path == off || ${held:-0} -ge $(grep -c . "$TOKENS_FILE") ]] && break
  done
  callgrind_control -z "$pid" >/dev/null
  reqs=$(wrk -t1 -c8 -d"${SECONDS_MEASURED}s" -s "$ROOT/benches/rotate_tokens.lua" "$url" -- "/$path/orders" |
    awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" >/dev/null
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  total=$(callgrind_annotate "$cg.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  sha=$(callgrind_annotate --inclusive=yes "$cg.1" 2>/dev/null |
    awk '/sha2::sha256::compress256 \[/ && !seen {gsub(",", "", $1); print $1; seen = 1}')
  sha=${sha:-0}
  echo "/$path/: $reqs requests, $((total / reqs)) Ir/request, $(((total - sha) / reqs)) without software SHA-256"
done

# The same count for nginx as the plain keep-alive proxy (load.sh's configuration, in
# one process), for scale: what forwarding alone costs in a lean event loop.
P_NGINX=18090
sed 's/^master_process on;/master_process off;/' "$OUT/nginx/nginx.conf" >"$OUT/nginx/nginx-callgrind.conf"
cg=$OUT/callgrind-nginx.out
rm -f "$cg" "$cg".*
valgrind --tool=callgrind --callgrind-out-file="$cg" \
  nginx -p "$OUT/nginx" -e "$OUT/nginx/error.log" -c "$OUT/nginx/nginx-callgrind.conf" 2>"$OUT/callgrind-nginx.log" &
pid=$!
PIDS+=($pid)
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$P_NGINX/api/orders" 2>/dev/null && break; sleep 0.2; done
url=http://127.0.0.1:$P_NGINX/api/orders
wrk -t1 -c8 -d2s -s "$ROOT/benches/rotate_tokens.lua" "$url" -- /api/orders >/dev/null
callgrind_control -z "$pid" >/dev/null
reqs=$(wrk -t1 -c8 -d"${SECONDS_MEASURED}s" -s "$ROOT/benches/rotate_tokens.lua" "$url" -- /api/orders |
  awk '/requests in/ {print $1}')
callgrind_control -d "$pid" >/dev/null
kill "$pid"
wait "$pid" 2>/dev/null || true
total=$(callgrind_annotate "$cg.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "nginx proxy_pass: $reqs requests, $((total / reqs)) Ir/request"
