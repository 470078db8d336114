#!/usr/bin/env bash
# hack/bench/mirror.sh — benchmark of the registry mirror against the registry it fronts,
# measured in the same run (not a test: it prints ratios and never fails on timing).
# BENCH_MIB (default 1024) sizes the blob and the image; BENCH_RUNS (default 3) repeats.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash hack/setup.sh
cargo build --release --workspace --bins
DFRS_BIN_DIR="$PWD/target/release" exec target/release/bench-mirror
