#!/usr/bin/env bash
# Side-by-side load test: claimsmith on a cache hit against nginx as a plain
# keep-alive reverse proxy, in front of the same upstream, in one run, on loopback.
#
#   benches/load.sh                 # defaults below; prints the table
#   DURATION=15 ROUNDS=3 benches/load.sh
#   SHARED=1 benches/load.sh        # claimsmith with [shared] (a redis-server of its own)
#                                   # and an http metadata source, so its entries are in
#                                   # Redis too: shows that an in-process hit never
#                                   # touches Redis (docs/scaling.md)
#
# Targets (all on 127.0.0.1):
#   upstream      wrk -> upstream directly (nginx `return 200`)
#   nginx         wrk -> nginx proxy_pass, upstream keepalive 64 -> upstream
#   claimsmith    wrk -> claimsmith, route auth = "required": token verified (token
#                 cache), metadata cache hit, minted token reused -> upstream
#   cs-auth-off   wrk -> claimsmith, route auth = "off": header hygiene + forward only
#   cs-forward-auth  wrk -> claimsmith's forward-auth listener: the same checks as
#                 `claimsmith` (X-Original-Method/-URI naming /api/orders), answered
#                 200 with the internal token, nothing forwarded (docs/forward-auth.md)
#
# The /api/ route carries two authorization rules (a require and a deny), as a real
# deployment would, so their cost is in the claimsmith figures.
#
# Placement (the same for both proxies): the proxy under test runs alone on CPU 0 with
# ONE worker (nginx worker_processes 1; claimsmith TOKIO_WORKER_THREADS=1); wrk (1
# thread, 64 connections) and the upstream nginx (1 worker) share CPU 1. Access logs
# are off on both proxies (nginx access_log off; claimsmith RUST_LOG=warn).
# Every request carries the RS256 ID token of one of USERS distinct users, rotating.
# Rounds alternate the targets (upstream, nginx, claimsmith, cs-auth-off, ...); the
# table shows the median round of each target.
#
# Writes $OUT (default target/load): results.jsonl, table.md, latency.png, and the
# configs and logs of the run. Stops every process it started on exit.
set -euo pipefail

DURATION=${DURATION:-12}     # seconds measured per target and round
WARMUP=${WARMUP:-3}          # seconds of unmeasured load before each measurement
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
USERS=${USERS:-1000}
WORKERS=${WORKERS:-1}        # nginx worker_processes = claimsmith worker threads
PROXY_CPUS=${PROXY_CPUS:-0}  # where the proxy under test runs
LOAD_CPUS=${LOAD_CPUS:-1}    # where wrk and the upstream run
SHARED=${SHARED:-0}          # 1: [shared] on a redis-server, http metadata source
PERF=${PERF:-0}              # 1: perf-record claimsmith during its round-1 runs (perf-*.txt)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$TARGET/load}
P_UP=18080 P_JWKS=18081 P_NGINX=18090 P_CS=18100 P_CS_ADMIN=18101 P_REDIS=18102 P_CS_FA=18103

log() { printf '[load] %s\n' "$*" >&2; }

# --- tools -----------------------------------------------------------------------
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v gnuplot >/dev/null || need+=(gnuplot-nox)
command -v curl >/dev/null || need+=(curl)
command -v taskset >/dev/null || need+=(util-linux)
if [[ $SHARED == 1 ]]; then command -v redis-server >/dev/null || need+=(redis-server); fi
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v python3 >/dev/null || { log "python3 is required to collect results"; exit 1; }

# --- processes we start, stopped on exit -----------------------------------------
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for p in $P_UP $P_JWKS $P_NGINX $P_CS $P_CS_ADMIN $P_REDIS $P_CS_FA; do
  if (echo >/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
    log "port $p on 127.0.0.1 is already in use; stop whatever holds it"; exit 1
  fi
done

# --- build -----------------------------------------------------------------------
log "building claimsmith (release)"
(cd "$ROOT" && cargo build --release --quiet --bin claimsmith --example bench_tokens)
BIN=$TARGET/release/claimsmith
rm -rf "$OUT"; mkdir -p "$OUT"/{up,nginx,cs}
"$TARGET/release/examples/bench_tokens" "$OUT" --users "$USERS" --alg RS256 \
  --issuer https://bench-issuer.test/ --audience bench-client
"$BIN" keygen --alg EdDSA --out "$OUT/cs/signing.pem" >/dev/null

# --- upstream (+ the issuer's JWKS) ------------------------------------------------
cat >"$OUT/up/nginx.conf" <<EOF
daemon off;
master_process on;
user root;
worker_processes 1;
pid $OUT/up/nginx.pid;
error_log $OUT/up/error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_body_temp_path $OUT/up/tmp;
  proxy_temp_path $OUT/up/tmp;
  fastcgi_temp_path $OUT/up/tmp;
  uwsgi_temp_path $OUT/up/tmp;
  scgi_temp_path $OUT/up/tmp;
  server {
    listen 127.0.0.1:$P_UP backlog=4096;
    default_type text/plain;
    location / { return 200 "ok\n"; }
    # The http metadata source of SHARED=1: every user and client has this metadata.
    location /meta/ { default_type application/json; return 200 '{"roles":["reader"],"plan":"bench"}'; }
  }
  server {
    listen 127.0.0.1:$P_JWKS;
    location = /jwks.json { default_type application/json; alias $OUT/jwks.json; }
  }
}
EOF

# --- nginx as a plain keep-alive reverse proxy --------------------------------------
cat >"$OUT/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
user root;
worker_processes $WORKERS;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_body_temp_path $OUT/nginx/tmp;
  proxy_temp_path $OUT/nginx/tmp;
  fastcgi_temp_path $OUT/nginx/tmp;
  uwsgi_temp_path $OUT/nginx/tmp;
  scgi_temp_path $OUT/nginx/tmp;
  upstream app {
    server 127.0.0.1:$P_UP;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$P_NGINX backlog=4096;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
EOF

# --- claimsmith ----------------------------------------------------------------------
cat >"$OUT/cs/claimsmith.toml" <<EOF
[listen]
addr = "127.0.0.1:$P_CS"

[admin]
addr = "127.0.0.1:$P_CS_ADMIN"

[forward_auth]
addr = "127.0.0.1:$P_CS_FA"

[[issuer]]
issuer = "https://bench-issuer.test/"
audiences = ["bench-client"]
jwks_uri = "http://127.0.0.1:$P_JWKS/jwks.json"
algorithms = ["RS256"]
metadata = "local"

$(if [[ $SHARED == 1 ]]; then cat <<EOS
[metadata.local]
kind = "http"
user_url = "http://127.0.0.1:$P_UP/meta/users/{user_id}"
client_url = "http://127.0.0.1:$P_UP/meta/clients/{client_id}"
max_requests_per_second = 5000

[shared]
url_file = "$OUT/cs/redis-url"
key_files = ["$OUT/cs/shared.key"]
EOS
else cat <<EOS
[metadata.local]
kind = "file"
path = "$OUT/metadata.json"
EOS
fi)

[cache]
ttl = "5m"
max_stale = "1h"
max_entries = 100000

[token]
issuer = "https://claimsmith.bench/"
ttl = "5m"
algorithm = "EdDSA"
key_files = ["$OUT/cs/signing.pem"]
header = "authorization"
copy_claims = ["email", "email_verified", "name"]

[[route]]
path_prefix = "/api/"
upstream = "http://127.0.0.1:$P_UP"
audience = "bench-api"

[[route.require]]
name = "paying plan"
source = "app_metadata"
pointer = "/plan"
op = "in"
value = ["pro", "enterprise"]

[[route.deny]]
name = "blocked"
source = "app_metadata"
pointer = "/blocked"
op = "eq"
value = true

[[route]]
path_prefix = "/off/"
upstream = "http://127.0.0.1:$P_UP"
auth = "off"
EOF

mkdir -p "$OUT/up/tmp" "$OUT/nginx/tmp"
log "starting upstream nginx (CPU $LOAD_CPUS), proxy nginx and claimsmith (CPU $PROXY_CPUS, $WORKERS worker(s) each)"
taskset -c "$LOAD_CPUS" nginx -p "$OUT/up" -e "$OUT/up/error.log" -c "$OUT/up/nginx.conf" &
PIDS+=($!)
UP_PID=$!
taskset -c "$PROXY_CPUS" nginx -p "$OUT/nginx" -e "$OUT/nginx/error.log" -c "$OUT/nginx/nginx.conf" &
PIDS+=($!)
NGX_PID=$!
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$P_JWKS/jwks.json" 2>/dev/null && break; sleep 0.05; done
if [[ $SHARED == 1 ]]; then
  mkdir -p "$OUT/redis"
  taskset -c "$LOAD_CPUS" redis-server --port "$P_REDIS" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$OUT/redis" --logfile "$OUT/redis/redis.log" &
  PIDS+=($!)
  echo "redis://127.0.0.1:$P_REDIS" >"$OUT/cs/redis-url"
  "$BIN" keygen --shared --out "$OUT/cs/shared.key" >/dev/null 2>&1
fi
TOKIO_WORKER_THREADS=$WORKERS RUST_LOG=warn taskset -c "$PROXY_CPUS" "$BIN" run --config "$OUT/cs/claimsmith.toml" \
  2>"$OUT/cs/claimsmith.log" &
PIDS+=($!)
CS_PID=$!
for _ in $(seq 200); do
  curl -fsS -o /dev/null "http://127.0.0.1:$P_CS_ADMIN/readyz" 2>/dev/null && break
  sleep 0.05
done
curl -fsS -o /dev/null "http://127.0.0.1:$P_CS_ADMIN/readyz" || { log "claimsmith is not ready"; cat "$OUT/cs/claimsmith.log"; exit 1; }
for p in $P_UP $P_NGINX; do curl -fsS -o /dev/null "http://127.0.0.1:$p/api/x" || { log "port $p does not answer"; exit 1; }; done
TOKEN1=$(head -1 "$OUT/tokens.txt")
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN1" "http://127.0.0.1:$P_CS/api/x")
[[ $code == 200 ]] || { log "claimsmith answered $code to a valid token"; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN1" -H "X-Original-Method: GET" \
  -H "X-Original-URI: /api/orders" "http://127.0.0.1:$P_CS_FA/check")
[[ $code == 200 ]] || { log "the forward-auth listener answered $code to a valid token"; exit 1; }

# --- load ----------------------------------------------------------------------------
export TOKENS_FILE=$OUT/tokens.txt
LUA=$ROOT/benches/rotate_tokens.lua
declare -A URL=(
  [upstream]="http://127.0.0.1:$P_UP/api/orders"
  [nginx]="http://127.0.0.1:$P_NGINX/api/orders"
  [claimsmith]="http://127.0.0.1:$P_CS/api/orders"
  [cs-auth-off]="http://127.0.0.1:$P_CS/off/orders"
  [cs-forward-auth]="http://127.0.0.1:$P_CS_FA/check"
)
TARGETS=(upstream nginx claimsmith cs-auth-off cs-forward-auth)
run_wrk() { # target seconds
  local url=${URL[$1]} path check=()
  path=/${url#http://*/}
  # A forward-auth check describes the request it is about, as nginx's auth_request does.
  [[ $1 == cs-forward-auth ]] && check=(GET /api/orders)
  taskset -c "$LOAD_CPUS" wrk -t1 -c"$CONNS" -d"${2}s" --timeout 5s -s "$LUA" "$url" -- "$path" "${check[@]}"
}
# CPU time of the server under test (utime + stime, clock ticks), to show where the
# difference goes: user space (our code, hyper, tokio) or kernel (sockets).
server_pids() {
  case $1 in
    upstream) pgrep -P "$UP_PID" ;;
    nginx) pgrep -P "$NGX_PID" ;;
    *) echo "$CS_PID" ;;
  esac
}
cpu_ticks() {
  local u=0 s=0 a b p
  for p in "$@"; do
    read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat")
    u=$((u + a)); s=$((s + b))
  done
  echo "$u $s"
}
CLK_TCK=$(getconf CLK_TCK)
log "warming up every target (${WARMUP}s each): fills claimsmith's token, metadata and mint caches"
for t in "${TARGETS[@]}"; do run_wrk "$t" "$WARMUP" >/dev/null; done
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" >"$OUT/machine.txt"
redis_commands() { redis-cli -p "$P_REDIS" INFO stats | tr -d '\r' | awk -F: '$1 == "total_commands_processed" { print $2 }'; }
[[ $SHARED == 1 ]] && REDIS_CMDS0=$(redis_commands)
: >"$OUT/results.jsonl"
for r in $(seq "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    run_wrk "$t" "$WARMUP" >/dev/null
    pids=$(server_pids "$t")
    read -r u0 s0 < <(cpu_ticks $pids)
    perf_pid=
    if [[ $PERF == 1 && $r == 1 && $t == c* ]]; then
      perf record -q -e cpu-clock -F 4000 -g -p "$CS_PID" -o "$OUT/perf-$t.data" -- sleep "$DURATION" 2>/dev/null &
      perf_pid=$!
    fi
    line=$(run_wrk "$t" "$DURATION" | grep '^RESULT ' | sed 's/^RESULT //')
    if [[ -n $perf_pid ]]; then
      wait "$perf_pid" || true
      perf report -i "$OUT/perf-$t.data" --no-children --sort symbol --percent-limit 0.4 --stdio 2>/dev/null \
        | grep -v '^$' >"$OUT/perf-$t.txt" || true
    fi
    read -r u1 s1 < <(cpu_ticks $pids)
    echo "{\"target\": \"$t\", \"round\": $r, \"cpu\": {\"user_s\": $(((u1 - u0) * 1000 / CLK_TCK)).0e-3, \"sys_s\": $(((s1 - s0) * 1000 / CLK_TCK)).0e-3}, \"result\": $line}" >>"$OUT/results.jsonl"
    log "round $r $t: $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("%.0f req/s, p50 %.3f ms, p99 %.3f ms, non-2xx %d" % (d["rps"], d["pct"]["50"], d["pct"]["99"], d["non2xx"]))' "$line")"
  done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
echo "claimsmith VmRSS after the run: $(grep VmRSS /proc/$CS_PID/status | awk '{print $2, $3}')" >>"$OUT/machine.txt"
curl -fsS "http://127.0.0.1:$P_CS_ADMIN/metrics" >"$OUT/cs/metrics.txt" || true

# --- table and chart -------------------------------------------------------------------
python3 - "$OUT" <<'PY'
import json, sys, statistics
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/results.jsonl")]
order = ["upstream", "nginx", "claimsmith", "cs-auth-off", "cs-forward-auth"]
label = {"upstream": "upstream direct", "nginx": "nginx proxy_pass (keepalive)",
         "claimsmith": "claimsmith, token verified + metadata hit + 2 rules", "cs-auth-off": 'claimsmith, auth = "off"',
         "cs-forward-auth": "claimsmith forward-auth check (same work, nothing forwarded)"}
best = {}
for r in rows:
    r["result"]["cpu"] = r["cpu"]
for t in order:
    rs = sorted((r["result"] for r in rows if r["target"] == t), key=lambda d: d["rps"])
    best[t] = rs[(len(rs) - 1) // 2]  # median round (lower median for even counts)
    best[t]["all_rps"] = [round(r["rps"]) for r in rs]
n = best["nginx"]
lines = ["| target | req/s | p50 ms | p99 ms | p99.9 ms | req/s vs nginx | p99 − nginx p99 | server CPU µs/req (user + sys) | non-2xx | rounds (req/s) |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
for t in order:
    d = best[t]
    lines.append(f"| {label[t]} | {d['rps']:.0f} | {d['pct']['50']:.3f} | {d['pct']['99']:.3f} | {d['pct']['99.9']:.3f} | "
                 f"{d['rps'] / n['rps']:.2f} | {d['pct']['99'] - n['pct']['99']:+.3f} ms | "
                 f"{1e6 * d['cpu']['user_s'] / d['requests']:.1f} + {1e6 * d['cpu']['sys_s'] / d['requests']:.1f} | "
                 f"{d['non2xx'] + d['socket_errors']} | "
                 f"{', '.join(map(str, d['all_rps']))} |")
table = "\n".join(lines)
open(f"{out}/table.md", "w").write(table + "\n")
print(table)
c = best["claimsmith"]
ok = c["rps"] >= 0.9 * n["rps"] and c["pct"]["99"] - n["pct"]["99"] <= 0.5
print(f"\ngoal (claimsmith >= 90% of nginx req/s, p99 <= nginx p99 + 0.5 ms): {'MET' if ok else 'NOT MET'} "
      f"({c['rps'] / n['rps']:.0%}, {c['pct']['99'] - n['pct']['99']:+.3f} ms)")
# Data for the chart: percentile -> latency, one file per target.
for t in order:
    with open(f"{out}/curve-{t}.dat", "w") as f:
        for p, ms in best[t]["curve"]:
            f.write(f"{100.0 / (100.0 - p) if p < 100 else 1e5:.6f} {ms:.4f} {p}\n")
with open(f"{out}/rps.dat", "w") as f:
    for i, t in enumerate(order):
        f.write(f"{i} \"{label[t]}\" {best[t]['rps']:.0f}\n")
PY

gnuplot <<EOF
set terminal pngcairo size 1100,520 font "DejaVu Sans,10"
set output "$OUT/latency.png"
set multiplot layout 1,2 title "claimsmith vs nginx, 127.0.0.1, $CONNS connections, $USERS users, $WORKERS worker on CPU $PROXY_CPUS (median of $ROUNDS rounds)"
set title "Latency by percentile"
set logscale x
set xtics ("50%%" 2, "90%%" 10, "99%%" 100, "99.9%%" 1000, "99.99%%" 10000)
set xlabel "percentile"
set ylabel "latency (ms)"
set grid
set key top left
plot "$OUT/curve-upstream.dat" using 1:2 with lines lw 2 title "upstream direct", \
     "$OUT/curve-nginx.dat" using 1:2 with lines lw 2 title "nginx proxy", \
     "$OUT/curve-claimsmith.dat" using 1:2 with lines lw 2 title "claimsmith (verified, cache hit)", \
     "$OUT/curve-cs-auth-off.dat" using 1:2 with lines lw 2 dt 2 title "claimsmith auth=off", \
     "$OUT/curve-cs-forward-auth.dat" using 1:2 with lines lw 2 dt 3 title "claimsmith forward-auth check"
unset logscale x
set title "Throughput"
set xtics ("upstream" 0, "nginx" 1, "claimsmith" 2, "cs auth=off" 3, "cs check" 4)
set xlabel ""
set ylabel "requests per second"
set yrange [0:*]
set style fill solid 0.6
set boxwidth 0.6
unset key
plot "$OUT/rps.dat" using 1:3 with boxes lc rgb "#4477aa", "" using 1:3:(sprintf("%d", \$3)) with labels offset 0,0.8
unset multiplot
EOF
if [[ $SHARED == 1 ]]; then
  # Everything was cached in-process by the warm-up: the measured rounds must not
  # have sent Redis a command (the INFO calls themselves count one each).
  echo "[shared]: Redis commands during the measured rounds: $(( $(redis_commands) - REDIS_CMDS0 - 1 ))" >>"$OUT/machine.txt"
fi
cat "$OUT/machine.txt"
log "results in $OUT (table.md, latency.png, results.jsonl)"
