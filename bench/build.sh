#!/usr/bin/env bash
# Benchmark: wall time of `kiln build` for the default image, against a floor measured in the
# same run on the same machine: mkfs.erofs of the same root tree + writing the image's bytes
# (a sparse copy of the finished disk.raw). Prints medians of N runs and the ratio.
#   bench/build.sh [N]      (default N=5; run scripts/deps.sh and scripts/build-device first)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5}
cargo build --release -q -p imagebuilder
kiln=target/release/kiln
export SOURCE_DATE_EPOCH=1700000000
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

"$kiln" build examples/default/image.toml --out "$work/warm" >/dev/null 2>&1   # warm caches
fsck.erofs --extract="$work/tree" "$work/warm/root.img" >/dev/null

builds=()
floors=()
for i in $(seq "$n"); do
  rm -rf "$work/out"
  t0=$(now)
  "$kiln" build examples/default/image.toml --out "$work/out" >/dev/null 2>&1
  t1=$(now)
  builds+=($(( (t1 - t0) / 1000 )))

  rm -f "$work/floor.img" "$work/floor.raw"
  t0=$(now)
  mkfs.erofs --quiet -x-1 -Enoinline_data -T"$SOURCE_DATE_EPOCH" "$work/floor.img" "$work/tree"
  cp --sparse=always "$work/out/disk.raw" "$work/floor.raw"
  sync -f "$work/floor.raw"
  t1=$(now)
  floors+=($(( (t1 - t0) / 1000 )))
done

b=$(printf '%s\n' "${builds[@]}" | median)
f=$(printf '%s\n' "${floors[@]}" | median)
printf 'default image build (kiln build, raw + qcow2):   %8.1f ms  (median of %d)\n' "$(echo "$b/1000" | bc -l)" "$n"
printf 'floor (mkfs.erofs same tree + write image bytes): %8.1f ms\n' "$(echo "$f/1000" | bc -l)"
printf 'ratio build / floor: %.2fx  (goal <= 1.30x)\n' "$(echo "$b/$f" | bc -l)"
