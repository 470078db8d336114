//! containerd (CRI) pulling through dfdaemon's mirror, wired by dfinit:
//! every blob byte fetched from the registry once, re-pulls served from cache,
//! and token-authenticated registries working through the mirror.

use integration::agent::{dfinit, Agent};
use integration::cluster::{start_peers, Scheduler};
use integration::{
    require_root_and_tools, wait_for, Compression, Containerd, ImageInfo, LayerSpec, Registry,
    TestDir,
};
use std::time::Duration;

const TOOLS: &[&str] = &[
    "docker-registry",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "skopeo",
    "openssl",
];
const MIB: u64 = 1024 * 1024;

/// A containerd config without `config_path`, then `dfinit` wires it to the mirror.
fn wire_with_dfinit(dir: &TestDir, registry: &Registry, agent: &Agent) -> std::path::PathBuf {
    let hosts = dir.join("certs.d");
    let cfg = Containerd::write_default_config(dir, &hosts).unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let stripped: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("config_path"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(
        stripped, text,
        "the harness config should have had config_path"
    );
    std::fs::write(&cfg, &stripped).unwrap();
    let out = dfinit(
        &cfg,
        &registry.url(),
        &agent.proxy_url(),
        &["--config-path", hosts.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dfinit failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hosts_toml =
        std::fs::read_to_string(hosts.join(registry.addr()).join("hosts.toml")).unwrap();
    assert!(hosts_toml.contains(&agent.proxy_url()), "{hosts_toml}");
    assert!(
        hosts_toml.contains(&format!("X-Dragonfly-Registry = \"{}\"", registry.url())),
        "{hosts_toml}"
    );
    let new_cfg = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        new_cfg.contains(&format!("config_path = \"{}\"", hosts.display())),
        "{new_cfg}"
    );
    cfg
}

/// Bytes the registry sent for `digest`, summed over its successful GETs.
fn registry_bytes(registry: &Registry, digest: &str) -> u64 {
    registry
        .blob_requests(digest)
        .iter()
        .filter(|r| r.method == "GET" && (200..300).contains(&r.status))
        .map(|r| r.bytes.unwrap_or(0))
        .sum()
}

async fn wait_registry_bytes(registry: &Registry, image: &ImageInfo) {
    let sizes = blob_sizes(image);
    wait_for(Duration::from_secs(10), "registry access log", || async {
        sizes.iter().all(|(d, s)| registry_bytes(registry, d) >= *s)
    })
    .await
    .unwrap();
}

fn blob_sizes(image: &ImageInfo) -> Vec<(String, u64)> {
    let mut v = image.layers.clone();
    v.push(image.config.clone());
    v
}

fn total_blob_bytes(image: &ImageInfo) -> u64 {
    blob_sizes(image).iter().map(|(_, s)| s).sum()
}

async fn run_and_check(containerd: &Containerd, image: &ImageInfo, seed: u64, len: u64) {
    containerd
        .ctr_check_random_file(&image.reference, seed, len)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cri_pull_through_the_mirror_fetches_each_blob_once_and_repulls_from_cache() {
    require_root_and_tools(TOOLS);
    let dir = TestDir::new("containerd-mirror").unwrap();
    let registry = Registry::start(&dir).await.unwrap();
    let image = registry
        .push_image(
            "app/multi",
            "v1",
            &[
                LayerSpec::busybox(Compression::Gzip).unwrap(),
                LayerSpec::random(61, 3 * MIB, Compression::Gzip),
                LayerSpec::random(62, 9 * MIB, Compression::None),
                LayerSpec::random(63, 13 * MIB, Compression::Gzip),
            ],
        )
        .await
        .unwrap();
    assert_eq!(image.layers.len(), 4);
    let agent = Agent::start(&dir, "dfdaemon", "").await.unwrap();
    let cfg = wire_with_dfinit(&dir, &registry, &agent);
    let containerd = Containerd::start_with_config(&dir, &cfg).await.unwrap();

    let image_ref = containerd.cri_pull(&image.reference).await.unwrap();
    assert_eq!(image_ref, image.config.0);
    let content = containerd.content_digests().await.unwrap();
    for (d, _) in blob_sizes(&image) {
        assert!(
            content.contains(&d),
            "{d} missing from containerd's content store"
        );
    }
    // Every byte of every blob left the registry exactly once (large blobs in
    // several ranged GETs), and all of it came through dfdaemon.
    wait_registry_bytes(&registry, &image).await;
    for (d, size) in blob_sizes(&image) {
        assert_eq!(
            registry_bytes(&registry, &d),
            size,
            "bytes of {d} sent by the registry"
        );
    }
    let b2s = agent
        .metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"back_to_source\"}")
        .await
        .unwrap();
    assert_eq!(b2s as u64, total_blob_bytes(&image));
    run_and_check(&containerd, &image, 63, 13 * MIB).await;

    // Remove the image (content and snapshots) and pull again: no blob GET
    // reaches the registry; the cache served exactly the blobs' bytes.
    containerd
        .remove_image_sync(&image.reference)
        .await
        .unwrap();
    let gets_before: usize = blob_sizes(&image)
        .iter()
        .map(|(d, _)| registry.blob_requests(d).len())
        .sum();
    let cache_before = agent
        .metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"local_cache\"}")
        .await
        .unwrap();
    containerd.cri_pull(&image.reference).await.unwrap();
    let content = containerd.content_digests().await.unwrap();
    for (d, _) in blob_sizes(&image) {
        assert!(content.contains(&d), "{d} missing after the re-pull");
    }
    // Let the access log catch up with anything that might have been sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gets_after: usize = blob_sizes(&image)
        .iter()
        .map(|(d, _)| registry.blob_requests(d).len())
        .sum();
    assert_eq!(
        gets_after, gets_before,
        "the re-pull sent blob requests to the registry"
    );
    let cache_after = agent
        .metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"local_cache\"}")
        .await
        .unwrap();
    assert_eq!(
        (cache_after - cache_before) as u64,
        total_blob_bytes(&image)
    );
    run_and_check(&containerd, &image, 63, 13 * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_authenticated_registry_pulls_through_the_mirror() {
    require_root_and_tools(TOOLS);
    let dir = TestDir::new("containerd-mirror-token").unwrap();
    let registry = Registry::start_with_token_auth(&dir).await.unwrap();
    let (user, password) = registry
        .credentials()
        .map(|(u, p)| (u.to_string(), p.to_string()))
        .unwrap();
    let image = registry
        .push_image(
            "private/app",
            "v1",
            &[
                LayerSpec::busybox(Compression::Gzip).unwrap(),
                LayerSpec::random(71, 6 * MIB, Compression::Gzip),
            ],
        )
        .await
        .unwrap();
    let agent = Agent::start(&dir, "dfdaemon", "").await.unwrap();
    let cfg = wire_with_dfinit(&dir, &registry, &agent);
    let containerd = Containerd::start_with_config(&dir, &cfg).await.unwrap();

    // Without credentials the registry's 401 reaches containerd through the mirror.
    let anon = containerd.cri_pull(&image.reference).await;
    assert!(
        anon.is_err(),
        "an anonymous pull of a private image must fail"
    );

    let image_ref = containerd
        .cri_pull_with_auth(&image.reference, &user, &password)
        .await
        .unwrap();
    assert_eq!(image_ref, image.config.0);
    wait_registry_bytes(&registry, &image).await;
    for (d, size) in blob_sizes(&image) {
        assert_eq!(registry_bytes(&registry, &d), size, "bytes of {d}");
    }
    let b2s = agent
        .metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"back_to_source\"}")
        .await
        .unwrap();
    assert_eq!(
        b2s as u64,
        total_blob_bytes(&image),
        "blobs must come through the mirror"
    );
    run_and_check(&containerd, &image, 71, 6 * MIB).await;

    containerd
        .remove_image_sync(&image.reference)
        .await
        .unwrap();
    containerd
        .cri_pull_with_auth(&image.reference, &user, &password)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (d, size) in blob_sizes(&image) {
        assert_eq!(
            registry_bytes(&registry, &d),
            size,
            "re-pull fetched {d} again"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cri_pull_on_a_peer_after_another_peer_pulled_sends_no_blob_get_to_the_registry() {
    require_root_and_tools(TOOLS);
    let dir = TestDir::new("containerd-p2p").unwrap();
    let registry = Registry::start(&dir).await.unwrap();
    let image = registry
        .push_image(
            "app/p2p",
            "v1",
            &[
                LayerSpec::busybox(Compression::Gzip).unwrap(),
                LayerSpec::random(71, 11 * MIB, Compression::None),
            ],
        )
        .await
        .unwrap();
    let sched = Scheduler::start(&dir, "scheduler").unwrap();
    let (_seed, peers) = start_peers(&dir, &sched, 2).await.unwrap();
    let (first, second) = (&peers[0], &peers[1]);

    // Node one pulls through its own dfdaemon.
    let cfg = wire_with_dfinit(&dir, &registry, first);
    let containerd = Containerd::start_with_config(&dir, &cfg).await.unwrap();
    containerd.cri_pull(&image.reference).await.unwrap();
    wait_registry_bytes(&registry, &image).await;
    containerd
        .remove_image_sync(&image.reference)
        .await
        .unwrap();
    let gets_before: usize = blob_sizes(&image)
        .iter()
        .map(|(d, _)| registry.blob_requests(d).len())
        .sum();

    // Node two: the same containerd now mirrors through the second peer.
    let hosts = dir.join("certs.d");
    let out = dfinit(
        &cfg,
        &registry.url(),
        &second.proxy_url(),
        &["--config-path", hosts.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hosts_toml =
        std::fs::read_to_string(hosts.join(registry.addr()).join("hosts.toml")).unwrap();
    assert!(hosts_toml.contains(&second.proxy_url()), "{hosts_toml}");
    containerd.cri_pull(&image.reference).await.unwrap();
    // Let the access log catch up with anything that might have been sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gets_after: usize = blob_sizes(&image)
        .iter()
        .map(|(d, _)| registry.blob_requests(d).len())
        .sum();
    assert_eq!(
        gets_after, gets_before,
        "the pull on the second peer sent blob requests to the registry"
    );
    let from_peers = second
        .metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"remote_peer\"}")
        .await
        .unwrap();
    assert_eq!(from_peers as u64, total_blob_bytes(&image));
    run_and_check(&containerd, &image, 71, 11 * MIB).await;
}
