#!/usr/bin/env bash
# Side-by-side load tests on loopback: claimsmith against nginx as a plain keep-alive
# reverse proxy, in front of the same upstream, with the same ID tokens, in one run.
#
#   benches/load.sh                       # every set below, defaults; prints the tables
#   ROWS="closed tls" benches/load.sh     # only these sets (any of the seven, any order;
#                                         # they always run in the order listed below)
#   DURATION=15 ROUNDS=3 benches/load.sh
#   SHARED=1 benches/load.sh              # closed/fixed: claimsmith with [shared] (a
#                                         # redis-server of its own) and an http metadata
#                                         # source, so its entries are in Redis too: shows
#                                         # that an in-process hit never touches Redis
#                                         # (docs/scaling.md)
#   ROWS=tls DURATION=3 WARMUP=1 ROUNDS=1 benches/load.sh   # a quick check of one set
#
# Every request carries the RS256 ID token of one of USERS distinct users, rotating
# (benches/rotate_tokens.lua for wrk, examples/bench_client.rs for fixed-rate load),
# except in `h2`, where h2load sends one user's token (it takes fixed headers only).
# claimsmith's /api/ route verifies it (token cache), reads the user's and the client's
# metadata (cache hit), checks two authorization rules (a require and a deny, as a real
# deployment would have) and forwards with a minted internal token (reused).
#
# Placement "pinned" (closed, fixed, tls, log, h2, burst): the proxy under test runs
# alone on CPU 0 (PROXY_CPUS) with ONE worker (nginx worker_processes 1; claimsmith
# TOKIO_WORKER_THREADS=1); the load client (1 thread, CONNS=64 connections) and the
# upstream nginx (1 worker, `return 200`) share CPU 1 (LOAD_CPUS). Access logs are off on
# both proxies (nginx access_log off; claimsmith RUST_LOG=warn) except in `log`.
#
# The sets (ROWS; default all seven):
#   closed    closed-loop maximum throughput and its latency, wrk -t1 -c64, pinned.
#             Targets: upstream direct; nginx; claimsmith (/api/, verified + metadata
#             hit + 2 rules); cs-auth-off (/off/, auth = "off": header hygiene and
#             forwarding only); cs-forward-auth (the forward-auth listener answering
#             X-Original-Method/-URI for /api/orders: the same checks, nothing
#             forwarded, docs/forward-auth.md). Also writes latency.png.
#   fixed     latency at a fixed rate, free of coordinated omission: bench_client fixed
#             (64 keep-alive connections, each on its own schedule; a late answer
#             delays the next send, and that request's latency counts from when it
#             was meant to go, as wrk2 / oha --latency-correction do) at FIXED_SHARE
#             (60 %) of nginx's closed-loop maximum from this run's `closed` (measured
#             briefly first when `closed` is not selected); the same rate for both.
#             p50 / p99 / p99.9 of each. Pinned.
#   unpinned  closed loop with no taskset at all: nginx worker_processes 2 against
#             claimsmith's default (TOKIO_WORKER_THREADS unset: a worker thread per CPU
#             it may use, each with a runtime and listening socket of its own;
#             UNPINNED_CS_THREADS sets another count), wrk -t2 -c64 and the upstream
#             all sharing both cores, as a sidecar shares its pod's CPUs.
#   tls       closed loop over HTTPS, keep-alive: nginx `listen ... ssl` and claimsmith
#             listen.tls_cert_file/tls_key_file with the same self-signed ECDSA P-256
#             certificate; nginx ssl_protocols TLSv1.3; wrk (OpenSSL) negotiates TLS 1.3
#             with both (checked with openssl s_client: tls/handshake.txt). Pinned.
#   log       closed loop with access logs on: nginx access_log to a file (combined
#             format, unbuffered as nginx's default is) and claimsmith's JSON access log
#             (--log-format json, RUST_LOG=warn,claimsmith::access=info, stderr to a
#             file). Reports the bytes and lines logged per request. Pinned.
#   h2        HTTP/2 cleartext with prior knowledge: h2load -c64 -m H2_STREAMS (10) -t1,
#             one user's token; nginx `listen ... http2` (`http2 on;` from 1.25.1) and
#             claimsmith's own listener (it takes h2c on the same port). Pinned.
#   burst     claimsmith against itself (nginx has no equivalent): an auth0 metadata
#             source against examples/bench_auth0.rs (the tests' Auth0 Management API
#             mock, 20 ms a call, its 50/s rate limit enforced), claimsmith's default
#             budget (max_requests_per_second 5, BURST_BUDGET to change it). The USERS
#             cached users are warmed first (one lookup each, within the budget: about
#             USERS/5 seconds), then send at a fixed rate (BURST_SHARE, 50 %, of this
#             claimsmith's closed-loop maximum, measured here) for WARMUP + DURATION,
#             once without and once with BURST_NEW (10,000) never-seen users arriving
#             at once BURST_AT seconds into the measured window (bench_client burst: one
#             new connection each, all at once), and once with the same crowd sent to a
#             stand-in on CPU 0 instead (nginx, `return 503`: the control, what the
#             crowd costs the cached users when claimsmith does nothing for it).
#             Compares the cached users' p99 without the burst, with it and with the
#             control (goal: within 20 % of without), and where their time went:
#             claimsmith's event-loop turn (from /metrics), when the slow ones were
#             meant to go relative to the crowd's arrival (bench_client --slow-log:
#             burst/slow-*.txt) and, with BURST_LOG=1 (its access log on), its own
#             time and the upstream's. Pinned; the mock tenant
#             and the burst client run on CPU 1 with the rest of the load.
#
# Rounds alternate the targets of a set (nginx, claimsmith, nginx, ...); each table shows
# the median round of each target.
#
# Writes $OUT (default target/load): results.jsonl (one line per measured run, with its
# `set`), table.md (one table per set), latency.png (closed), and the configs and logs
# of the run. Stops every process it started on exit.
set -euo pipefail

ROWS=${ROWS:-closed fixed unpinned tls log h2 burst}
DURATION=${DURATION:-12}     # seconds measured per target and round
WARMUP=${WARMUP:-3}          # seconds of unmeasured load before each measurement
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
USERS=${USERS:-1000}
WORKERS=${WORKERS:-1}        # pinned sets: nginx worker_processes = claimsmith worker threads
PROXY_CPUS=${PROXY_CPUS:-0}  # where the proxy under test runs
LOAD_CPUS=${LOAD_CPUS:-1}    # where the load client and the upstream run
SHARED=${SHARED:-0}          # 1: [shared] on a redis-server, http metadata source (closed, fixed)
PERF=${PERF:-0}              # 1: perf-record claimsmith during its round-1 closed runs (perf-*.txt)
FIXED_SHARE=${FIXED_SHARE:-0.6}        # fixed: the rate, as a share of nginx's closed-loop max
UNPINNED_WORKERS=${UNPINNED_WORKERS:-2} # unpinned: nginx worker_processes
UNPINNED_CS_THREADS=${UNPINNED_CS_THREADS:-} # unpinned: claimsmith's TOKIO_WORKER_THREADS (unset: its default)
H2_STREAMS=${H2_STREAMS:-10}           # h2: concurrent streams per connection (h2load -m)
BURST_NEW=${BURST_NEW:-10000}          # burst: never-seen users arriving at once
BURST_SHARE=${BURST_SHARE:-0.5}        # burst: cached users' rate, as a share of claimsmith's max
BURST_RATE=${BURST_RATE:-}             # burst: or this rate (req/s)
BURST_AT=${BURST_AT:-1}                # burst: seconds into the measured window
BURST_BUDGET=${BURST_BUDGET:-}         # burst: max_requests_per_second (unset: claimsmith's default)
BURST_LATENCY_MS=${BURST_LATENCY_MS:-20} # burst: the tenant's time per call
BURST_LOG=${BURST_LOG:-0}              # burst: 1 = claimsmith's access log on, to split the cached
                                       # users' time into claimsmith's own and the upstream's
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$TARGET/load}
P_UP=18080 P_JWKS=18081 P_NGINX=18090 P_CS=18100 P_CS_ADMIN=18101 P_REDIS=18102 P_CS_FA=18103 P_AUTH0=18104

log() { printf '[load] %s\n' "$*" >&2; }
ALL_SETS=(closed fixed unpinned tls log h2 burst)
declare -A WANT=()
for s in $ROWS; do
  [[ " ${ALL_SETS[*]} " == *" $s "* ]] || { log "unknown set '$s' in ROWS (known: ${ALL_SETS[*]})"; exit 2; }
  WANT[$s]=1
done
want() { [[ -n ${WANT[$1]:-} ]]; }
# Float arithmetic for rates and delays.
calc() { awk "BEGIN { printf \"%.${2:-0}f\", $1 }"; }

# --- tools -----------------------------------------------------------------------
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v taskset >/dev/null || need+=(util-linux)
if want closed; then command -v gnuplot >/dev/null || need+=(gnuplot-nox); fi
if want tls; then command -v openssl >/dev/null || need+=(openssl); fi
if want h2; then command -v h2load >/dev/null || need+=(nghttp2-client); fi
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
# Stops processes this script started, by pid, and forgets them.
stop() {
  local pid keep=() p
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    [[ " $* " == *" $p "* ]] || keep+=("$p")
  done
  PIDS=("${keep[@]}")
}

for p in $P_UP $P_JWKS $P_NGINX $P_CS $P_CS_ADMIN $P_REDIS $P_CS_FA $P_AUTH0; do
  if (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    log "port $p on 127.0.0.1 is already in use; stop whatever holds it"; exit 1
  fi
done

# --- build -----------------------------------------------------------------------
examples=(bench_tokens)
if want fixed || want burst; then examples+=(bench_client); fi
if want burst; then examples+=(bench_auth0); fi
log "building claimsmith and examples/{$(IFS=,; echo "${examples[*]}")} (release)"
(cd "$ROOT" && cargo build --release --quiet --bin claimsmith "${examples[@]/#/--example=}")
BIN=$TARGET/release/claimsmith
CLIENT=$TARGET/release/examples/bench_client
rm -rf "$OUT"; mkdir -p "$OUT"/{up,nginx,cs}
new_users=()
if want burst; then new_users=(--new-users "$BURST_NEW" --new-sets "$ROUNDS"); fi
"$TARGET/release/examples/bench_tokens" "$OUT" --users "$USERS" --alg RS256 \
  --issuer https://bench-issuer.test/ --audience bench-client "${new_users[@]}"
"$BIN" keygen --alg EdDSA --out "$OUT/cs/signing.pem" >/dev/null
TOKEN1=$(head -1 "$OUT/tokens.txt")
: >"$OUT/results.jsonl"
{
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "$(nproc) CPUs, Linux $(uname -r), $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)$(
    command -v h2load >/dev/null && echo ", $(h2load --version | head -1)")"
} >"$OUT/machine.txt"

# --- upstream (+ the issuer's JWKS), shared by every set -----------------------------
# nginx_process DIR WORKERS: the top of an nginx config run by this script (in the
# foreground, its pid file and error log in DIR).
nginx_process() {
  printf 'daemon off;\nmaster_process on;\nuser root;\nworker_processes %s;\npid %s/nginx.pid;\nerror_log %s/error.log warn;\n' \
    "$2" "$1" "$1"
}
# nginx_temp_paths DIR: every temporary-file directory of an nginx config, set to DIR
# (nothing here writes one, but nginx checks them at start).
nginx_temp_paths() {
  local k
  for k in client_body proxy fastcgi uwsgi scgi; do printf '  %s_temp_path %s;\n' "$k" "$1"; done
}
cat >"$OUT/up/nginx.conf" <<EOF
$(nginx_process "$OUT/up" 1)
events { worker_connections 4096; multi_accept on; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
$(nginx_temp_paths "$OUT/up/tmp")
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
mkdir -p "$OUT/up/tmp"
taskset -c "$LOAD_CPUS" nginx -p "$OUT/up" -e "$OUT/up/error.log" -c "$OUT/up/nginx.conf" &
PIDS+=($!)
UP_PID=$!
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$P_JWKS/jwks.json" 2>/dev/null && break; sleep 0.05; done
curl -fsS -o /dev/null "http://127.0.0.1:$P_UP/api/x" || { log "the upstream does not answer"; exit 1; }
# The upstream's master and worker onto `cpus` (the unpinned set frees them).
pin_upstream() {
  local p
  for p in $UP_PID $(pgrep -P "$UP_PID"); do taskset -a -cp "$1" "$p" >/dev/null; done
}

# --- nginx as a plain keep-alive reverse proxy ----------------------------------------
# write_nginx DIR WORKERS LISTEN_FLAGS SERVER_LINES ACCESS_LOG: one proxy nginx's config.
# Every set's nginx is this one, with its listener's flags (ssl, http2), lines for its
# server block and its access_log directive.
write_nginx() {
  local dir=$1 workers=$2 flags=$3 server_lines=$4 access=$5
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
$(nginx_process "$dir" "$workers")
events { worker_connections 4096; multi_accept on; }
http {
  $access
  keepalive_requests 1000000;
  keepalive_timeout 120s;
$(nginx_temp_paths "$dir/tmp")
  upstream app {
    server 127.0.0.1:$P_UP;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$P_NGINX backlog=4096$flags;
    $server_lines
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
}

# --- claimsmith ----------------------------------------------------------------------
# write_cs DIR LISTEN_LINES METADATA_TOML CACHE_TTL: one claimsmith's config. Every set's
# claimsmith is this one, with its [listen] extras (TLS), its metadata source and the
# cache ttl (the burst keeps its warmed users fresh for the whole set).
write_cs() {
  local dir=$1 listen_lines=$2 metadata=$3 ttl=$4
  mkdir -p "$dir"
  [[ -f $dir/signing.pem ]] || cp "$OUT/cs/signing.pem" "$dir/signing.pem"
  cat >"$dir/claimsmith.toml" <<EOF
[listen]
addr = "127.0.0.1:$P_CS"
$listen_lines

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

$metadata

[cache]
ttl = "$ttl"
max_stale = "1h"
max_entries = 100000

[token]
issuer = "https://claimsmith.bench/"
ttl = "5m"
algorithm = "EdDSA"
key_files = ["$dir/signing.pem"]
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
}
FILE_SOURCE="[metadata.local]
kind = \"file\"
path = \"$OUT/metadata.json\""
HTTP_SOURCE="[metadata.local]
kind = \"http\"
user_url = \"http://127.0.0.1:$P_UP/meta/users/{user_id}\"
client_url = \"http://127.0.0.1:$P_UP/meta/clients/{client_id}\"
max_requests_per_second = 5000

[shared]
url_file = \"$OUT/cs/redis-url\"
key_files = [\"$OUT/cs/shared.key\"]"
# The pinned plain pair (closed, fixed; benches/instructions.sh reuses these files).
write_nginx "$OUT/nginx" "$WORKERS" "" "" "access_log off;"
if [[ $SHARED == 1 ]]; then
  write_cs "$OUT/cs" "" "$HTTP_SOURCE" 5m
else
  write_cs "$OUT/cs" "" "$FILE_SOURCE" 5m
fi

# --- starting and checking a set's pair ------------------------------------------------
# The placement of the proxy under test and of the load client: taskset prefixes, empty
# for the unpinned set.
PROXY_PIN=(taskset -c "$PROXY_CPUS")
LOAD_PIN=(taskset -c "$LOAD_CPUS")
CS_ENV=(TOKIO_WORKER_THREADS="$WORKERS" RUST_LOG=warn)
CS_ARGS=()
NGX_PID='' CS_PID=''
start_nginx() { # DIR
  "${PROXY_PIN[@]}" nginx -p "$1" -e "$1/error.log" -c "$1/nginx.conf" &
  NGX_PID=$!
  PIDS+=("$NGX_PID")
}
start_cs() { # DIR: logs to DIR/claimsmith.log
  env "${CS_ENV[@]}" "${PROXY_PIN[@]}" "$BIN" "${CS_ARGS[@]}" run --config "$1/claimsmith.toml" \
    2>"$1/claimsmith.log" &
  CS_PID=$!
  PIDS+=("$CS_PID")
  for _ in $(seq 200); do
    curl -fsS -o /dev/null "http://127.0.0.1:$P_CS_ADMIN/readyz" 2>/dev/null && return 0
    sleep 0.05
  done
  log "claimsmith is not ready"; cat "$1/claimsmith.log" >&2; exit 1
}
# expect CODE CURL_ARGS...: the answer's status must be CODE (tries for up to 5 s while
# a listener comes up).
expect() {
  local want=$1 code=000
  shift
  for _ in $(seq 100); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$@" || true)
    [[ $code == "$want" ]] && return 0
    sleep 0.05
  done
  log "expected $want, got $code from: curl $*"; exit 1
}
stop_pair() {
  stop ${NGX_PID:+"$NGX_PID"} ${CS_PID:+"$CS_PID"}
  NGX_PID='' CS_PID=''
}

# --- measuring -------------------------------------------------------------------------
export TOKENS_FILE=$OUT/tokens.txt
LUA=$ROOT/benches/rotate_tokens.lua
declare -A URL=()
WRK_THREADS=1
run_wrk() { # target seconds
  local url=${URL[$1]} path check=()
  path=/${url#*://*/}
  # A forward-auth check describes the request it is about, as nginx's auth_request does.
  [[ $1 == cs-forward-auth ]] && check=(GET /api/orders)
  "${LOAD_PIN[@]}" wrk -t"$WRK_THREADS" -c"$CONNS" -d"${2}s" --timeout 5s -s "$LUA" "$url" -- "$path" "${check[@]}"
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
# A RESULT object's summary for the progress lines.
brief() {
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("%.0f req/s, p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, non-2xx %d, errors %d" % (d["rps"], d["pct"]["50"], d["pct"]["99"], d["pct"]["99.9"], d["non2xx"], d["socket_errors"]))' "$1"
}
# The median rps of TARGET in SET's closed-loop runs so far (empty when none).
median_rps() {
  python3 - "$OUT/results.jsonl" "$1" "$2" <<'PY'
import json, sys
rs = sorted(r["result"]["rps"] for r in map(json.loads, open(sys.argv[1])) if r["set"] == sys.argv[2] and r["target"] == sys.argv[3])
print(f"{rs[(len(rs) - 1) // 2]:.0f}" if rs else "")
PY
}
# Per-run hooks of closed_rounds: the log set measures what each proxy wrote.
declare -A LOG_FILE_OF=()
# closed_rounds SET TARGET...: wrk against every target, ROUNDS rounds alternating the
# targets, one results.jsonl line per measured run.
closed_rounds() {
  local set=$1 r t line pids u0 s0 u1 s1 perf_pid extra b0 b1 lines
  shift
  log "[$set] warming up every target (${WARMUP}s each): fills claimsmith's token, metadata and mint caches"
  for t in "$@"; do run_wrk "$t" "$WARMUP" >/dev/null; done
  for r in $(seq "$ROUNDS"); do
    for t in "$@"; do
      run_wrk "$t" "$WARMUP" >/dev/null
      pids=$(server_pids "$t")
      # shellcheck disable=SC2086 # one pid per word
      read -r u0 s0 < <(cpu_ticks $pids)
      perf_pid=
      if [[ $set == closed && $PERF == 1 && $r == 1 && $t == c* ]]; then
        perf record -q -e cpu-clock -F 4000 -g -p "$CS_PID" -o "$OUT/perf-$t.data" -- sleep "$DURATION" 2>/dev/null &
        perf_pid=$!
      fi
      b0=0
      [[ -n ${LOG_FILE_OF[$t]:-} ]] && b0=$(stat -c %s "${LOG_FILE_OF[$t]}")
      line=$(run_wrk "$t" "$DURATION" | grep '^RESULT ' | sed 's/^RESULT //')
      if [[ -n $perf_pid ]]; then
        wait "$perf_pid" || true
        perf report -i "$OUT/perf-$t.data" --no-children --sort symbol --percent-limit 0.4 --stdio 2>/dev/null \
          | grep -v '^$' >"$OUT/perf-$t.txt" || true
      fi
      # shellcheck disable=SC2086
      read -r u1 s1 < <(cpu_ticks $pids)
      extra=
      if [[ -n ${LOG_FILE_OF[$t]:-} ]]; then
        b1=$(stat -c %s "${LOG_FILE_OF[$t]}")
        lines=$(tail -c +$((b0 + 1)) "${LOG_FILE_OF[$t]}" | wc -l)
        extra=", \"log\": {\"bytes\": $((b1 - b0)), \"lines\": $lines}"
      fi
      echo "{\"set\": \"$set\", \"target\": \"$t\", \"round\": $r, \"cpu\": {\"user_s\": $(((u1 - u0) * 1000 / CLK_TCK)).0e-3, \"sys_s\": $(((s1 - s0) * 1000 / CLK_TCK)).0e-3}$extra, \"result\": $line}" >>"$OUT/results.jsonl"
      log "[$set] round $r $t: $(brief "$line")"
    done
  done
}

# --- closed and fixed: the pinned plain pair ------------------------------------------
if want closed || want fixed; then
  if [[ $SHARED == 1 ]]; then
    mkdir -p "$OUT/redis"
    taskset -c "$LOAD_CPUS" redis-server --port "$P_REDIS" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$OUT/redis" --logfile "$OUT/redis/redis.log" &
    PIDS+=($!)
    echo "redis://127.0.0.1:$P_REDIS" >"$OUT/cs/redis-url"
    "$BIN" keygen --shared --out "$OUT/cs/shared.key" >/dev/null 2>&1
  fi
  log "starting proxy nginx and claimsmith (CPU $PROXY_CPUS, $WORKERS worker(s) each), upstream on CPU $LOAD_CPUS"
  start_nginx "$OUT/nginx"
  start_cs "$OUT/cs"
  expect 200 "http://127.0.0.1:$P_NGINX/api/x"
  expect 200 -H "Authorization: Bearer $TOKEN1" "http://127.0.0.1:$P_CS/api/x"
  expect 200 -H "Authorization: Bearer $TOKEN1" -H "X-Original-Method: GET" -H "X-Original-URI: /api/orders" \
    "http://127.0.0.1:$P_CS_FA/check"
  URL=(
    [upstream]="http://127.0.0.1:$P_UP/api/orders"
    [nginx]="http://127.0.0.1:$P_NGINX/api/orders"
    [claimsmith]="http://127.0.0.1:$P_CS/api/orders"
    [cs-auth-off]="http://127.0.0.1:$P_CS/off/orders"
    [cs-forward-auth]="http://127.0.0.1:$P_CS_FA/check"
  )
  redis_commands() { redis-cli -p "$P_REDIS" INFO stats | tr -d '\r' | awk -F: '$1 == "total_commands_processed" { print $2 }'; }
  if want closed; then
    [[ $SHARED == 1 ]] && REDIS_CMDS0=$(redis_commands)
    closed_rounds closed upstream nginx claimsmith cs-auth-off cs-forward-auth
    if [[ $SHARED == 1 ]]; then
      # Everything was cached in-process by the warm-up: the measured rounds must not
      # have sent Redis a command (the INFO calls themselves count one each).
      echo "[shared]: Redis commands during the measured rounds: $(($(redis_commands) - REDIS_CMDS0 - 1))" >>"$OUT/machine.txt"
    fi
  fi

  if want fixed; then
    nmax=$(median_rps closed nginx)
    if [[ -z $nmax ]]; then
      log "[fixed] measuring nginx's closed-loop maximum first (${DURATION}s)"
      run_wrk nginx "$WARMUP" >/dev/null
      nmax=$(run_wrk nginx "$DURATION" | grep '^RESULT ' | sed 's/^RESULT //' \
        | python3 -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["rps"])')
    fi
    rate=$(calc "$nmax * $FIXED_SHARE")
    log "[fixed] $rate req/s for both (${FIXED_SHARE} of nginx's closed-loop $nmax req/s), $CONNS connections"
    for r in $(seq "$ROUNDS"); do
      for t in nginx claimsmith; do
        line=$("${LOAD_PIN[@]}" "$CLIENT" fixed --url "${URL[$t]}" --tokens "$TOKENS_FILE" --rate "$rate" \
          --conns "$CONNS" --warmup "$WARMUP" --duration "$DURATION" | grep '^RESULT ' | sed 's/^RESULT //')
        echo "{\"set\": \"fixed\", \"target\": \"$t\", \"round\": $r, \"nginx_max_rps\": $nmax, \"result\": $line}" >>"$OUT/results.jsonl"
        log "[fixed] round $r $t: $(brief "$line")"
      done
    done
  fi
  echo "claimsmith VmRSS after closed/fixed: $(grep VmRSS "/proc/$CS_PID/status" | awk '{print $2, $3}')" >>"$OUT/machine.txt"
  curl -fsS "http://127.0.0.1:$P_CS_ADMIN/metrics" >"$OUT/cs/metrics.txt" || true
  stop_pair
fi

# --- unpinned: both cores shared by everything -------------------------------------------
if want unpinned; then
  dir=$OUT/unpinned
  write_nginx "$dir/nginx" "$UNPINNED_WORKERS" "" "" "access_log off;"
  write_cs "$dir/cs" "" "$FILE_SOURCE" 5m
  script_cpus=$(taskset -cp $$ | sed 's/.*: //')
  PROXY_PIN=() LOAD_PIN=() WRK_THREADS=2
  CS_ENV=(RUST_LOG=warn)
  [[ -n $UNPINNED_CS_THREADS ]] && CS_ENV+=(TOKIO_WORKER_THREADS="$UNPINNED_CS_THREADS")
  pin_upstream "$script_cpus"
  log "[unpinned] nginx $UNPINNED_WORKERS workers, claimsmith's default runtime, wrk -t2 and the upstream: all on CPUs $script_cpus"
  start_nginx "$dir/nginx"
  start_cs "$dir/cs"
  expect 200 "http://127.0.0.1:$P_NGINX/api/x"
  expect 200 -H "Authorization: Bearer $TOKEN1" "http://127.0.0.1:$P_CS/api/x"
  URL=([nginx]="http://127.0.0.1:$P_NGINX/api/orders" [claimsmith]="http://127.0.0.1:$P_CS/api/orders")
  closed_rounds unpinned nginx claimsmith
  echo "unpinned: claimsmith ran $(find "/proc/$CS_PID/task" -mindepth 1 -maxdepth 1 | wc -l) threads; nginx $(pgrep -c -P "$NGX_PID") workers" >>"$OUT/machine.txt"
  stop_pair
  pin_upstream "$LOAD_CPUS"
  PROXY_PIN=(taskset -c "$PROXY_CPUS") LOAD_PIN=(taskset -c "$LOAD_CPUS") WRK_THREADS=1
  CS_ENV=(TOKIO_WORKER_THREADS="$WORKERS" RUST_LOG=warn)
fi

# --- tls: HTTPS, TLS 1.3, one ECDSA P-256 certificate for both -----------------------------
if want tls; then
  dir=$OUT/tls
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
  write_nginx "$dir/nginx" "$WORKERS" " ssl" "ssl_certificate $dir/cert.pem;
    ssl_certificate_key $dir/key.pem;
    ssl_protocols TLSv1.3;" "access_log off;"
  write_cs "$dir/cs" "tls_cert_file = \"$dir/cert.pem\"
tls_key_file = \"$dir/key.pem\"" "$FILE_SOURCE" 5m
  log "[tls] starting nginx (ssl) and claimsmith (tls_cert_file) on CPU $PROXY_CPUS"
  start_nginx "$dir/nginx"
  start_cs "$dir/cs"
  expect 200 -k "https://127.0.0.1:$P_NGINX/api/x"
  expect 200 -k -H "Authorization: Bearer $TOKEN1" "https://127.0.0.1:$P_CS/api/x"
  # What OpenSSL's defaults (which wrk uses) negotiate with each: the protocol and suite.
  for p in $P_NGINX $P_CS; do
    echo "127.0.0.1:$p: $(openssl s_client -connect "127.0.0.1:$p" -brief </dev/null 2>&1 \
      | grep -E 'Protocol version|Ciphersuite|Peer signature type' | sed 's/^ *//' | paste -sd ';')"
    if openssl s_client -connect "127.0.0.1:$p" -tls1_2 </dev/null >/dev/null 2>&1; then
      echo "127.0.0.1:$p: also accepts TLS 1.2"
    else
      echo "127.0.0.1:$p: refuses TLS 1.2"
    fi
  done >"$dir/handshake.txt"
  grep -q 'Protocol version: TLSv1.3' "$dir/handshake.txt" || { log "[tls] not TLS 1.3: $(cat "$dir/handshake.txt")"; exit 1; }
  URL=([nginx]="https://127.0.0.1:$P_NGINX/api/orders" [claimsmith]="https://127.0.0.1:$P_CS/api/orders")
  closed_rounds tls nginx claimsmith
  stop_pair
fi

# --- log: access logs on, to files ---------------------------------------------------------
if want log; then
  dir=$OUT/log
  write_nginx "$dir/nginx" "$WORKERS" "" "" "access_log $dir/nginx/access.log;"
  write_cs "$dir/cs" "" "$FILE_SOURCE" 5m
  CS_ENV=(TOKIO_WORKER_THREADS="$WORKERS" "RUST_LOG=warn,claimsmith::access=info")
  CS_ARGS=(--log-format json)
  log "[log] starting nginx (access_log, combined) and claimsmith (JSON access log) on CPU $PROXY_CPUS"
  start_nginx "$dir/nginx"
  start_cs "$dir/cs"
  expect 200 "http://127.0.0.1:$P_NGINX/api/x"
  expect 200 -H "Authorization: Bearer $TOKEN1" "http://127.0.0.1:$P_CS/api/x"
  # claimsmith writes its log from a thread of its own, within 50 ms (docs/operations.md).
  for _ in $(seq 40); do grep -q '"claimsmith::access"' "$dir/cs/claimsmith.log" && break; sleep 0.05; done
  grep -q '"claimsmith::access"' "$dir/cs/claimsmith.log" || { log "[log] no access-log line in $dir/cs/claimsmith.log"; exit 1; }
  [[ -s $dir/nginx/access.log ]] || { log "[log] nginx wrote no access log"; exit 1; }
  LOG_FILE_OF=([nginx]="$dir/nginx/access.log" [claimsmith]="$dir/cs/claimsmith.log")
  URL=([nginx]="http://127.0.0.1:$P_NGINX/api/orders" [claimsmith]="http://127.0.0.1:$P_CS/api/orders")
  closed_rounds log nginx claimsmith
  {
    echo "log: a line of each (the last written):"
    echo "  nginx:      $(tail -1 "$dir/nginx/access.log")"
    echo "  claimsmith: $(tail -1 "$dir/cs/claimsmith.log")"
  } >>"$OUT/machine.txt"
  LOG_FILE_OF=()
  stop_pair
  CS_ENV=(TOKIO_WORKER_THREADS="$WORKERS" RUST_LOG=warn) CS_ARGS=()
fi

# --- h2: HTTP/2 cleartext, prior knowledge ---------------------------------------------------
if want h2; then
  dir=$OUT/h2
  # nginx 1.25.1 moved http2 from a listen flag to its own directive.
  ngx_version=$(nginx -v 2>&1 | sed 's|.*nginx/||')
  if [[ $ngx_version != 1.25.1 ]] && printf '%s\n1.25.1\n' "$ngx_version" | sort -V -C; then
    write_nginx "$dir/nginx" "$WORKERS" " http2" "" "access_log off;"
  else
    write_nginx "$dir/nginx" "$WORKERS" "" "http2 on;" "access_log off;"
  fi
  write_cs "$dir/cs" "" "$FILE_SOURCE" 5m
  log "[h2] starting nginx (http2, nginx $ngx_version) and claimsmith on CPU $PROXY_CPUS"
  start_nginx "$dir/nginx"
  start_cs "$dir/cs"
  expect 200 --http2-prior-knowledge "http://127.0.0.1:$P_NGINX/api/x"
  expect 200 --http2-prior-knowledge -H "Authorization: Bearer $TOKEN1" "http://127.0.0.1:$P_CS/api/x"
  for p in $P_NGINX $P_CS; do
    v=$(curl -s -o /dev/null -w '%{http_version}' --http2-prior-knowledge -H "Authorization: Bearer $TOKEN1" \
      "http://127.0.0.1:$p/api/x")
    [[ $v == 2 ]] || { log "[h2] 127.0.0.1:$p answered over HTTP/$v"; exit 1; }
  done
  declare -A H2_URL=([nginx]="http://127.0.0.1:$P_NGINX/api/orders" [claimsmith]="http://127.0.0.1:$P_CS/api/orders")
  run_h2load() { # target seconds [log file]
    local logf=()
    [[ -n ${3:-} ]] && logf=(--log-file "$3")
    "${LOAD_PIN[@]}" h2load -c "$CONNS" -m "$H2_STREAMS" -t 1 -D "$2" -H "authorization: Bearer $TOKEN1" \
      "${logf[@]}" "${H2_URL[$1]}"
  }
  log "[h2] warming up both (${WARMUP}s each)"
  for t in nginx claimsmith; do run_h2load "$t" "$WARMUP" >/dev/null; done
  for r in $(seq "$ROUNDS"); do
    for t in nginx claimsmith; do
      run_h2load "$t" "$WARMUP" >/dev/null
      pids=$(server_pids "$t")
      # shellcheck disable=SC2086
      read -r u0 s0 < <(cpu_ticks $pids)
      run_h2load "$t" "$DURATION" "$dir/h2load-$t-$r.log" >"$dir/h2load-$t-$r.out"
      # shellcheck disable=SC2086
      read -r u1 s1 < <(cpu_ticks $pids)
      # h2load prints no percentiles: they come from its per-request log (start µs,
      # status, µs to the end of the response).
      line=$(python3 - "$dir/h2load-$t-$r.out" "$dir/h2load-$t-$r.log" "$DURATION" <<'PY'
import json, math, re, sys
out, logf, secs = open(sys.argv[1]).read(), sys.argv[2], float(sys.argv[3])
lat, non2xx = [], 0
for l in open(logf):
    f = l.split()
    if len(f) >= 3:
        lat.append(int(f[2]) / 1000.0)
        non2xx += not f[1].startswith("2")
lat.sort()
n = len(lat)
pct = lambda p: lat[max(1, math.ceil(p / 100 * n)) - 1] if n else 0.0
req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
rps = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
print(json.dumps({"requests": n, "seconds": secs, "rps": float(rps.group(1)) if rps else n / secs, "non2xx": non2xx,
                  "socket_errors": int(req.group(6)) + int(req.group(7)) if req else 0,
                  "mean_ms": sum(lat) / n if n else 0.0, "max_ms": lat[-1] if n else 0.0,
                  "pct": {str(p): round(pct(p), 4) for p in (50, 75, 90, 95, 99, 99.5, 99.9, 99.99)}}))
PY
      )
      rm -f "$dir/h2load-$t-$r.log"
      echo "{\"set\": \"h2\", \"target\": \"$t\", \"round\": $r, \"cpu\": {\"user_s\": $(((u1 - u0) * 1000 / CLK_TCK)).0e-3, \"sys_s\": $(((s1 - s0) * 1000 / CLK_TCK)).0e-3}, \"result\": $line}" >>"$OUT/results.jsonl"
      log "[h2] round $r $t: $(brief "$line")"
    done
  done
  stop_pair
fi

# --- burst: 10,000 never-seen users while 1,000 cached users keep sending ------------------
if want burst; then
  dir=$OUT/burst
  mkdir -p "$dir"
  "${LOAD_PIN[@]}" "$TARGET/release/examples/bench_auth0" --port "$P_AUTH0" --users "$((USERS + BURST_NEW * ROUNDS))" \
    --client bench-client --latency-ms "$BURST_LATENCY_MS" --stats-file "$dir/auth0-stats.json" 2>"$dir/auth0.log" &
  AUTH0_PID=$!
  PIDS+=("$AUTH0_PID")
  # The mock's client credentials (tests/support/auth0.rs).
  echo "m2m-secret-value-0123456789" >"$dir/auth0-secret"
  write_cs "$dir/cs" "" "[metadata.local]
kind = \"auth0\"
domain = \"tenant.test\"
base_url = \"http://127.0.0.1:$P_AUTH0\"
client_id = \"m2m-claimsmith\"
client_secret_file = \"$dir/auth0-secret\"
${BURST_BUDGET:+max_requests_per_second = $BURST_BUDGET}" 1h
  for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$P_AUTH0") 2>/dev/null && break; sleep 0.05; done
  log "[burst] starting claimsmith (auth0 source, budget ${BURST_BUDGET:-default}) on CPU $PROXY_CPUS"
  if [[ $BURST_LOG == 1 ]]; then
    CS_ENV=(TOKIO_WORKER_THREADS="$WORKERS" "RUST_LOG=warn,claimsmith::access=info") CS_ARGS=(--log-format json)
  fi
  start_cs "$dir/cs"
  CS_ENV=(TOKIO_WORKER_THREADS="$WORKERS" RUST_LOG=warn) CS_ARGS=()
  budget=${BURST_BUDGET:-5}
  log "[burst] warming $USERS cached users: one tenant read each at $budget/s, about $((USERS / budget)) s"
  line=$("${LOAD_PIN[@]}" "$CLIENT" warm --url "http://127.0.0.1:$P_CS/api/orders" --tokens "$TOKENS_FILE" \
    --conns "$budget" --max-secs "$((USERS * 3 / budget + 60))" | grep '^RESULT ' | sed 's/^RESULT //')
  log "[burst] warm: $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("%d users in %.0f s, %d tries" % (d["requests"], d["seconds"], d["tries"]))' "$line")"
  URL=([claimsmith]="http://127.0.0.1:$P_CS/api/orders")
  if [[ -n $BURST_RATE ]]; then
    rate=$BURST_RATE cmax=0
  else
    run_wrk claimsmith "$WARMUP" >/dev/null
    cmax=$(run_wrk claimsmith "$DURATION" | grep '^RESULT ' | sed 's/^RESULT //' \
      | python3 -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["rps"])')
    rate=$(calc "$cmax * $BURST_SHARE")
  fi
  log "[burst] cached users at $rate req/s (claimsmith's closed-loop max here: $cmax req/s)"
  # The control: the same crowd sent to a stand-in that refuses everyone at once (nginx,
  # `return 503`, one accept per turn as claimsmith, the same listen backlog) on CPU 0
  # beside claimsmith, while the cached users go through claimsmith as before. On two
  # cores the crowd's own client and its TCP handshakes share CPU 1 with the cached
  # users' client and the upstream; the control measures what that alone does to the
  # cached users' p99, so the difference is what claimsmith's handling of the crowd adds.
  mkdir -p "$dir/standin/tmp"
  cat >"$dir/standin/nginx.conf" <<EOF
$(nginx_process "$dir/standin" 1)
worker_rlimit_nofile 65536;
events { worker_connections 30000; multi_accept off; }
http {
  access_log off;
$(nginx_temp_paths "$dir/standin/tmp")
  server {
    listen 127.0.0.1:$P_NGINX backlog=4096;
    location / { return 503; }
  }
}
EOF
  start_nginx "$dir/standin"
  expect 503 "http://127.0.0.1:$P_NGINX/api/orders"
  # Connections the kernel dropped because a listen queue was full (this network
  # namespace's count, so anything else running here adds to it).
  listen_overflows() {
    awk '/^TcpExt:/ { if (!h) { split($0, n); h = 1 } else { split($0, v); for (i in n) if (n[i] == "ListenOverflows") print v[i] } }' /proc/net/netstat
  }
  # claimsmith's event-loop turn histogram (docs/operations.md, "Metrics"): the
  # cumulative count per bucket, one "le count" pair per line.
  turn_buckets() {
    curl -fsS "http://127.0.0.1:$P_CS_ADMIN/metrics" \
      | sed -n 's/^claimsmith_event_loop_turn_seconds_bucket{le="\([^"]*\)"} \([0-9]*\)$/\1 \2/p'
  }
  # turn_quantiles BEFORE AFTER: the turns sampled between two snapshots, as JSON:
  # their count and the bucket bound (ms) holding the 50th, 99th and last sample.
  turn_quantiles() {
    python3 - "$1" "$2" <<'PY'
import json, sys
parse = lambda t: [(b, int(n)) for b, n in (l.split() for l in t.splitlines() if l.strip())]
a, b = parse(sys.argv[1]), parse(sys.argv[2])
d = [(bound, nb - na) for (bound, nb), (_, na) in zip(b, a)]
total = d[-1][1] if d else 0
def q(p):
    for bound, n in d:
        if total and n >= p * total:
            return None if bound == "+Inf" else float(bound) * 1000
    return None
print(json.dumps({"samples": total, "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0)}))
PY
  }
  # server_split LOG OFFSET: from the access-log lines written after OFFSET, the
  # cached users' requests (status 200, cache hit) split into claimsmith's own time
  # (duration - upstream) and the upstream's, as JSON percentiles.
  server_split() {
    python3 - "$1" "$2" <<'PY'
import json, sys
own, up = [], []
with open(sys.argv[1], "rb") as f:
    f.seek(int(sys.argv[2]))
    for raw in f:
        if not raw.startswith(b"{"):
            continue
        d = json.loads(raw)
        if d.get("target") == "claimsmith::access" and d.get("status") == 200 and d.get("cache") == "hit":
            u = d.get("upstream_ms") or 0.0
            own.append(d["duration_ms"] - u)
            up.append(u)
pct = lambda v, p: sorted(v)[min(len(v) - 1, int(len(v) * p))] if v else None
print(json.dumps({"requests": len(own), "own_p50_ms": pct(own, .5), "own_p99_ms": pct(own, .99), "own_p999_ms": pct(own, .999),
                  "upstream_p50_ms": pct(up, .5), "upstream_p99_ms": pct(up, .99), "upstream_p999_ms": pct(up, .999)}))
PY
  }
  # slow_when FILE: when the cached users' slow requests (over 5 ms) were meant to go,
  # from bench_client's --slow-log, in windows from the crowd's arrival (BURST_AT s
  # into the recorded window; the same instant in a run without a crowd): before it,
  # its first half second, the half second either side of a second after it (when
  # connections the listen queue dropped are retried: the kernel resends the SYN-ACK
  # after 1 s), and the rest. As JSON: per window, how many and the longest (ms).
  slow_when() {
    python3 - "$1" "$BURST_AT" <<'PY'
import json, sys
at = float(sys.argv[2]) * 1000
wins = [("before", None, 0), ("0-0.5 s", 0, 500), ("0.5-1.5 s", 500, 1500), ("later", 1500, None)]
out = {name: {"n": 0, "max_ms": 0.0} for name, _, _ in wins}
for line in open(sys.argv[1]):
    if line.startswith("#") or not line.strip():
        continue
    t, lat = (float(x) for x in line.split()[:2])
    if lat <= 5:
        continue
    for name, lo, hi in wins:
        if (lo is None or t - at >= lo) and (hi is None or t - at < hi):
            out[name]["n"] += 1
            out[name]["max_ms"] = max(out[name]["max_ms"], round(lat, 1))
print(json.dumps(out))
PY
  }
  # The burst starts BURST_AT s into the measured window (bench_client fixed starts its
  # schedule 0.2 s after it starts, then WARMUP s unrecorded).
  at=$(calc "0.2 + $WARMUP + $BURST_AT" 3)
  for r in $(seq "$ROUNDS"); do
    for t in cached cached+burst cached+burst-elsewhere; do
      "${LOAD_PIN[@]}" "$CLIENT" fixed --url "${URL[claimsmith]}" --tokens "$TOKENS_FILE" --rate "$rate" \
        --conns "$CONNS" --warmup "$WARMUP" --duration "$DURATION" --slow-log "$dir/slow-$t-$r.txt" \
        >"$dir/fixed-$t-$r.out" &
      fixed_pid=$!
      read -r u0 s0 < <(cpu_ticks "$CS_PID")
      ovf0=$(listen_overflows)
      turns0=$(turn_buckets)
      log0=$(stat -c %s "$dir/cs/claimsmith.log")
      burst=null
      if [[ $t == cached+burst* ]]; then
        sleep "$at"
        crowd_url=${URL[claimsmith]}
        [[ $t == cached+burst-elsewhere ]] && crowd_url="http://127.0.0.1:$P_NGINX/api/orders"
        burst=$("${LOAD_PIN[@]}" "$CLIENT" burst --url "$crowd_url" --tokens "$OUT/tokens-new-$r.txt" \
          --conns "$BURST_NEW" | grep '^RESULT ' | sed 's/^RESULT //')
      fi
      wait "$fixed_pid"
      # claimsmith's CPU from the start of the cached users' run to the end of both.
      read -r u1 s1 < <(cpu_ticks "$CS_PID")
      line=$(grep '^RESULT ' "$dir/fixed-$t-$r.out" | sed 's/^RESULT //')
      tenant=$(cat "$dir/auth0-stats.json" 2>/dev/null || echo null)
      turns=$(turn_quantiles "$turns0" "$(turn_buckets)")
      server=null
      [[ $BURST_LOG == 1 ]] && server=$(server_split "$dir/cs/claimsmith.log" "$log0")
      when=$(slow_when "$dir/slow-$t-$r.txt")
      echo "{\"set\": \"burst\", \"target\": \"$t\", \"round\": $r, \"rate\": $rate, \"cs_max_rps\": $cmax, \"cs_cpu_s\": $(((u1 - u0 + s1 - s0) * 1000 / CLK_TCK)).0e-3, \"listen_overflows\": $(($(listen_overflows) - ovf0)), \"turns\": $turns, \"server\": $server, \"slow_when\": $when, \"burst\": $burst, \"tenant\": $tenant, \"result\": $line}" >>"$OUT/results.jsonl"
      log "[burst] round $r $t: $(brief "$line")"
      if [[ $burst != null ]]; then
        log "[burst] round $r the $BURST_NEW new users: $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("answered %s in %.1f s, p50 %.0f ms, p99 %.0f ms, errors %d" % (", ".join("%d x %s" % (n, s) for s, n in d["statuses"].items()), d["seconds"], d["pct"]["50"], d["pct"]["99"], d["socket_errors"]))' "$burst")"
        # Let the new users' lookups end (they wait at most the source's 5 s timeout)
        # before the next measurement.
        sleep 6
      fi
    done
  done
  echo "burst: the tenant at the end: $(cat "$dir/auth0-stats.json")" >>"$OUT/machine.txt"
  stop "$AUTH0_PID"
  stop_pair
fi
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"

# --- tables and chart --------------------------------------------------------------------
python3 - "$OUT" "$ROUNDS" "$CONNS" "$USERS" "$H2_STREAMS" "$BURST_NEW" "$WARMUP" <<'PY'
import json, sys
out, rounds, conns, users, streams, burst_new, warmup = sys.argv[1], *map(int, sys.argv[2:7]), float(sys.argv[7])
rows = [json.loads(l) for l in open(f"{out}/results.jsonl")]
for r in rows:
    if "cpu" in r:
        r["result"]["cpu"] = r["cpu"]
    for k in ("log", "burst", "tenant", "rate", "nginx_max_rps", "cs_cpu_s", "listen_overflows", "turns", "server", "slow_when"):
        if k in r:
            r["result"][k] = r[k]

def median(set_, target, key):
    rs = sorted((r["result"] for r in rows if r["set"] == set_ and r["target"] == target), key=key)
    if not rs:
        return None
    m = rs[(len(rs) - 1) // 2]  # median round (lower median for even counts)
    m["all"] = rs
    return m

rps = lambda d: d["rps"]
p99 = lambda d: d["pct"]["99"]
cpu = lambda d: (f"{1e6 * d['cpu']['user_s'] / d['requests']:.1f} + {1e6 * d['cpu']['sys_s'] / d['requests']:.1f}"
                 if d.get("requests") else "")
errs = lambda d: d["non2xx"] + d["socket_errors"]
# bench_client's own CPU while it sent (warm-up included), as a share of one core: the
# load core also runs the upstream, so a client near a full core limits the rate.
client_cpu = lambda d: f"{d['client_cpu_s'] / (warmup + d['seconds']):.0%}"
# bench_client's errors with their kinds ("never sent": still owed 10 s after the end,
# the server never caught up; "timed out": no answer within 5 s).
errs_kinds = lambda d: f"{errs(d)}" + (" (" + ", ".join(f"{k}: {n}" for k, n in d["error_kinds"].items()) + ")"
                                       if d.get("error_kinds") else "")
out_md, chart = [], {}

def closed_table(set_, order, label, title, note=""):
    best = {t: median(set_, t, rps) for t in order}
    if not best.get("nginx"):
        return best
    n = best["nginx"]
    log_cols = set_ == "log"
    head = "| target | req/s | p50 ms | p99 ms | p99.9 ms | req/s vs nginx | p99 − nginx p99 | server CPU µs/req (user + sys) | non-2xx |"
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    if log_cols:
        head += " log bytes/req | log lines/req |"
        sep += "---:|---:|"
    lines = [f"### {set_}: {title}", "", *( [note, ""] if note else [] ), head + " rounds (req/s) |", sep + "---|"]
    for t in order:
        d = best[t]
        if d is None:
            continue
        row = (f"| {label[t]} | {d['rps']:.0f} | {d['pct']['50']:.3f} | {d['pct']['99']:.3f} | {d['pct']['99.9']:.3f} | "
               f"{d['rps'] / n['rps']:.2f} | {d['pct']['99'] - n['pct']['99']:+.3f} ms | {cpu(d)} | {errs(d)} |")
        if log_cols:
            row += f" {d['log']['bytes'] / d['requests']:.0f} | {d['log']['lines'] / d['requests']:.2f} |"
        lines.append(row + f" {', '.join(str(round(x['rps'])) for x in d['all'])} |")
    out_md.append("\n".join(lines))
    return best

label = {"upstream": "upstream direct", "nginx": "nginx proxy_pass (keepalive)",
         "claimsmith": "claimsmith, token verified + metadata hit + 2 rules", "cs-auth-off": 'claimsmith, auth = "off"',
         "cs-forward-auth": "claimsmith forward-auth check (same work, nothing forwarded)"}
closed_order = ["upstream", "nginx", "claimsmith", "cs-auth-off", "cs-forward-auth"]
best = closed_table("closed", closed_order, label,
                    f"closed loop, wrk -t1 -c{conns}, {users} users rotating, proxy alone on CPU 0 with one worker")
goal = None
if best.get("nginx") and best.get("claimsmith"):
    n, c = best["nginx"], best["claimsmith"]
    d99, d999 = c["pct"]["99"] - n["pct"]["99"], c["pct"]["99.9"] - n["pct"]["99.9"]
    ok = c["rps"] >= 0.9 * n["rps"] and d99 <= 0.2 and d999 <= 1.0
    goal = (f"goal (claimsmith >= 90% of nginx req/s, p99 <= nginx p99 + 0.2 ms, p99.9 <= nginx p99.9 + 1 ms): "
            f"{'MET' if ok else 'NOT MET'} ({c['rps'] / n['rps']:.0%}, {d99:+.3f} ms, {d999:+.3f} ms)")
    out_md.append(goal)
    chart = best

# fixed: the same rate for both; latency ratios.
fb = {t: median("fixed", t, p99) for t in ("nginx", "claimsmith")}
if fb["nginx"] and fb["claimsmith"]:
    n, c = fb["nginx"], fb["claimsmith"]
    lines = [f"### fixed: {n['target_rate']:.0f} req/s for both ({n['target_rate'] / n['nginx_max_rps']:.0%} of nginx's "
             f"closed-loop {n['nginx_max_rps']:.0f} req/s), {conns} connections, {users} users rotating, "
             "latency from the intended send time", "",
             "| target | req/s asked | req/s done | p50 ms | p99 ms | p99.9 ms | max ms | errors | client late sends | client CPU | rounds (p99 ms) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for t, d in (("nginx", n), ("claimsmith", c)):
        lines.append(f"| {label[t]} | {d['target_rate']:.0f} | {d['done_rate']:.0f} | {d['pct']['50']:.3f} | "
                     f"{d['pct']['99']:.3f} | {d['pct']['99.9']:.3f} | {d['max_ms']:.3f} | {errs_kinds(d)} | {d['late_sends']} | "
                     f"{client_cpu(d)} | {', '.join('%.3f' % x['pct']['99'] for x in d['all'])} |")
    r = lambda k: c["pct"][k] / n["pct"][k] if n["pct"][k] else float("nan")
    lines.append(f"| **ratio claimsmith / nginx** | | | {r('50'):.2f} | {r('99'):.2f} | {r('99.9'):.2f} | | | | | |")
    out_md.append("\n".join(lines))

closed_table("unpinned", ["nginx", "claimsmith"],
             {"nginx": "nginx proxy_pass, worker_processes 2", "claimsmith": "claimsmith, default runtime (verified + hit + 2 rules)"},
             f"closed loop, no taskset: wrk -t2 -c{conns}, the upstream and the proxy share both cores")
try:
    hs = "Negotiated with OpenSSL's defaults (as wrk's): " + "; ".join(
        l.strip() for l in open(f"{out}/tls/handshake.txt") if l.strip()) + "."
except OSError:
    hs = ""
closed_table("tls", ["nginx", "claimsmith"],
             {"nginx": "nginx, ssl (TLS 1.3)", "claimsmith": "claimsmith, tls_cert_file (verified + hit + 2 rules)"},
             f"closed loop over HTTPS (TLS 1.3, ECDSA P-256, keep-alive), wrk -t1 -c{conns}, pinned", hs)
closed_table("log", ["nginx", "claimsmith"],
             {"nginx": "nginx, access_log (combined) to a file", "claimsmith": "claimsmith, JSON access log to a file"},
             f"closed loop with access logs on, wrk -t1 -c{conns}, pinned")
closed_table("h2", ["nginx", "claimsmith"],
             {"nginx": "nginx, listen http2 (h2c)", "claimsmith": "claimsmith, h2c (verified + hit + 2 rules)"},
             f"HTTP/2 cleartext (prior knowledge), h2load -c{conns} -m{streams} -t1, one user's token, pinned")

bb = {t: median("burst", t, p99) for t in ("cached", "cached+burst", "cached+burst-elsewhere")}
if bb["cached"] and bb["cached+burst"]:
    a, b = bb["cached"], bb["cached+burst"]
    lines = [f"### burst: {users} cached users at {a['rate']:.0f} req/s, without and with {burst_new} never-seen users "
             "arriving at once (claimsmith against itself, pinned)", "",
             "| cached users | req/s done | p50 ms | p99 ms | p99.9 ms | max ms | errors | client late sends | client CPU | claimsmith CPU s | listen queue overflows | rounds (p99 ms) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    e = bb["cached+burst-elsewhere"]
    rows_ = [("no burst", a), (f"during the burst of {burst_new}", b)]
    if e:
        rows_.append((f"control: the same crowd sent to a stand-in on CPU 0 (nginx, `return 503`)", e))
    for name, d in rows_:
        lines.append(f"| {name} | {d['done_rate']:.0f} | {d['pct']['50']:.3f} | {d['pct']['99']:.3f} | "
                     f"{d['pct']['99.9']:.3f} | {d['max_ms']:.3f} | {errs_kinds(d)} | {d['late_sends']} | "
                     f"{client_cpu(d)} | {d['cs_cpu_s']:.2f} | {d['listen_overflows']} | "
                     f"{', '.join('%.3f' % x['pct']['99'] for x in d['all'])} |")
    ratio = b["pct"]["99"] / a["pct"]["99"] if a["pct"]["99"] else float("nan")
    lines.append(f"| **ratio with / without** | | {b['pct']['50'] / a['pct']['50']:.2f} | **{ratio:.2f}** | "
                 f"{b['pct']['99.9'] / a['pct']['99.9']:.2f} | | | | | | | |")
    if e:
        lines.append(f"| **ratio with the crowd at claimsmith / at the stand-in** | | {b['pct']['50'] / e['pct']['50']:.2f} | "
                     f"**{b['pct']['99'] / e['pct']['99']:.2f}** | {b['pct']['99.9'] / e['pct']['99.9']:.2f} | | | | | | | |")
    ms = lambda v: "?" if v is None else f"{v:g}"
    lines += ["", "Where the cached users' time goes (median round; the loop turn is sampled every 25 ms by "
              "claimsmith, `claimsmith_event_loop_turn_seconds`, a bucket's upper bound; the split needs `BURST_LOG=1`):", "",
              "| cached users | claimsmith loop turn p50 / p99 / max ms | claimsmith's own time p50 / p99 / p99.9 ms | upstream p50 / p99 / p99.9 ms |",
              "|---|---:|---:|---:|"]
    for name, d in [("no burst", a), ("during the burst", b)] + ([("the crowd at the stand-in", e)] if e else []):
        tq, sv = d.get("turns") or {}, d.get("server") or {}
        split = lambda k: " / ".join(ms(sv.get(f"{k}_{p}_ms")) for p in ("p50", "p99", "p999")) if sv else "not measured"
        lines.append(f"| {name} | {ms(tq.get('p50_ms'))} / {ms(tq.get('p99_ms'))} / {ms(tq.get('max_ms'))} | "
                     f"{split('own')} | {split('upstream')} |")
    wins = ("before", "0-0.5 s", "0.5-1.5 s", "later")
    lines += ["", "When the cached users' requests over 5 ms were meant to go, from the crowd's arrival (median round; "
              "count, longest ms; at 0.5-1.5 s the kernel retries the connections a full listen queue dropped):", "",
              "| cached users | " + " | ".join(wins) + " |", "|---|" + "---:|" * len(wins)]
    for name, d in [("no burst", a), ("during the burst", b)] + ([("the crowd at the stand-in", e)] if e else []):
        sw = d.get("slow_when") or {}
        lines.append(f"| {name} | " + " | ".join(
            (f"{sw[w]['n']}, {sw[w]['max_ms']:g}" if w in sw else "?") for w in wins) + " |")
    nb = b["burst"]
    t = b.get("tenant") or {}
    answered = ", ".join(f"{n} × {st}" for st, n in nb["statuses"].items())
    lines += ["", f"The new users (median round): answered {answered}, {nb['socket_errors']} without an answer, "
              f"in {nb['seconds']:.1f} s (p50 {nb['pct']['50']:.0f} ms, p99 {nb['pct']['99']:.0f} ms). "
              f"The tenant by the end of the set: {t.get('answered', '?')} calls answered, "
              f"at most {t.get('max_per_second', '?')} in one second (its limit {t.get('limit_per_second', '?')}), "
              f"{t.get('rate_limited', '?')} answered 429.", "",
              f"goal (cached users' p99 during the burst within 20 % of without): {'MET' if ratio <= 1.2 else 'NOT MET'} ({ratio:.2f})"]
    if e:
        ctl = b["pct"]["99"] / e["pct"]["99"] if e["pct"]["99"] else float("nan")
        lines.append(f"against the control (the same crowd at the stand-in; what the two-core rig itself does): "
                     f"{'within' if ctl <= 1.2 else 'not within'} 20 % ({ctl:.2f})")
    out_md.append("\n".join(lines))

table = "\n\n".join(out_md)
open(f"{out}/table.md", "w").write(table + "\n")
print(table)
# Data for the chart (closed): percentile -> latency, one file per target.
for t in closed_order:
    if chart.get(t):
        with open(f"{out}/curve-{t}.dat", "w") as f:
            for p, ms in chart[t]["curve"]:
                f.write(f"{100.0 / (100.0 - p) if p < 100 else 1e5:.6f} {ms:.4f} {p}\n")
if chart:
    with open(f"{out}/rps.dat", "w") as f:
        for i, t in enumerate(closed_order):
            f.write(f"{i} \"{label[t]}\" {chart[t]['rps']:.0f}\n")
PY

if want closed; then
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
fi
cat "$OUT/machine.txt"
log "results in $OUT (table.md, results.jsonl$(want closed && echo ', latency.png'))"
