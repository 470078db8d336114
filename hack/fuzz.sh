#!/usr/bin/env bash
# hack/fuzz.sh [SECONDS] — runs every fuzz target (fuzz/fuzz_targets) for SECONDS each
# (default 30) with cargo-fuzz. cargo-fuzz needs nightly compiler features; with only a stable
# toolchain available, RUSTC_BOOTSTRAP=1 enables them for this build only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs=${1:-30}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
for t in $(cargo fuzz list); do
  echo "== fuzz $t for ${secs}s"
  cargo fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=2048
done
