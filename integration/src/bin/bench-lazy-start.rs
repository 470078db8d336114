//! hack/bench/lazy-start.sh: time from CRI PullImage to the exit of a container that reads 5%
//! of its image's files, for an image of about 1 GiB (busybox and 4 layers of small and large
//! files) and its Nydus conversion (our `nydusify`), in a local registry:
//!
//! - OCI through dfdaemon's mirror (containerd's overlayfs snapshotter): cold (empty cache;
//!   the baseline), then warm (image removed from containerd, dfdaemon's cache kept);
//! - Nydus lazily through dfdaemon's snapshotter: cold (empty store), then warm (same).
//!
//! Prints times, registry bytes and ratios against the targets (cold lazy <= 0.2x the
//! OCI cold time, registry bytes <= 0.1x the image size, warm lazy <= 1.1x the OCI warm time);
//! never fails on timing. BENCH_MIB (default 1024) sizes the image.

use std::path::Path;
use std::time::{Duration, Instant};

use integration::agent::{dfinit, Agent};
use integration::{
    nydusify_convert, require_root_and_tools, Compression, Containerd, LayerSpec, Registry, Rng,
    TestDir,
};

const MIB: u64 = 1024 * 1024;

/// Bytes of successful GETs of `digests` the registry logged.
fn registry_bytes(reg: &Registry, digests: &[String]) -> u64 {
    digests
        .iter()
        .flat_map(|d| reg.blob_requests(d))
        .filter(|r| r.method == "GET" && (200..300).contains(&r.status))
        .map(|r| r.bytes.unwrap_or(0))
        .sum()
}

/// Successful GETs of `digests` the registry logged.
fn registry_gets(reg: &Registry, digests: &[String]) -> usize {
    digests
        .iter()
        .flat_map(|d| reg.blob_requests(d))
        .filter(|r| r.method == "GET" && (200..300).contains(&r.status))
        .count()
}

/// The same, once the access log stops growing (responses are logged as they complete).
async fn settled_bytes(reg: &Registry, digests: &[String]) -> u64 {
    let mut last = registry_bytes(reg, digests);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = registry_bytes(reg, digests);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// CRI pull, then a container that hashes the `sample` files; the time.
async fn start_and_read(c: &Containerd, image: &str, sample: &[String]) -> anyhow::Result<f64> {
    // Each run starts with no writeback pending from the one before (the OCI runs unpack a
    // GiB), so neither side pays for the other's disk writes.
    let synced = std::process::Command::new("sync").status()?;
    anyhow::ensure!(synced.success(), "sync failed: {synced}");
    let t = Instant::now();
    c.cri_pull(image).await?;
    let pulled = t.elapsed().as_secs_f64();
    let mut args = vec!["/bin/busybox", "sha256sum"];
    args.extend(sample.iter().map(String::as_str));
    let out = c.ctr_run(image, &args).await?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "#   {image}: pull {pulled:.2} s, then the container started, read and exited in {:.2} s",
        secs - pulled
    );
    anyhow::ensure!(
        out.lines().count() == sample.len(),
        "the container hashed {} of {} files",
        out.lines().count(),
        sample.len()
    );
    Ok(secs)
}

/// Prints how many requests each mounted image's FUSE filesystem answered, by operation (in
/// EROFS mode: the blob views'), and their mean time.
async fn print_fuse_requests(agent: &Agent) -> anyhow::Result<()> {
    let text = agent.metrics_text().await?;
    let name = "dragonfly_dfdaemon_fuse_request_duration_seconds";
    let mut ops: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
    for line in text.lines() {
        let (series, value) = match line.rsplit_once(' ') {
            Some((s, v)) => (s, v.parse::<f64>().unwrap_or(0.0)),
            None => continue,
        };
        let sum = series.starts_with(&format!("{name}_sum{{"));
        if !sum && !series.starts_with(&format!("{name}_count{{")) {
            continue;
        }
        let labels = series
            .split_once('{')
            .map_or("", |(_, l)| l.trim_end_matches('}'));
        let e = ops.entry(labels.to_string()).or_default();
        if sum {
            e.1 += value;
        } else {
            e.0 += value;
        }
    }
    for (labels, (count, sum)) in ops {
        println!(
            "#     FUSE {labels}: {count} requests, {:.2} ms each",
            sum * 1000.0 / count.max(1.0)
        );
    }
    Ok(())
}

/// A containerd wired by dfinit to `agent`'s mirror (and, with `snapshotter`, to its
/// snapshotter).
async fn containerd_for(
    dir: &TestDir,
    reg: &Registry,
    agent: &Agent,
    hosts: &Path,
    snapshotter: bool,
) -> anyhow::Result<Containerd> {
    let cfg = Containerd::write_default_config(dir, hosts)?;
    let socket = agent.snapshotter_socket.display().to_string();
    let extra: Vec<&str> = if snapshotter {
        vec!["--snapshotter", "--snapshotter-socket", &socket]
    } else {
        Vec::new()
    };
    let out = dfinit(&cfg, &reg.url(), &agent.proxy_url(), &extra);
    anyhow::ensure!(
        out.status.success(),
        "dfinit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Containerd::start_with_config(dir, &cfg).await?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    require_root_and_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]);
    let size_mib: u64 = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = TestDir::new("bench-lazy-start")?;
    let reg = Registry::start(&dir).await?;

    // busybox, then 4 layers: 60% of the bytes in files of 1-64 KiB, 40% in 4 large files.
    let mut rng = Rng(0x1a2_5747);
    let per_layer = size_mib * MIB / 4;
    let mut layers = vec![LayerSpec::busybox(Compression::Gzip)?];
    let mut files = Vec::new();
    let mut seed = 1u64;
    for l in 0..4u64 {
        let mut spec = LayerSpec::new(Compression::Gzip);
        let (mut small, mut i) = (0u64, 0u64);
        while small < per_layer * 6 / 10 {
            let len = 1024 + rng.next() % (63 * 1024);
            seed += 1;
            let path = format!("data/l{l}/d{}/f{i}.bin", i % 64);
            spec = spec.random_file(path.clone(), seed, len);
            files.push(format!("/{path}"));
            small += len;
            i += 1;
        }
        for b in 0..4u64 {
            seed += 1;
            let path = format!("data/l{l}/big/{b}.bin");
            spec = spec.random_file(path.clone(), seed, per_layer / 10);
            files.push(format!("/{path}"));
        }
        layers.push(spec);
    }
    let img = reg.push_image("bench/app", "v1", &layers).await?;
    let oci_layers: Vec<String> = img.layers.iter().map(|(d, _)| d.clone()).collect();
    let oci_size: u64 = img.layers.iter().map(|(_, s)| s).sum();
    let nydus_ref = format!("{}/bench/app:v1-nydus", reg.addr());
    let t = Instant::now();
    let o = nydusify_convert(&img.reference, &nydus_ref, &dir.join("nydusify"), &[])?;
    anyhow::ensure!(
        o.status.success(),
        "nydusify: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let nydus_layers = reg.manifest_layers("bench/app", "v1-nydus").await?;
    let nydus_size: u64 = nydus_layers.iter().map(|(_, s)| s).sum();
    let nydus_digests: Vec<String> = nydus_layers.into_iter().map(|(d, _)| d).collect();
    let mut pick = Rng(42);
    let sample: Vec<String> = files
        .iter()
        .filter(|_| pick.next() % 100 < 5)
        .cloned()
        .collect();
    println!(
        "# lazy start: {size_mib} MiB image ({} files; OCI {} MiB of layers, Nydus {} MiB; converted in {:.1}s); the container reads {} files",
        files.len(),
        oci_size / MIB,
        nydus_size / MIB,
        t.elapsed().as_secs_f64(),
        sample.len()
    );

    // OCI through the mirror.
    // BENCH_SKIP_OCI=1 leaves it out (no ratios then), to iterate on the Nydus side.
    let (oci_cold, oci_cold_bytes, oci_warm) = if std::env::var_os("BENCH_SKIP_OCI").is_some() {
        (f64::NAN, 0, f64::NAN)
    } else {
        let hosts_oci = dir.join("certs-oci");
        let oci_agent = Agent::start(&dir, "oci", "").await?;
        let oci = containerd_for(&dir, &reg, &oci_agent, &hosts_oci, false).await?;
        let before = registry_bytes(&reg, &oci_layers);
        let oci_cold = start_and_read(&oci, &img.reference, &sample).await?;
        let oci_cold_bytes = settled_bytes(&reg, &oci_layers).await - before;
        oci.remove_image_sync(&img.reference).await?;
        let oci_warm = start_and_read(&oci, &img.reference, &sample).await?;
        (oci_cold, oci_cold_bytes, oci_warm)
    };

    // Nydus lazily through the snapshotter.
    let hosts_nydus = dir.join("certs-nydus");
    let nydus_agent = Agent::start(
        &dir,
        "nydus",
        &format!("snapshotter:\n  hostsDir: {}\n", hosts_nydus.display()),
    )
    .await?;
    let nydus = containerd_for(&dir, &reg, &nydus_agent, &hosts_nydus, true).await?;
    let before = registry_bytes(&reg, &nydus_digests);
    let gets_before = registry_gets(&reg, &nydus_digests);
    let lazy_cold = start_and_read(&nydus, &nydus_ref, &sample).await?;
    let lazy_cold_bytes = settled_bytes(&reg, &nydus_digests).await - before;
    println!(
        "#     registry: {} blob GETs",
        registry_gets(&reg, &nydus_digests) - gets_before
    );
    print_fuse_requests(&nydus_agent).await?;
    nydus.remove_image_sync(&nydus_ref).await?;
    let lazy_warm = start_and_read(&nydus, &nydus_ref, &sample).await?;
    if std::env::var_os("BENCH_SKIP_OCI").is_some() {
        print_fuse_requests(&nydus_agent).await?;
    }
    // The registry's share of the cold run: the ranged GETs of the files read, one after the
    // other, without dfdaemon, containerd or a container.
    let boot = integration::bench::nydus_bootstrap(&reg, "bench/app", "v1-nydus").await?;
    let image = nydus::image::from_bytes(boot, None, "bootstrap")?;
    let (floor, floor_gets) = integration::bench::registry_floor(
        &reg,
        "bench/app",
        &image,
        sample.iter().map(String::as_str),
    )
    .await?;
    println!(
        "#   registry floor: the {floor_gets} ranged GETs of the files read, one after the other: {floor:.2} s ({:.2} ms each)",
        floor * 1000.0 / floor_gets.max(1) as f64
    );

    println!();
    println!("| pull + container reading 5% of the files | time | registry bytes |");
    println!("|---|---|---|");
    println!(
        "| OCI through the mirror, cold | {oci_cold:.2} s | {:.1} MB |",
        oci_cold_bytes as f64 / 1e6
    );
    println!("| OCI through the mirror, warm | {oci_warm:.2} s | - |");
    println!(
        "| Nydus lazily through the snapshotter, cold | {lazy_cold:.2} s | {:.1} MB |",
        lazy_cold_bytes as f64 / 1e6
    );
    println!("| Nydus lazily through the snapshotter, warm | {lazy_warm:.2} s | - |");
    println!();
    println!("ratios (target):");
    println!(
        "  cold: Nydus lazily / OCI: {:.3} (<= 0.2); the registry floor alone / OCI: {:.3}",
        lazy_cold / oci_cold,
        floor / oci_cold
    );
    println!(
        "  cold registry bytes / image size: {:.3} (<= 0.1)",
        lazy_cold_bytes as f64 / nydus_size.max(1) as f64
    );
    println!(
        "  warm: Nydus lazily / OCI: {:.2} (<= 1.1)",
        lazy_warm / oci_warm
    );
    Ok(())
}
