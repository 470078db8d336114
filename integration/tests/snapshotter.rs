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
        containerd
            .ctr_check_random_file(&image.reference, seed, len)
            .await
            .unwrap();
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

/// Whether anything is mounted under `dir` (from /proc/self/mountinfo).
fn mounted_under(dir: &Path) -> bool {
    let m = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.display().to_string();
    m.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| p.starts_with(&d))
}

/// A Nydus image (our conversion of busybox plus a layer holding a 1 MiB and a 24 MiB file) in a
/// registry, a dfdaemon, and a containerd wired to both by `dfinit --snapshotter`.
struct NydusEnv {
    dir: TestDir,
    registry: Registry,
    agent: Agent,
    containerd: Containerd,
    nydus_ref: String,
    /// The snapshotter's root.
    root: std::path::PathBuf,
    /// The bootstrap layer and the blob layers (digest, size).
    boot: (String, u64),
    blobs: Vec<(String, u64)>,
}

async fn nydus_env(name: &str) -> NydusEnv {
    let dir = TestDir::new(name).unwrap();
    let registry = Registry::start(&dir).await.unwrap();
    let source = registry
        .push_image(
            "src/app",
            "v1",
            &[
                LayerSpec::busybox(Compression::Gzip).unwrap(),
                LayerSpec::new(Compression::Gzip)
                    .random_file("data/random-81.bin", 81, MIB)
                    .random_file("data/other.bin", 82, 24 * MIB),
            ],
        )
        .await
        .unwrap();
    let nydus_ref = format!("{}/nydus/app:v1", registry.addr());
    let o = integration::nydusify_convert(&source.reference, &nydus_ref, &dir.join("work"), &[])
        .unwrap();
    assert!(
        o.status.success(),
        "nydusify: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let layers = registry.manifest_layers("nydus/app", "v1").await.unwrap();
    let (boot, blobs) = layers.split_last().unwrap();

    let hosts = dir.join("certs.d");
    let agent = Agent::start(
        &dir,
        "agent",
        &format!("snapshotter:\n  hostsDir: {}\n", hosts.display()),
    )
    .await
    .unwrap();
    let root = dir.join("agent-snapshotter");
    // A plain containerd config; `dfinit` wires it to the mirror and to the snapshotter.
    let cfg = Containerd::write_config(&dir, &ContainerdConfig::new(&hosts)).unwrap();
    let out = integration::agent::dfinit(
        &cfg,
        &registry.url(),
        &agent.proxy_url(),
        &[
            "--snapshotter",
            "--snapshotter-socket",
            agent.snapshotter_socket.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "dfinit: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let containerd = Containerd::start_with_config(&dir, &cfg).await.unwrap();
    assert_eq!(containerd.snapshotter(), "nydus");

    let (boot, blobs) = (boot.clone(), blobs.to_vec());
    NydusEnv {
        dir,
        registry,
        agent,
        containerd,
        nydus_ref,
        root,
        boot,
        blobs,
    }
}

/// A Nydus image started lazily, on a containerd wired by `dfinit --snapshotter` (and to the
/// mirror): its conversion (our `nydusify`) is pulled by CRI through our snapshotter (the
/// bootstrap layer is fetched, no blob layer is), a container on it reads a file with the
/// source's bytes, the registry sends only a fraction of the blob holding that file, and the
/// image's mount goes with the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nydus_image_starts_lazily_through_our_snapshotter() {
    require_root_and_tools(TOOLS);
    let NydusEnv {
        dir: _dir,
        registry,
        agent,
        containerd,
        nydus_ref,
        root,
        boot,
        blobs,
    } = nydus_env("snapshotter-nydus").await;
    let blobs = &blobs;
    // The pull fetches the bootstrap layer and no blob.
    containerd.cri_pull(&nydus_ref).await.unwrap();
    let gets = |digest: &str| -> (usize, u64) {
        let ok: Vec<_> = registry
            .blob_requests(digest)
            .into_iter()
            .filter(|r| r.method == "GET" && (200..300).contains(&r.status))
            .collect();
        (ok.len(), ok.iter().map(|r| r.bytes.unwrap_or(0)).sum())
    };
    wait_for(
        Duration::from_secs(10),
        "the bootstrap layer's GET",
        || async { gets(&boot.0).0 > 0 },
    )
    .await
    .unwrap();
    for (d, _) in blobs {
        assert_eq!(gets(d), (0, 0), "the pull fetched blob {d}");
    }

    // A container reads the 1 MiB file: right bytes, and of the 25 MiB blob holding it the
    // registry sent little more than that file.
    let out = containerd
        .ctr_run(
            &nydus_ref,
            &["/bin/busybox", "sha256sum", "/data/random-81.bin"],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- dfdaemon ---\n{}", agent.log_tail(30)));
    let want = sha256_digest(&random_bytes(81, MIB as usize));
    assert!(
        out.contains(want.trim_start_matches("sha256:")),
        "the container saw: {out}"
    );
    let (data_blob, data_size) = blobs.last().unwrap();
    let sent = gets(data_blob).1;
    assert!(
        sent > 0 && sent < 3 * MIB && *data_size > 20 * MIB,
        "the registry sent {sent} bytes of the {data_size}-byte blob"
    );
    // `ctr run --rm` removed the container: the image's mount went with it.
    wait_for(Duration::from_secs(10), "the image unmounted", || async {
        !mounted_under(&root.join("rafs"))
    })
    .await
    .unwrap();

    // Two running containers of the image share one mount; it stays while one is left and
    // goes with the last.
    for id in ["c1", "c2"] {
        containerd
            .ctr_ok(&[
                "run",
                "-d",
                "--snapshotter",
                "nydus",
                &nydus_ref,
                id,
                "/bin/busybox",
                "sleep",
                "600",
            ])
            .await
            .unwrap();
    }
    assert_eq!(rafs_mounts(&root), 1, "one mount for both containers");
    let stop = |id: &'static str| {
        let c = &containerd;
        async move {
            c.ctr_ok(&["task", "rm", "-f", id]).await.unwrap();
            c.ctr_ok(&["container", "rm", id]).await.unwrap();
        }
    };
    // containerd removes a deleted container's snapshot from ours in its GC, a moment later:
    // wait for that (its directory goes), then the mount must still be there.
    let dirs = snapshot_dirs(&root).len();
    stop("c1").await;
    wait_for(
        Duration::from_secs(30),
        "c1's snapshot removed from ours",
        || async { snapshot_dirs(&root).len() < dirs },
    )
    .await
    .unwrap();
    assert_eq!(rafs_mounts(&root), 1, "the mount went while c2 runs");
    let out = containerd
        .ctr_ok(&[
            "run",
            "--rm",
            "--snapshotter",
            "nydus",
            &nydus_ref,
            "c3",
            "/bin/busybox",
            "sha256sum",
            "/data/random-81.bin",
        ])
        .await
        .unwrap();
    assert!(out.contains(want.trim_start_matches("sha256:")), "{out}");
    stop("c2").await;
    wait_for(
        Duration::from_secs(30),
        "the mount gone with the last container",
        || async { rafs_mounts(&root) == 0 },
    )
    .await
    .unwrap();

    // A corrupt bootstrap (cut short in the unpacked layer): the container does not start, the
    // error names the image and the bootstrap, nothing of the container is left, and dfdaemon
    // keeps serving: with the bootstrap whole again, the image starts.
    let boot_file = snapshot_dirs(&root)
        .into_iter()
        .map(|d| d.join("fs/image/image.boot"))
        .find(|p| p.is_file())
        .expect("the bootstrap layer's snapshot");
    let good = std::fs::read(&boot_file).unwrap();
    std::fs::write(&boot_file, &good[..good.len().min(100)]).unwrap();
    let dirs = snapshot_dirs(&root).len();
    let err = containerd
        .ctr_check_random_file(&nydus_ref, 81, MIB)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mounting the Nydus image") && err.contains("image.boot"),
        "{err}"
    );
    assert_eq!(
        snapshot_dirs(&root).len(),
        dirs,
        "the failed container left a snapshot"
    );
    assert_eq!(rafs_mounts(&root), 0);
    std::fs::write(&boot_file, &good).unwrap();
    containerd
        .ctr_check_random_file(&nydus_ref, 81, MIB)
        .await
        .unwrap();
}

/// Mount points directly under `<root>/rafs` (the images' mounts).
fn rafs_mounts(root: &Path) -> usize {
    let m = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let rafs = root.join("rafs");
    m.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).parent() == Some(rafs.as_path()))
        .count()
}

/// `kill -9` of dfdaemon while a container of a Nydus image reads a file in a loop, page caches
/// dropped meanwhile so the reads reach the mount: the container keeps running, every read it
/// made returns the source's bytes (the ones during the outage wait), and once dfdaemon is back
/// a new container of the image starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nydus_container_keeps_reading_across_kill9_of_dfdaemon() {
    require_root_and_tools(TOOLS);
    let NydusEnv {
        dir: _dir,
        registry: _registry,
        mut agent,
        containerd,
        nydus_ref,
        root,
        ..
    } = nydus_env("snapshotter-kill9").await;
    containerd.cri_pull(&nydus_ref).await.unwrap();
    let want = sha256_digest(&random_bytes(81, MIB as usize));
    let want = want.trim_start_matches("sha256:").to_string();
    let dirs_before = snapshot_dirs(&root);
    containerd
        .ctr_ok(&[
            "run",
            "-d",
            "--snapshotter",
            "nydus",
            &nydus_ref,
            "reader",
            "/bin/busybox",
            "sh",
            "-c",
            "while true; do /bin/busybox sha256sum /data/random-81.bin || echo FAILED; \
             /bin/busybox sleep 1; done > /reads.log 2>&1",
        ])
        .await
        .unwrap();
    // The container's upper directory is the new snapshot directory; its log is there.
    let upper = snapshot_dirs(&root)
        .into_iter()
        .find(|d| !dirs_before.contains(d))
        .expect("the container's snapshot")
        .join("fs");
    let log = upper.join("reads.log");
    let lines = |log: &Path| -> Vec<String> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let drop_caches = || {
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    };
    wait_for(Duration::from_secs(30), "two reads", || async {
        lines(&log).len() >= 2
    })
    .await
    .unwrap();

    agent.kill9().await;
    drop_caches();
    let at_kill = lines(&log).len();
    agent.restart().await.unwrap();
    // Reads go on: three more, with caches dropped before each, so they reach the mount.
    for n in 1..=3 {
        drop_caches();
        wait_for(
            Duration::from_secs(60),
            "reads after the restart",
            || async { lines(&log).len() >= at_kill + n },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail(30)));
    }
    let all = lines(&log);
    let bad: Vec<&String> = all.iter().filter(|l| !l.contains(&want)).collect();
    assert!(bad.is_empty(), "reads that failed or differ: {bad:?}");
    assert!(
        agent.log().contains("image mount taken over"),
        "{}",
        agent.log_tail(30)
    );
    // A new container of the image starts through the restarted dfdaemon (containerd
    // reconnects to the snapshotter after its retry backoff, at most 3 s: until then its calls
    // fail as unavailable).
    wait_for(Duration::from_secs(20), "a new container", || async {
        containerd
            .ctr_check_random_file(&nydus_ref, 81, MIB)
            .await
            .is_ok()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail(30)));
    containerd
        .ctr_ok(&["task", "rm", "-f", "reader"])
        .await
        .unwrap();
    containerd
        .ctr_ok(&["container", "rm", "reader"])
        .await
        .unwrap();
}
