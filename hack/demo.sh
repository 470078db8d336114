#!/usr/bin/env bash
# hack/demo.sh — the README's demo command. Installs what it needs (hack/setup.sh), builds the
# release binaries, then starts a registry, dfdaemon and containerd on 127.0.0.1 (state in a
# temp dir, all stopped at the end) and pulls a multi-layer image through the mirror twice via
# CRI, printing the time of each pull and the bytes from origin vs cache.
# DEMO_LAYER_MIB (default 48) sets the size of each of the 4 data layers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash hack/setup.sh
cargo build --release --workspace --bins
DFRS_BIN_DIR="$PWD/target/release" exec target/release/demo
