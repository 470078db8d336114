#!/usr/bin/env bash
# hack/bench/scheduler.sh — scheduling decision latency (p50/p99) and peak RSS of the scheduler
# core with 10,000 simulated peers over 100 tasks (not a test: prints numbers, never fails).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
cargo run --release -q -p scheduler --bin scheduler-bench
