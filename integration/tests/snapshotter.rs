//! dfdaemon's containerd snapshotter under a real containerd 1.6: a proxy plugin named
//! `nydus` that CRI unpacks images with.

use integration::agent::Agent;
use integration::containerd::{ContainerdConfig, HostsToml};
use integration::image::sha256_digest;
use integration::{
    random_bytes, require_root_and_tools, wait_for, Compression, Containerd, LayerSpec, Registry,
    TestDir,
};
use std::path::Path;
use std::time::Duration;

const TOOLS: &[&str] = &[
    "docker-registry",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "skopeo",
];
const MIB: u64 = 1024 * 1024;

/// Numbered snapshot directories under the snapshotter's root.
fn snapshot_dirs(root: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(root.join("snapshots"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.parse::<u64>().is_ok())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An OCI image through our snapshotter: CRI pulls it (every layer unpacked into our snapshot
/// directories), a container runs on the overlay we return and reads a layer's file, and once
/// the image is removed neither containerd nor ours keeps a snapshot of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oci_image_is_unpacked_run_and_removed_through_our_snapshotter() {
    require_root_and_tools(TOOLS);
    let dir = TestDir::new("snapshotter-oci").unwrap();
    let registry = Registry::start(&dir).await.unwrap();
    let image = registry
        .push_image(
            "app/oci",
            "v1",
            &[
                LayerSpec::busybox(Compression::Gzip).unwrap(),
                LayerSpec::random(71, 2 * MIB, Compression::Gzip),
                LayerSpec::random(72, MIB, Compression::None),
            ],
        )
        .await
        .unwrap();
    let agent = Agent::start(&dir, "agent", "").await.unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&agent.snapshotter_socket)
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the snapshotter's socket mode");
    let root = dir.join("agent-snapshotter");

    let hosts = dir.join("certs.d");
    HostsToml::direct(registry.url())
        .write(&hosts, &registry.addr())
        .unwrap();
    let mut cfg = ContainerdConfig::new(&hosts);
    cfg.snapshotter = Some("nydus".into());
    cfg.proxy_snapshotters = vec![("nydus".into(), agent.snapshotter_socket.clone())];
    let cfg = Containerd::write_config(&dir, &cfg).unwrap();
    let containerd = Containerd::start_with_config(&dir, &cfg).await.unwrap();
    assert_eq!(containerd.snapshotter(), "nydus");

    containerd.cri_pull(&image.reference).await.unwrap();
    // Three committed layers in containerd, three directories in ours; the random layer's
    // file is in one of them.
    let snaps = containerd.snapshots().await.unwrap();
    assert_eq!(snaps.len(), 3, "{snaps:?}");
    let dirs = snapshot_dirs(&root);
    assert_eq!(dirs.len(), 3, "{dirs:?}");
    let want = random_bytes(71, 2 * MIB as usize);
    assert!(
        dirs.iter()
            .any(|d| std::fs::read(d.join("fs/data/random-71.bin")).is_ok_and(|b| b == want)),
        "no snapshot holds the layer's file"
    );

    // A container on the image reads both random files.
    for (seed, len) in [(71u64, 2 * MIB), (72, MIB)] {
        let out = containerd
            .ctr_run(
                &image.reference,
                &[
                    "/bin/busybox",
                    "sha256sum",
                    &format!("/data/random-{seed}.bin"),
                ],
            )
            .await
            .unwrap();
        let want = sha256_digest(&random_bytes(seed, len as usize));
        assert!(
            out.contains(want.trim_start_matches("sha256:")),
            "the container saw: {out}"
        );
    }

    // Removed: no snapshot left in containerd (checked by the harness), none in ours.
    containerd
        .remove_image_sync(&image.reference)
        .await
        .unwrap();
    wait_for(Duration::from_secs(10), "our snapshots removed", || async {
        snapshot_dirs(&root).is_empty()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", snapshot_dirs(&root)));
}
