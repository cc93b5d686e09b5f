#!/usr/bin/env bash
# Benchmark: boot time under QEMU (TCG unless a KVM probe passes) from kiln-init's first
# console line to `kiln-ready`, for the default (busybox) image — the baseline —, the Debian
# example (systemd + containerd) and the control-plane example (kiln-control-plane: its
# kiln-ready waits for the API server's /readyz), medians of N boots of the same disk after its
# first boot (reported apart: it seeds persist, and the control plane makes its CA and etcd
# data then). Prints the ratios to the default image, the Debian image's sizes and the
# control-plane binary's size.
#   bench/boot.sh [N]   (default N=3; runs scripts/deps.sh, scripts/debian-base.sh,
#                        scripts/build-device and scripts/control-plane-build.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-3}
scripts/deps.sh >/dev/null
scripts/debian-base.sh >/dev/null
scripts/build-device >/dev/null 2>&1
cpbin=$(scripts/control-plane-build.sh 2>/dev/null)
cargo build --release -q -p imagebuilder
kiln=target/release/kiln
export SOURCE_DATE_EPOCH=1700000000
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One boot of DISK with MEMORY MiB: prints milliseconds from the first "kiln-init:" line to
# "kiln-ready".
boot_ms() {
  python3 - "$kiln" "$1" "$2" <<'PY'
import subprocess, sys, time
kiln, disk, mem = sys.argv[1], sys.argv[2], sys.argv[3]
p = subprocess.Popen([kiln, "run", disk, "--memory", mem, "--until", "kiln-ready", "--timeout", "1200"],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
start = ready = None
accel = "?"
buf = b""
while True:
    chunk = p.stdout.read1(4096)
    if not chunk:
        break
    now = time.monotonic()
    buf += chunk
    for a in (b"Tcg", b"Kvm"):
        if accel == "?" and b"(" + a in buf:
            accel = a.decode().upper()
    if start is None and b"kiln-init:" in buf:
        start = now
    if ready is None and b"kiln-ready" in buf:
        ready = now
    buf = buf[-256:]
p.wait()
if start is None or ready is None:
    sys.exit(f"{disk}: no kiln-init or kiln-ready line")
print(int((ready - start) * 1000), accel)
PY
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A med first
declare -A memory=([default]=1024 [debian]=1024 [control-plane]=2048)
for img in default debian control-plane; do
  "$kiln" build "examples/$img/image.toml" --out "$work/$img" >/dev/null 2>&1
  read -r first[$img] accel < <(boot_ms "$work/$img/disk.raw" "${memory[$img]}")
  runs=()
  for i in $(seq "$n"); do read -r ms _ < <(boot_ms "$work/$img/disk.raw" "${memory[$img]}"); runs+=("$ms"); done
  med[$img]=$(printf '%s\n' "${runs[@]}" | median)
  echo "$img: first boot ${first[$img]} ms; boots ${runs[*]} ms" >&2
done

mib() { echo "scale=1; $1 / 1048576" | bc -l; }
echo "boot to kiln-ready under $accel, medians of $n (kiln-init start → kiln-ready)"
printf '  %-34s %8d ms   (first boot %d ms)\n' "default (busybox) — baseline" "${med[default]}" "${first[default]}"
printf '  %-34s %8d ms   (first boot %d ms)\n' "debian (systemd + containerd)" "${med[debian]}" "${first[debian]}"
printf '  %-34s %8d ms   (first boot %d ms)\n' "control-plane (API /readyz), 2 GiB" "${med[control-plane]}" "${first[control-plane]}"
printf 'ratio debian / default: %.2fx\n' "$(echo "${med[debian]} / ${med[default]}" | bc -l)"
printf 'ratio control-plane / default: %.2fx\n' "$(echo "${med[control-plane]} / ${med[default]}" | bc -l)"
d="$work/debian"
echo "debian image: root.img $(mib "$(stat -c %s "$d/root.img")") MiB, disk.qcow2 $(mib "$(stat -c %s "$d/disk.qcow2")") MiB, disk.raw $(mib "$(stat -c %s "$d/disk.raw")") MiB nominal / $(mib "$(( $(stat -c %b "$d/disk.raw") * 512 ))") MiB allocated"
echo "kiln-control-plane: $(mib "$(stat -c %s "$cpbin")") MiB (static, stripped); control-plane root.img $(mib "$(stat -c %s "$work/control-plane/root.img")") MiB"
