//! Our `nydusd` (FUSE) with local blobs and bad input: a truncated bootstrap refuses to mount
//! with a clear error; a blob shorter than its bootstrap says gives EIO for the files past its
//! end while the others read fine and the daemon stays up.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration::agent::bin;
use integration::process::ChildProcess;
use integration::{random_bytes, require_root_and_tools, TestDir};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mounted(mnt: &Path) -> bool {
    let needle = format!(" {} fuse", mnt.display());
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| m.contains(&needle))
}

fn write_config(dir: &TestDir, blobs: &Path) -> std::path::PathBuf {
    let cfg = dir.join("nydusd.json");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "device": {"backend": {"type": "localfs", "config": {"dir": blobs}}},
            "mode": "direct",
        })
        .to_string(),
    )
    .unwrap();
    cfg
}

#[test]
fn bad_bootstraps_and_short_blobs_fail_clearly_and_the_daemon_stays_up() {
    require_root_and_tools(&["fusermount3"]);
    let dir = TestDir::new("nydusd-bad").unwrap();
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Two 3 MiB random files: incompressible, so the second one's chunks lie in the blob's
    // second half.
    let (a, b) = (random_bytes(1, 3 << 20), random_bytes(2, 3 << 20));
    std::fs::write(src.join("a.bin"), &a).unwrap();
    std::fs::write(src.join("b.bin"), &b).unwrap();
    let (blobs, boot) = (dir.join("blobs"), dir.join("image.boot"));
    let o = Command::new(bin("nydus-image"))
        .args(["create", "-D", s(&blobs), "-B", s(&boot), s(&src)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = write_config(&dir, &blobs);
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();

    // A truncated bootstrap: nydusd says so and exits without mounting.
    let bytes = std::fs::read(&boot).unwrap();
    let short_boot = dir.join("short.boot");
    std::fs::write(&short_boot, &bytes[..bytes.len() / 2]).unwrap();
    let o = Command::new(bin("nydusd"))
        .args(["--config", s(&cfg), "--bootstrap", s(&short_boot)])
        .args(["--mountpoint", s(&mnt)])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("bootstrap") && err.contains("short.boot"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!mounted(&mnt));

    // The blob cut to half its size: b.bin's chunks are past its end.
    let blob = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let len = std::fs::metadata(&blob).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let mut cmd = Command::new(bin("nydusd"));
    cmd.args(["--config", s(&cfg), "--bootstrap", s(&boot)])
        .args(["--mountpoint", s(&mnt), "--log-level", "warn"]);
    let mut daemon = ChildProcess::spawn(&dir, "nydusd", cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mounted(&mnt) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(mounted(&mnt), "nydusd did not mount");
    let result = std::panic::catch_unwind(|| {
        // a.bin is whole in the first half.
        assert!(
            std::fs::read(mnt.join("a.bin")).unwrap() == a,
            "a.bin differs"
        );
        // b.bin: EIO, and never bytes that are not b's.
        let mut f = std::fs::File::open(mnt.join("b.bin")).unwrap();
        let mut buf = Vec::new();
        let err = f.read_to_end(&mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(5), "expected EIO, got {err}");
        assert!(
            b.starts_with(&buf),
            "bytes returned before the error are not b.bin's"
        );
        let mut one = [0u8; 1];
        assert!(f.read_at(&mut one, (3 << 20) - 1).is_err());
        // Still up and serving.
        assert!(std::fs::read(mnt.join("a.bin")).unwrap() == a);
    });
    let alive = daemon.is_running();
    let _ = Command::new("umount").arg(&mnt).status();
    drop(daemon);
    if let Err(e) = result {
        let log = std::fs::read_to_string(dir.logs_dir().join("nydusd.log")).unwrap_or_default();
        eprintln!("nydusd's log:\n{log}");
        std::panic::resume_unwind(e);
    }
    assert!(alive, "nydusd exited after the failed reads");
    let log = std::fs::read_to_string(dir.logs_dir().join("nydusd.log")).unwrap_or_default();
    assert!(
        log.contains("beyond the"),
        "the log names the short blob:\n{log}"
    );
}

/// Images made by Nydus 2.4.4's own nydus-image, RAFS v5 and v6, served by our nydusd (FUSE,
/// local blobs): each mount shows the tree the images were made from.
#[test]
fn images_made_by_nydus_v5_and_v6_mount_and_show_their_source() {
    require_root_and_tools(&["fusermount3", "tar"]);
    let dir = TestDir::new("nydusd-fixtures").unwrap();
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../nydus/tests/fixtures/nydus-2.4.4");
    let src = dir.join("src");
    integration::extract_tar(&fixtures.join("source.tar.gz"), &src).unwrap();
    for case in ["v5-zstd-blake3", "v6-zstd-blake3", "v6-lz4_block-sha256"] {
        let fx = fixtures.join(case);
        let cfg = write_config(&dir, &fx.join("blobs"));
        let mnt = dir.join(format!("mnt-{case}"));
        std::fs::create_dir_all(&mnt).unwrap();
        let mut cmd = Command::new(bin("nydusd"));
        cmd.args(["--config", s(&cfg), "--bootstrap", s(&fx.join("bootstrap"))])
            .args(["--mountpoint", s(&mnt), "--log-level", "warn"]);
        let daemon = ChildProcess::spawn(&dir, &format!("nydusd-{case}"), cmd).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !mounted(&mnt) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(mounted(&mnt), "{case}: nydusd did not mount");
        let r = std::panic::catch_unwind(|| {
            integration::fstree::assert_same_tree(
                &src,
                &mnt,
                integration::fstree::Compare {
                    root_meta: false,
                    ..integration::fstree::Compare::ALL
                },
            )
        });
        let _ = Command::new("umount").arg(&mnt).status();
        drop(daemon);
        if let Err(e) = r {
            eprintln!("case {case}");
            std::panic::resume_unwind(e);
        }
    }
}
