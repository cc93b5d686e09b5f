#!/usr/bin/env bash
# Benchmark: a full install of a root of more than 900 MiB by `kiln-updater extract` (the
# install's write path: fetch, decompress, verify and write each chunk, then fsync) against
# `curl | zstd -d | dd conv=fsync` of the same root compressed at the same zstd level, both from
# Debian's nginx on 127.0.0.1 (unpacked from its package under .cache/deps/nginx, no service;
# started and stopped by the benchmark). Medians of RUNS alternating runs; prints the ratio
# kiln / pipe (goal <= 1.15x) and peak RSS (goal <= 16 MiB). Implementation:
# xtask/src/install_bench.rs.
#   bench/install.sh [RUNS [--updater BIN] [--parallel N] [--chunk-files] [--work DIR]]
#   (--chunk-files: one file per chunk, the layout an updater from before chunks.pack reads)
#   (RUNS default 3; run scripts/deps.sh and scripts/build-device first)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.cache/deps/nginx
if [ ! -x "$dir/usr/sbin/nginx" ]; then
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  (cd "$dir.tmp" && apt-get download -q nginx >/dev/null 2>&1) || {
    echo "bench: apt-get download nginx failed (run apt-get update)" >&2; exit 1; }
  dpkg-deb -x "$dir.tmp"/nginx_*.deb "$dir.tmp/root"
  rm -rf "$dir" && mv "$dir.tmp/root" "$dir" && rm -rf "$dir.tmp"
fi
cargo build --release -q -p xtask
exec target/release/xtask install-bench --runs "${1:-3}" --nginx "$dir/usr/sbin/nginx" "${@:2}"
