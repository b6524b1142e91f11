#!/usr/bin/env bash
# A quick A/B of the `burst` set of benches/load.sh: what a crowd of never-seen users
# does to the users already cached, for one or more builds back to back, with the
# stand-in control beside them. Minutes where the full set takes ten, because it
# warms a few cached users (CACHED, default 50) instead of a thousand.
#
#   benches/load.sh                      # once, with the burst set: writes the files
#   benches/crowd.sh                     # this build, and the control
#   BINS="/tmp/before target/release/claimsmith" RUNS=4 benches/crowd.sh
#
# Each run starts everything afresh: the upstream nginx and the tests' Auth0 mock
# (examples/bench_auth0.rs, 20 ms a call) on CPU 1, claimsmith alone on CPU 0 with one
# worker and load.sh's burst configuration (auth0 source, default budget). It warms
# CACHED users (one lookup each, at the budget's 5 a second), sends them at RATE with
# `bench_client fixed` (1 s unrecorded, DURATION recorded, --slow-log), and CROWD_AT s
# into the recorded window sends CROWD never-seen users at once (`bench_client
# burst`, one new connection each). The control sends the same crowd to a stand-in
# on CPU 0 instead (nginx, `return 503`, one accept per turn, the same backlog).
# Builds and the control alternate within a run. Per target and run it prints the
# cached users' p99 / p99.9 / max, how many of their requests took over 5 ms, the
# event-loop turns over 5 ms (claimsmith_event_loop_turn_seconds), how long the crowd
# took to be answered and how many of its connections the listen queue dropped.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$TARGET/load}
BINS=${BINS:-$TARGET/release/claimsmith}
RUNS=${RUNS:-3}
CACHED=${CACHED:-50}
RATE=${RATE:-20000}
CROWD=${CROWD:-10000}
CROWD_AT=${CROWD_AT:-1}
DURATION=${DURATION:-6}
CONTROL=${CONTROL:-1}
P_STANDIN=18090 P_CS=18100 P_CS_ADMIN=18101 P_AUTH0=18104
WORK=$OUT/crowd

for f in up/nginx.conf burst/cs/claimsmith.toml tokens.txt tokens-new-1.txt; do
  [[ -f $OUT/$f ]] || { echo "run benches/load.sh with the burst set first (ROWS=burst; it writes $OUT/$f)" >&2; exit 1; }
done
for b in $BINS; do [[ -x $b ]] || { echo "no claimsmith build at $b" >&2; exit 1; }; done
CLIENT=$TARGET/release/examples/bench_client
[[ -x $CLIENT && -x $TARGET/release/examples/bench_auth0 ]] ||
  (cd "$ROOT" && cargo build --release --quiet --example bench_client --example bench_auth0)
rm -rf "$WORK" && mkdir -p "$WORK/standin/tmp"
head -n "$CACHED" "$OUT/tokens.txt" >"$WORK/cached.txt"
# load.sh writes one set of never-seen users per round of its burst set; runs cycle
# through them (each run's claimsmith starts with an empty cache).
SETS=$(find "$OUT" -maxdepth 1 -name 'tokens-new-*.txt' | wc -l)
# Enough sockets for the crowd's connections (the hard limit allowing).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
up() { # the upstream and JWKS (load.sh's), and the tenant
  taskset -c 1 nginx -p "$OUT/up" -e "$OUT/up/error.log" -c "$OUT/up/nginx.conf" &
  PIDS+=($!)
  taskset -c 1 "$TARGET/release/examples/bench_auth0" --port "$P_AUTH0" --users 100000 \
    --client bench-client --latency-ms 20 --stats-file "$WORK/auth0-stats.json" 2>"$WORK/auth0.log" &
  PIDS+=($!)
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$P_AUTH0") 2>/dev/null && break; sleep 0.05; done
}
down() { cleanup; PIDS=(); sleep 0.3; }
cat >"$WORK/standin/nginx.conf" <<EOF
daemon off;
master_process off;
pid $WORK/standin/nginx.pid;
worker_rlimit_nofile 65536;
events { worker_connections 30000; multi_accept off; }
http {
  access_log off;
  client_body_temp_path $WORK/standin/tmp; proxy_temp_path $WORK/standin/tmp;
  fastcgi_temp_path $WORK/standin/tmp; uwsgi_temp_path $WORK/standin/tmp; scgi_temp_path $WORK/standin/tmp;
  server { listen 127.0.0.1:$P_STANDIN backlog=4096; location / { return 503; } }
}
EOF
overflows() {
  awk '/^TcpExt:/ { if (!h) { split($0, n); h = 1 } else { split($0, v); for (i in n) if (n[i] == "ListenOverflows") print v[i] } }' /proc/net/netstat
}
turns_over_5ms() { # the turn histogram's samples over 5 ms, cumulative
  curl -fsS "http://127.0.0.1:$P_CS_ADMIN/metrics" | awk -F'[ "]' '
    /^claimsmith_event_loop_turn_seconds_bucket\{le="0.005"\}/ { le = $NF }
    /^claimsmith_event_loop_turn_seconds_bucket\{le="\+Inf"\}/ { all = $NF }
    END { print all - le }'
}

one() { # TARGET-NAME BIN CROWD-URL RUN
  local name=$1 bin=$2 url=$3 r=$4
  up
  TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c 0 "$bin" run --config "$OUT/burst/cs/claimsmith.toml" \
    2>"$WORK/cs-$name-$r.log" &
  PIDS+=($!)
  if [[ $url != *":$P_CS/"* ]]; then
    taskset -c 0 nginx -p "$WORK/standin" -e "$WORK/standin/error.log" -c "$WORK/standin/nginx.conf" &
    PIDS+=($!)
  fi
  for _ in $(seq 200); do curl -fsS -o /dev/null "http://127.0.0.1:$P_CS_ADMIN/readyz" 2>/dev/null && break; sleep 0.05; done
  taskset -c 1 "$CLIENT" warm --url "http://127.0.0.1:$P_CS/api/orders" --tokens "$WORK/cached.txt" --conns 5 \
    --max-secs 120 >/dev/null
  taskset -c 1 "$CLIENT" fixed --url "http://127.0.0.1:$P_CS/api/orders" --tokens "$WORK/cached.txt" --rate "$RATE" \
    --conns 64 --warmup 1 --duration "$DURATION" --slow-log "$WORK/slow-$name-$r.txt" >"$WORK/fixed-$name-$r.out" &
  local fixed=$!
  local t0 o0
  t0=$(turns_over_5ms)
  o0=$(overflows)
  sleep "$(awk "BEGIN { print 0.2 + 1 + $CROWD_AT }")"
  local crowd
  crowd=$(taskset -c 1 "$CLIENT" burst --url "$url" --tokens "$OUT/tokens-new-$(( (r - 1) % SETS + 1 )).txt" \
    --conns "$CROWD" | sed -n 's/^RESULT //p')
  local o1 t1
  o1=$(overflows)
  wait "$fixed"
  t1=$(turns_over_5ms)
  python3 - "$name" "$r" "$(sed -n 's/^RESULT //p' "$WORK/fixed-$name-$r.out")" "$crowd" "$WORK/slow-$name-$r.txt" \
    "$((t1 - t0))" "$((o1 - o0))" <<'PY'
import json, sys
name, r, fixed, crowd, slow, turns, ovf = sys.argv[1:8]
f, c = json.loads(fixed), json.loads(crowd)
over5 = sum(1 for l in open(slow) if not l.startswith("#") and float(l.split()[1]) > 5)
print(f"| {name} | {r} | {f['pct']['99']:.1f} | {f['pct']['99.9']:.1f} | {f['max_ms']:.1f} | {over5} | {turns} | "
      f"{c['seconds']:.1f} | {ovf} |")
PY
  down
}

CROWD_URL=http://127.0.0.1:$P_CS/api/orders
echo "### crowd: $CACHED cached users at $RATE req/s, $CROWD never-seen users at once $CROWD_AT s in; $(date -u '+%F %H:%M UTC')"
echo
i=0
for b in $BINS; do
  i=$((i + 1))
  echo "build$i: $b"
done
echo
echo "| target | run | cached p99 ms | p99.9 ms | max ms | requests over 5 ms | loop turns over 5 ms | crowd answered in s | listen queue overflows |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for r in $(seq "$RUNS"); do
  i=0
  for b in $BINS; do
    i=$((i + 1))
    one "build$i" "$b" "$CROWD_URL" "$r"
  done
  if [[ $CONTROL == 1 ]]; then
    one control "$(set -- $BINS; echo "$1")" "http://127.0.0.1:$P_STANDIN/api/orders" "$r"
  fi
done
