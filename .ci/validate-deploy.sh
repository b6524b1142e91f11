#!/usr/bin/env bash
# Validates everything under deploy/:
#   (a) every Kubernetes manifest under deploy/kubernetes against the Kubernetes
#       JSON schemas shipped inside the PyPI package kubernetes-validate (offline:
#       the schemas are in the wheel; when `unshare` is usable the validator even runs
#       without a network namespace to prove it);
#   (b) `claimsmith check` on every example config: deploy/config/*.toml and the
#       claimsmith.toml of every ConfigMap, with dummy secret files and variables.
#       Each ConfigMap's config must also equal one of deploy/config/*.toml.
#       Dummies: a fresh PEM key for [token].key_files, a `claimsmith keygen --shared`
#       key for [shared].key_files, a throw-away certificate for TLS and CA files,
#       redis://127.0.0.1:6379 for the [shared] URL (nothing connects to it) and a
#       fixed string for every other *_file and *_env.
#
# Needs: python3 (3.11+, for tomllib), pip access to PyPI, openssl, and a built
# target/debug/claimsmith (`cargo build`). Run from anywhere in the repository.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${CLAIMSMITH_BIN:-$ROOT/target/debug/claimsmith}"
K8S_VERSION="${K8S_VERSION:-1.31.0}"
KV_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"

if [[ ! -x "$BIN" ]]; then
  echo "validate-deploy: $BIN not found; run 'cargo build' first" >&2
  exit 1
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# --- (a) manifests -----------------------------------------------------------
VENV="${KV_VENV:-${TMPDIR:-/tmp}/claimsmith-kubernetes-validate-$KV_VERSION}"
if [[ ! -x "$VENV/bin/kubernetes-validate" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi
mapfile -t MANIFESTS < <(find deploy/kubernetes -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
if [[ ${#MANIFESTS[@]} -eq 0 ]]; then
  echo "validate-deploy: no manifests under deploy/kubernetes" >&2
  exit 1
fi
KV=("$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$K8S_VERSION" --quiet)
# Offline on purpose: no network namespace when we can have one.
if unshare -rn true 2>/dev/null; then
  OFFLINE=(unshare -rn)
else
  OFFLINE=()
fi
echo "validate-deploy: ${#MANIFESTS[@]} manifests against Kubernetes $K8S_VERSION (strict${OFFLINE:+, no network})"
"${OFFLINE[@]}" "${KV[@]}" "${MANIFESTS[@]}"

# --- (b) example configs -----------------------------------------------------
CONFIGS="$WORK/configs"
mkdir -p "$CONFIGS"
# The ConfigMaps' claimsmith.toml, each also compared with deploy/config/.
"$VENV/bin/python" - "$CONFIGS" "${MANIFESTS[@]}" <<'PY'
import pathlib, sys, yaml
out = pathlib.Path(sys.argv[1])
plain = {p: p.read_text() for p in sorted(pathlib.Path("deploy/config").glob("*.toml"))}
if not plain:
    sys.exit("validate-deploy: no example configs in deploy/config")
failed = False
for manifest in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(manifest)):
        if not doc or doc.get("kind") != "ConfigMap":
            continue
        for key, text in (doc.get("data") or {}).items():
            if not key.endswith(".toml"):
                continue
            name = f"configmap-{pathlib.Path(manifest).parent.name}-{doc['metadata']['name']}.toml"
            (out / name).write_text(text)
            if text not in plain.values():
                print(f"validate-deploy: {manifest}: {key} differs from every file in deploy/config", file=sys.stderr)
                failed = True
for p, text in plain.items():
    (out / p.name).write_text(text)
sys.exit(1 if failed else 0)
PY

# One throw-away certificate for any tls_*_file / ca_file an example names.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=validate-deploy" -keyout "$WORK/dummy.key" -out "$WORK/dummy.crt" 2>/dev/null

status=0
for cfg in "$CONFIGS"/*.toml; do
  name="$(basename "$cfg" .toml)"
  fake="$WORK/root-$name"
  mkdir -p "$fake"
  # Rewrites every absolute file path in the config to live under $fake, creates a
  # dummy for each file and prints the *_env variables to set.
  envs="$("$VENV/bin/python" - "$cfg" "$fake" "$BIN" "$WORK" <<'PY'
import pathlib, shutil, subprocess, sys, tomllib
cfg, fake, binary, work = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], pathlib.Path(sys.argv[4])
text = cfg.read_text()
doc = tomllib.loads(text)
alg = doc.get("token", {}).get("algorithm", "EdDSA")
files, envs = {}, {}
# What a dummy must look like for `claimsmith check` to accept it.
REDIS_URL = "redis://127.0.0.1:6379"

def walk(v, key="", parent=None, table=""):
    if isinstance(v, dict):
        for k, x in v.items():
            walk(x, k, v, table or k)
    elif isinstance(v, list):
        for x in v:
            walk(x, key, parent, table)
    elif isinstance(v, str):
        if table == "shared" and key == "url_env":
            envs[v] = REDIS_URL
        elif key.endswith("_env"):
            envs.setdefault(v, "dummy-secret-for-validation")
        elif table == "shared" and key == "key_files":
            files[v] = "sharedkey"
        elif table == "shared" and key == "url_file":
            files[v] = "redisurl"
        elif key == "key_files":
            files[v] = "key"
        elif key in ("tls_cert_file", "ca_file"):
            files[v] = "cert"
        elif key == "tls_key_file":
            files[v] = "certkey"
        elif key.endswith("_file"):
            files[v] = "secret"
        elif key == "path" and parent is not None and parent.get("kind") == "file":
            files[v] = "metadata"

walk(doc)
for original, kind in files.items():
    p = pathlib.Path(original)
    target = fake / p.relative_to("/") if p.is_absolute() else fake / p
    if p.is_absolute():
        text = text.replace(f'"{original}"', f'"{target}"')
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "key":
        subprocess.run([binary, "keygen", "--alg", alg, "--out", str(target)], check=True, capture_output=True)
    elif kind == "sharedkey":
        subprocess.run([binary, "keygen", "--shared", "--out", str(target)], check=True, capture_output=True)
    elif kind == "redisurl":
        target.write_text(REDIS_URL + "\n")
    elif kind == "cert":
        shutil.copy(work / "dummy.crt", target)
    elif kind == "certkey":
        shutil.copy(work / "dummy.key", target)
    elif kind == "metadata":
        target.write_text('{"users": {}, "clients": {}}')
    else:
        target.write_text("dummy-secret-for-validation")
(fake / "claimsmith.toml").write_text(text)
print(" ".join(f"{e}={value}" for e, value in sorted(envs.items())))
PY
)"
  # shellcheck disable=SC2086 # word splitting of NAME=value pairs is intended
  if out="$(env $envs "$BIN" check --config "$fake/claimsmith.toml" 2>&1)"; then
    echo "validate-deploy: $name: $out"
  else
    echo "validate-deploy: $name: claimsmith check failed:" >&2
    echo "$out" >&2
    status=1
  fi
done
exit $status
