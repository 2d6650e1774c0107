#!/usr/bin/env bash
# Builds the metrics stack the autoscaling tests run for real — metrics-server, Prometheus and
# KEDA's operator and metrics adapter — from the Go module proxy, each into a cache folder named
# by its own pin, so changing one pin rebuilds only that component and a warm cache costs a stat.
#
# Prometheus, KEDA and prometheus-operator carry `replace` lines in their go.mod, which
# `go install pkg@version` refuses; they build through a small wrapper module that requires the release
# and copies those lines, except the ones to folders inside the module (prometheus-operator's own
# pkg/apis/monitoring and pkg/client), which resolve to the same release's published submodules instead.
# Prints one `NAME=PATH` line per binary, and for manifests taken from the modules' zips:
# `keda-crds=PATH` (KEDA's CRDs), `keda-rbac=PATH` and `metrics-server-rbac=PATH` (their upstream RBAC),
# `prometheus-operator-crds=PATH` and `prometheus-operator-rbac=PATH` (the operator's and Prometheus').
#
# Usage: build-metrics-binaries.sh [metrics-server] [prometheus] [keda] [keda-crds] [keda-rbac]
#                                  [metrics-server-rbac] [prometheus-operator] [prometheus-operator-crds]
#                                  [prometheus-operator-rbac]   (default: all)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${MODELDEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeldeploy}
work_dir="$cache_root/build"
mkdir -p "$work_dir"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
log() { echo "[build-metrics-binaries] $*" >&2; }

wrapper_module() {  # folder, module, version: a module requiring the release with its replaces/excludes
  local mod=$1 module=$2 version=$3
  [ -f "$mod/go.sum" ] && return 0
  mkdir -p "$mod"
  local upstream
  upstream=$(cd "$work_dir" && go mod download -json "$module@$version" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module modeldeploy.dev/hack/$(basename "$mod")"
    echo
    grep -E '^go ' "$upstream"
    echo
    echo "require $module $version"
    echo
    # single-line directives and parenthesized blocks alike, less replaces by a folder of the module
    awk '/^(replace|exclude) \($/ {block=1} block || /^(replace|exclude) / {print} /^\)$/ {block=0}' "$upstream" \
      | grep -Ev '=>[[:space:]]*\.\.?/' || true
  } >"$mod/go.mod"
}

build_wrapped() {  # name, module, version, ldflags, package...
  local name=$1 module=$2 version=$3 ldflags=$4; shift 4
  local out="$cache_root/$name-$version" mod="$work_dir/$name-$version" pkg
  local missing=false
  for pkg in "$@"; do [ -x "$out/$(basename "$pkg")" ] || missing=true; done
  if $missing; then
    wrapper_module "$mod" "$module" "$version"
    {
      printf '//go:build tools\n\npackage tools\n\nimport (\n'
      for pkg in "$@"; do printf '\t_ "%s"\n' "$pkg"; done
      printf ')\n'
    } >"$mod/tools.go"
    [ -f "$mod/go.sum" ] || (cd "$mod" && log "resolving $module $version" && go mod tidy -e >&2)
    mkdir -p "$out"
    for pkg in "$@"; do
      [ -x "$out/$(basename "$pkg")" ] && continue
      log "building $(basename "$pkg") ($module $version)"
      (cd "$mod" && go build -trimpath -ldflags "-s -w $ldflags" -o "$out/$(basename "$pkg").tmp" "$pkg")
      mv "$out/$(basename "$pkg").tmp" "$out/$(basename "$pkg")"
    done
  fi
  for pkg in "$@"; do echo "$(basename "$pkg")=$out/$(basename "$pkg")"; done
}

module_manifests() {  # name, out, module, version, globs under the module's root: one YAML stream from its zip
  local name=$1 out=$2 module=$3 version=$4; shift 4
  if [ ! -s "$out" ]; then
    mkdir -p "$(dirname "$out")"
    local dir pattern file
    dir=$(cd "$work_dir" && go mod download -json "$module@$version" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    : >"$out.tmp"
    for pattern in "$@"; do
      for file in "$dir"/$pattern; do { echo "---"; cat "$file"; } >>"$out.tmp"; done
    done
    mv "$out.tmp" "$out"
  fi
  echo "$name=$out"
}

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(keda-crds keda-rbac metrics-server-rbac metrics-server prometheus keda
  prometheus-operator-crds prometheus-operator-rbac prometheus-operator)
for component in "${components[@]}"; do
  case "$component" in
    # KEDA's own CRDs, with their schemas; its operator's and metrics adapter's RBAC, as upstream ships it
    keda-crds) module_manifests keda-crds "$cache_root/keda-$KEDA_VERSION/crds.yaml" \
                 github.com/kedacore/keda/v2 "$KEDA_VERSION" 'config/crd/bases/*.yaml' ;;
    keda-rbac) module_manifests keda-rbac "$cache_root/keda-$KEDA_VERSION/rbac.yaml" \
                 github.com/kedacore/keda/v2 "$KEDA_VERSION" config/service_account/service_account.yaml \
                 config/rbac/role.yaml config/rbac/role_binding.yaml config/metrics-server/role.yaml \
                 config/metrics-server/role_binding.yaml ;;
    metrics-server-rbac) module_manifests metrics-server-rbac \
                 "$cache_root/metrics-server-$METRICS_SERVER_VERSION/rbac.yaml" sigs.k8s.io/metrics-server \
                 "$METRICS_SERVER_VERSION" manifests/base/rbac.yaml ;;
    metrics-server)
      build_wrapped metrics-server sigs.k8s.io/metrics-server "$METRICS_SERVER_VERSION" \
        "-X sigs.k8s.io/metrics-server/pkg/version.gitVersion=$METRICS_SERVER_VERSION" \
        sigs.k8s.io/metrics-server/cmd/metrics-server ;;
    prometheus)
      build_wrapped prometheus github.com/prometheus/prometheus "$PROMETHEUS_VERSION" \
        "-X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" \
        github.com/prometheus/prometheus/cmd/prometheus ;;
    keda)
      build_wrapped keda github.com/kedacore/keda/v2 "$KEDA_VERSION" \
        "-X github.com/kedacore/keda/v2/version.Version=$KEDA_VERSION" \
        github.com/kedacore/keda/v2/cmd/operator github.com/kedacore/keda/v2/cmd/adapter ;;
    # The monitoring.coreos.com CRDs with their full schemas; the operator's and Prometheus' upstream RBAC
    prometheus-operator-crds) module_manifests prometheus-operator-crds \
                 "$cache_root/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION/crds.yaml" \
                 github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" \
                 'example/prometheus-operator-crd-full/*.yaml' ;;
    prometheus-operator-rbac) module_manifests prometheus-operator-rbac \
                 "$cache_root/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION/rbac.yaml" \
                 github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" \
                 'example/rbac/prometheus-operator/prometheus-operator-service-account.yaml' \
                 'example/rbac/prometheus-operator/prometheus-operator-cluster-role.yaml' \
                 'example/rbac/prometheus-operator/prometheus-operator-cluster-role-binding.yaml' \
                 'example/rbac/prometheus/prometheus-service-account.yaml' \
                 'example/rbac/prometheus/prometheus-cluster-role.yaml' \
                 'example/rbac/prometheus/prometheus-cluster-role-binding.yaml' ;;
    prometheus-operator)
      build_wrapped prometheus-operator github.com/prometheus-operator/prometheus-operator \
        "$PROMETHEUS_OPERATOR_VERSION" \
        "-X github.com/prometheus/common/version.Version=${PROMETHEUS_OPERATOR_VERSION#v}" \
        github.com/prometheus-operator/prometheus-operator/cmd/operator \
        github.com/prometheus-operator/prometheus-operator/cmd/prometheus-config-reloader ;;
    *) echo "unknown component $component" >&2; exit 2 ;;
  esac
done
