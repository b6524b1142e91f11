#!/usr/bin/env bash
# Push-invalidation latency on one replica: the time from the start of an Auth0 Event
# Streams delivery (POST /hooks/auth0/events) to the next proxied request carrying the
# changed app_metadata in its internal token (docs/operations.md, "Push invalidation").
#
#   benches/webhook_latency.sh            # 200 changes
#   TRIES=1000 benches/webhook_latency.sh
#
# Runs the ignored test `webhook_latency` of tests/webhooks.rs in release mode: the
# Auth0 tenant on loopback changes a user and delivers the event with the webhook
# token, then the test sends the user's request until the upstream sees the change
# (the hook answers 204 only once it is applied, so the first request does). Prints
# p50, p99 and max. Everything runs on loopback in one process; nothing is asserted
# about time.
set -euo pipefail

TRIES=${TRIES:-200}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
WEBHOOK_TRIES=$TRIES cargo test --release --quiet --test webhooks -- --ignored --exact webhook_latency --nocapture \
  2>&1 | grep -E '^webhook_latency:|FAILED|panicked' || { echo "[webhook_latency] the measurement failed" >&2; exit 1; }
