#!/usr/bin/env bash
# hack/bench/nydusify.sh — `nydusify convert` (and --reverse) of a 1 GiB, 4-layer gzip image
# between two local registries, against `skopeo copy` of the same image and `nydus-image create`
# of the same layers as local files, all measured in the same run (not a test: it prints ratios
# and never fails on timing). Targets: convert time <= 1.5x max(skopeo copy, nydus-image
# create); nydusify peak RSS <= 300 MB.
# BENCH_MIB (default 1024) sizes the image; BENCH_RUNS (default 3) repeats.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash hack/setup.sh
cargo build --release --workspace --bins
DFRS_BIN_DIR="$PWD/target/release" exec target/release/bench-nydusify
