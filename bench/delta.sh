#!/usr/bin/env bash
# Benchmark: delta install of v2 over v1 (a 217 MiB root; one 4 MiB file rewritten, 1 MiB added)
# by kiln-updater against `casync extract --seed` (Debian's casync 2, its default 16/64/256 KiB
# chunks), both from the same HTTP/1.1 server on 127.0.0.1; per-request delays of 0 and 10 ms
# stand in for network round trips. Prints bytes, requests, connections, median wall time and
# the ratios Kiln / casync (goal <= 1.00x on both). Implementation: xtask/src/delta.rs.
#   bench/delta.sh [RUNS]    (default 3; run scripts/deps.sh and scripts/build-device first)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p xtask
exec target/release/xtask delta-bench --runs "${1:-3}"
