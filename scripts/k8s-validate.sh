#!/usr/bin/env bash
# Renders every overlay under k8s/overlays with `kubectl kustomize` and
# validates the result, offline:
#  - Kubernetes objects strictly against the schemas of the oldest and the
#    newest Kubernetes the manifests support, $K8S_VERSIONS
#    (kubernetes-validate --strict: unknown fields fail);
#  - Strimzi resources against the schemas of Strimzi's CRDs
#    (kafka.strimzi.io/v1, k8s/schemas/strimzi), unknown fields failing too;
#  - the deployment rules schemas cannot express (non-root, read-only root,
#    capabilities, probes on /healthz and /readyz, limits, NetworkPolicies,
#    TLS passthrough, the config's topics and brokers matching the Kafka
#    resources, prod's replicas, budgets, anti-affinity and autoscaler).
# Then it proves that each check can fail: deliberately broken copies
# (a misspelt field, a wrong type, a wrong enum, an old apiVersion, each
# broken rule) must all be refused.
#
# Installs what it needs when missing: kubernetes-validate (pip, pinned) and
# the Strimzi validators (npm, pinned by k8s/schemas/strimzi/package-lock.json)
# into ~/.cache/otwatch/k8s-validate. Needs kubectl, python3, node and npm.
#
# Usage: scripts/k8s-validate.sh
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSIONS="1.30.0 1.34.0"
KUBERNETES_VALIDATE=1.37.0
cache="${XDG_CACHE_HOME:-$HOME/.cache}/otwatch/k8s-validate"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fail() { echo "k8s-validate: $*" >&2; exit 1; }

command -v kubectl >/dev/null || fail "kubectl is needed to render the overlays (kubectl kustomize)"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt_get() { apt-get -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "$@" >/dev/null; }
  apt_get install nodejs npm || { apt-get update -qq -o DPkg::Lock::Timeout=300 && apt_get install nodejs npm; }
fi
if [ "$(kubernetes-validate --version 2>/dev/null)" != "$KUBERNETES_VALIDATE" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    "kubernetes-validate==$KUBERNETES_VALIDATE"
fi
python3 -c 'import yaml' 2>/dev/null || fail "PyYAML is missing (kubernetes-validate depends on it)"

# The Strimzi validators, installed from the lock file when it changed.
mkdir -p "$cache"
if ! cmp -s k8s/schemas/strimzi/package-lock.json "$cache/package-lock.json" || [ ! -d "$cache/node_modules" ]; then
  cp k8s/schemas/strimzi/package.json k8s/schemas/strimzi/package-lock.json "$cache/"
  (cd "$cache" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
cp k8s/schemas/strimzi/validate.mjs "$cache/validate.mjs"
strimzi_validate() { node "$cache/validate.mjs" "$@"; }

# kubernetes-validate exits 0 on a kind it has no schema for (a warning):
# here every object given to it must have one.
k8s_validate() {
  local out rc=0
  local versions=()
  for v in $K8S_VERSIONS; do versions+=(-k "$v"); done
  out="$(kubernetes-validate --strict "${versions[@]}" --quiet "$@" 2>&1)" || rc=$?
  [ -n "$out" ] && printf '%s\n' "$out"
  [ "$rc" = 0 ] && ! grep -q '^\(WARN\|ERROR\|FATAL\)' <<<"$out"
}

kubectl version --client 2>/dev/null | sed -n 1p
echo "kubernetes-validate $(kubernetes-validate --version) (Kubernetes ${K8S_VERSIONS// / and }), node $(node --version)"

overlays=(k8s/overlays/*/)
[ "${#overlays[@]}" -ge 2 ] || fail "expected the dev and prod overlays under k8s/overlays"
checked=0
for dir in "${overlays[@]}"; do
  overlay="$(basename "$dir")"
  out="$work/$overlay"
  mkdir -p "$out"
  echo
  echo "== $overlay: render"
  kubectl kustomize "$dir" >"$out/rendered.yaml"
  python3 scripts/k8s_validate.py split "$overlay" "$out/rendered.yaml" "$out" \
    || fail "$overlay: deployment rules broken (above)"

  echo "== $overlay: Kubernetes objects against Kubernetes ${K8S_VERSIONS// / and }, strict"
  k8s_validate "$out/k8s.yaml" || fail "$overlay: Kubernetes objects invalid (above)"
  echo "$(grep -c '^kind:' "$out/k8s.yaml") objects valid"

  echo "== $overlay: Strimzi resources against Strimzi's CRD schemas"
  strimzi_validate "$out/strimzi.json" || fail "$overlay: Strimzi resources invalid (above)"

  echo "== $overlay: broken copies must be refused"
  python3 scripts/k8s_validate.py break "$out/rendered.yaml" "$out/broken"
  for f in "$out"/broken/broken-k8s-*.yaml; do
    if k8s_validate "$f" >"$f.log" 2>&1; then
      fail "$overlay: $(basename "$f") passed kubernetes-validate: the check is vacuous"
    fi
    echo "ok $(basename "$f"): refused ($(grep -m1 -o 'did not validate.*' "$f.log" | cut -c1-150))"
  done
  for f in "$out"/broken/broken-strimzi-*.json; do
    if strimzi_validate "$f" >"$f.log" 2>&1; then
      fail "$overlay: $(basename "$f") passed the Strimzi validator: the check is vacuous"
    fi
    echo "ok $(basename "$f"): refused ($(grep -m1 '^  ' "$f.log" | sed 's/^ *//' | cut -c1-150))"
  done
  python3 scripts/k8s_validate.py rules-must-fail "$overlay" "$out/rendered.yaml" \
    || fail "$overlay: a deployment rule did not refuse a copy that breaks it"
  checked=$((checked + 1))
done
echo
echo "k8s: $checked overlays rendered and valid; every broken copy refused"
