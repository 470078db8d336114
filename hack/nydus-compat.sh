#!/usr/bin/env bash
# hack/nydus-compat.sh — checks our nydus-image against Nydus's own tools, both ways.
#
#   NYDUS_BIN_DIR=/path/to/nydus-2.4/bin sudo -E hack/nydus-compat.sh
#
# NYDUS_BIN_DIR must hold Nydus 2.4's `nydus-image` and `nydusd` (built or downloaded by you;
# this project neither builds nor ships them). Needs root (FUSE mounts, devices, ownership).
# Every step prints PASS or FAIL; the script exits non-zero if any step failed.
#
# 1. Our images (every compressor and digester, plain, with a TOC, with inline meta) pass
#    Nydus's `nydus-image check`, and mount under Nydus's `nydusd` (FUSE, localfs backend) with
#    the source's contents and metadata.
# 2. A merged image of ours (three layers) mounts under nydusd and shows what our unpack shows.
# 3. Images made by Nydus's `nydus-image create` pass our `check` and `unpack` to the source tree.
# 4. Nydus's `nydus-image merge` accepts our layer bootstraps.
# 5. An image our nydusify converted in a registry passes Nydus's `nydus-image check`, and
#    Nydus's `nydusd` mounts it with its registry backend and shows the OCI image's tree
#    (integration/src/bin/nydusify-compat.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${NYDUS_BIN_DIR:?set NYDUS_BIN_DIR to a directory with Nydus 2.4 nydus-image and nydusd}"
NI="$NYDUS_BIN_DIR/nydus-image"
ND="$NYDUS_BIN_DIR/nydusd"
[[ -x $NI && -x $ND ]] || { echo "no nydus-image/nydusd in $NYDUS_BIN_DIR"; exit 2; }
[[ $(id -u) == 0 ]] || { echo "run as root"; exit 2; }
cargo build -q -p nydus --bins
OURS=$PWD/target/debug/nydus-image
W=$(mktemp -d /tmp/dfrs-nydus-compat.XXXXXX)
NYDUSD_PID=
cleanup() {
  if [[ -n $NYDUSD_PID ]]; then kill "$NYDUSD_PID" 2>/dev/null || true; fi
  grep -o " $W/[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
FAILED=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; FAILED=1; }

echo "Nydus: $("$NI" --version | head -2 | tr '\n' ' ')"
python3 - "$W/src" <<'EOF'
import os, random, sys
root = sys.argv[1]
r = random.Random(7)
os.makedirs(f"{root}/d/e", exist_ok=True)
os.makedirs(f"{root}/many", exist_ok=True)
open(f"{root}/hello", "w").write("hello\n")
open(f"{root}/d/text", "w").write(" ".join(r.choice(["a", "bb", "ccc"]) for _ in range(300000)))
open(f"{root}/d/e/random", "wb").write(os.urandom(3 << 20))
open(f"{root}/empty", "w").close()
for i in range(2000):
    open(f"{root}/many/f{i}", "w").write(str(i))
with open(f"{root}/sparse", "wb") as f:
    f.truncate(5 << 20); f.seek(2 << 20); f.write(b"x")
os.link(f"{root}/hello", f"{root}/d/hardlink")
os.symlink("d/text", f"{root}/link")
os.mkfifo(f"{root}/fifo")
os.mknod(f"{root}/null", 0o20666, os.makedev(1, 3))
os.setxattr(f"{root}/hello", "user.k", b"v\n1")
os.setxattr(f"{root}/d", "trusted.t", b"dir")
os.chown(f"{root}/d/text", 100000, 70000)
os.chmod(f"{root}/empty", 0o4755)
EOF

# Metadata and contents of every entry, for comparing two trees.
describe() {
  python3 - "$1" <<'EOF'
import hashlib, os, stat, sys
root = sys.argv[1]
for d, dirs, files in sorted(os.walk(root)):
    for n in sorted(dirs + files):
        p = os.path.join(d, n); st = os.lstat(p)
        x = {}
        for k in sorted(os.listxattr(p, follow_symlinks=False)):
            x[k] = os.getxattr(p, k, follow_symlinks=False).hex()
        line = [os.path.relpath(p, root), oct(st.st_mode), st.st_uid, st.st_gid, st.st_nlink, st.st_rdev, x]
        if stat.S_ISREG(st.st_mode):
            line += [st.st_size, st.st_mtime_ns, hashlib.sha256(open(p, "rb").read()).hexdigest()]
        elif stat.S_ISLNK(st.st_mode):
            line.append(os.readlink(p))
        else:
            line.append(st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else 0)
        print(line)
EOF
}
describe "$W/src" >"$W/src.txt"

# Mounts $1 (bootstrap) with blobs in $2 under nydusd at $3; waits for the mount.
nydusd_mount() {
  local boot=$1 blobs=$2 mnt=$3
  mkdir -p "$mnt" "$W/cache"
  cat >"$W/nydusd.json" <<EOF
{"device":{"backend":{"type":"localfs","config":{"dir":"$blobs"}},"cache":{"type":"blobcache","config":{"work_dir":"$W/cache"}}},"mode":"direct","digest_validate":false,"enable_xattr":true}
EOF
  setsid "$ND" --config "$W/nydusd.json" --mountpoint "$mnt" --bootstrap "$boot" --rlimit-nofile 0 \
    --log-level warn >"$W/nydusd.log" 2>&1 &
  NYDUSD_PID=$!
  for _ in $(seq 50); do
    grep -q " $mnt fuse" /proc/self/mounts && return 0
    sleep 0.1
  done
  cat "$W/nydusd.log"
  return 1
}
nydusd_umount() {
  umount "$1" || umount -l "$1"
  kill "$NYDUSD_PID" 2>/dev/null || true
  wait "$NYDUSD_PID" 2>/dev/null || true
  NYDUSD_PID=
}

# 1. Ours -> Nydus.
for c in zstd lz4_block none; do
  for d in blake3 sha256; do
    for mode in plain toc; do
      name="ours-$c-$d-$mode"
      out="$W/$name"
      mkdir -p "$out/blobs"
      extra=()
      [[ $mode == toc ]] && extra=(--features blob-toc)
      "$OURS" create --compressor "$c" --digester "$d" "${extra[@]}" -D "$out/blobs" -B "$out/boot" "$W/src" >/dev/null
      if "$NI" check "$out/boot" -D "$out/blobs" >"$out/check.log" 2>&1; then pass "$name: nydus-image check"; else fail "$name: nydus-image check (see $out/check.log)"; fi
      if nydusd_mount "$out/boot" "$out/blobs" "$out/mnt"; then
        describe "$out/mnt" >"$out/mnt.txt"
        nydusd_umount "$out/mnt"
        if diff "$W/src.txt" "$out/mnt.txt" >"$out/diff"; then
          pass "$name: nydusd shows the source tree"
        else
          fail "$name: nydusd view differs (see $out/diff)"
        fi
      else
        fail "$name: nydusd did not mount"
      fi
    done
  done
done
out="$W/ours-inline"
mkdir -p "$out"
"$OURS" create --blob-inline-meta --features blob-toc -b "$out/layerblob" "$W/src" >/dev/null
if "$NI" check "$out/layerblob" -D "$out" >"$out/check.log" 2>&1; then pass "ours-inline: nydus-image check reads the bootstrap from the blob"; else fail "ours-inline: nydus-image check (see $out/check.log)"; fi

# 2. Our merged image under nydusd.
out="$W/ours-merged"
mkdir -p "$out/blobs" "$out/l1/a" "$out/l2/a" "$out/l3"
echo one >"$out/l1/a/1"; echo two >"$out/l1/a/2"; cp "$W/src/d/e/random" "$out/l1/r"
echo new >"$out/l2/a/3"; touch "$out/l2/a/.wh.1"; cp "$W/src/d/text" "$out/l2/t"
touch "$out/l3/.wh.r"; echo top >"$out/l3/top"
for i in 1 2 3; do "$OURS" create -D "$out/blobs" -B "$out/$i.boot" "$out/l$i" >/dev/null; done
"$OURS" merge -B "$out/merged.boot" "$out/1.boot" "$out/2.boot" "$out/3.boot" >/dev/null
"$OURS" unpack -B "$out/merged.boot" -D "$out/blobs" --output "$out/m.tar"
mkdir -p "$out/unpacked" && tar -xpf "$out/m.tar" -C "$out/unpacked"
if nydusd_mount "$out/merged.boot" "$out/blobs" "$out/mnt"; then
  if diff -r "$out/unpacked" "$out/mnt" >"$out/diff"; then pass "ours-merged: nydusd shows the merged layers"; else fail "ours-merged: nydusd view differs (see $out/diff)"; fi
  nydusd_umount "$out/mnt"
else
  fail "ours-merged: nydusd did not mount"
fi

# 3. Nydus -> ours.
for c in zstd lz4_block; do
  for d in blake3 sha256; do
    for mode in plain inline; do
      name="nydus-$c-$d-$mode"
      out="$W/$name"
      mkdir -p "$out/blobs"
      if [[ $mode == plain ]]; then
        "$NI" create -t dir-rafs --fs-version 6 --compressor "$c" --digester "$d" -B "$out/boot" -D "$out/blobs" "$W/src" >/dev/null 2>&1
        args=(-B "$out/boot" -D "$out/blobs")
      else
        "$NI" create -t dir-rafs --fs-version 6 --compressor "$c" --digester "$d" --blob-inline-meta --features blob-toc \
          -b "$out/blobs/layer" "$W/src" >/dev/null 2>&1
        args=(-B "$out/blobs/layer")
      fi
      if "$OURS" check "${args[@]}" >"$out/check.log" 2>&1; then pass "$name: our check"; else fail "$name: our check (see $out/check.log)"; fi
      mkdir -p "$out/x"
      if "$OURS" unpack "${args[@]}" --output "$out/u.tar" && tar --xattrs --xattrs-include='*' --numeric-owner -xpf "$out/u.tar" -C "$out/x"; then
        if diff "$W/src.txt" <(describe "$out/x") >"$out/diff"; then
          pass "$name: our unpack reproduces the source"
        else
          fail "$name: our unpack differs (see $out/diff)"
        fi
      else
        fail "$name: our unpack failed"
      fi
    done
  done
done

# 4. Nydus merges our layer bootstraps (named by their blob ids, as nydusify names them).
out="$W/nydus-merges-ours"
mkdir -p "$out/blobs"
ids=()
for i in 1 2 3; do
  "$OURS" create -D "$out/blobs" -B "$out/tmp.boot" -J "$out/j.json" "$W/ours-merged/l$i" >/dev/null
  id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["blobs"][0])' "$out/j.json")
  mv "$out/tmp.boot" "$out/$id"
  ids+=("$out/$id")
done
if "$NI" merge -B "$out/merged.boot" "${ids[@]}" >"$out/merge.log" 2>&1 && "$OURS" check -B "$out/merged.boot" -D "$out/blobs" >/dev/null &&
  "$OURS" unpack -B "$out/merged.boot" -D "$out/blobs" --output "$out/m.tar" && mkdir -p "$out/x" && tar -xpf "$out/m.tar" -C "$out/x" &&
  diff -r "$W/ours-merged/unpacked" "$out/x" >"$out/diff"; then
  pass "nydus-image merge of our layers equals our merge"
else
  fail "nydus-image merge of our layers (see $out/merge.log, $out/diff)"
fi

# 5. nydusify's images under Nydus's tools, from a registry.
if cargo build -q -p integration --bin nydusify-compat &&
  NYDUS_BIN_DIR="$NYDUS_BIN_DIR" target/debug/nydusify-compat >"$W/nydusify.log" 2>&1; then
  pass "nydusify convert: Nydus's check and nydusd (registry backend) accept the image"
else
  cat "$W/nydusify.log"
  fail "nydusify convert: Nydus's tools refused the image (see above)"
fi

if ((FAILED)); then echo "some checks FAILED"; exit 1; fi
echo "all checks passed"
