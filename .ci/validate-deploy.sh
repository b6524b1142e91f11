#!/usr/bin/env bash
# Validates everything under deploy/ (deploy/README.md describes the layout):
#   (a) every kustomization under deploy/kubernetes, rendered by real kustomize
#       (`kubectl kustomize`, offline), and every *.example.yaml beside them, against
#       the Kubernetes JSON schemas shipped inside the PyPI package kubernetes-validate
#       (offline: the schemas are in the wheel; when `unshare` is usable both even run
#       without a network namespace to prove it). Every YAML file under
#       deploy/kubernetes must be a kustomization's resource, or an *.example.yaml
#       (applied by hand, never by `kubectl apply -k`), so none escapes validation;
#       every *.toml must feed a configMapGenerator;
#   (b) `claimsmith check` on the claimsmith.toml of every rendered ConfigMap, with
#       dummy secret files and variables. Dummies: a fresh PEM key for
#       [token].key_files, a `claimsmith keygen --shared` key for [shared].key_files,
#       a throw-away certificate for TLS and CA files, redis://127.0.0.1:6379 for the
#       [shared] URL (nothing connects to it) and a fixed string for every other
#       *_file and *_env;
#   (c) that the ingress examples (an Ingress's auth-url, deploy/traefik's
#       forwardAuth address) name a Service and port that a kustomization renders;
#   (d) `nginx -t` on every deploy/nginx/*.conf, inside a minimal main config, with
#       each upstream's server rewritten to 127.0.0.1 (nginx resolves names at load,
#       and this check must not need DNS).
#
# kustomize: `kubectl kustomize` (kustomize is built into kubectl; the CI machine's
# image has one), else a standalone `kustomize build`, else the kubectl of Debian's
# package kubernetes-client, downloaded with `apt-get download` and unpacked into a
# cache directory (not installed: it would clash with another kubectl package). Its
# older built-in kustomize renders these kustomizations the same: they use only
# resources, namespace, configMapGenerator with files and generatorOptions.
#
# Needs: python3 (3.11+, for tomllib), pip access to PyPI, openssl, nginx (.ci/run
# installs nginx-light), and a built target/debug/claimsmith (`cargo build`;
# CLAIMSMITH_BIN names another). Run from anywhere in the repository.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${CLAIMSMITH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/claimsmith}"
K8S_VERSION="${K8S_VERSION:-1.31.0}"
KV_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"

if [[ ! -x "$BIN" ]]; then
  echo "validate-deploy: $BIN not found; run 'cargo build' first" >&2
  exit 1
fi
NGINX="$(command -v nginx || true)"
[[ -z "$NGINX" && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
if [[ -z "$NGINX" ]]; then
  echo "validate-deploy: nginx not found; install nginx-light (.ci/run does)" >&2
  exit 1
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Offline on purpose: no network namespace when we can have one.
if unshare -rn true 2>/dev/null; then
  OFFLINE=(unshare -rn)
else
  OFFLINE=()
fi

VENV="${KV_VENV:-${TMPDIR:-/tmp}/claimsmith-kubernetes-validate-$KV_VERSION}"
if [[ ! -x "$VENV/bin/kubernetes-validate" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi
PY="$VENV/bin/python"

# --- kustomize ---------------------------------------------------------------
if command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
  KUSTOMIZE=(kubectl kustomize)
elif command -v kustomize >/dev/null; then
  KUSTOMIZE=(kustomize build)
else
  KC="${KUBERNETES_CLIENT_DIR:-${TMPDIR:-/tmp}/claimsmith-kubernetes-client}"
  if [[ ! -x "$KC/usr/bin/kubectl" ]]; then
    # apt-get download needs the package lists; a fresh machine may have none yet.
    (cd "$WORK" && { apt-get download -qq kubernetes-client 2>/dev/null \
      || { apt-get update -qq && apt-get download -qq kubernetes-client 2>/dev/null; }; })
    dpkg-deb -x "$WORK"/kubernetes-client_*.deb "$KC"
  fi
  KUSTOMIZE=("$KC/usr/bin/kubectl" kustomize)
fi

# --- (a) manifests -----------------------------------------------------------
mapfile -t KDIRS < <(find deploy/kubernetes -name kustomization.yaml -printf '%h\n' | sort)
if [[ ${#KDIRS[@]} -eq 0 ]]; then
  echo "validate-deploy: no kustomization.yaml under deploy/kubernetes" >&2
  exit 1
fi
# Nothing under deploy/kubernetes may escape what is validated below.
"$PY" - "${KDIRS[@]}" <<'PY'
import pathlib, sys, yaml
kdirs = {pathlib.Path(d) for d in sys.argv[1:]}
failed = []
used = set()
for d in sorted(kdirs):
    k = yaml.safe_load((d / "kustomization.yaml").read_text()) or {}
    used.update(d / r for r in k.get("resources") or [])
    for g in k.get("configMapGenerator") or []:
        # `files` entries are FILE or KEY=FILE.
        used.update(d / f.split("=", 1)[-1] for f in g.get("files") or [])
for p in sorted(pathlib.Path("deploy/kubernetes").rglob("*")):
    if not p.is_file() or p.name == "kustomization.yaml" or p.name.endswith(".example.yaml"):
        continue
    if p.suffix in (".yaml", ".yml", ".toml") and p not in used:
        failed.append(f"{p}: not named in {p.parent}/kustomization.yaml (resources, configMapGenerator files), nor an *.example.yaml")
for f in failed:
    print(f"validate-deploy: {f}", file=sys.stderr)
sys.exit(1 if failed else 0)
PY

RENDERED="$WORK/rendered"
mkdir -p "$RENDERED"
for dir in "${KDIRS[@]}"; do
  name="$(echo "${dir#deploy/kubernetes/}" | tr / -)"
  "${OFFLINE[@]}" "${KUSTOMIZE[@]}" "$dir" >"$RENDERED/$name.yaml"
done
mapfile -t EXAMPLES < <(find deploy/kubernetes -type f -name '*.example.yaml' | sort)
KV=("$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$K8S_VERSION" --quiet)
echo "validate-deploy: ${#KDIRS[@]} kustomizations (${KUSTOMIZE[*]}) and ${#EXAMPLES[@]} examples against Kubernetes $K8S_VERSION (strict${OFFLINE:+, no network})"
"${OFFLINE[@]}" "${KV[@]}" "$RENDERED"/*.yaml "${EXAMPLES[@]}"

# --- (b) example configs -----------------------------------------------------
CONFIGS="$WORK/configs"
mkdir -p "$CONFIGS"
# Each rendered ConfigMap's *.toml, which must be the text of a file beside its
# kustomization.yaml: the config is kept as a plain file, never inlined in YAML.
"$PY" - "$CONFIGS" "$RENDERED" "${KDIRS[@]}" <<'PY'
import pathlib, sys, yaml
out, rendered, kdirs = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
failed = False
count = 0
for d in map(pathlib.Path, kdirs):
    name = str(d.relative_to("deploy/kubernetes")).replace("/", "-")
    plain = [p.read_text() for p in d.glob("*.toml")]
    for doc in yaml.safe_load_all((rendered / f"{name}.yaml").read_text()):
        if not doc or doc.get("kind") != "ConfigMap":
            continue
        for key, text in (doc.get("data") or {}).items():
            if not key.endswith(".toml"):
                continue
            count += 1
            (out / f"{name}-{doc['metadata']['name']}-{key}").write_text(text)
            if text not in plain:
                print(f"validate-deploy: {d}: ConfigMap {doc['metadata']['name']} {key} is no *.toml file of {d}", file=sys.stderr)
                failed = True
if count == 0:
    sys.exit("validate-deploy: no kustomization renders a claimsmith config")
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
  envs="$("$PY" - "$cfg" "$fake" "$BIN" "$WORK" <<'PY'
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

# --- (c) the ingress examples point at a rendered Service ----------------------
# An Ingress's nginx.ingress.kubernetes.io/auth-url and a Traefik Middleware's
# forwardAuth.address must name http://SERVICE.NAMESPACE.svc.cluster.local:PORT/ of
# a Service some kustomization renders, with that port: a renamed Service or moved
# namespace must not leave the examples pointing nowhere.
mapfile -t INGRESS_EXAMPLES < <(find deploy/kubernetes deploy/traefik -type f \( -name '*.yaml' -o -name '*.yml' \) 2>/dev/null | sort)
if ! "$PY" - "$RENDERED" "${INGRESS_EXAMPLES[@]}" <<'PY'
import pathlib, sys, urllib.parse, yaml
rendered = pathlib.Path(sys.argv[1])
services = set()
for f in rendered.glob("*.yaml"):
    for doc in yaml.safe_load_all(f.read_text()):
        if doc and doc.get("kind") == "Service":
            m = doc["metadata"]
            for p in doc["spec"].get("ports") or []:
                services.add((m["name"], m.get("namespace", "default"), p["port"]))
failed, seen = False, 0
for f in sys.argv[2:]:
    for doc in yaml.safe_load_all(open(f)):
        if not doc:
            continue
        urls = []
        if doc.get("kind") == "Ingress":
            u = (doc["metadata"].get("annotations") or {}).get("nginx.ingress.kubernetes.io/auth-url")
            urls += [u] if u else []
        if doc.get("kind") == "Middleware":
            u = ((doc.get("spec") or {}).get("forwardAuth") or {}).get("address")
            urls += [u] if u else []
        for u in urls:
            seen += 1
            url = urllib.parse.urlsplit(u)
            labels = (url.hostname or "").split(".")
            ok = len(labels) == 5 and labels[2:] == ["svc", "cluster", "local"]
            ok = ok and (labels[0], labels[1], url.port or 80) in services
            if not ok:
                print(f"validate-deploy: {f}: {u} is no Service port a kustomization renders", file=sys.stderr)
                failed = True
print(f"validate-deploy: {seen} forward-auth address(es) name a rendered Service")
sys.exit(1 if failed else 0)
PY
then
  status=1
fi

# --- (d) nginx examples ------------------------------------------------------
for conf in deploy/nginx/*.conf; do
  [[ -e "$conf" ]] || continue
  dir="$WORK/nginx-$(basename "$conf" .conf)"
  mkdir -p "$dir"
  # The example is an http-context include; each `server HOST:PORT` of its upstream
  # blocks becomes 127.0.0.1:PORT so that no name needs resolving.
  sed -E 's/^([[:space:]]*server[[:space:]]+)[^[:space:];]+:([0-9]+)/\1127.0.0.1:\2/' "$conf" >"$dir/example.conf"
  cat >"$dir/nginx.conf" <<NGINX
pid $dir/nginx.pid;
error_log stderr;
events {}
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  include $dir/example.conf;
}
NGINX
  if out="$("$NGINX" -t -q -e stderr -p "$dir" -c "$dir/nginx.conf" 2>&1)"; then
    echo "validate-deploy: $conf: nginx -t ok"
  else
    echo "validate-deploy: $conf: nginx -t failed:" >&2
    echo "$out" >&2
    status=1
  fi
done
exit $status
