#!/usr/bin/env bash
# hack/bench/lazy.sh — lazy loading: a Nydus image of about 1 GiB (4 layers, many small files and
# some large ones) in a local registry, served by dfdaemon's runtime (kernel EROFS mode and FUSE
# mode) against the same tree on the local filesystem, page cache dropped before each cold run;
# with NYDUS_BIN_DIR (a directory holding Nydus's `nydusd`, built outside this repository), also
# by Nydus's nydusd (registry backend, its default config). Not a test: it prints times and
# ratios and never fails on timing. Targets: cold read of 5% of the files <= 0.5x nydusd's time,
# registry bytes <= 1.25x the bytes read; warm read >= 1.3x nydusd's rate and >= 0.7x the local
# filesystem's; warm stat of every path <= 1.2x local in EROFS mode; dfdaemon RSS with 20
# mounts <= 200 MB.
# BENCH_MIB (default 1024) sizes the image.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash hack/setup.sh
cargo build --release --workspace --bins
DFRS_BIN_DIR="$PWD/target/release" exec target/release/bench-lazy
