//! `nydus-image` end to end: round trips through create and unpack, the kernel's EROFS as an
//! independent reader of our RAFS v6 output, layered images against overlayfs, and corruption.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration::agent::bin;
use integration::fstree::{assert_same_tree, generate, Compare, TreeSpec};
use integration::{require_root_and_tools, TestDir};

fn nydus_image(args: &[&str]) -> Output {
    Command::new(bin("nydus-image"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run nydus-image: {e}"))
}

fn ok(args: &[&str]) -> Output {
    let out = nydus_image(args);
    assert!(
        out.status.success(),
        "nydus-image {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Extracts a tar with GNU tar, preserving everything it can (as root).
fn extract(tar: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    let out = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(tar)
        .arg("-C")
        .arg(dest)
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar -x failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `unpack` of `boot` (blobs in `blobs`) into a tar under `work`, extracted with GNU tar, equals
/// `src`.
fn assert_unpacks_to(boot: &Path, blobs: &Path, src: &Path, work: &Path) {
    let tar = work.join("out.tar");
    ok(&["unpack", "-B", s(boot), "-D", s(blobs), "--output", s(&tar)]);
    let back = work.join("back");
    extract(&tar, &back);
    assert_same_tree(src, &back, Compare::ALL);
}

fn blob_in(dir: &Path) -> PathBuf {
    let mut blobs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        blobs.len(),
        1,
        "expected one blob in {}: {blobs:?}",
        dir.display()
    );
    blobs.pop().unwrap()
}

fn small_spec() -> TreeSpec {
    TreeSpec {
        big_dir_entries: 10_000,
        large_file: 6 << 20,
        depth: 40,
    }
}

#[test]
fn create_then_unpack_reproduces_the_tree_for_every_compressor_and_digester() {
    require_root_and_tools(&["tar"]);
    let dir = TestDir::new("rafs-roundtrip").unwrap();
    let src = dir.path().join("src");
    generate(&src, small_spec());
    for compressor in ["zstd", "lz4_block", "none"] {
        for digester in ["blake3", "sha256"] {
            let case = dir.path().join(format!("{compressor}-{digester}"));
            let blobs = case.join("blobs");
            let boot = case.join("bootstrap");
            ok(&[
                "create",
                "-t",
                "dir-rafs",
                "--compressor",
                compressor,
                "--digester",
                digester,
                "--chunk-size",
                "0x10000",
                "-D",
                s(&blobs),
                "-B",
                s(&boot),
                s(&src),
            ]);
            ok(&["check", "-B", s(&boot), "-D", s(&blobs)]);
            assert_unpacks_to(&boot, &blobs, &src, &case);
        }
    }
}

#[test]
fn a_tar_layer_builds_the_same_tree_as_its_directory() {
    require_root_and_tools(&["tar"]);
    let dir = TestDir::new("rafs-tar").unwrap();
    let src = dir.path().join("src");
    generate(
        &src,
        TreeSpec {
            big_dir_entries: 500,
            large_file: 3 << 20,
            depth: 10,
        },
    );
    let layer = dir.path().join("layer.tar.gz");
    let out = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "--format=pax",
            "-czf",
        ])
        .arg(&layer)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar -c: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blobs = dir.path().join("blobs");
    let boot = dir.path().join("boot");
    ok(&[
        "create",
        "-t",
        "tar-rafs",
        "-D",
        s(&blobs),
        "-B",
        s(&boot),
        s(&layer),
    ]);
    assert_unpacks_to(&boot, &blobs, &src, dir.path());
}

/// Mounts `bootstrap` with the kernel's EROFS, each blob file as an extra device, with mount(2)
/// (mount(8) would insist on loop devices).
struct ErofsMount(PathBuf);

impl ErofsMount {
    fn new(bootstrap: &Path, blobs: &[PathBuf], at: &Path) -> ErofsMount {
        let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !fs.contains("erofs") {
            let _ = Command::new("modprobe").arg("erofs").status();
        }
        let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        assert!(
            fs.contains("erofs"),
            "the kernel has no EROFS support (not in /proc/filesystems, modprobe erofs failed): this test needs it"
        );
        std::fs::create_dir_all(at).unwrap();
        let data: String = blobs
            .iter()
            .map(|b| format!("device={}", b.display()))
            .collect::<Vec<_>>()
            .join(",");
        let cdata = std::ffi::CString::new(data.clone()).unwrap();
        rustix::mount::mount(
            bootstrap,
            at,
            "erofs",
            rustix::mount::MountFlags::RDONLY,
            cdata.as_c_str(),
        )
        .unwrap_or_else(|e| {
            panic!(
                "mount -t erofs {} ({data}) on {}: {e}",
                bootstrap.display(),
                at.display()
            )
        });
        ErofsMount(at.to_path_buf())
    }
}

impl Drop for ErofsMount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn the_kernel_mounts_an_uncompressed_image_and_shows_the_source_tree() {
    require_root_and_tools(&[]);
    let dir = TestDir::new("rafs-kernel").unwrap();
    let src = dir.path().join("src");
    generate(&src, small_spec());
    let blobs = dir.path().join("blobs");
    let boot = dir.path().join("bootstrap");
    ok(&[
        "create",
        "--compressor",
        "none",
        "-D",
        s(&blobs),
        "-B",
        s(&boot),
        s(&src),
    ]);
    let mnt = dir.path().join("mnt");
    let _m = ErofsMount::new(&boot, &[blob_in(&blobs)], &mnt);
    assert_same_tree(&src, &mnt, Compare::ALL);
}

#[test]
fn shared_xattrs_are_stored_once_and_read_back_by_the_kernel_and_by_unpack() {
    require_root_and_tools(&["tar"]);
    let dir = TestDir::new("rafs-shared-xattrs").unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    // cap_net_bind_service (VFS_CAP_REVISION_2).
    let cap = [0u8, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let tag = vec![b't'; 1500];
    for i in 0..200 {
        let f = src.join("bin").join(format!("tool{i}"));
        std::fs::write(&f, format!("tool {i}\n")).unwrap();
        let set = |name: &str, value: &[u8]| {
            rustix::fs::lsetxattr(&f, name, value, rustix::fs::XattrFlags::empty())
                .unwrap_or_else(|e| panic!("setxattr {name}: {e}"))
        };
        set("security.capability", &cap);
        set("user.team", b"platform");
        set("trusted.tag", &tag);
        set("user.id", format!("{i}").as_bytes());
    }
    let blobs = dir.path().join("blobs");
    let boot = dir.path().join("bootstrap");
    let plain_boot = dir.path().join("bootstrap.plain");
    for (b, extra) in [(&boot, Some("--shared-xattrs")), (&plain_boot, None)] {
        let mut args = vec![
            "create",
            "--compressor",
            "none",
            "-D",
            s(&blobs),
            "-B",
            s(b),
        ];
        args.extend(extra);
        args.push(s(&src));
        ok(&args);
    }
    // Each shared value is stored once instead of 200 times.
    let count = |path: &Path, needle: &[u8]| {
        let bytes = std::fs::read(path).unwrap();
        bytes.windows(needle.len()).filter(|w| *w == needle).count()
    };
    assert_eq!(count(&plain_boot, &tag), 200);
    assert_eq!(count(&boot, &tag), 1);
    assert_eq!(count(&boot, b"platform"), 1);
    let inspect = ok(&["inspect", "--json", "-B", s(&boot)]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_ne!(v["superblock"]["xattr_blkaddr"], 0, "{}", v["superblock"]);
    ok(&["check", "-B", s(&boot), "-D", s(&blobs)]);

    let mnt = dir.path().join("mnt");
    let m = ErofsMount::new(&boot, &[blob_in(&blobs)], &mnt);
    assert_same_tree(&src, &mnt, Compare::ALL);
    drop(m);

    assert_unpacks_to(&boot, &blobs, &src, dir.path());
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Three OCI layers (directories holding `.wh.` whiteouts and opaque markers) with deletions,
/// opaque directories, a file replacing a directory and back, re-added files, hardlinks and
/// symlinks.
fn make_layers(root: &Path) -> Vec<PathBuf> {
    let l1 = root.join("l1");
    for (p, d) in [
        ("a/1", "a1"),
        ("a/2", "a2"),
        ("a/3", "a3"),
        ("b/x", "bx"),
        ("b/y", "by"),
        ("c/file", "c v1"),
        ("d/sub/deep", "deep"),
        ("keep", "keep"),
        ("replace-me", "file"),
        ("dir2file/inner", "inner"),
        ("opaque-parent/o/old", "old"),
    ] {
        write(&l1.join(p), d.as_bytes());
    }
    write(
        &l1.join("big"),
        &integration::fstree::pseudo_random(1, 3 << 20),
    );
    let l2 = root.join("l2");
    for (p, d) in [
        ("a/.wh.1", ""),
        ("a/4", "a4"),
        ("b/.wh..wh..opq", ""),
        ("b/z", "bz"),
        ("c/file", "c v2"),
        (".wh.d", ""),
        ("replace-me/now-a-dir", "inside"),
        ("opaque-parent/o/.wh..wh..opq", ""),
        ("opaque-parent/o/new", "new"),
    ] {
        write(&l2.join(p), d.as_bytes());
    }
    write(&l2.join("dir2file"), b"now a file");
    // The same big file again in an upper layer: stored once per layer blob (dedup is per layer).
    write(
        &l2.join("big-copy"),
        &integration::fstree::pseudo_random(1, 3 << 20),
    );
    let l3 = root.join("l3");
    for (p, d) in [
        ("a/1", "a1 again"),
        ("b/.wh.z", ""),
        ("new/deep/file", "n"),
        ("hl", "linked"),
    ] {
        write(&l3.join(p), d.as_bytes());
    }
    std::fs::hard_link(l3.join("hl"), l3.join("new/hl2")).unwrap();
    std::os::unix::fs::symlink("../a/4", l3.join("new/link")).unwrap();
    std::fs::create_dir_all(l3.join("keep-dir")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(l3.join("keep-dir"), std::fs::Permissions::from_mode(0o700)).unwrap();
    vec![l1, l2, l3]
}

/// The overlayfs form of an OCI layer directory: `.wh.name` becomes a 0/0 character device,
/// `.wh..wh..opq` the `trusted.overlay.opaque` xattr on its directory.
fn to_overlay_dir(oci: &Path, out: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(oci)
        .arg(out)
        .status()
        .unwrap();
    assert!(st.success());
    let mut stack = vec![out.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            let name = name.to_str().unwrap();
            let path = e.path();
            if name == ".wh..wh..opq" {
                std::fs::remove_file(&path).unwrap();
                rustix::fs::setxattr(
                    &dir,
                    "trusted.overlay.opaque",
                    b"y",
                    rustix::fs::XattrFlags::empty(),
                )
                .unwrap();
            } else if let Some(hidden) = name.strip_prefix(".wh.") {
                std::fs::remove_file(&path).unwrap();
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    dir.join(hidden),
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::from_raw_mode(0),
                    0,
                )
                .unwrap();
            } else if e.file_type().unwrap().is_dir() {
                stack.push(path);
            }
        }
        // Converting changed the directory's mtime; give it back the layer's.
        let rel = dir.strip_prefix(out).unwrap();
        let md = std::fs::metadata(oci.join(rel)).unwrap();
        use std::os::unix::fs::MetadataExt;
        let ts = rustix::fs::Timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec() as _,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &dir,
            &rustix::fs::Timestamps {
                last_access: ts,
                last_modification: ts,
            },
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
    }
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn merged_layers_show_what_overlayfs_shows_for_the_same_layers() {
    require_root_and_tools(&["tar", "cp"]);
    let dir = TestDir::new("rafs-layers").unwrap();
    let layers = make_layers(dir.path());

    // What overlayfs shows for the three layers stacked (l3 on top).
    let mut lowers = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let ovl = dir.path().join(format!("ovl{i}"));
        to_overlay_dir(l, &ovl);
        lowers.push(ovl);
    }
    let expected = dir.path().join("overlay");
    std::fs::create_dir_all(&expected).unwrap();
    let lowerdir = lowers
        .iter()
        .rev()
        .map(|p| s(p))
        .collect::<Vec<_>>()
        .join(":");
    let opts = std::ffi::CString::new(format!("lowerdir={lowerdir}")).unwrap();
    rustix::mount::mount(
        "overlay",
        &expected,
        "overlay",
        rustix::mount::MountFlags::RDONLY,
        opts.as_c_str(),
    )
    .unwrap_or_else(|e| panic!("mount overlay ({lowerdir}): {e}"));
    let _ovl = Unmount(expected.clone());

    for compressor in ["none", "zstd"] {
        let case = dir.path().join(compressor);
        let blobs = case.join("blobs");
        let mut boots = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let tar = case.join(format!("layer{i}.tar"));
            std::fs::create_dir_all(&case).unwrap();
            let out = Command::new("tar")
                .args(["--numeric-owner", "--format=posix", "-cf"])
                .arg(&tar)
                .arg("-C")
                .arg(l)
                .arg(".")
                .output()
                .unwrap();
            assert!(out.status.success());
            let boot = case.join(format!("layer{i}.boot"));
            ok(&[
                "create",
                "-t",
                "tar-rafs",
                "--compressor",
                compressor,
                "-D",
                s(&blobs),
                "-B",
                s(&boot),
                s(&tar),
            ]);
            boots.push(boot);
        }
        let merged = case.join("merged.boot");
        let mut args = vec!["merge", "-B", s(&merged)];
        args.extend(boots.iter().map(|b| s(b)));
        ok(&args);
        ok(&["check", "-B", s(&merged), "-D", s(&blobs)]);

        let cmp = Compare {
            root_meta: false,
            ..Compare::ALL
        };
        let tar = case.join("merged.tar");
        ok(&[
            "unpack",
            "-B",
            s(&merged),
            "-D",
            s(&blobs),
            "--output",
            s(&tar),
        ]);
        let back = case.join("back");
        extract(&tar, &back);
        assert_same_tree(&expected, &back, cmp);

        if compressor == "none" {
            // The kernel reads the merged bootstrap with the layers' blobs as its devices.
            let inspect = ok(&["inspect", "-B", s(&merged), "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
            let devices: Vec<PathBuf> = v["blobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| blobs.join(b["blob_id"].as_str().unwrap()))
                .collect();
            assert_eq!(devices.len(), 3, "every layer has file data: {devices:?}");
            let mnt = case.join("mnt");
            let _m = ErofsMount::new(&merged, &devices, &mnt);
            assert_same_tree(&expected, &mnt, cmp);
        }
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../nydus/tests/fixtures/nydus-2.4.4")
}

/// Images made by Nydus 2.4.4's own nydus-image: our check, inspect and unpack read them and the
/// unpacked tree equals the source they were made from.
#[test]
fn images_made_by_nydus_are_checked_inspected_and_unpacked() {
    require_root_and_tools(&["tar"]);
    let dir = TestDir::new("rafs-compat").unwrap();
    let src = dir.path().join("src");
    extract(&fixtures().join("source.tar.gz"), &src);
    let cases: Vec<String> = ["zstd", "lz4_block"]
        .iter()
        .flat_map(|c| ["blake3", "sha256"].map(|d| format!("v6-{c}-{d}")))
        .collect();
    for case in &cases {
        let fx = fixtures().join(case);
        let boot = fx.join("bootstrap");
        let blobs = fx.join("blobs");
        let out = ok(&["check", "-B", s(&boot), "-D", s(&blobs), "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["ok"], true, "{case}: {report}");
        assert!(
            report["chunks_checked"].as_u64().unwrap() > 5,
            "{case}: {report}"
        );
        let inspect = ok(&["inspect", "-B", s(&boot), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        let (c, d) = case.trim_start_matches("v6-").split_once('-').unwrap();
        let want_c = if c == "zstd" {
            "Some(Zstd)"
        } else {
            "Some(Lz4Block)"
        };
        let want_d = if d == "blake3" {
            "Some(Blake3)"
        } else {
            "Some(Sha256)"
        };
        assert_eq!(v["superblock"]["compressor"], want_c, "{case}");
        assert_eq!(v["superblock"]["digester"], want_d, "{case}");
        let tar = dir.path().join(format!("{case}.tar"));
        ok(&[
            "unpack",
            "-B",
            s(&boot),
            "-D",
            s(&blobs),
            "--output",
            s(&tar),
        ]);
        let back = dir.path().join(case);
        extract(&tar, &back);
        assert_same_tree(
            &src,
            &back,
            Compare {
                root_meta: false,
                ..Compare::ALL
            },
        );
    }
    // Inline meta + TOC (the layer form nydusify makes): the bootstrap is read from the blob.
    for c in ["zstd", "lz4_block"] {
        for d in ["blake3", "sha256"] {
            let case = format!("v6-{c}-{d}-inline");
            let blob = fixtures().join(&case).join("blob");
            let out = ok(&["check", "-B", s(&blob), "--json"]);
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(report["ok"], true, "{case}: {report}");
            let tar = dir.path().join(format!("{case}.tar"));
            ok(&["unpack", "-B", s(&blob), "--output", s(&tar)]);
            let back = dir.path().join(&case);
            extract(&tar, &back);
            assert_same_tree(
                &src,
                &back,
                Compare {
                    root_meta: false,
                    ..Compare::ALL
                },
            );
        }
    }
    // RAFS v5.
    let fx = fixtures().join("v5-zstd-blake3");
    let boot = fx.join("bootstrap");
    let out = ok(&[
        "check",
        "-B",
        s(&boot),
        "-D",
        s(&fx.join("blobs")),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "v5: {report}");
    let inspect = ok(&["inspect", "-B", s(&boot), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["superblock"]["version"], 5);
    let tar = dir.path().join("v5.tar");
    ok(&[
        "unpack",
        "-B",
        s(&boot),
        "-D",
        s(&fx.join("blobs")),
        "--output",
        s(&tar),
    ]);
    let back = dir.path().join("v5");
    extract(&tar, &back);
    assert_same_tree(
        &src,
        &back,
        Compare {
            root_meta: false,
            ..Compare::ALL
        },
    );
}

/// Our own inline-meta + TOC layers: the bootstrap travels inside the blob, and a merge with
/// `--blob-digests` names the blobs by their digests.
#[test]
fn inline_meta_layers_are_read_from_the_blob_and_merged_by_digest() {
    require_root_and_tools(&["tar"]);
    let dir = TestDir::new("rafs-inline").unwrap();
    let layers = make_layers(dir.path());
    let blobs = dir.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let mut boots = Vec::new();
    let mut digests = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let tmp = dir.path().join(format!("layer{i}.blob"));
        ok(&[
            "create",
            "--blob-inline-meta",
            "--features",
            "blob-toc",
            "-b",
            s(&tmp),
            s(l),
        ]);
        // Stored under its digest, as a registry would.
        let digest = format!(
            "{:x}",
            <sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&tmp).unwrap())
        );
        let stored = blobs.join(&digest);
        std::fs::rename(&tmp, &stored).unwrap();
        ok(&["check", "-B", s(&stored), "--json"]);
        // Extract the layer bootstrap from the blob, for merge.
        let boot = dir.path().join(format!("layer{i}.boot"));
        let inspect = ok(&["inspect", "-B", s(&stored), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(
            v["blobs"][0]["blob_id"],
            "x".repeat(64),
            "inline bootstraps carry the placeholder id"
        );
        boots.push((stored, boot));
        digests.push(digest);
    }
    let merged = dir.path().join("merged.boot");
    let mut args = vec!["merge", "-B", s(&merged), "--blob-digests"];
    let joined = digests.join(",");
    args.push(&joined);
    let blob_paths: Vec<String> = boots.iter().map(|(b, _)| s(b).to_string()).collect();
    args.extend(blob_paths.iter().map(|p| p.as_str()));
    ok(&args);
    ok(&["check", "-B", s(&merged), "-D", s(&blobs)]);
    let tar = dir.path().join("merged.tar");
    ok(&[
        "unpack",
        "-B",
        s(&merged),
        "-D",
        s(&blobs),
        "--output",
        s(&tar),
    ]);
    let back = dir.path().join("back");
    extract(&tar, &back);
    assert_eq!(std::fs::read(back.join("a/1")).unwrap(), b"a1 again");
    assert!(!back.join("d").exists(), "whiteout of d");
    assert!(!back.join("b/x").exists(), "b is opaque in layer 2");
    assert_eq!(std::fs::read(back.join("dir2file")).unwrap(), b"now a file");
}

fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).unwrap();
}

fn check_json(boot: &Path, blobs: &Path) -> (i32, serde_json::Value) {
    let out = nydus_image(&["check", "-B", s(boot), "-D", s(blobs), "--json"]);
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("check was killed: {}", out.status));
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

/// A small image whose `big.bin` has several chunks; returns (dir, bootstrap, blobs dir, blob file).
fn corruptible_image(dir: &TestDir, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let src = dir.path().join(format!("{name}-src"));
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(
        src.join("big.bin"),
        integration::fstree::pseudo_random(9, 200_000),
    )
    .unwrap();
    std::fs::write(src.join("sub/small.txt"), b"small file\n").unwrap();
    let blobs = dir.path().join(format!("{name}-blobs"));
    let boot = dir.path().join(format!("{name}.boot"));
    ok(&[
        "create",
        "--chunk-size",
        "0x10000",
        "-D",
        s(&blobs),
        "-B",
        s(&boot),
        s(&src),
    ]);
    let blob = blob_in(&blobs);
    (boot, blobs, blob)
}

#[test]
fn a_blob_id_that_is_not_a_file_name_is_never_opened() {
    let dir = TestDir::new("rafs-blob-id").unwrap();
    let (boot, blobs, blob) = corruptible_image(&dir, "img");
    let id = blob.file_name().unwrap().to_str().unwrap().to_string();
    // The same id with "../" in front of its last 61 characters, wherever the bootstrap has it.
    let mut bytes = std::fs::read(&boot).unwrap();
    let mut patched = 0;
    let mut at = 0;
    while let Some(pos) = bytes[at..]
        .windows(id.len())
        .position(|w| w == id.as_bytes())
    {
        let pos = at + pos;
        bytes[pos..pos + 3].copy_from_slice(b"../");
        patched += 1;
        at = pos + id.len();
    }
    assert!(patched > 0, "the bootstrap holds the blob id");
    std::fs::write(&boot, &bytes).unwrap();
    for cmd in ["check", "unpack"] {
        let mut args = vec![cmd, "-B", s(&boot), "-D", s(&blobs)];
        let tar = dir.path().join("out.tar");
        if cmd == "unpack" {
            args.extend(["--output", s(&tar)]);
        }
        let out = nydus_image(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {stderr}");
        assert!(stderr.contains("not a file name"), "{cmd}: {stderr}");
        assert!(!tar.exists(), "no partial tar");
    }
}

fn chunks_of(boot: &Path, path: &str) -> Vec<serde_json::Value> {
    let out = ok(&["inspect", "-B", s(boot), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in the image"))["chunks"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_corrupt_chunk_is_reported_by_file_and_chunk_and_never_read() {
    require_root_and_tools(&["tar"]);
    let dir = TestDir::new("rafs-corrupt").unwrap();
    let (boot, blobs, blob) = corruptible_image(&dir, "c");
    let chunks = chunks_of(&boot, "/big.bin");
    assert_eq!(chunks.len(), 4, "200,000 bytes in 64 KiB chunks");
    let c = &chunks[2];
    flip(
        &blob,
        c["compressed_offset"].as_u64().unwrap() + c["compressed_size"].as_u64().unwrap() / 2,
    );

    let (code, report) = check_json(&boot, &blobs);
    assert_eq!(code, 1, "check must fail: {report}");
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "exactly the damaged chunk: {report}");
    assert_eq!(errors[0]["file"], "/big.bin");
    assert_eq!(errors[0]["chunk"], 2);
    assert_eq!(errors[0]["file_offset"], 2 * 0x10000);

    // Reading the file fails naming it; nothing is written as output.
    let tar = dir.path().join("out.tar");
    let out = nydus_image(&[
        "unpack",
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--output",
        s(&tar),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/big.bin: chunk 2"), "{err}");
    assert!(!tar.exists(), "no partial tar is left behind");
}

#[test]
fn a_corrupt_blob_meta_is_reported() {
    require_root_and_tools(&[]);
    let dir = TestDir::new("rafs-corrupt-meta").unwrap();
    let (boot, blobs, blob) = corruptible_image(&dir, "m");
    let inspect = ok(&["inspect", "-B", s(&boot), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let ci_offset = v["blobs"][0]["ci_offset"].as_u64().unwrap();
    let ci_size = v["blobs"][0]["ci_compressed_size"].as_u64().unwrap();
    assert!(ci_size > 0);
    // A byte inside the compressed chunk info array.
    flip(&blob, ci_offset + ci_size / 2);
    let (code, report) = check_json(&boot, &blobs);
    assert_eq!(code, 1, "{report}");
    let errors = report["errors"].as_array().unwrap();
    assert!(errors.iter().any(|e| e["what"] == "blob.meta"), "{report}");
    // The chunks themselves are still fine and still readable.
    assert!(errors.iter().all(|e| e.get("file").is_none()), "{report}");
    let tar = dir.path().join("out.tar");
    ok(&[
        "unpack",
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--output",
        s(&tar),
    ]);

    // A byte in the blob.meta header (its second magic).
    flip(&blob, ci_offset + ci_size / 2);
    flip(&blob, ci_offset + ci_size + 4092);
    let (code, report) = check_json(&boot, &blobs);
    assert_eq!(code, 1, "{report}");
    let msg = report["errors"][0]["error"].as_str().unwrap();
    assert!(msg.contains("magic"), "{report}");
}

#[test]
fn a_corrupt_bootstrap_is_reported_and_nothing_panics() {
    require_root_and_tools(&[]);
    let dir = TestDir::new("rafs-corrupt-boot").unwrap();
    let (boot, blobs, _blob) = corruptible_image(&dir, "b");
    let pristine = std::fs::read(&boot).unwrap();

    // The CRC recorded for a chunk of big.bin (chunk table entry, byte 76 of 80) no longer
    // matches its data: check names the file and chunk.
    let chunks = chunks_of(&boot, "/big.bin");
    let inspect = ok(&["inspect", "-B", s(&boot), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert!(v["superblock"]["chunk_table_entries"].as_u64().unwrap() >= 4);
    let b = nydus::v6::Bootstrap::parse(&pristine).unwrap();
    let table_off = b.ext_superblock().chunk_table_offset;
    let want_index = chunks[1]["index"].as_u64().unwrap() as u32;
    let entry = (0..b.chunk_info_count())
        .find(|i| b.chunk_info(*i).unwrap().index == want_index)
        .unwrap();
    flip(&boot, table_off + entry * 80 + 76);
    let (code, report) = check_json(&boot, &blobs);
    assert_eq!(code, 1, "{report}");
    let errors = report["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["file"] == "/big.bin"
            && e["chunk"] == 1
            && e["error"].as_str().unwrap().contains("CRC32C")),
        "{report}"
    );
    // Reading the file through that bootstrap fails too, naming the file and chunk.
    let tar = dir.path().join("out.tar");
    let out = nydus_image(&[
        "unpack",
        "-B",
        s(&boot),
        "-D",
        s(&blobs),
        "--output",
        s(&tar),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/big.bin: chunk 1") && err.contains("CRC32C"),
        "{err}"
    );

    // A bad superblock field is named.
    std::fs::write(&boot, &pristine).unwrap();
    flip(&boot, 1024 + 12); // s_blkszbits
    let (code, report) = check_json(&boot, &blobs);
    assert_eq!(code, 1, "{report}");
    assert!(
        report["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("s_blkszbits"),
        "{report}"
    );

    // Any single flipped byte: every command ends with 0, 1 or 2, never a crash.
    for step in 0..200u64 {
        let off = (step * 7919) % pristine.len() as u64;
        std::fs::write(&boot, &pristine).unwrap();
        flip(&boot, off);
        for args in [
            vec!["check", "-B", s(&boot), "-D", s(&blobs), "--json"],
            vec!["inspect", "-B", s(&boot), "--json"],
            vec!["stat", "-B", s(&boot)],
        ] {
            let out = nydus_image(&args);
            let code = out.status.code();
            assert!(
                matches!(code, Some(0..=2)),
                "byte {off} flipped: {args:?} ended with {:?}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `--parent-bootstrap`: the new layer's bootstrap describes the whole image, and chunks the
/// parent already stores are not stored again.
#[test]
fn a_layer_built_on_a_parent_reuses_its_chunks_and_describes_the_image() {
    require_root_and_tools(&["tar"]);
    let dir = TestDir::new("rafs-parent").unwrap();
    let base = dir.path().join("base");
    let shared = integration::fstree::pseudo_random(5, 1 << 20);
    write(&base.join("lib/shared.so"), &shared);
    write(&base.join("etc/conf"), b"v1");
    write(&base.join("gone"), b"to be deleted");
    let upper = dir.path().join("upper");
    write(&upper.join("app/copy-of-shared.so"), &shared);
    write(&upper.join("etc/conf"), b"v2");
    write(&upper.join(".wh.gone"), b"");
    let blobs = dir.path().join("blobs");
    let b1 = dir.path().join("base.boot");
    let b2 = dir.path().join("image.boot");
    let j2 = dir.path().join("upper.json");
    ok(&[
        "create",
        "--compressor",
        "none",
        "--chunk-size",
        "0x10000",
        "-D",
        s(&blobs),
        "-B",
        s(&b1),
        s(&base),
    ]);
    ok(&[
        "create",
        "--compressor",
        "none",
        "--chunk-size",
        "0x10000",
        "--parent-bootstrap",
        s(&b1),
        "-D",
        s(&blobs),
        "-B",
        s(&b2),
        "-J",
        s(&j2),
        s(&upper),
    ]);
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&j2).unwrap()).unwrap();
    assert_eq!(
        summary["chunks_deduplicated"], 16,
        "the 1 MiB copy is 16 chunks the parent has: {summary}"
    );
    assert_eq!(
        summary["chunks_stored"], 1,
        "only etc/conf is new: {summary}"
    );

    // The image: base with upper applied (whiteout honoured), from both blobs.
    let expected = dir.path().join("expected");
    write(&expected.join("lib/shared.so"), &shared);
    write(&expected.join("etc/conf"), b"v2");
    write(&expected.join("app/copy-of-shared.so"), &shared);
    let tar = dir.path().join("image.tar");
    ok(&["unpack", "-B", s(&b2), "-D", s(&blobs), "--output", s(&tar)]);
    let back = dir.path().join("back");
    extract(&tar, &back);
    let content_only = Compare {
        ownership: false,
        mtime: false,
        xattrs: false,
        hardlinks: true,
        root_meta: false,
        skip_trusted_xattrs: false,
    };
    assert_same_tree(&expected, &back, content_only);
    let inspect = ok(&["inspect", "-B", s(&b2), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let devices: Vec<PathBuf> = v["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| blobs.join(b["blob_id"].as_str().unwrap()))
        .collect();
    assert_eq!(devices.len(), 2);
    let _m = ErofsMount::new(&b2, &devices, &dir.path().join("mnt"));
    assert_same_tree(&expected, &dir.path().join("mnt"), content_only);
}

/// 16 MiB chunks of incompressible data are stored raw at their full size, which blob.meta v2
/// cannot describe (sizes below 2^24): such a blob gets a v1 chunk info array, and still checks.
#[test]
fn sixteen_mib_raw_chunks_get_a_v1_blob_meta() {
    require_root_and_tools(&[]);
    let dir = TestDir::new("rafs-16m").unwrap();
    let src = dir.path().join("src");
    write(
        &src.join("random"),
        &integration::fstree::pseudo_random(11, 17 << 20),
    );
    let blobs = dir.path().join("blobs");
    let boot = dir.path().join("boot");
    ok(&[
        "create",
        "--chunk-size",
        "0x1000000",
        "-D",
        s(&blobs),
        "-B",
        s(&boot),
        s(&src),
    ]);
    let inspect = ok(&["inspect", "-B", s(&boot), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let features = u32::from_str_radix(
        v["blobs"][0]["features"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    assert_eq!(features & 0x4, 0, "no CHUNK_INFO_V2: {v}");
    assert_eq!(
        v["blobs"][0]["ci_uncompressed_size"],
        2 * 16,
        "two 16-byte v1 entries"
    );
    ok(&["check", "-B", s(&boot), "-D", s(&blobs)]);
}
