//! Serving a Nydus image with a `nydusd` binary (ours or Nydus's) in tests and tools.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::fstree::{assert_same_tree, Compare};
use crate::{Registry, TestDir};

/// Mounts the image of bootstrap `boot` (repository `repo` of `reg`) with the `nydusd` binary
/// `nydusd` (registry backend, Nydus's v1 config), runs `before` on the mountpoint, then compares
/// the mount with `expected`; unmounts and stops nydusd whatever happens.
#[allow(clippy::too_many_arguments)]
pub async fn serve_and_compare(
    dir: &TestDir,
    reg: &Registry,
    nydusd: &Path,
    repo: &str,
    boot: &Path,
    expected: &Path,
    cmp: Compare,
    before: impl FnOnce(&Path) + Send + 'static,
) {
    let mnt = dir.join("mnt");
    let cache = dir.join("cache");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&cache).unwrap();
    let cfg = dir.join("nydusd.json");
    std::fs::write(
        &cfg,
        json!({
            "device": {
                "backend": {"type": "registry", "config": {
                    "scheme": "http", "host": reg.addr(), "repo": repo, "timeout": 30
                }},
                "cache": {"type": "blobcache", "config": {"work_dir": cache}},
            },
            "mode": "direct",
            "digest_validate": false,
            "enable_xattr": true,
        })
        .to_string(),
    )
    .unwrap();
    let mut cmd = Command::new(nydusd);
    cmd.arg("--config")
        .arg(&cfg)
        .arg("--mountpoint")
        .arg(&mnt)
        .arg("--bootstrap")
        .arg(boot)
        // Not raising the open-files limit (refused in some sandboxes).
        .args(["--rlimit-nofile", "0", "--log-level", "warn"]);
    let nydusd = crate::process::ChildProcess::spawn(dir, "nydusd", cmd).expect("nydusd");
    let mnt_s = format!(" {} fuse", mnt.display());
    crate::wait_for(
        std::time::Duration::from_secs(20),
        "nydusd's FUSE mount",
        || async { std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| m.contains(&mnt_s)) },
    )
    .await
    .unwrap_or_else(|e| {
        let log = std::fs::read_to_string(dir.logs_dir().join("nydusd.log")).unwrap_or_default();
        panic!("nydusd did not mount the image ({e}); its log:\n{log}")
    });
    let (a, b) = (expected.to_path_buf(), mnt.clone());
    let compared = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            before(&b);
            assert_same_tree(&a, &b, cmp)
        }))
    })
    .await
    .unwrap();
    let _ = Command::new("umount").arg(&mnt).status();
    drop(nydusd);
    if let Err(e) = compared {
        let log = std::fs::read_to_string(dir.logs_dir().join("nydusd.log")).unwrap_or_default();
        eprintln!("nydusd's log:\n{log}");
        std::panic::resume_unwind(e);
    }
}
