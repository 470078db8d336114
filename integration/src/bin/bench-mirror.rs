//! hack/bench/mirror.sh: the mirror against the registry it fronts, measured
//! in the same run. Prints ratios; never fails on timing.
//!
//! (a) curl of a 1 GiB blob: direct from the registry, through the proxy cold,
//!     through the proxy cached;
//! (b) CRI pull of a 1 GiB image (4 uncompressed layers): direct, mirror cold,
//!     mirror cached;
//! (c) dfdaemon's peak RSS.
//!
//! BENCH_MIB (1024), BENCH_RUNS (3); BENCH_SKIP_CRI=1 leaves (b) out.

use integration::agent::{dfinit, Agent};
use integration::{
    random_bytes, require_root_and_tools, Compression, Containerd, HostsToml, LayerSpec, Registry,
    TestDir,
};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

fn curl(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<f64> {
    let mut c = Command::new("curl");
    c.args(["-sf", "-o", "/dev/null", "-w", "%{time_total}"]);
    for (k, v) in headers {
        c.arg("-H").arg(format!("{k}: {v}"));
    }
    let out = c.arg(url).output()?;
    anyhow::ensure!(out.status.success(), "curl {url} failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// `sync(1)`: dirty pages written back now rather than during the next measurement.
fn sync() {
    let _ = Command::new("sync").status();
}

fn best(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::INFINITY, f64::min)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

async fn pull(c: &Containerd, image: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    c.cri_pull(image).await?;
    Ok(t.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    require_root_and_tools(&["docker-registry", "containerd", "ctr", "skopeo", "curl"]);
    let size_mib: u64 = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = TestDir::new("bench-mirror")?;
    let registry = Registry::start(&dir).await?;
    let gib = size_mib as f64 * MIB as f64 / 1e9;
    println!("# mirror benchmark: {size_mib} MiB, best of {runs} runs (curl and CRI on 127.0.0.1)");

    // (a) one blob.
    let data = random_bytes(4242, (size_mib * MIB) as usize);
    let digest = registry.push_blob("bench/blob", data).await?;
    let path = format!("/v2/bench/blob/blobs/{digest}");
    let direct_url = format!("{}{path}", registry.url());
    // Each run: a fresh daemon (empty store); direct, cold, then direct and cached again, so
    // that every ratio compares two transfers made a moment apart.
    let (mut direct, mut cold, mut direct2, mut cached) = (vec![], vec![], vec![], vec![]);
    let mut peak = 0u64;
    for i in 0..runs {
        let agent = Agent::start(&dir, &format!("dfdaemon-a{i}"), "").await?;
        let url = format!("{}{path}", agent.proxy_url());
        let reg = registry.url();
        // The previous run's gigabyte of dirty pages, written back during this one, would
        // slow its writes by a varying amount: start each run with none.
        sync();
        direct.push(curl(&direct_url, &[])?);
        cold.push(curl(&url, &[("X-Dragonfly-Registry", &reg)])?);
        direct2.push(curl(&direct_url, &[])?);
        cached.push(curl(&url, &[("X-Dragonfly-Registry", &reg)])?);
        peak = peak.max(agent.peak_rss().unwrap_or(0));
        // Each run leaves nothing behind: a page cache filling up with earlier runs' stores
        // makes later runs' writes reclaim memory first.
        let store = agent.store_dir.clone();
        drop(agent);
        let _ = std::fs::remove_dir_all(store);
    }
    let cold_ratio: Vec<f64> = cold.iter().zip(&direct).map(|(c, d)| c / d).collect();
    let cached_rate: Vec<f64> = direct2.iter().zip(&cached).map(|(d, h)| d / h).collect();
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (d, c, h) = (best(&direct), best(&cold), best(&cached));
    println!("\n## (a) curl of one blob");
    println!("| path | time (best) | median | rate | ratio per run | median ratio |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| direct from registry (baseline) | {d:.3}s | {:.3}s | {:.2} GB/s | | |",
        median(&direct),
        gib / d
    );
    println!(
        "| through proxy, cold (time / direct time) | {c:.3}s | {:.3}s | {:.2} GB/s | {} | {:.2} |",
        median(&cold),
        gib / c,
        show(&cold_ratio),
        median(&cold_ratio)
    );
    println!(
        "| through proxy, cached (rate / direct rate) | {h:.3}s | {:.3}s | {:.2} GB/s | {} | {:.2} |",
        median(&cached),
        gib / h,
        show(&cached_rate),
        median(&cached_rate)
    );
    if std::env::var("BENCH_SKIP_CRI").is_ok() {
        println!("\n## (c) dfdaemon peak RSS: {:.1} MB", peak as f64 / 1e6);
        return Ok(());
    }

    // (b) an image of 4 uncompressed layers.
    let layers: Vec<LayerSpec> = (0..4)
        .map(|i| LayerSpec::random(5000 + i, size_mib * MIB / 4, Compression::None))
        .collect();
    let image = registry.push_image("bench/image", "v1", &layers).await?;
    let hosts = dir.join("certs.d");
    let cfg = Containerd::write_default_config(&dir, &hosts)?;
    let containerd = Containerd::start_with_config(&dir, &cfg).await?;
    let mut pd = Vec::new();
    let mut pc = Vec::new();
    let mut ph = Vec::new();
    for i in 0..runs {
        HostsToml::direct(registry.url()).write(&hosts, &registry.addr())?;
        pd.push(pull(&containerd, &image.reference).await?);
        containerd.remove_image_sync(&image.reference).await?;
        let agent = Agent::start(&dir, &format!("dfdaemon-b{i}"), "").await?;
        let out = dfinit(&cfg, &registry.url(), &agent.proxy_url(), &[]);
        anyhow::ensure!(
            out.status.success(),
            "dfinit: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pc.push(pull(&containerd, &image.reference).await?);
        containerd.remove_image_sync(&image.reference).await?;
        ph.push(pull(&containerd, &image.reference).await?);
        containerd.remove_image_sync(&image.reference).await?;
        peak = peak.max(agent.peak_rss().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (d, c, h) = (best(&pd), best(&pc), best(&ph));
    println!("\n## (b) CRI PullImage of a {size_mib} MiB image (4 uncompressed layers)");
    println!("| path | time (best) | median | ratio to direct |");
    println!("|---|---|---|---|");
    println!(
        "| direct from registry (baseline) | {d:.3}s | {:.3}s | 1.00 |",
        median(&pd)
    );
    println!(
        "| through mirror, cold | {c:.3}s | {:.3}s | {:.2} |",
        median(&pc),
        c / d
    );
    println!(
        "| through mirror, cached | {h:.3}s | {:.3}s | {:.2} |",
        median(&ph),
        h / d
    );

    println!("\n## (c) dfdaemon peak RSS: {:.1} MB", peak as f64 / 1e6);
    Ok(())
}
