#!/usr/bin/env bash
# hack/setup.sh — install what building and testing this project needs on Debian 12 (bookworm).
#
# Idempotent: apt-get runs (after one `apt-get update`) only when a package is missing.
# Needs root when something has to be installed. Installs nothing but Debian packages: the
# Rust toolchain must already be there (hack/test.sh adds its rustfmt and clippy components).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# containerd 1.6 + runc: the node runtime the tests drive; docker-registry (distribution 2.8),
# skopeo, umoci: registry and images without Docker; protobuf-compiler: tonic/prost builds;
# fuse3, libfuse3-dev, erofs-utils: lazy loading (FUSE, EROFS); iproute2: network namespaces;
# openssl: the registry token-auth certificate; apache2-utils: htpasswd; busybox-static:
# a runnable test image; jq, curl, procps, bc, ca-certificates: scripts; g++ (with gcc): the
# linker, and libfuzzer-sys's C++ build in hack/test.sh's fuzz step and hack/fuzz.sh;
# postgresql: the manager's tests run their suite on a real PostgreSQL too (each test starts
# its own server on 127.0.0.1 as the postgres user, never the package's own cluster);
# chromium, chromium-driver: the manager's web console is tested in a real headless Chromium
# driven over WebDriver.
PACKAGES=(
  containerd runc docker-registry skopeo umoci protobuf-compiler fuse3 libfuse3-dev
  erofs-utils iproute2 jq curl busybox-static ca-certificates openssl apache2-utils procps bc
  g++ postgresql chromium chromium-driver
)
MIN_RUST=1.88

say() { printf 'hack/setup.sh: %s\n' "$*" >&2; }

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    say "missing Debian packages: ${missing[*]}; run this script as root to install them"
    exit 1
  fi
  say "installing: ${missing[*]}"
  apt-get update -qq
  # Recommends stay on: containerd's pull in containernetworking-plugins (/usr/lib/cni).
  apt-get install -y -qq "${missing[@]}" >/dev/null
  # On a systemd host the docker-registry package starts its own service on :5000; the tests
  # never use that port, but say so rather than stop a service we did not start.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
    say "note: the docker-registry system service is running (on :5000); tests use their own registries"
  fi
else
  say "all ${#PACKAGES[@]} Debian packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [[ -x $HOME/.cargo/bin/cargo ]]; then
    say "cargo is in $HOME/.cargo/bin but not on PATH: export PATH=\$HOME/.cargo/bin:\$PATH"
  else
    say "cargo not found: install a Rust toolchain >= $MIN_RUST (Debian 12's own cargo is too old)"
  fi
  exit 1
fi
rust_version=$(rustc --version | awk '{print $2}')
if [[ $(printf '%s\n%s\n' "$MIN_RUST" "$rust_version" | sort -V | head -1) != "$MIN_RUST" ]]; then
  say "rustc $rust_version is older than the workspace's rust-version $MIN_RUST"
  exit 1
fi
say "ok: rustc $rust_version, $(containerd --version | awk '{print $1, $3}'), $(docker-registry --version 2>&1 | awk '{print $1, $3}'), skopeo $(skopeo --version | awk '{print $3}')"
