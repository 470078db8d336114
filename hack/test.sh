#!/usr/bin/env bash
# hack/test.sh — what CI runs (.ci/run). Installs what it needs (hack/setup.sh for Debian
# packages; the rustfmt and clippy components through rustup when `cargo fmt` or `cargo clippy`
# is missing; cargo-nextest from crates.io when missing), then runs these steps in order, cheapest feedback first:
#
#   fmt      cargo fmt --all --check
#   build    every binary of the test build (--features dfdaemon/fault-injection)
#   test     every test of the workspace with cargo-nextest (.config/nextest.toml: each test in
#            its own process, two at a time, a test that runs past 10 minutes is killed and
#            fails), then the doc tests with cargo test --doc
#   clippy   cargo clippy --workspace --all-targets -- -D warnings
#   fuzz     type-check every fuzz target (fuzz/ is outside the workspace, so nothing else
#            builds it): cargo check on stable, no cargo-fuzz, output in fuzz/target
#   release  the release dfdaemon (docs/install.md's build, without fault-injection) must
#            accept the default config and reject one with a `faultInjection` section,
#            naming the key (the test build's dfdaemon must accept that section)
#
# A failed step does not stop the later ones, so one run reports every problem. Each step
# prints its time; the run ends with one `hack/test.sh: FAILED step ...` line per failed step,
# the time of each step, and the line `N passed, N failed` summed over all test binaries. Exits
# non-zero if any step failed or any test failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'hack/test.sh: %s\n' "$*" >&2; }

if ! bash hack/setup.sh; then
  say "FAILED step setup: hack/setup.sh"
  exit 1
fi

# rustfmt and clippy are rustup components that a minimal toolchain lacks.
rust_components=()
cargo fmt --version >/dev/null 2>&1 || rust_components+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || rust_components+=(clippy)
if ((${#rust_components[@]})); then
  if ! command -v rustup >/dev/null 2>&1; then
    say "FAILED step setup: Rust components ${rust_components[*]} are missing and there is no rustup to add them"
    exit 1
  fi
  say "adding Rust components: ${rust_components[*]}"
  if ! rustup component add "${rust_components[@]}"; then
    say "FAILED step setup: rustup component add ${rust_components[*]}"
    exit 1
  fi
fi

# cargo-nextest runs the tests (each in its own process, with a time limit). The machines
# have it; elsewhere it is built from crates.io.
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest from crates.io"
  if ! cargo install --locked cargo-nextest; then
    say "FAILED step setup: cargo install cargo-nextest"
    exit 1
  fi
fi

# A full disk shows up as odd failures far from their cause (a build that dies, a daemon that
# cannot store a piece): say how much there is. A clean run needs about 30 GiB (the debug and
# release builds, and the tests' images and blobs under /tmp).
for d in "$PWD" "${TMPDIR:-/tmp}"; do
  avail=$(df -Pk "$d" | awk 'NR == 2 {print int($4 / 1048576)}')
  say "disk: ${avail} GiB free for $d"
  if ((avail < 30)); then
    say "warning: less than 30 GiB free for $d; the run may fail for want of space"
  fi
done

tmp=$(mktemp -d -t dfrs-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# Sets cpu_now to the CPU seconds (user + system) used so far by this script's finished child
# processes (`times`, which must run in this shell, not in a $(...) subshell).
cpu_now=0
cpu_seconds() {
  times >"$tmp/times"
  cpu_now=$(awk 'NR == 2 {
    for (i = 1; i <= 2; i++) { split($i, t, "m"); sub("s", "", t[2]); s += t[1] * 60 + t[2] }
    printf "%d\n", s
  }' "$tmp/times")
}

failed_steps=()
timings=()
# What the steps that run a function of this script do, for the log and the FAILED lines.
declare -A step_desc=(
  [test]="cargo nextest run --workspace --features dfdaemon/fault-injection; cargo test --doc --workspace"
  [release]="cargo build --release -p dfdaemon, then its dfdaemon --check-config must refuse faultInjection"
)
# run_step NAME COMMAND...: runs COMMAND, records its wall and CPU time, and NAME if it failed.
run_step() {
  local name=$1 start=$SECONDS cpu rc=0 took desc
  shift
  desc=${step_desc[$name]:-$*}
  cpu_seconds
  cpu=$cpu_now
  say "== step $name: $desc"
  "$@" || rc=$?
  cpu_seconds
  took="$((SECONDS - start))s, $((cpu_now - cpu))s CPU"
  timings+=("$name $took")
  if ((rc == 0)); then
    say "== step $name: ok ($took)"
  else
    say "== step $name: FAILED with status $rc ($took)"
    failed_steps+=("$name: $desc (status $rc)")
  fi
}

log=$tmp/test.log

# The test step: the output is kept to count the results.
test_rc=0
run_tests() {
  local rc=0
  cargo nextest run --workspace --features dfdaemon/fault-injection --no-fail-fast \
    2>&1 | tee "$log"
  test_rc=${PIPESTATUS[0]}
  cargo test --doc --workspace --features dfdaemon/fault-injection 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  ((test_rc != 0)) || test_rc=$rc
  return "$test_rc"
}

# The release step: build, then show that the release dfdaemon refuses `faultInjection`.
# Runs in a condition (run_step), where `set -e` is off: every command checks its own status.
release_check() {
  # dfdaemon alone: the other release binaries build from the same code the debug build and
  # clippy already compiled, and building them all doubles the step on two cores.
  cargo build --release -p dfdaemon --bin dfdaemon || return
  local rel=target/release/dfdaemon dbg=target/debug/dfdaemon out rc=0
  local plain=$tmp/plain.yaml faulty=$tmp/fault-injection.yaml
  "$rel" --print-default-config >"$plain" || {
    say "release dfdaemon --print-default-config failed"
    return 1
  }
  { cat "$plain" && printf '\nfaultInjection:\n  corruptUploadedPieces: true\n'; } >"$faulty" || return
  out=$("$rel" --config "$plain" --check-config 2>&1) || {
    say "release dfdaemon rejects its own default config: $out"
    return 1
  }
  # Control: the test build knows the section, so the config below is otherwise valid.
  if [[ ! -x $dbg ]]; then
    say "no $dbg (the build step's binary) to check $faulty with"
    return 1
  fi
  out=$("$dbg" --config "$faulty" --check-config 2>&1) || {
    say "the test build's dfdaemon ($dbg, fault-injection) rejects $faulty: $out"
    return 1
  }
  out=$("$rel" --config "$faulty" --check-config 2>&1) || rc=$?
  if ((rc == 0)); then
    say "release dfdaemon accepted a config with a faultInjection section: the release build must not have the fault-injection feature"
    return 1
  fi
  if [[ $out != *faultInjection* ]]; then
    say "release dfdaemon rejected the faultInjection config (status $rc) without naming the key: $out"
    return 1
  fi
  say "release dfdaemon refuses faultInjection (status $rc): $out"
}

run_step fmt cargo fmt --all --check
run_step build cargo build --workspace --bins --features dfdaemon/fault-injection
run_step test run_tests
run_step clippy cargo clippy --workspace --all-targets -- -D warnings
run_step fuzz cargo check --manifest-path fuzz/Cargo.toml --bins
run_step release release_check

# nextest's summary line ("Summary [ 300.1s] 549 tests run: 548 passed, 1 timed out, 0 skipped")
# and the doc tests' "test result:" lines. A test that timed out counts as failed.
read -r passed failed < <(awk '
  /^ *Summary \[/ || /^test result:/ {
    for (i = 2; i <= NF; i++) {
      w = $i
      sub(/[,;]$/, "", w)
      if (w == "passed") p += $(i - 1)
      if (w == "failed") f += $(i - 1)
      if (w == "out" && $(i - 1) == "timed") f += $(i - 2)
    }
  }
  END { print p + 0, f + 0 }' "$log")

if ((test_rc != 0 && failed == 0)); then
  say "cargo test exited with status $test_rc without a failed test: a build error or a crashed test binary (see above)"
fi
for s in "${failed_steps[@]}"; do
  say "FAILED step $s"
done
times=$(printf "%s; " "${timings[@]}")
say "step times: ${times%; }"
echo "$passed passed, $failed failed"
if ((${#failed_steps[@]} != 0 || failed != 0)); then exit 1; fi
