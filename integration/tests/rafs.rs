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
            let tar = case.join("out.tar");
            ok(&[
                "unpack",
                "-B",
                s(&boot),
                "-D",
                s(&blobs),
                "--output",
                s(&tar),
            ]);
            let back = case.join("back");
            extract(&tar, &back);
            assert_same_tree(&src, &back, Compare::ALL);
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
    let back = dir.path().join("back");
    extract(&tar, &back);
    assert_same_tree(&src, &back, Compare::ALL);
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
