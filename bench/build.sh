#!/usr/bin/env bash
# Benchmark: wall time of `kiln build` for the default image (dm-verity on, as the example
# has it), against a floor measured in the same run on the same machine: mkfs.erofs of the same
# root tree + writing the image's bytes (a sparse copy of the finished disk.raw). Also the same
# spec with verity off, to show what the hash tree costs. Prints medians of N runs and ratios.
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

# The example with verity off (a copy whose relative paths point back into the repository).
cp -r examples/default "$work/noverity"
sed -i -e "s#\.\./\.\./\.cache#$PWD/.cache#g" -e 's#^verity = true#verity = false#' "$work/noverity/image.toml"
grep -q '^verity = false' "$work/noverity/image.toml"

"$kiln" build examples/default/image.toml --out "$work/warm" >/dev/null 2>&1   # warm caches
fsck.erofs --extract="$work/tree" "$work/warm/root.img" >/dev/null

builds=()
plain=()
floors=()
for i in $(seq "$n"); do
  rm -rf "$work/out"
  t0=$(now)
  "$kiln" build examples/default/image.toml --out "$work/out" >/dev/null 2>&1
  t1=$(now)
  builds+=($(( (t1 - t0) / 1000 )))

  rm -rf "$work/out-plain"
  t0=$(now)
  "$kiln" build "$work/noverity/image.toml" --out "$work/out-plain" >/dev/null 2>&1
  t1=$(now)
  plain+=($(( (t1 - t0) / 1000 )))

  rm -f "$work/floor.img" "$work/floor.raw"
  t0=$(now)
  mkfs.erofs --quiet -x-1 -Enoinline_data -T"$SOURCE_DATE_EPOCH" "$work/floor.img" "$work/tree"
  cp --sparse=always "$work/out/disk.raw" "$work/floor.raw"
  sync -f "$work/floor.raw"
  t1=$(now)
  floors+=($(( (t1 - t0) / 1000 )))
done

b=$(printf '%s\n' "${builds[@]}" | median)
p=$(printf '%s\n' "${plain[@]}" | median)
f=$(printf '%s\n' "${floors[@]}" | median)
printf 'default image build (kiln build, raw + qcow2):   %8.1f ms  (median of %d)\n' "$(echo "$b/1000" | bc -l)" "$n"
printf 'the same with verity off:                         %8.1f ms\n' "$(echo "$p/1000" | bc -l)"
printf 'floor (mkfs.erofs same tree + write image bytes): %8.1f ms\n' "$(echo "$f/1000" | bc -l)"
printf 'ratio build / floor: %.2fx  (goal <= 1.30x); verity off: %.2fx; verity on / off: %.2fx\n' \
  "$(echo "$b/$f" | bc -l)" "$(echo "$p/$f" | bc -l)" "$(echo "$b/$p" | bc -l)"
