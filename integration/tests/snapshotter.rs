//! dfdaemon's containerd snapshotter under a real containerd 1.6: a proxy plugin named
//! `nydus` that CRI unpacks images with.

use integration::agent::Agent;
use integration::cluster::{peer_yaml, Scheduler};
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
    /// The OCI image it was converted from.
    source_ref: String,
    /// The snapshotter's root.
    root: std::path::PathBuf,
    /// The bootstrap layer and the blob layers (digest, size).
    boot: (String, u64),
    blobs: Vec<(String, u64)>,
}

/// Our conversion of busybox plus a layer holding a 1 MiB and a 24 MiB file, in `registry`.
struct NydusImage {
    nydus_ref: String,
    source_ref: String,
    /// The bootstrap layer and the blob layers (digest, size).
    boot: (String, u64),
    blobs: Vec<(String, u64)>,
}

async fn nydus_image(dir: &TestDir, registry: &Registry) -> NydusImage {
    nydus_image_as(dir, registry, "app", Vec::new(), &[]).await
}

/// `src/<name>:v1` (busybox, a layer with `/data/random-81.bin` of 1 MiB and a 24 MiB file, then
/// `extra` layers) and its conversion by our `nydusify` (with `args`) as `nydus/<name>:v1`.
async fn nydus_image_as(
    dir: &TestDir,
    registry: &Registry,
    name: &str,
    extra: Vec<LayerSpec>,
    args: &[&str],
) -> NydusImage {
    let mut layers = vec![
        LayerSpec::busybox(Compression::Gzip).unwrap(),
        LayerSpec::new(Compression::Gzip)
            .random_file("data/random-81.bin", 81, MIB)
            .random_file("data/other.bin", 82, 24 * MIB),
    ];
    layers.extend(extra);
    let source = registry
        .push_image(&format!("src/{name}"), "v1", &layers)
        .await
        .unwrap();
    let nydus_ref = format!("{}/nydus/{name}:v1", registry.addr());
    let work = dir.join(format!("work-{name}"));
    let o = integration::nydusify_convert(&source.reference, &nydus_ref, &work, args).unwrap();
    assert!(
        o.status.success(),
        "nydusify: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let layers = registry
        .manifest_layers(&format!("nydus/{name}"), "v1")
        .await
        .unwrap();
    let (boot, blobs) = layers.split_last().unwrap();
    NydusImage {
        nydus_ref,
        source_ref: source.reference,
        boot: boot.clone(),
        blobs: blobs.to_vec(),
    }
}

/// A node: a dfdaemon named `name` (`extra_yaml` merged into its config) and a containerd
/// wired to it by `dfinit --snapshotter` (mirror for `registry`, snapshotter `nydus`), with our
/// pause image as its sandbox image. Returns both and the snapshotter's root.
async fn node(
    dir: &TestDir,
    registry: &Registry,
    name: &str,
    extra_yaml: &str,
) -> (Agent, Containerd, std::path::PathBuf) {
    let hosts = dir.join(format!("{name}-certs.d"));
    let agent = Agent::start(
        dir,
        name,
        &format!(
            "snapshotter:\n  hostsDir: {}\n{extra_yaml}",
            hosts.display()
        ),
    )
    .await
    .unwrap();
    let root = dir.join(format!("{name}-snapshotter"));
    // A plain containerd config; `dfinit` wires it to the mirror and to the snapshotter.
    let mut cc = ContainerdConfig::new(&hosts);
    cc.sandbox_image = registry.push_pause_image().await.unwrap();
    let cfg = Containerd::write_config(dir, &cc).unwrap();
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
    let containerd = Containerd::start_with_config(dir, &cfg).await.unwrap();
    assert_eq!(containerd.snapshotter(), "nydus");
    (agent, containerd, root)
}

/// An OCI image (busybox and a layer with `/data/random-<seed>.bin` of 1 MiB) as `<repo>:v1` in
/// a registry, and a node wired to it ([`node`]).
async fn oci_node(
    name: &str,
    repo: &str,
    seed: u64,
) -> (
    TestDir,
    Registry,
    integration::ImageInfo,
    Agent,
    Containerd,
    std::path::PathBuf,
) {
    let dir = TestDir::new(name).unwrap();
    let registry = Registry::start(&dir).await.unwrap();
    let image = registry
        .push_image(
            repo,
            "v1",
            &[
                LayerSpec::busybox(Compression::Gzip).unwrap(),
                LayerSpec::new(Compression::Gzip).random_file(
                    format!("data/random-{seed}.bin"),
                    seed,
                    MIB,
                ),
            ],
        )
        .await
        .unwrap();
    let (agent, containerd, root) = node(&dir, &registry, "agent", "").await;
    (dir, registry, image, agent, containerd, root)
}

async fn nydus_env(name: &str) -> NydusEnv {
    nydus_env_with(name, "").await
}

/// [`nydus_env`] with `extra_yaml` merged into dfdaemon's config.
async fn nydus_env_with(name: &str, extra_yaml: &str) -> NydusEnv {
    let dir = TestDir::new(name).unwrap();
    let registry = Registry::start(&dir).await.unwrap();
    let img = nydus_image(&dir, &registry).await;
    let (agent, containerd, root) = node(&dir, &registry, "agent", extra_yaml).await;
    NydusEnv {
        dir,
        registry,
        agent,
        containerd,
        nydus_ref: img.nydus_ref,
        source_ref: img.source_ref,
        root,
        boot: img.boot,
        blobs: img.blobs,
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
        ..
    } = nydus_env("snapshotter-nydus").await;
    let blobs = &blobs;
    // The pull fetches the bootstrap layer and no blob.
    containerd.cri_pull(&nydus_ref).await.unwrap();
    let gets = |digest: &str| (registry.blob_gets(digest), registry.blob_get_bytes(digest));
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

/// `kill -9` of dfdaemon, then a graceful restart, while a container of a Nydus image reads a
/// file in a loop, page caches dropped meanwhile so the reads reach the mount: the container
/// keeps running, every read it made returns the source's bytes (the ones during the outage
/// wait), and once dfdaemon is back a new container of the image starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nydus_container_keeps_reading_across_kill9_and_restart_of_dfdaemon() {
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

    // First a crash (kill -9), then a graceful restart (SIGTERM, as `systemctl restart`
    // sends): after each, the running container's reads go on.
    for graceful in [false, true] {
        if !graceful {
            agent.kill9().await;
        }
        drop_caches();
        let at_stop = lines(&log).len();
        agent.restart().await.unwrap();
        // Three more reads, with caches dropped before each, so they reach the mount.
        for n in 1..=3 {
            drop_caches();
            wait_for(
                Duration::from_secs(60),
                "reads after the restart",
                || async { lines(&log).len() >= at_stop + n },
            )
            .await
            .unwrap_or_else(|e| panic!("graceful: {graceful}: {e}\n{}", agent.log_tail(30)));
        }
        let all = lines(&log);
        let bad: Vec<&String> = all.iter().filter(|l| !l.contains(&want)).collect();
        assert!(
            bad.is_empty(),
            "graceful: {graceful}: reads that failed or differ: {bad:?}"
        );
        assert!(
            agent.log().contains("image mount taken over"),
            "graceful: {graceful}: {}",
            agent.log_tail(30)
        );
    }
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

/// Lines a CRI container wrote to stdout, from its log (`<time> stdout F <line>`).
fn cri_stdout(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(4, ' ');
            let (_, stream, _) = (it.next()?, it.next()?, it.next()?);
            (stream == "stdout").then(|| it.next().unwrap_or("").to_string())
        })
        .collect()
}

/// The way Kubernetes runs it: a pod (RunPodSandbox, our pause image, node network) with a
/// container of the Nydus image and one of its OCI source, both through CRI (CreateContainer,
/// StartContainer) on our snapshotter. The Nydus container starts having fetched only the
/// chunks it read, prints what the OCI one prints, and an exec that hashes every file of the
/// root filesystem gives the same digests in both. Removing the pod unmounts the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nydus_pod_runs_through_cri_and_its_files_hash_like_the_oci_image() {
    require_root_and_tools(TOOLS);
    let env = nydus_env("snapshotter-cri").await;
    let cri = env.containerd.cri();
    cri.pull(&env.nydus_ref, None).await.unwrap();
    cri.pull(&env.source_ref, None).await.unwrap();
    let pod = cri
        .run_pod("lazy", &env.dir.join("pods"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- dfdaemon ---\n{}", env.agent.log_tail(30)));
    let print_and_idle = [
        "/bin/busybox",
        "sh",
        "-c",
        "/bin/busybox sha256sum /data/random-81.bin; \
         trap 'exit 0' TERM; while :; do /bin/busybox sleep 1; done",
    ];
    let nydus = cri
        .start_container(&pod, "nydus", &env.nydus_ref, &print_and_idle)
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- dfdaemon ---\n{}", env.agent.log_tail(30)));
    let want = sha256_digest(&random_bytes(81, MIB as usize));
    let want = format!(
        "{}  /data/random-81.bin",
        want.trim_start_matches("sha256:")
    );
    let nydus_log = pod.log_dir.join("nydus.log");
    wait_for(
        Duration::from_secs(60),
        "the Nydus container's output",
        || async { !cri_stdout(&nydus_log).is_empty() },
    )
    .await
    .unwrap();
    assert_eq!(cri_stdout(&nydus_log), vec![want.clone()]);
    // Started having read 1 MiB: of the 25 MiB blob, the registry sent little more.
    let sent = env.registry.blob_get_bytes(&env.blobs.last().unwrap().0);
    assert!(sent < 3 * MIB, "the registry sent {sent} bytes to start it");
    assert_eq!(rafs_mounts(&env.root), 1);

    let oci = cri
        .start_container(&pod, "oci", &env.source_ref, &print_and_idle)
        .await
        .unwrap();
    let oci_log = pod.log_dir.join("oci.log");
    wait_for(
        Duration::from_secs(60),
        "the OCI container's output",
        || async { !cri_stdout(&oci_log).is_empty() },
    )
    .await
    .unwrap();
    assert_eq!(cri_stdout(&oci_log), cri_stdout(&nydus_log));

    // Every file of the root filesystem (not /proc, /sys, /dev: -xdev), hashed in both.
    let hash_all = [
        "/bin/busybox",
        "sh",
        "-c",
        "cd / && /bin/busybox find . -xdev -type f | /bin/busybox sort | \
         /bin/busybox xargs /bin/busybox sha256sum",
    ];
    let mut outputs = Vec::new();
    for id in [&nydus, &oci] {
        let o = cri
            .exec(id, &hash_all, Duration::from_secs(120))
            .await
            .unwrap();
        assert_eq!(o.exit_code, 0, "exec in {id}: {}", o.stderr);
        outputs.push(o.stdout);
    }
    assert!(
        outputs[0].contains("./data/other.bin") && outputs[0].contains("./bin/busybox"),
        "the exec listed: {}",
        outputs[0]
    );
    assert_eq!(
        outputs[0], outputs[1],
        "the Nydus image's files differ from the OCI image's"
    );
    for id in [&nydus, &oci] {
        assert_eq!(
            cri.container_state(id).await.unwrap().0,
            1,
            "{id} is not running"
        );
    }

    cri.remove_pod(&pod).await.unwrap();
    wait_for(
        Duration::from_secs(30),
        "the image unmounted with the pod",
        || async { rafs_mounts(&env.root) == 0 },
    )
    .await
    .unwrap();
}

/// Two nodes (dfdaemon + containerd each), a scheduler and a seed peer: node 1 starts the Nydus
/// image (its reads fetched lazily, the pieces it touched completed and announced); node 2 then
/// starts the same image fetching nothing from the registry itself, neither the bootstrap layer
/// (a mirror pull) nor a chunk (lazy reads): every byte comes from node 1 or the seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_node_starts_the_nydus_image_from_peers_not_the_registry() {
    require_root_and_tools(TOOLS);
    let dir = TestDir::new("snapshotter-p2p").unwrap();
    let registry = Registry::start(&dir).await.unwrap();
    let img = nydus_image(&dir, &registry).await;
    let sched = Scheduler::start(&dir, "scheduler").unwrap();
    let _seed = Agent::start(&dir, "seed", &peer_yaml("seed", sched.port, true))
        .await
        .unwrap();
    let (a, ca, root_a) = node(
        &dir,
        &registry,
        "node1",
        &peer_yaml("node1", sched.port, false),
    )
    .await;
    let (b, cb, _) = node(
        &dir,
        &registry,
        "node2",
        &peer_yaml("node2", sched.port, false),
    )
    .await;
    sched.wait_hosts(3).await.unwrap();

    ca.cri_pull(&img.nydus_ref).await.unwrap();
    ca.ctr_check_random_file(&img.nydus_ref, 81, MIB)
        .await
        .unwrap_or_else(|e| panic!("node1: {e}\n{}", a.log_tail(30)));
    // Wait until node 1 announces the pieces holding the file it read (from its bootstrap).
    let boot = snapshot_dirs(&root_a)
        .into_iter()
        .map(|d| d.join("fs/image/image.boot"))
        .find(|p| p.is_file())
        .expect("node1's bootstrap");
    let image = nydus::image::from_bytes(std::fs::read(&boot).unwrap(), None, "bootstrap").unwrap();
    let id = image
        .tree
        .lookup(b"data/random-81.bin")
        .expect("the file in the bootstrap");
    let nydus::tree::Kind::File { chunks, .. } = &image.tree.node(id).kind else {
        panic!("not a file");
    };
    let blob_id = image.blobs[chunks[0].blob_index as usize].id.clone();
    let piece = |off: u64| (off / (4 * MIB)) as u32;
    let pieces: std::collections::BTreeSet<u32> = chunks
        .iter()
        .flat_map(|c| {
            piece(c.compressed_offset)
                ..=piece(c.compressed_offset + u64::from(c.compressed_size) - 1)
        })
        .collect();
    a.wait_pieces(
        &blob_id,
        &pieces.into_iter().collect::<Vec<_>>(),
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_tail(30)));

    cb.cri_pull(&img.nydus_ref).await.unwrap();
    cb.ctr_check_random_file(&img.nydus_ref, 81, MIB)
        .await
        .unwrap_or_else(|e| panic!("node2: {e}\n{}", b.log_tail(30)));
    let traffic =
        |t: &str| format!("dragonfly_dfdaemon_download_traffic_bytes_total{{type=\"{t}\"}}");
    let lazy = |s: &str| format!("dragonfly_dfdaemon_lazy_traffic_bytes_total{{source=\"{s}\"}}");
    assert_eq!(
        b.metric(&traffic("back_to_source")).await.unwrap(),
        0.0,
        "node2 fetched from the registry"
    );
    assert_eq!(b.metric(&lazy("origin")).await.unwrap(), 0.0);
    assert!(
        b.metric(&lazy("parent")).await.unwrap() > 0.0,
        "node2's chunks came from no peer"
    );
    assert!(
        b.metric(&traffic("remote_peer")).await.unwrap() > 0.0,
        "node2's bootstrap layer came from no peer"
    );
}

/// GC and mounted images: with a 1 s task TTL, GC passes evict the idle tasks (the bootstrap
/// layer, pulled through the mirror) but not the blob tasks of an image a running container
/// has mounted, whose reads keep coming from the store; once the container is gone, the next
/// passes evict them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_keeps_the_blob_tasks_of_a_mounted_image() {
    require_root_and_tools(TOOLS);
    let env = nydus_env_with(
        "snapshotter-gc",
        "gc:\n  interval: 1s\n  policy:\n    taskTTL: 1s\n",
    )
    .await;
    let agent = &env.agent;
    env.containerd.cri_pull(&env.nydus_ref).await.unwrap();
    // Container IDs are unique on the machine: runc's state is shared by every containerd.
    let held = format!("held-{}", std::process::id());
    env.containerd
        .ctr_ok(&[
            "run",
            "-d",
            "--snapshotter",
            "nydus",
            &env.nydus_ref,
            &held,
            "/bin/busybox",
            "sleep",
            "600",
        ])
        .await
        .unwrap();
    let exec_sum = |exec_id: &'static str| {
        let (containerd, held) = (&env.containerd, held.as_str());
        async move {
            containerd
                .ctr_ok(&[
                    "task",
                    "exec",
                    "--exec-id",
                    exec_id,
                    held,
                    "/bin/busybox",
                    "sha256sum",
                    "/data/random-81.bin",
                ])
                .await
                .unwrap()
        }
    };
    let want = sha256_digest(&random_bytes(81, MIB as usize));
    assert!(exec_sum("sum1")
        .await
        .contains(want.trim_start_matches("sha256:")));
    let blob_ids: Vec<String> = env
        .blobs
        .iter()
        .map(|(d, _)| d.trim_start_matches("sha256:").to_string())
        .collect();
    let boot_id = env.boot.0.trim_start_matches("sha256:").to_string();
    let data_blob = blob_ids.last().unwrap().clone();
    assert!(agent.task_path(&data_blob).exists());
    let gc_runs = || async {
        agent
            .metric("dragonfly_dfdaemon_gc_runs_total")
            .await
            .unwrap()
    };
    // The bootstrap layer's task (idle since the pull) goes.
    wait_for(
        Duration::from_secs(30),
        "GC evicting the bootstrap layer",
        || async { !agent.task_path(&boot_id).exists() },
    )
    .await
    .unwrap();
    // Two more passes, each more than the TTL after the last read.
    let start = gc_runs().await;
    wait_for(Duration::from_secs(30), "two more GC passes", || async {
        gc_runs().await >= start + 2.0
    })
    .await
    .unwrap();
    assert!(
        agent.task_path(&data_blob).exists(),
        "GC evicted a blob task of a mounted image"
    );
    // Reads still come from the store: the registry sends nothing more.
    let sent = |d: &str| env.registry.blob_gets(d);
    let before = sent(&env.blobs.last().unwrap().0);
    // Drop the page cache, so the read reaches the mount and dfdaemon.
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    assert!(exec_sum("sum2")
        .await
        .contains(want.trim_start_matches("sha256:")));
    assert_eq!(sent(&env.blobs.last().unwrap().0), before);

    // Without the container the image is unmounted, and its blob tasks are evicted like any.
    env.containerd
        .ctr_ok(&["task", "rm", "-f", &held])
        .await
        .unwrap();
    env.containerd
        .ctr_ok(&["container", "rm", &held])
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(60),
        "GC evicting the unmounted image's blobs",
        || async { blob_ids.iter().all(|id| !agent.task_path(id).exists()) },
    )
    .await
    .unwrap();
}

/// dfdaemon dies (a test build aborts the process: what `kill -9` leaves) in the middle of
/// Commit (an image's unpack), Prepare (a container's root filesystem) and Remove (containerd's
/// GC removing it). Each time, after a restart, containerd's retry succeeds; at the end, once
/// the image is removed, our snapshotter holds no snapshot and no directory: what the crashes
/// left (an uncommitted extract snapshot, directories of a record never written, a directory of
/// a record removed) is removed by containerd's GC (Remove of what it does not know, Cleanup).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dfdaemon_killed_inside_prepare_commit_or_remove_leaves_consistent_snapshots() {
    require_root_and_tools(TOOLS);
    let (_dir, _registry, image, mut agent, containerd, root) =
        oci_node("snapshotter-crash", "crash/app", 91).await;
    let set_abort = |agent: &Agent, at: Option<&str>| {
        agent
            .edit_config(|c| {
                c["faultInjection"] = match at {
                    Some(at) => serde_json::json!({"abortSnapshotterAt": at}),
                    None => serde_json::json!({}),
                };
            })
            .unwrap()
    };
    // Retries `op` until it succeeds: containerd reconnects to a restarted proxy snapshotter
    // with a backoff of up to a few seconds.
    async fn retried<F, Fut>(what: &str, mut op: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = integration::Result<()>>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match op().await {
                Ok(()) => return,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("{what}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("{what}: {e}"),
            }
        }
    }

    // Commit: the pull fails with dfdaemon; after a restart it succeeds.
    set_abort(&agent, Some("commit"));
    agent.restart().await.unwrap();
    assert!(containerd.cri_pull(&image.reference).await.is_err());
    assert!(
        agent.wait_exited(Duration::from_secs(30)).await,
        "no abort in Commit"
    );
    set_abort(&agent, None);
    agent.restart().await.unwrap();
    retried("the pull after the abort", || async {
        containerd.cri_pull(&image.reference).await.map(drop)
    })
    .await;

    // Prepare: the container does not start; after a restart it does.
    set_abort(&agent, Some("prepare"));
    agent.restart().await.unwrap();
    assert!(containerd
        .ctr_check_random_file(&image.reference, 91, MIB)
        .await
        .is_err());
    assert!(
        agent.wait_exited(Duration::from_secs(30)).await,
        "no abort in Prepare"
    );
    set_abort(&agent, None);
    agent.restart().await.unwrap();
    retried("a container after the abort", || {
        containerd.ctr_check_random_file(&image.reference, 91, MIB)
    })
    .await;

    // Remove: containerd's GC of the image's snapshots dies with dfdaemon. First let the GC
    // after the containers end remove their snapshots (and what the aborts left active).
    let ours = || integration::snapshots::list(&agent.snapshotter_socket);
    if let Err(e) = wait_for(
        Duration::from_secs(30),
        "no active snapshot in ours",
        || async { ours().await.is_ok_and(|l| l.iter().all(|s| s.kind == 3)) },
    )
    .await
    {
        panic!("{e}: {:?}", ours().await);
    }
    set_abort(&agent, Some("remove"));
    agent.restart().await.unwrap();
    // containerd is connected again once Usage (which asks the snapshotter) answers.
    retried("reconnecting", || async {
        containerd
            .ctr_ok(&["snapshots", "--snapshotter", "nydus", "usage"])
            .await
            .map(drop)
    })
    .await;
    let _ = containerd.cri().remove(&image.reference).await;
    assert!(
        agent.wait_exited(Duration::from_secs(30)).await,
        "no abort in Remove"
    );
    set_abort(&agent, None);
    agent.restart().await.unwrap();

    // Pull, run and remove once more, with dfdaemon whole: containerd's GC then removes what
    // the crashes left, and nothing is left on either side.
    retried("the pull after the aborts", || async {
        containerd.cri_pull(&image.reference).await.map(drop)
    })
    .await;
    containerd
        .ctr_check_random_file(&image.reference, 91, MIB)
        .await
        .unwrap();
    containerd.cri().remove(&image.reference).await.unwrap();
    let ours = || integration::snapshots::list(&agent.snapshotter_socket);
    if let Err(e) = wait_for(
        Duration::from_secs(30),
        "no snapshot left in ours",
        || async { ours().await.is_ok_and(|l| l.is_empty()) },
    )
    .await
    {
        panic!("{e}: {:?}", ours().await);
    }
    let theirs = containerd
        .ctr_ok(&["snapshots", "--snapshotter", "nydus", "ls"])
        .await
        .unwrap();
    assert_eq!(
        theirs.lines().count(),
        1,
        "containerd still has snapshots: {theirs}"
    );
    wait_for(
        Duration::from_secs(30),
        "no snapshot directory left",
        || async { snapshot_dirs(&root).is_empty() },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", snapshot_dirs(&root)));
}

/// The snapshotter's metadata is lost (its database deleted while dfdaemon is down) while
/// containerd still has the image's layers: a container of the image fails with an error that
/// names the missing parent and the fix; applying it (removing the image, pulling it again)
/// makes the image run again, and the directories the lost records owned are cleaned up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_snapshotter_metadata_gives_an_error_naming_the_fix_and_the_fix_works() {
    require_root_and_tools(TOOLS);
    let (_dir, _registry, image, mut agent, containerd, root) =
        oci_node("snapshotter-lost", "lost/app", 93).await;
    containerd.cri_pull(&image.reference).await.unwrap();
    containerd
        .ctr_check_random_file(&image.reference, 93, MIB)
        .await
        .unwrap();
    let layers = snapshot_dirs(&root).len();
    assert!(layers >= 2);

    agent.kill9().await;
    std::fs::remove_file(root.join("metadata.redb")).unwrap();
    agent.restart().await.unwrap();
    // containerd reconnects within its backoff; until then the error is `unavailable`.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let err = loop {
        let e = containerd
            .ctr_check_random_file(&image.reference, 93, MIB)
            .await
            .expect_err("a container ran on layers the snapshotter does not know")
            .to_string();
        if !e.contains("navailable") || std::time::Instant::now() > deadline {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        err.contains("snapshotter's metadata") && err.contains("rmi"),
        "the error does not say what is wrong and how to fix it: {err}"
    );

    // The fix the error names: remove the image, pull it again.
    containerd.cri().remove(&image.reference).await.unwrap();
    containerd.cri_pull(&image.reference).await.unwrap();
    containerd
        .ctr_check_random_file(&image.reference, 93, MIB)
        .await
        .unwrap();
    // The lost records' directories went with containerd's GC (Cleanup); the new layers'
    // are there.
    let listed = integration::snapshots::list(&agent.snapshotter_socket)
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "orphaned directories removed",
        || async { snapshot_dirs(&root).len() <= listed.len() },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?} for {listed:?}", snapshot_dirs(&root)));
}

/// A second Nydus image sharing a layer with the first (both converted from sources with that
/// layer): its conversion has the same blob, and a container of it reading the shared file
/// fetches nothing more from the registry; each image has its own mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_image_sharing_a_layer_fetches_no_chunk_twice() {
    require_root_and_tools(TOOLS);
    let env = nydus_env("snapshotter-shared").await;
    let img2 = nydus_image_as(
        &env.dir,
        &env.registry,
        "app2",
        vec![LayerSpec::new(Compression::Gzip).random_file("data/random-84.bin", 84, MIB)],
        &[],
    )
    .await;
    let nydus2 = img2.nydus_ref.clone();
    let layers2: Vec<_> = img2.blobs.iter().chain([&img2.boot]).cloned().collect();
    let shared = &env.blobs.last().unwrap().0;
    assert!(
        layers2.iter().any(|(d, _)| d == shared),
        "the shared layer converted to another blob: {layers2:?} vs {:?}",
        env.blobs
    );
    let gets = |digest: &str| env.registry.blob_get_bytes(digest);
    env.containerd.cri_pull(&env.nydus_ref).await.unwrap();
    env.containerd
        .ctr_check_random_file(&env.nydus_ref, 81, MIB)
        .await
        .unwrap();
    let first = gets(shared);
    assert!(first > 0);

    env.containerd.cri_pull(&nydus2).await.unwrap();
    // A container of each image at once: two mounts, one store.
    // Container IDs are unique on the machine: runc's state is shared by every containerd.
    let keep = format!("keep-{}", std::process::id());
    env.containerd
        .ctr_ok(&[
            "run",
            "-d",
            "--snapshotter",
            "nydus",
            &env.nydus_ref,
            &keep,
            "/bin/busybox",
            "sleep",
            "600",
        ])
        .await
        .unwrap();
    // Drop the page cache: the second image's reads must reach dfdaemon.
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    env.containerd
        .ctr_check_random_file(&nydus2, 81, MIB)
        .await
        .unwrap();
    env.containerd
        .ctr_check_random_file(&nydus2, 84, MIB)
        .await
        .unwrap();
    assert_eq!(
        gets(shared),
        first,
        "the shared blob's chunks were fetched again"
    );
    // The second image's containers are gone: its mount goes (containerd removes their
    // snapshots in its GC, a moment later); the first image's stays with its container.
    wait_for(Duration::from_secs(30), "one mount left", || async {
        rafs_mounts(&env.root) == 1
    })
    .await
    .unwrap();
    env.containerd
        .ctr_ok(&["task", "rm", "-f", &keep])
        .await
        .unwrap();
}

/// A Nydus image in a registry that needs credentials (token auth, no anonymous pulls):
/// containerd pulls it with the kubelet's credentials through the mirror; dfdaemon reads the
/// blobs with its own (`runtime.auths`), through the registry's token flow. Without
/// credentials, the container fails to start with an error naming the registry and what is
/// missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nydus_image_that_needs_credentials_starts_with_dfdaemons_credentials() {
    require_root_and_tools(TOOLS);
    let dir = TestDir::new("snapshotter-auth").unwrap();
    let registry = Registry::start_with_token_auth(&dir).await.unwrap();
    let (user, pass) = registry.credentials().unwrap();
    let img = nydus_image_as(
        &dir,
        &registry,
        "private",
        Vec::new(),
        &[
            "--source-username",
            user,
            "--source-password",
            pass,
            "--target-username",
            user,
            "--target-password",
            pass,
        ],
    )
    .await;
    let nydus_ref = img.nydus_ref.clone();

    // No credentials for dfdaemon: the pull (containerd's credentials) works, the container
    // does not start.
    let (_a1, c1, root1) = node(&dir, &registry, "nocreds", "").await;
    c1.cri_pull_with_auth(&nydus_ref, user, pass).await.unwrap();
    let err = c1
        .ctr_check_random_file(&nydus_ref, 81, MIB)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&registry.addr()) && err.contains("no credentials are configured"),
        "{err}"
    );
    assert_eq!(rafs_mounts(&root1), 0);

    // With runtime.auths: it starts and reads the file.
    let creds = format!(
        "runtime:\n  auths:\n    \"{}\":\n      username: {user}\n      password: {pass}\n",
        registry.addr()
    );
    let (a2, c2, _) = node(&dir, &registry, "creds", &creds).await;
    c2.cri_pull_with_auth(&nydus_ref, user, pass).await.unwrap();
    c2.ctr_check_random_file(&nydus_ref, 81, MIB)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", a2.log_tail(20)));
    let data = &img.blobs.last().unwrap().0;
    let got = registry.blob_get_bytes(data);
    assert!(
        got > 0 && got < 3 * MIB,
        "the registry sent {got} bytes of the data blob"
    );
}
