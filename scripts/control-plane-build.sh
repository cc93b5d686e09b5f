#!/usr/bin/env bash
# Builds kiln-control-plane (controlplane/: etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler in one static binary, CGO_ENABLED=0) from the Go module proxy only.
#
# The binary lands in a cache directory outside the clone, keyed by the module's go.mod, go.sum
# and Go sources, so only a change to them pays the compile (≈ 15 s when scripts/kube-build.sh
# has already compiled the same Kubernetes packages with the same flags, ≈ 8 min cold); it is
# then copied to .cache/deps/kiln-control-plane, where the control-plane image's spec takes it
# from. Prints the binary's path on stdout (last line); progress goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/controlplane"

key=$( (cat go.mod go.sum; find . -name '*.go' -not -name '*_test.go' | LC_ALL=C sort | xargs cat) | sha256sum | cut -c1-16)
k8s=$(grep -oE 'k8s\.io/kubernetes v[0-9.]+' go.mod | head -1 | cut -d' ' -f2)
etcd=$(grep -oE 'go\.etcd\.io/etcd/server/v3 v[0-9.]+' go.mod | head -1 | cut -d' ' -f2)
cache="${KILN_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln/kube}"
out="$cache/control-plane-$k8s-etcd$etcd-$key"
dest="$root/.cache/deps/kiln-control-plane"

mkdir -p "$cache" "$(dirname "$dest")"
exec 9> "$cache/.lock"
flock 9

if [[ ! -x "$out/kiln-control-plane" ]]; then
  export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local
  tmp="$out.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  start=$(date +%s)
  echo "control-plane-build: compiling kiln-control-plane (Kubernetes $k8s, etcd $etcd)" >&2
  # The same flags as scripts/kube-build.sh, so Go's build cache serves the packages both use.
  ver="-X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitTreeState=clean"
  ver="$ver -X k8s.io/client-go/pkg/version.gitVersion=$k8s -X k8s.io/client-go/pkg/version.gitTreeState=clean"
  go build -trimpath -ldflags "-s -w $ver" -o "$tmp/kiln-control-plane" .
  if ldd "$tmp/kiln-control-plane" > /dev/null 2>&1; then
    echo "control-plane-build: kiln-control-plane is not statically linked" >&2
    exit 1
  fi
  rm -rf "$out" && mv "$tmp" "$out"
  trap - EXIT
  # Older builds of the module are dead weight (≈ 130 MiB each).
  for old in "$cache"/control-plane-*; do
    [[ "$old" == "$out" ]] || rm -rf "$old"
  done
  echo "control-plane-build: compiled in $(( $(date +%s) - start )) s," \
    "$(stat -c %s "$out/kiln-control-plane" | awk '{ printf "%.1f MiB", $1 / 1048576 }')" >&2
else
  echo "control-plane-build: cached in $out" >&2
fi
if ! cmp -s "$out/kiln-control-plane" "$dest"; then
  cp "$out/kiln-control-plane" "$dest.tmp.$$" && mv "$dest.tmp.$$" "$dest"
fi
echo "$dest"
