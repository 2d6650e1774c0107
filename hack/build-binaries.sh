#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, kwok, helm, grpcurl) from the Go module proxy into a cache folder outside the repo.
# With --with-node, also what a real node runs: kubelet and kube-proxy (same Kubernetes pin),
# CoreDNS (its own pin, cached in its own folder) and the pause binary compiled from the
# Kubernetes source (build/pause/linux/pause.c, static).
#
# Prints the folder holding the binaries on its last line. Rebuilds only what is missing, so a
# warm cache costs a few stat calls. KUBEBUILDER_ASSETS (the envtest convention) wins when it
# already holds kube-apiserver, etcd and kubectl; the rest is still built.
set -euo pipefail

with_node=false
for arg in "$@"; do
  case "$arg" in
    --with-node) with_node=true ;;
    *) echo "usage: $0 [--with-node]" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache_root=${MODELDEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeldeploy}
bin_dir="$cache_root/k8s-$KUBE_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION/bin"
work_dir="$cache_root/build"
mkdir -p "$bin_dir" "$work_dir"

export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
log() { echo "[build-binaries] $*" >&2; }

have() { [ -x "$bin_dir/$1" ]; }

kube_minor=${KUBE_VERSION#v1.}; kube_minor=${kube_minor%%.*}
staging_version="v0.${KUBE_VERSION#v1.}"
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
version_ldflags() {
  local pkg ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
  done
  echo "$ldflags"
}

kube_commands() {
  echo kube-apiserver kube-controller-manager kube-scheduler kubectl
  if $with_node; then echo kubelet kube-proxy; fi
}

kube_tools_go() {  # every command of the wrapper module, so `go mod tidy` records all their sums
  printf '//go:build tools\n\npackage tools\n\nimport (\n'
  local cmd
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
    printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$cmd"
  done
  printf ')\n'
}

build_kubernetes() {
  local mod="$work_dir/kubernetes-$KUBE_VERSION"
  mkdir -p "$mod"
  local cmd missing=false
  for cmd in $(kube_commands); do have "$cmd" || missing=true; done
  $missing || return 0
  if [ -f "$mod/go.sum" ] && ! cmp -s "$mod/tools.go" <(kube_tools_go); then
    log "adding the node commands to the wrapper module"
    kube_tools_go >"$mod/tools.go"
    (cd "$mod" && go mod tidy -e >&2)
  fi
  if [ ! -f "$mod/go.sum" ]; then
    log "preparing wrapper module for k8s.io/kubernetes $KUBE_VERSION"
    local upstream_mod
    upstream_mod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    {
      echo "module modeldeploy.dev/hack/kubernetes"
      echo
      grep -E '^go ' "$upstream_mod"
      echo
      echo "require k8s.io/kubernetes $KUBE_VERSION"
      echo
      echo "replace ("
      grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$upstream_mod" \
        | awk -v v="$staging_version" '{print "\t" $1 " => " $1 " " v}'
      echo ")"
    } >"$mod/go.mod"
    kube_tools_go >"$mod/tools.go"
    (cd "$mod" && go mod tidy -e >&2)
  fi
  for cmd in $(kube_commands); do
    have "$cmd" && continue
    log "building $cmd $KUBE_VERSION"
    (cd "$mod" && go build -trimpath -ldflags "$(version_ldflags)" -o "$bin_dir/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  done
}

build_etcd() {
  have etcd && return 0
  local mod="$work_dir/etcd-$ETCD_VERSION"
  mkdir -p "$mod"
  if [ ! -f "$mod/go.sum" ]; then
    log "preparing wrapper module for etcd $ETCD_VERSION"
    cat >"$mod/go.mod" <<GOMOD
module modeldeploy.dev/hack/etcd

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GOMOD
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >"$mod/tools.go"
    (cd "$mod" && go mod tidy -e >&2)
  fi
  log "building etcd $ETCD_VERSION"
  (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$bin_dir/etcd" go.etcd.io/etcd/server/v3)
}

install_tool() {  # name, package@version
  have "$1" && return 0
  log "building $1 ($2)"
  GOBIN="$bin_dir" go install -trimpath -ldflags "-s -w ${3:-}" "$2"
}

link_assets() {
  # Reuse envtest binaries when the user has them.
  local assets=${KUBEBUILDER_ASSETS:-} name
  [ -n "$assets" ] || return 0
  for name in kube-apiserver etcd kubectl; do
    if [ -x "$assets/$name" ] && ! have "$name"; then
      log "using $assets/$name"
      ln -sf "$assets/$name" "$bin_dir/$name"
    fi
  done
}

kwok_stages() {
  # kwok's own "fast" stage set (nodes Ready with lease heartbeats, pods Running and Ready at once),
  # taken from the pinned kwok module rather than copied into this repo.
  local out="$bin_dir/kwok-stages.yaml"
  [ -s "$out" ] && return 0
  local dir
  dir=$(cd "$work_dir" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  local stage
  : >"$out.tmp"
  for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
    pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    { echo "---"; cat "$dir/kustomize/stage/$stage.yaml"; } >>"$out.tmp"
  done
  mv "$out.tmp" "$out"
}

module_dir() {  # the unpacked source of a module version, from the module proxy
  (cd "$work_dir" && go mod download -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
}

build_coredns() {
  # Its own pin, so its own folder: changing COREDNS_VERSION rebuilds only CoreDNS.
  local dir="$cache_root/coredns-$COREDNS_VERSION"
  if [ ! -x "$dir/coredns" ]; then
    log "building coredns $COREDNS_VERSION"
    mkdir -p "$dir"
    GOBIN="$dir" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  fi
  ln -sfn "$dir/coredns" "$bin_dir/coredns"
}

build_grpcurl() {
  # What the README's gRPC examples are written for; the tests run them as written.
  local dir="$cache_root/grpcurl-$GRPCURL_VERSION"
  if [ ! -x "$dir/grpcurl" ]; then
    log "building grpcurl $GRPCURL_VERSION"
    mkdir -p "$dir"
    GOBIN="$dir" go install -trimpath -ldflags "-s -w -X main.version=$GRPCURL_VERSION" \
      "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
  fi
  ln -sfn "$dir/grpcurl" "$bin_dir/grpcurl"
}

build_pause() {
  # The sandbox image's only binary; no image can be pulled here, so it is compiled from the source.
  have pause && return 0
  command -v gcc >/dev/null || { echo "gcc is needed to compile the pause binary" >&2; exit 1; }
  log "compiling pause from k8s.io/kubernetes $KUBE_VERSION"
  gcc -Os -static -DVERSION="$KUBE_VERSION" -o "$bin_dir/pause.tmp" \
    "$(module_dir "k8s.io/kubernetes@$KUBE_VERSION")/build/pause/linux/pause.c"
  strip "$bin_dir/pause.tmp" 2>/dev/null || true
  mv "$bin_dir/pause.tmp" "$bin_dir/pause"
}

link_assets
build_etcd
build_kubernetes
install_tool kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
install_tool helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
kwok_stages
build_grpcurl
if $with_node; then
  build_coredns
  build_pause
fi
echo "$bin_dir"
