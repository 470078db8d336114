#!/usr/bin/env bash
# hack/bench/rafs.sh — nydus-image create/unpack against tar on the same tree, in the same run
# (not a test: prints ratios, never fails on timing).
#
# The tree (BENCH_MIB, default 1024 MiB) mixes many small text files, some large binaries
# (half compressible) and ~20% duplicated content. Baselines: `tar -c` to a file, and
# `tar -c | zstd -1 -T0` (two processes, zstd on every core) for compressed output; `tar -x` for
# unpack. Target: create with zstd at >= 0.85x the speed of `tar | zstd -1 -T0`. With
# NYDUS_BIN_DIR set, Nydus's own nydus-image creates the same tree too (side by side).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash hack/setup.sh
command -v zstd >/dev/null || apt-get install -y -qq zstd >/dev/null
cargo build --release -p nydus --bin nydus-image
BIN=$PWD/target/release/nydus-image
MIB=${BENCH_MIB:-1024}
W=$(mktemp -d /tmp/dfrs-bench-rafs.XXXXXX)
trap 'rm -rf "$W"' EXIT

echo "generating a ${MIB} MiB tree in $W/src ..."
python3 - "$W/src" "$MIB" <<'EOF'
import os, random, sys
root, mib = sys.argv[1], int(sys.argv[2])
total = mib << 20
rnd = random.Random(42)
words = [''.join(rnd.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rnd.randint(2, 10))) for _ in range(5000)]
written = 0
# ~20% of the bytes: many small text files (1-16 KiB) in nested directories.
small_budget = total // 5
n = 0
while written < small_budget:
    d = os.path.join(root, 'src', f'pkg{n // 500:03d}', f'mod{(n // 50) % 10}')
    os.makedirs(d, exist_ok=True)
    size = rnd.randint(1024, 16384)
    text = []
    length = 0
    while length < size:
        w = rnd.choice(words)
        text.append(w)
        length += len(w) + 1
    data = ' '.join(text).encode()[:size]
    with open(os.path.join(d, f'file{n}.txt'), 'wb') as f:
        f.write(data)
    written += len(data)
    n += 1
# ~60%: large binaries, half random, half repetitive (compressible).
os.makedirs(os.path.join(root, 'bin'), exist_ok=True)
big_budget = total * 4 // 5
i = 0
originals = []
while written < big_budget:
    size = min(rnd.randint(8, 48) << 20, big_budget - written)
    half = size // 2
    data = os.urandom(half) + (b'\x00\x01\x02\x03' * 4096 + os.urandom(1024)) * (((size - half) // 17408) + 1)
    data = data[:size]
    p = os.path.join(root, 'bin', f'blob{i}.bin')
    with open(p, 'wb') as f:
        f.write(data)
    originals.append(p)
    written += size
    i += 1
# ~20%: duplicates of earlier files under other names.
os.makedirs(os.path.join(root, 'copies'), exist_ok=True)
j = 0
while written < total and originals:
    src = originals[j % len(originals)]
    dst = os.path.join(root, 'copies', f'copy{j}.bin')
    with open(src, 'rb') as f:
        data = f.read()[: total - written]
    with open(dst, 'wb') as f:
        f.write(data)
    written += len(data)
    j += 1
print(f"{n} small files, {i} binaries, {j} copies, {written >> 20} MiB")
EOF
sync
files=$(find "$W/src" | wc -l)
bytes=$(du -sb "$W/src" | cut -f1)

t() { # seconds taken by "$@" (best of 3)
  local best=
  for _ in 1 2 3; do
    local s e
    s=$(date +%s.%N)
    if ! "$@" >/dev/null 2>"$W/step.err"; then
      echo "failed: $*" >&2
      cat "$W/step.err" >&2
      exit 1
    fi
    e=$(date +%s.%N)
    local d
    d=$(awk -v a="$e" -v b="$s" 'BEGIN { printf "%.3f", a - b }')
    if [[ -z $best ]] || awk -v a="$d" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$d; fi
  done
  echo "$best"
}

create_zstd() { rm -rf "$W/blobs" && "$BIN" create -D "$W/blobs" -B "$W/boot" "$W/src"; }
create_none() { rm -rf "$W/blobs-none" && "$BIN" create --compressor none -D "$W/blobs-none" -B "$W/boot-none" "$W/src"; }
tar_c() { tar -cf "$W/tree.tar" -C "$W/src" .; }
tar_zstd() { tar -cf - -C "$W/src" . | zstd -1 -T0 -q -f -o "$W/tree.tar.zst"; }
unpack() { "$BIN" unpack -B "$W/boot" -D "$W/blobs" --output "$W/unpacked.tar"; }
tar_x() { rm -rf "$W/x" && mkdir "$W/x" && tar -xf "$W/tree.tar" -C "$W/x"; }

echo "timing (best of 3 each) ..."
T_TAR=$(t tar_c)
T_TARZ=$(t tar_zstd)
T_CREATE=$(t create_zstd)
T_CREATE_NONE=$(t create_none)
T_UNPACK=$(t unpack)
T_TARX=$(t tar_x)
if [[ -n ${NYDUS_BIN_DIR:-} ]]; then
  upstream() { rm -rf "$W/up" "$W/up.boot" && mkdir -p "$W/up" && "$NYDUS_BIN_DIR/nydus-image" create --fs-version 6 --compressor zstd --blob-dir "$W/up" --bootstrap "$W/up.boot" "$W/src"; }
  T_UPSTREAM=$(t upstream)
fi
STAT=$("$BIN" stat -B "$W/boot" --json)
boot_bytes=$(stat -c %s "$W/boot")
blob_bytes=$(du -sb "$W/blobs" | cut -f1)
zst_bytes=$(stat -c %s "$W/tree.tar.zst")
dedup=$(echo "$STAT" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["dedup_ratio"], 3))')

mbps() { awk -v b="$bytes" -v t="$1" 'BEGIN { printf "%.1f", b / 1048576 / t }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "tree: $files entries, $((bytes >> 20)) MiB"
printf '%-40s %8.2f s  %7s MB/s\n' "tar -c (baseline)" "$T_TAR" "$(mbps "$T_TAR")"
printf '%-40s %8.2f s  %7s MB/s\n' "tar -c | zstd -1 -T0 (baseline)" "$T_TARZ" "$(mbps "$T_TARZ")"
printf '%-40s %8.2f s  %7s MB/s\n' "nydus-image create (zstd, blake3)" "$T_CREATE" "$(mbps "$T_CREATE")"
printf '%-40s %8.2f s  %7s MB/s\n' "nydus-image create (none)" "$T_CREATE_NONE" "$(mbps "$T_CREATE_NONE")"
if [[ -n ${T_UPSTREAM:-} ]]; then
  printf '%-40s %8.2f s  %7s MB/s\n' "Nydus's nydus-image create (zstd)" "$T_UPSTREAM" "$(mbps "$T_UPSTREAM")"
fi
printf '%-40s %8.2f s  %7s MB/s\n' "nydus-image unpack (zstd image)" "$T_UNPACK" "$(mbps "$T_UNPACK")"
printf '%-40s %8.2f s  %7s MB/s\n' "tar -x (baseline)" "$T_TARX" "$(mbps "$T_TARX")"
echo
echo "create (zstd) speed / tar|zstd -1 -T0 speed: $(ratio "$T_TARZ" "$T_CREATE")   (target >= 0.85)"
if [[ -n ${T_UPSTREAM:-} ]]; then
  echo "Nydus's create speed / tar|zstd -1 -T0:    $(ratio "$T_TARZ" "$T_UPSTREAM")"
  echo "our create speed / Nydus's create speed:   $(ratio "$T_UPSTREAM" "$T_CREATE")"
fi
echo "create (zstd) time / tar -c time:        $(ratio "$T_CREATE" "$T_TAR")"
echo "unpack time / tar -x time:               $(ratio "$T_UNPACK" "$T_TARX")"
echo "bootstrap bytes per entry:               $(ratio "$boot_bytes" "$files")"
echo "dedup ratio (file bytes / unique bytes): $dedup"
echo "blob bytes / tree bytes:                 $(ratio "$blob_bytes" "$bytes")   (tar.zst: $(ratio "$zst_bytes" "$bytes"))"
