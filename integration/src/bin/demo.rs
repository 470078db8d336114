//! The README's demo: a local registry, dfdaemon and containerd on 127.0.0.1;
//! a multi-layer image is pulled through the mirror twice via CRI, and the
//! time of each pull and the bytes from origin vs cache are printed. Then the
//! image's Nydus conversion starts a container lazily through dfdaemon's
//! snapshotter: time to a running container and registry bytes, against the
//! OCI image pulled and started straight from the registry.

use integration::agent::{dfinit, Agent};
use integration::{
    require_root_and_tools, Compression, Containerd, HostsToml, ImageInfo, LayerSpec, Registry,
    TestDir,
};
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

fn mb(b: f64) -> String {
    format!("{:.1} MB", b / 1e6)
}

async fn metric(agent: &Agent, series: &str) -> f64 {
    agent.metric(series).await.unwrap_or(0.0)
}

fn origin_blob_bytes(registry: &Registry, image: &ImageInfo) -> u64 {
    image
        .layers
        .iter()
        .chain(std::iter::once(&image.config))
        .flat_map(|(d, _)| registry.blob_requests(d))
        .filter(|r| r.method == "GET" && (200..300).contains(&r.status))
        .map(|r| r.bytes.unwrap_or(0))
        .sum()
}

async fn timed_pull(containerd: &Containerd, image: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    containerd.cri_pull(image).await?;
    Ok(t.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    require_root_and_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]);
    let layer_mib: u64 = std::env::var("DEMO_LAYER_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let dir = TestDir::new("demo")?;
    println!(
        "== dragonfly-rs demo (everything on 127.0.0.1, state in {})",
        dir.path().display()
    );

    let registry = Registry::start(&dir).await?;
    println!("registry      {} (docker-registry)", registry.url());
    let mut layers = vec![LayerSpec::busybox(Compression::Gzip)?];
    for i in 0..4 {
        layers.push(LayerSpec::random(
            900 + i,
            layer_mib * MIB,
            Compression::None,
        ));
    }
    let image = registry.push_image("demo/app", "v1", &layers).await?;
    let total: u64 = image.layers.iter().map(|(_, s)| s).sum::<u64>() + image.config.1;
    println!(
        "image         {} ({} layers, {})",
        image.reference,
        image.layers.len(),
        mb(total as f64)
    );

    let hosts = dir.join("certs.d");
    let agent = Agent::start(
        &dir,
        "dfdaemon",
        &format!("snapshotter:\n  hostsDir: {}\n", hosts.display()),
    )
    .await?;
    println!(
        "dfdaemon      mirror {}  metrics http://127.0.0.1:{}/metrics",
        agent.proxy_url(),
        agent.metrics_port
    );

    // containerd: a config without a mirror; dfinit wires it to dfdaemon.
    let cfg = Containerd::write_default_config(&dir, &hosts)?;
    let direct = Containerd::start_with_config(&dir, &cfg).await?;
    HostsToml::direct(registry.url()).write(&hosts, &registry.addr())?;
    let t_direct = timed_pull(&direct, &image.reference).await?;
    let t = Instant::now();
    direct
        .ctr_run(&image.reference, &["/bin/busybox", "cat", "/etc/hello.txt"])
        .await?;
    let t_direct_start = t_direct + t.elapsed();
    direct.remove_image_sync(&image.reference).await?;
    drop(direct);
    let out = dfinit(&cfg, &registry.url(), &agent.proxy_url(), &[]);
    anyhow::ensure!(
        out.status.success(),
        "dfinit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "dfinit        wrote {}/{}/hosts.toml -> {}",
        hosts.display(),
        registry.addr(),
        agent.proxy_url()
    );
    let containerd = Containerd::start_with_config(&dir, &cfg).await?;
    println!(
        "containerd    {} (CRI pulls read hosts.toml)",
        containerd.socket().display()
    );
    println!();

    let origin0 = origin_blob_bytes(&registry, &image);
    let t1 = timed_pull(&containerd, &image.reference).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let origin1 = origin_blob_bytes(&registry, &image) - origin0;
    let b2s1 = metric(
        &agent,
        "dragonfly_dfdaemon_download_traffic_bytes_total{type=\"back_to_source\"}",
    )
    .await;
    let cache1 = metric(
        &agent,
        "dragonfly_dfdaemon_download_traffic_bytes_total{type=\"local_cache\"}",
    )
    .await;

    containerd.remove_image_sync(&image.reference).await?;
    let t2 = timed_pull(&containerd, &image.reference).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let origin2 = origin_blob_bytes(&registry, &image) - origin0 - origin1;
    let b2s2 = metric(
        &agent,
        "dragonfly_dfdaemon_download_traffic_bytes_total{type=\"back_to_source\"}",
    )
    .await
        - b2s1;
    let cache2 = metric(
        &agent,
        "dragonfly_dfdaemon_download_traffic_bytes_total{type=\"local_cache\"}",
    )
    .await
        - cache1;

    let out = containerd
        .ctr_run(&image.reference, &["/bin/busybox", "cat", "/etc/hello.txt"])
        .await?;
    println!(
        "{:<34} {:>9} {:>18} {:>18}",
        "CRI PullImage", "time", "registry blob bytes", "served from cache"
    );
    println!(
        "{:<34} {:>8.2}s {:>18} {:>18}",
        "direct from the registry",
        t_direct.as_secs_f64(),
        mb(total as f64),
        "-"
    );
    println!(
        "{:<34} {:>8.2}s {:>18} {:>18}",
        "through dfdaemon, cold (1st pull)",
        t1.as_secs_f64(),
        mb(origin1 as f64),
        mb(cache1)
    );
    println!(
        "{:<34} {:>8.2}s {:>18} {:>18}",
        "through dfdaemon, cached (2nd pull)",
        t2.as_secs_f64(),
        mb(origin2 as f64),
        mb(cache2)
    );
    println!();
    println!(
        "dfdaemon fetched {} from the registry on the 1st pull and {} on the 2nd.",
        mb(b2s1),
        mb(b2s2)
    );
    println!(
        "2nd pull: {:.1}x faster than the 1st, {:.1}x vs direct; container says: {}",
        t1.as_secs_f64() / t2.as_secs_f64(),
        t_direct.as_secs_f64() / t2.as_secs_f64(),
        out.trim()
    );
    anyhow::ensure!(origin2 == 0, "the second pull reached the registry");

    // The same image converted to Nydus, started lazily through dfdaemon's snapshotter.
    println!();
    let nydus_ref = format!("{}/demo/app:v1-nydus", registry.addr());
    let t = Instant::now();
    let o =
        integration::nydusify_convert(&image.reference, &nydus_ref, &dir.join("nydusify"), &[])?;
    anyhow::ensure!(
        o.status.success(),
        "nydusify: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    println!(
        "nydusify      converted it to {nydus_ref} in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let out = dfinit(
        &cfg,
        &registry.url(),
        &agent.proxy_url(),
        &[
            "--snapshotter",
            "--snapshotter-socket",
            &agent.snapshotter_socket.display().to_string(),
        ],
    );
    anyhow::ensure!(
        out.status.success(),
        "dfinit --snapshotter failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(containerd);
    let containerd = Containerd::start_with_config(&dir, &cfg).await?;
    println!(
        "dfinit        --snapshotter: containerd unpacks with dfdaemon's snapshotter ({})",
        containerd.snapshotter()
    );
    let nydus_layers = registry.manifest_layers("demo/app", "v1-nydus").await?;
    let nydus_total: u64 = nydus_layers.iter().map(|(_, s)| s).sum();
    let nydus_bytes = |registry: &Registry| -> u64 {
        nydus_layers
            .iter()
            .flat_map(|(d, _)| registry.blob_requests(d))
            .filter(|r| r.method == "GET" && (200..300).contains(&r.status))
            .map(|r| r.bytes.unwrap_or(0))
            .sum()
    };
    let before = nydus_bytes(&registry);
    let t = Instant::now();
    containerd.cri_pull(&nydus_ref).await?;
    let lazy_out = containerd
        .ctr_run(&nydus_ref, &["/bin/busybox", "cat", "/etc/hello.txt"])
        .await?;
    let t_lazy = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lazy_bytes = nydus_bytes(&registry) - before;
    println!();
    println!(
        "{:<34} {:>9} {:>18} {:>18}",
        "pull + start a container", "time", "registry bytes", "image size"
    );
    println!(
        "{:<34} {:>8.2}s {:>18} {:>18}",
        "OCI, direct from the registry",
        t_direct_start.as_secs_f64(),
        mb(total as f64),
        mb(total as f64)
    );
    println!(
        "{:<34} {:>8.2}s {:>18} {:>18}",
        "Nydus, lazily through dfdaemon",
        t_lazy.as_secs_f64(),
        mb(lazy_bytes as f64),
        mb(nydus_total as f64)
    );
    println!();
    println!(
        "the Nydus container started {:.1}x sooner, fetching {:.1}% of its image; it says: {}",
        t_direct_start.as_secs_f64() / t_lazy.as_secs_f64(),
        100.0 * lazy_bytes as f64 / nydus_total.max(1) as f64,
        lazy_out.trim()
    );
    Ok(())
}
