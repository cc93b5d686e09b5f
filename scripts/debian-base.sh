#!/usr/bin/env bash
# Makes the base of examples/debian: a Debian bookworm root (minbase + examples/debian/packages)
# made by mmdebstrap, as .cache/debian/rootfs.tar. Rebuilt only when the package list or the
# options below change (their digest is kept in .cache/debian/rootfs.key). Needs root (or
# unprivileged user namespaces) and Debian's package mirror.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
list="$root/examples/debian/packages"
out="$root/.cache/debian"
suite=bookworm
opts=(--variant=minbase --mode=auto --format=tar
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*')
pkgs=$(grep -v '^[[:space:]]*#' "$list" | xargs | tr ' ' ',')
[ -n "$pkgs" ] || { echo "debian-base: $list lists no packages" >&2; exit 1; }
key=$(printf '%s\n' "$suite" "${opts[@]}" "$pkgs" | sha256sum | cut -c1-16)
if [ -f "$out/rootfs.tar" ] && [ "$(cat "$out/rootfs.key" 2>/dev/null)" = "$key" ]; then
  echo "debian-base: $out/rootfs.tar is up to date ($key)"
  exit 0
fi
if ! command -v mmdebstrap >/dev/null; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq mmdebstrap >/dev/null
fi
mkdir -p "$out"
rm -f "$out/rootfs.tar.tmp"
echo "debian-base: mmdebstrap $suite with $pkgs"
start=$(date +%s)
mmdebstrap -q "${opts[@]}" --include="$pkgs" "$suite" "$out/rootfs.tar.tmp"
mv "$out/rootfs.tar.tmp" "$out/rootfs.tar"
echo "$key" > "$out/rootfs.key"
echo "debian-base: $out/rootfs.tar ($(du -m "$out/rootfs.tar" | cut -f1) MiB) in $(( $(date +%s) - start )) s"
