#!/usr/bin/env bash
# Builds the upstream Kubernetes components the cluster tests run against: kube-apiserver,
# kube-controller-manager and kubectl (tools/kube/components, k8s.io/kubernetes pinned there)
# and etcd (tools/kube/etcd). Static (CGO_ENABLED=0), from the Go module proxy only.
#
# The binaries land in a cache directory outside the clone, keyed by both modules' go.mod and
# go.sum, so only the first run on a machine pays the compile; Go's own module and build caches
# (also outside the clone) make a rebuild after a pin change cheaper too. Prints the directory
# on stdout (last line); progress and the compile time go to stderr.
set -euo pipefail
cd "$(dirname "$0")/../tools/kube"

key=$(cat components/go.mod components/go.sum etcd/go.mod etcd/go.sum etcd/main.go | sha256sum | cut -c1-16)
k8s=$(grep -oE 'k8s\.io/kubernetes v[0-9.]+' components/go.mod | head -1 | cut -d' ' -f2)
etcd=$(grep -oE 'go\.etcd\.io/etcd/server/v3 v[0-9.]+' etcd/go.mod | head -1 | cut -d' ' -f2)
out="${KILN_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln/kube}/$k8s-etcd$etcd-$key"
bins=(kube-apiserver kube-controller-manager kubectl etcd)

# One build at a time per machine (two test processes may ask at once).
mkdir -p "$(dirname "$out")"
exec 9> "$(dirname "$out")/.lock"
flock 9

have=1
for b in "${bins[@]}"; do [[ -x "$out/$b" ]] || have=0; done
if [[ $have == 1 ]]; then
  echo "kube-build: cached $k8s + etcd $etcd in $out" >&2
  echo "$out"
  exit 0
fi

export CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOTOOLCHAIN=local
tmp="$out.tmp.$$"
rm -rf "$tmp" && mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
echo "kube-build: compiling Kubernetes $k8s and etcd $etcd (only on the first run on a machine: ≈ 7 min on 2 cores, plus the module downloads)" >&2
ver="-X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitTreeState=clean"
ver="$ver -X k8s.io/client-go/pkg/version.gitVersion=$k8s -X k8s.io/client-go/pkg/version.gitTreeState=clean"
(cd components && go build -trimpath -ldflags "-s -w $ver" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl)
(cd etcd && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" .)
for b in "${bins[@]}"; do
  if ldd "$tmp/$b" > /dev/null 2>&1; then
    echo "kube-build: $b is not statically linked" >&2
    exit 1
  fi
done
rm -rf "$out" && mv "$tmp" "$out"
trap - EXIT
secs=$(( $(date +%s) - start ))
echo "kube-build: compiled in ${secs} s:" >&2
(cd "$out" && ls -l "${bins[@]}" | awk '{ printf "kube-build:   %-24s %6.1f MiB\n", $9, $5 / 1048576 }') >&2
echo "$out"
