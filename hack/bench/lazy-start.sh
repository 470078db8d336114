#!/usr/bin/env bash
# hack/bench/lazy-start.sh — time from CRI PullImage to the exit of a container that reads 5% of
# its image's files: an image of about 1 GiB and its Nydus conversion in a local registry, the
# OCI image through dfdaemon's mirror and the Nydus image lazily through dfdaemon's
# snapshotter, each cold (empty cache) and warm (image removed from containerd, cache kept).
# Not a test: it prints times, bytes and ratios and never fails on timing. Targets: cold lazy
# <= 0.2x the OCI cold time, registry bytes <= 0.1x the image size, warm <= 1.1x the OCI warm.
# BENCH_MIB (default 1024) sizes the image.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash hack/setup.sh
cargo build --release --workspace --bins
DFRS_BIN_DIR="$PWD/target/release" exec target/release/bench-lazy-start
