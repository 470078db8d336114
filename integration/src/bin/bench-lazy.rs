//! hack/bench/lazy.sh: a Nydus image of about 1 GiB (4 layers: many small files and some large
//! ones) in a local registry, served by dfdaemon's runtime (kernel EROFS mode and FUSE mode) and,
//! with `NYDUS_BIN_DIR`, by Nydus's own nydusd (registry backend, its default config), against
//! the same tree on the local filesystem. The page cache is dropped before each cold run.
//! Prints times, bytes and ratios against the targets; never fails on timing.
//!
//! - cold read of 5% of the files (random, fixed seed): time, and registry bytes against the
//!   bytes of the files read;
//! - warm read of every file (after one full pass): rate;
//! - warm stat of every path (after one pass): time;
//! - dfdaemon's RSS with 20 mounts of the image.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dfdaemon::runtime::grpc::proto::{MountRequest, UnmountRequest};
use integration::agent::Agent;
use integration::{
    nydusify_convert, require_root_and_tools, Compression, LayerSpec, Registry, Rng, TestDir,
};

const MIB: u64 = 1024 * 1024;

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Every regular file under `root` (relative path, size), sorted.
fn files(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(root.join(&rel)) else {
            continue;
        };
        for e in rd.flatten() {
            let p = rel.join(e.file_name());
            let Ok(m) = std::fs::symlink_metadata(root.join(&p)) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                out.push((p, m.len()));
            }
        }
    }
    out.sort();
    out
}

/// Reads the files (whole), returns (seconds, bytes).
fn read_all(root: &Path, list: &[(PathBuf, u64)]) -> (f64, u64) {
    let t = Instant::now();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for (p, _) in list {
        use std::io::Read;
        let mut f = std::fs::File::open(root.join(p)).expect("open");
        loop {
            let n = f.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
    }
    (t.elapsed().as_secs_f64(), bytes)
}

/// Stats every path under `root` (a walk), returns seconds.
fn stat_all(root: &Path) -> f64 {
    let t = Instant::now();
    let n = files(root).len();
    assert!(n > 0);
    t.elapsed().as_secs_f64()
}

/// Bytes of blob GETs the registry logged.
fn blob_bytes(reg: &Registry) -> u64 {
    reg.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/") && r.is_success())
        .map(|r| r.bytes.unwrap_or(0))
        .sum()
}

/// Blob bytes logged once the log stops growing (responses are logged as they complete).
fn settled_blob_bytes(reg: &Registry) -> u64 {
    let mut last = blob_bytes(reg);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let now = blob_bytes(reg);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

fn is_mounted(p: &Path) -> bool {
    let m = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = p.display().to_string();
    m.lines().any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

#[derive(Default, Clone)]
struct Result {
    cold_secs: f64,
    cold_file_bytes: u64,
    cold_registry_bytes: u64,
    warm_rate: f64,
    stat_secs: f64,
}

fn measure(
    reg: &Registry,
    mnt: &Path,
    sample: &[(PathBuf, u64)],
    all: &[(PathBuf, u64)],
) -> Result {
    drop_caches();
    let before = settled_blob_bytes(reg);
    let (cold_secs, cold_file_bytes) = read_all(mnt, sample);
    let cold_registry_bytes = settled_blob_bytes(reg) - before;
    let _ = read_all(mnt, all);
    let (t, b) = read_all(mnt, all);
    let _ = stat_all(mnt);
    let stat_secs = stat_all(mnt);
    Result {
        cold_secs,
        cold_file_bytes,
        cold_registry_bytes,
        warm_rate: b as f64 / t,
        stat_secs,
    }
}

fn mount_request(boot: &Path, reg: &Registry, mnt: &Path, mode: &str) -> MountRequest {
    MountRequest {
        bootstrap_path: boot.display().to_string(),
        mountpoint: mnt.display().to_string(),
        repository: format!("{}/nydus/bench", reg.addr()),
        scheme: "http".into(),
        mode: mode.into(),
        ..Default::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "fusermount3"]);
    let size_mib: u64 = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let nydus_dir = std::env::var("NYDUS_BIN_DIR").ok().map(PathBuf::from);
    let dir = TestDir::new("bench-lazy")?;
    let reg = Registry::start(&dir).await?;

    // 4 layers; in each, 60% of the bytes in small files (1-64 KiB), 40% in 4 large files.
    let mut rng = Rng(0x5eed_1a2b);
    let per_layer = size_mib * MIB / 4;
    let mut layers = Vec::new();
    let mut seed = 1u64;
    for l in 0..4u64 {
        let mut spec = LayerSpec::new(Compression::Gzip);
        let mut small = 0u64;
        let mut i = 0u64;
        while small < per_layer * 6 / 10 {
            let len = 1024 + rng.next() % (63 * 1024);
            seed += 1;
            spec = spec.random_file(format!("l{l}/d{}/f{i}.bin", i % 64), seed, len);
            small += len;
            i += 1;
        }
        for b in 0..4u64 {
            seed += 1;
            spec = spec.random_file(format!("l{l}/big/{b}.bin"), seed, per_layer / 10);
        }
        layers.push(spec);
    }
    let t = Instant::now();
    let img = reg.push_image("src/bench", "v1", &layers).await?;
    println!(
        "# lazy-loading benchmark: {size_mib} MiB image, 4 gzip layers (pushed in {:.1}s)",
        t.elapsed().as_secs_f64()
    );
    let o = nydusify_convert(
        &img.reference,
        &format!("{}/nydus/bench:v1", reg.addr()),
        &dir.join("work"),
        &[],
    )?;
    anyhow::ensure!(
        o.status.success(),
        "nydusify: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let boot = dir.join("image.boot");
    std::fs::write(
        &boot,
        integration::bench::nydus_bootstrap(&reg, "nydus/bench", "v1").await?,
    )?;
    let local = integration::unpack_with_umoci(&img.oci_dir, "v1", &dir.join("local"))?;
    let all = files(&local);
    let total: u64 = all.iter().map(|(_, s)| s).sum();
    let mut pick = Rng(42);
    let mut sample: Vec<(PathBuf, u64)> = all
        .iter()
        .filter(|_| pick.next() % 100 < 5)
        .cloned()
        .collect();
    sample.sort();
    println!(
        "tree: {} files, {} MiB; sample: {} files, {:.1} MiB",
        all.len(),
        total / MIB,
        sample.len(),
        sample.iter().map(|(_, s)| s).sum::<u64>() as f64 / MIB as f64
    );

    // Baseline: the local tree.
    drop_caches();
    let (cold, _) = read_all(&local, &sample);
    let _ = read_all(&local, &all);
    let (t, b) = read_all(&local, &all);
    let _ = stat_all(&local);
    let base = Result {
        cold_secs: cold,
        warm_rate: b as f64 / t,
        stat_secs: stat_all(&local),
        ..Default::default()
    };

    // The registry floor: one ranged GET per sampled file (its chunks' bytes in each blob it
    // uses), one after the other on a kept-alive connection, page cache dropped: what any
    // server that fetches only the bytes read pays for this read order.
    let image = nydus::image::from_bytes(std::fs::read(&boot)?, None, "bootstrap")?;
    drop_caches();
    let paths: Vec<String> = sample
        .iter()
        .map(|(p, _)| format!("/{}", p.display()))
        .collect();
    let floor = integration::bench::registry_floor(
        &reg,
        "nydus/bench",
        &image,
        paths.iter().map(String::as_str),
    )
    .await?;
    println!(
        "registry floor: {} ranged GETs in {:.3}s ({:.2} ms each)",
        floor.1,
        floor.0,
        floor.0 * 1000.0 / floor.1.max(1) as f64
    );

    let mut rows: Vec<(String, Result)> = vec![("local fs".into(), base.clone())];
    // BENCH_MODES (default "erofs,fuse") picks the modes measured; BENCH_RSS_ONLY none.
    let modes_env = std::env::var("BENCH_MODES").unwrap_or_else(|_| "erofs,fuse".into());
    let modes: Vec<&str> = if std::env::var("BENCH_RSS_ONLY").is_ok() {
        Vec::new()
    } else {
        modes_env.split(',').filter(|m| !m.is_empty()).collect()
    };
    for &mode in &modes {
        let agent = Agent::start(&dir, &format!("ours-{mode}"), "").await?;
        let mnt = dir.join(format!("mnt-{mode}"));
        let mut rt = agent.runtime();
        rt.mount(mount_request(&boot, &reg, &mnt, mode)).await?;
        let mnt2 = mnt.clone();
        let (s, a) = (sample.clone(), all.clone());
        let reg_ref = &reg;
        let r = tokio::task::block_in_place(|| measure(reg_ref, &mnt2, &s, &a));
        rt.unmount(UnmountRequest {
            mountpoint: mnt.display().to_string(),
        })
        .await?;
        eprintln!("ours ({mode}): cold {:.3}s, {} registry bytes for {} file bytes, warm {:.0} MB/s, stat {:.3}s",
            r.cold_secs, r.cold_registry_bytes, r.cold_file_bytes, r.warm_rate / 1e6, r.stat_secs);
        rows.push((format!("ours ({mode})"), r));
    }
    if let Some(nd) = nydus_dir.as_ref().filter(|_| !modes.is_empty()) {
        let mnt = dir.join("mnt-nydusd");
        let cache = dir.join("nydusd-cache");
        std::fs::create_dir_all(&mnt)?;
        std::fs::create_dir_all(&cache)?;
        let cfg = dir.join("nydusd.json");
        std::fs::write(&cfg, serde_json::json!({
            "device": {
                "backend": {"type": "registry", "config": {"scheme": "http", "host": reg.addr(), "repo": "nydus/bench"}},
                "cache": {"type": "blobcache", "config": {"work_dir": cache}},
            },
            "mode": "direct",
        }).to_string())?;
        let mut child = Command::new(nd.join("nydusd"))
            .arg("--config")
            .arg(&cfg)
            .arg("--bootstrap")
            .arg(&boot)
            .arg("--mountpoint")
            .arg(&mnt)
            // Not raising the open-files limit (refused in some sandboxes).
            .args(["--rlimit-nofile", "0", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nydusd.log"))?)
            .spawn()?;
        let t = Instant::now();
        while !is_mounted(&mnt) && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::ensure!(
            is_mounted(&mnt),
            "Nydus's nydusd did not mount: {}",
            std::fs::read_to_string(dir.join("nydusd.log")).unwrap_or_default()
        );
        let r = tokio::task::block_in_place(|| measure(&reg, &mnt, &sample, &all));
        let _ = Command::new("umount").arg(&mnt).status();
        let _ = child.kill();
        let _ = child.wait();
        rows.push(("Nydus nydusd".into(), r));
    }

    println!();
    println!("| server | cold 5% read | registry bytes / file bytes | warm read | warm stat of every path |");
    println!("|---|---|---|---|---|");
    for (name, r) in &rows {
        let amp = if r.cold_file_bytes > 0 {
            format!(
                "{:.2}",
                r.cold_registry_bytes as f64 / r.cold_file_bytes as f64
            )
        } else {
            "-".into()
        };
        println!(
            "| {name} | {:.3} s | {amp} | {:.0} MB/s | {:.3} s |",
            r.cold_secs,
            r.warm_rate / 1e6,
            r.stat_secs
        );
    }

    // 20 mounts of the image in one dfdaemon, a few files read in each.
    let rss_yaml = std::env::var("BENCH_RSS_YAML").unwrap_or_default();
    let agent = Agent::start(&dir, "ours-rss", &rss_yaml).await?;
    let mut rt = agent.runtime();
    for i in 0..20 {
        let mnt = dir.join(format!("mnt-rss-{i}"));
        rt.mount(mount_request(&boot, &reg, &mnt, "")).await?;
        let few = sample
            .iter()
            .skip(i * 3)
            .take(3)
            .cloned()
            .collect::<Vec<_>>();
        tokio::task::block_in_place(|| read_all(&mnt, &few));
    }
    let rss = agent.peak_rss().unwrap_or(0);
    for i in 0..20 {
        let _ = rt
            .unmount(UnmountRequest {
                mountpoint: dir.join(format!("mnt-rss-{i}")).display().to_string(),
            })
            .await;
    }

    if modes.is_empty() {
        println!(
            "dfdaemon peak RSS with 20 mounts: {} MB (<= 200)",
            rss / 1_000_000
        );
        return Ok(());
    }
    println!();
    println!("ratios (target):");
    let nydusd = rows
        .iter()
        .find(|(k, _)| k == "Nydus nydusd")
        .map(|(_, r)| r.clone());
    if let Some(n) = &nydusd {
        println!(
            "  nydusd: registry bytes / file bytes {:.2}, cold 5% read / registry floor {:.2}, warm stat / local {:.2}",
            n.cold_registry_bytes as f64 / n.cold_file_bytes.max(1) as f64,
            n.cold_secs / floor.0,
            n.stat_secs / base.stat_secs
        );
    } else {
        println!("  (set NYDUS_BIN_DIR to compare with Nydus's nydusd)");
    }
    for (name, r) in rows.iter().filter(|(k, _)| k.starts_with("ours")) {
        println!("  {name}:");
        if let Some(n) = &nydusd {
            println!(
                "    cold 5% read / nydusd: {:.2} (<= 0.5); warm read rate / nydusd: {:.2} (>= 1.3)",
                r.cold_secs / n.cold_secs,
                r.warm_rate / n.warm_rate
            );
        }
        println!(
            "    cold 5% read / registry floor: {:.2}; / local: {:.2}",
            r.cold_secs / floor.0,
            r.cold_secs / base.cold_secs
        );
        println!(
            "    registry bytes / file bytes: {:.2} (<= 1.25)",
            r.cold_registry_bytes as f64 / r.cold_file_bytes.max(1) as f64
        );
        println!(
            "    warm read rate / local: {:.2} (>= 0.7); warm stat / local: {:.2} (<= 1.2 in EROFS mode)",
            r.warm_rate / base.warm_rate,
            r.stat_secs / base.stat_secs
        );
    }
    println!(
        "  dfdaemon peak RSS with 20 mounts: {} MB (<= 200)",
        rss / 1_000_000
    );
    Ok(())
}
