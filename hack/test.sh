#!/usr/bin/env bash
# hack/test.sh — what CI runs: system packages (hack/setup.sh), every binary, every test.
#
# Integration tests start their own daemons on free loopback ports, so test binaries run
# two tests at a time. Ends with one line `N passed, N failed` summed over all test binaries
# and exits non-zero if anything failed or did not build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash hack/setup.sh
cargo build --workspace --bins --features dfdaemon/fault-injection

log=$(mktemp -t dfrs-test.XXXXXX)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --features dfdaemon/fault-injection --no-fail-fast -- --test-threads=2 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

read -r passed failed < <(awk '
  /^test result:/ {
    for (i = 2; i <= NF; i++) {
      if ($i == "passed;") p += $(i - 1)
      if ($i == "failed;") f += $(i - 1)
    }
  }
  END { print p + 0, f + 0 }' "$log")

if ((rc != 0 && failed == 0)); then
  echo "cargo test exited with status $rc without a failed test: a build error or a crashed test binary (see above)"
fi
echo "$passed passed, $failed failed"
if ((rc != 0)); then exit "$rc"; fi
if ((failed != 0)); then exit 1; fi
