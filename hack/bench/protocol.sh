#!/usr/bin/env bash
# hack/bench/protocol.sh — one parent (a dfdaemon process), one child on loopback: Vortex TCP and
# Vortex QUIC against a raw TCP copy of the same file, and the parent's peak RSS while serving
# (not a test: prints ratios). BENCH_MIB (default 1024).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash hack/setup.sh
cargo build --release --workspace --bins
export DFRS_BIN_DIR=$PWD/target/release
exec target/release/bench-protocol
