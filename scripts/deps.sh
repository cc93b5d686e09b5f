#!/usr/bin/env bash
# Installs the host tools Kiln needs (Debian packages) and prepares the inputs of the default
# image under .cache/deps (idempotent):
#   .cache/deps/kernel               the Debian cloud kernel, extracted and depmod'ed
#   .cache/deps/busybox-rootfs.tar   a busybox-static root (applet symlinks, passwd, group)
#   .cache/deps/venv                 virt-firmware from PyPI (virt-fw-vars enrolls Secure Boot keys)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
deps="$root/.cache/deps"

packages=(qemu-system-x86 qemu-utils ovmf systemd-boot-efi grub-efi-amd64-bin busybox-static e2fsprogs erofs-utils
          gdisk mtools dosfstools cpio kmod zstd time g++ util-linux diffutils ipxe-qemu seabios casync
          cryptsetup-bin binutils osslsigncode openssl python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${missing[@]}" >/dev/null
fi

mkdir -p "$deps/dl"
cd "$deps/dl"

if [ ! -e "$deps/kernel.done" ]; then
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$pkg" ] || { echo "deps: cannot resolve linux-image-cloud-amd64 (run apt-get update)" >&2; exit 1; }
  echo "deps: fetching $pkg"
  rm -f linux-image-*.deb
  apt-get download "$pkg" 2>/dev/null
  rm -rf "$deps/kernel"
  dpkg-deb -x linux-image-*.deb "$deps/kernel"
  depmod -b "$deps/kernel" "${pkg#linux-image-}"
  touch "$deps/kernel.done"
fi

if [ ! -e "$deps/busybox-rootfs.tar" ]; then
  echo "deps: making the busybox root tarball"
  rm -f busybox-static_*.deb
  apt-get download busybox-static 2>/dev/null
  t=$(mktemp -d)
  trap 'rm -rf "$t"' EXIT
  dpkg-deb -x busybox-static_*.deb "$t/pkg"
  r="$t/root"
  mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,var/log,var/lib,dev,proc,sys,run}
  cp "$t/pkg/bin/busybox" "$r/bin/busybox"
  for app in $("$r/bin/busybox" --list-full); do
    [ -e "$r/$app" ] || [ -L "$r/$app" ] || ln -s /bin/busybox "$r/$app"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$r/etc/passwd"
  printf 'root:x:0:\n' > "$r/etc/group"
  chmod 1777 "$r/tmp"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$r" -cf "$deps/busybox-rootfs.tar.tmp" .
  mv "$deps/busybox-rootfs.tar.tmp" "$deps/busybox-rootfs.tar"
fi
if [ ! -x "$deps/venv/bin/virt-fw-vars" ]; then
  echo "deps: installing virt-firmware (PyPI) into $deps/venv"
  rm -rf "$deps/venv"
  python3 -m venv "$deps/venv"
  "$deps/venv/bin/pip" install -q --disable-pip-version-check 'virt-firmware==26.10'
fi
echo "deps: ready in $deps"
