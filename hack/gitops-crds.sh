#!/usr/bin/env bash
# The CRDs of the GitOps and monitoring tools that examples/gitops/ and the chart's optional
# objects use, as those projects publish them, pinned, fetched through the Go module proxy (their
# module zips carry the generated CRDs) and cached. Prints the directory that holds them.
#
#   hack/gitops-crds.sh     fetch if missing, then print the directory
#
# tests/chart.rs installs them into the test API server, so that the examples' Flux and Argo CD
# objects and the chart's ServiceMonitor and PodMonitor are checked against the real schemas.
set -euo pipefail

FLUX_SOURCE=${FLUX_SOURCE:-v1.9.6}          # github.com/fluxcd/source-controller
FLUX_KUSTOMIZE=${FLUX_KUSTOMIZE:-v1.9.6}    # github.com/fluxcd/kustomize-controller
FLUX_HELM=${FLUX_HELM:-v1.4.5}              # github.com/fluxcd/helm-controller
ARGOCD=${ARGOCD:-v3.5.7}                    # github.com/argoproj/argo-cd/v3
PROMETHEUS_OPERATOR=${PROMETHEUS_OPERATOR:-v0.85.0}  # github.com/prometheus-operator/prometheus-operator

CACHE=${TINYSTACKS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tinystacks-operator}
OUT=$CACHE/gitops-crds/source-$FLUX_SOURCE-kustomize-$FLUX_KUSTOMIZE-helm-$FLUX_HELM-argocd-$ARGOCD-prom-$PROMETHEUS_OPERATOR

if [ -e "$OUT/.complete" ]; then
  echo "$OUT"
  exit 0
fi

# A throwaway module: `go mod download` needs one for GOFLAGS=-mod=mod.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
printf 'module tinystacks.io/testenv/gitopscrds\n\ngo 1.24\n' > go.mod

# The module's directory in the module cache.
module_dir() {
  GOFLAGS=-mod=mod go mod download -json "$1" | python3 -c '
import json, sys
info = json.load(sys.stdin)
if "Error" in info:
    sys.exit("go mod download %s: %s" % (sys.argv[1], info["Error"]))
print(info["Dir"])' "$1"
}

# The proxy serves helm-controller's module zip but refuses its go.mod file, which `go mod
# download` reads first; resolving a package path fetches the zip alone (the api package lives
# in its own module, so Go looks into the root module's zip and leaves it in the cache).
helm_controller_dir() {
  local dir
  dir=$(go env GOMODCACHE)/github.com/fluxcd/helm-controller@$FLUX_HELM
  if [ ! -d "$dir/config/crd/bases" ]; then
    GOFLAGS=-mod=mod go get "github.com/fluxcd/helm-controller/api@$FLUX_HELM" >/dev/null 2>&1 || true
  fi
  [ -d "$dir/config/crd/bases" ] || { echo "no helm-controller $FLUX_HELM from the Go module proxy" >&2; exit 1; }
  echo "$dir"
}

source_dir=$(module_dir "github.com/fluxcd/source-controller@$FLUX_SOURCE")
kustomize_dir=$(module_dir "github.com/fluxcd/kustomize-controller@$FLUX_KUSTOMIZE")
helm_dir=$(helm_controller_dir)
argocd_dir=$(module_dir "github.com/argoproj/argo-cd/v3@$ARGOCD")
prom_dir=$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR")

rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp"
cp "$source_dir/config/crd/bases/source.toolkit.fluxcd.io_gitrepositories.yaml" \
  "$source_dir/config/crd/bases/source.toolkit.fluxcd.io_helmrepositories.yaml" \
  "$kustomize_dir/config/crd/bases/kustomize.toolkit.fluxcd.io_kustomizations.yaml" \
  "$helm_dir/config/crd/bases/helm.toolkit.fluxcd.io_helmreleases.yaml" \
  "$prom_dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" \
  "$prom_dir/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml" \
  "$prom_dir/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml" \
  "$OUT.tmp/"
cp "$argocd_dir/manifests/crds/application-crd.yaml" "$OUT.tmp/argoproj.io_applications.yaml"
cp "$argocd_dir/manifests/crds/appproject-crd.yaml" "$OUT.tmp/argoproj.io_appprojects.yaml"
chmod u+w "$OUT.tmp"/*
touch "$OUT.tmp/.complete"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "$OUT"
