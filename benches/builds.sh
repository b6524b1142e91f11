#!/usr/bin/env bash
# A quick A/B of the `closed` set of benches/load.sh for several claimsmith builds,
# nginx beside them: is a change faster, slower, or the same? Builds and nginx
# alternate within every round, on the same machine in the same minutes, which is the
# only comparison this shared VM allows (docs/performance.md, "Noise").
#
#   benches/load.sh                      # once (any set): writes the files used here
#   BINS="/tmp/before target/release/claimsmith" benches/builds.sh
#   CONFIG=/tmp/old.toml BINS="/tmp/old target/release/claimsmith" benches/builds.sh
#
# Pinned as load.sh pins: each proxy alone on CPU 0 with one worker, wrk (-t1 -c64,
# every request with the next of the 1,000 users' tokens) and the upstream nginx on
# CPU 1. claimsmith runs load.sh's configuration (CONFIG: another file, for a build
# that does not know every key of today's), `/api/` (PATH_API) verified. Each target:
# WARMUP s unmeasured, then DURATION s measured, ROUNDS rounds; per target it prints
# the median round's req/s, its ratio to nginx in the same round, and the CPU time
# per request (user + system, from /proc), the steadier figure.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$TARGET/load}
BINS=${BINS:-$TARGET/release/claimsmith}
CONFIG=${CONFIG:-$OUT/cs/claimsmith.toml}
PATH_API=${PATH_API:-/api/orders}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
P_NGINX=18090 P_CS=18100 P_CS_ADMIN=18101

for f in up/nginx.conf nginx/nginx.conf tokens.txt; do
  [[ -f $OUT/$f ]] || { echo "run benches/load.sh first (it writes $OUT/$f)" >&2; exit 1; }
done
for b in $BINS; do [[ -x $b ]] || { echo "no claimsmith build at $b" >&2; exit 1; }; done
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
taskset -c 1 nginx -p "$OUT/up" -e "$OUT/up/error.log" -c "$OUT/up/nginx.conf" &
PIDS+=($!)
export TOKENS_FILE=$OUT/tokens.txt

# cpu PID: user and system clock ticks of PID and its threads.
cpu() { awk '{print $14, $15}' "/proc/$1/stat"; }
# measure URL PID SECONDS: one wrk run; prints "req/s user_us sys_us" per request.
measure() {
  local before after reqs hz
  before=$(cpu "$2")
  reqs=$(taskset -c 1 wrk -t1 -c64 -d"$3s" --timeout 5s -s "$ROOT/benches/rotate_tokens.lua" "$1" -- "$PATH_API" |
    awk '/requests in/ {print $1}')
  after=$(cpu "$2")
  hz=$(getconf CLK_TCK)
  awk -v r="$reqs" -v d="$3" -v b="$before" -v a="$after" -v hz="$hz" 'BEGIN {
    split(b, x, " "); split(a, y, " ");
    printf "%.0f %.1f %.1f\n", r / d, (y[1] - x[1]) * 1e6 / hz / r, (y[2] - x[2]) * 1e6 / hz / r }'
}
# start NAME: the target's process, ready: MAIN (to stop) and SERVING (to measure).
start() {
  if [[ $1 == nginx ]]; then
    taskset -c 0 nginx -p "$OUT/nginx" -e "$OUT/nginx/error.log" -c "$OUT/nginx/nginx.conf" >/dev/null &
  else
    TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c 0 "$1" run --config "$CONFIG" >/dev/null 2>>"$OUT/builds.log" &
  fi
  MAIN=$!
  PIDS+=("$MAIN")
  local ready=http://127.0.0.1:$P_CS_ADMIN/readyz
  [[ $1 == nginx ]] && ready=http://127.0.0.1:$P_NGINX/off/x
  local up=0
  for _ in $(seq 100); do
    curl -fsS -o /dev/null "$ready" 2>/dev/null && { up=1; break; }
    sleep 0.1
  done
  ((up)) || { echo "$1 did not become ready (see $OUT/builds.log)" >&2; exit 1; }
  SERVING=$MAIN
  # nginx's worker is what serves: measure it, not the master.
  if [[ $1 == nginx ]]; then SERVING=$(pgrep -P "$MAIN" | head -1); fi
}

TARGETS=(nginx $BINS)
declare -A RESULTS=()
for round in $(seq "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    start "$t"
    port=$P_CS
    [[ $t == nginx ]] && port=$P_NGINX
    url=http://127.0.0.1:$port$PATH_API
    measure "$url" "$SERVING" "$WARMUP" >/dev/null
    RESULTS[$t,$round]=$(measure "$url" "$SERVING" "$DURATION")
    echo "round $round  $t  ${RESULTS[$t,$round]}" >&2
    kill "$MAIN"
    wait "$MAIN" 2>/dev/null || true
    sleep 0.5
  done
done

printf '\n| build | req/s (median round) | / nginx, same round | user + sys µs/req | rounds |\n|---|---:|---:|---:|---|\n'
for t in "${TARGETS[@]}"; do
  rows=""
  for round in $(seq "$ROUNDS"); do
    read -r rps u s <<<"${RESULTS[$t,$round]}"
    read -r nrps _ _ <<<"${RESULTS[nginx,$round]}"
    rows+="$rps $u $s $(awk -v a="$rps" -v b="$nrps" 'BEGIN {printf "%.2f", a / b}')"$'\n'
  done
  median=$(printf '%s' "$rows" | sort -n | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2)')
  read -r rps u s ratio <<<"$median"
  all=$(printf '%s' "$rows" | awk '{printf "%s%s", (NR > 1 ? ", " : ""), $1}')
  printf '| %s | %s | %s | %s + %s | %s |\n' "$t" "$rps" "$ratio" "$u" "$s" "$all"
done
