#!/usr/bin/env bash
# hack/bench/protocol.sh — one parent, one child on loopback: Vortex TCP and Vortex QUIC against
# a raw TCP copy of the same file (not a test: prints ratios). BENCH_MIB (default 1024).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash hack/setup.sh
cargo build --release -p integration --bin bench-protocol
exec target/release/bench-protocol
