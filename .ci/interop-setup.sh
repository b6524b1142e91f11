#!/usr/bin/env bash
# Installs the independent verifiers tests/interop.rs runs against claimsmith:
# node `jose`, `jwks-rsa` + `jsonwebtoken` (npm ci from the committed lock file) and
# Python PyJWT + cryptography (pinned, in tests/interop/.venv). Registries only.
# Called by .ci/run before `cargo test`; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../tests/interop"

echo "== interop: node $(node --version 2>/dev/null || echo missing), npm $(npm --version 2>/dev/null || echo missing)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi
npm ci --no-audit --no-fund --loglevel=error

echo "== interop: python $(python3 --version 2>&1)"
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    python3 -m venv .venv
  fi
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/python -c 'import jwt, cryptography; print("== interop: PyJWT", jwt.__version__, "cryptography", cryptography.__version__)'
node -e 'for (const p of ["jose", "jwks-rsa", "jsonwebtoken"]) { const v = JSON.parse(require("fs").readFileSync(`node_modules/${p}/package.json`)).version; console.log(`== interop: ${p} ${v}`) }'
