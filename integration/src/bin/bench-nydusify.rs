//! hack/bench/nydusify.sh: `nydusify convert` of a 1 GiB, 4-layer gzip image between two local
//! registries, against `skopeo copy` of the same image and `nydus-image create` of the same
//! layers as local files, measured in the same run. Prints ratios; never fails on timing.
//!
//! Each layer is half random bytes and half text-like bytes (compressible), like real images.
//! Every run converts into a fresh repository, so nothing is reused. Peak RSS is the process's
//! VmHWM, read from /proc while it runs.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use integration::agent::bin;
use integration::{
    random_bytes, require_root_and_tools, Compression, LayerSpec, Registry, TestDir,
};

const MIB: u64 = 1024 * 1024;

/// Runs `cmd`, returns (seconds, peak RSS in bytes); fails if it fails.
fn timed(mut cmd: Command) -> anyhow::Result<(f64, u64)> {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(&status_path) {
            if let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb * 1024);
            }
        }
        if let Some(st) = child.try_wait()? {
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        anyhow::bail!("{cmd:?} failed: {err}");
    }
    Ok((secs, peak))
}

fn best(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::INFINITY, f64::min)
}

/// `len` bytes of text-like data: words from a fixed vocabulary, in a seeded order.
fn text_bytes(seed: u64, len: usize) -> Bytes {
    let noise = random_bytes(seed, len / 4 + 16);
    let words: Vec<String> = (0..4096)
        .map(|i| {
            let n = 2 + (noise[i] % 9) as usize;
            (0..n)
                .map(|j| (b'a' + noise[(i * 7 + j) % noise.len()] % 26) as char)
                .collect()
        })
        .collect();
    let mut out = Vec::with_capacity(len + 16);
    let mut k = 0usize;
    while out.len() < len {
        let pick = u16::from_le_bytes([noise[k % noise.len()], noise[(k + 1) % noise.len()]]);
        out.extend_from_slice(words[pick as usize % words.len()].as_bytes());
        out.push(if k % 13 == 12 { b'\n' } else { b' ' });
        k += 2;
    }
    out.truncate(len);
    Bytes::from(out)
}

fn nydusify(args: &[&str]) -> Command {
    let mut c = Command::new(bin("nydusify"));
    c.args(args).env("DOCKER_CONFIG", "/nonexistent");
    c
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    require_root_and_tools(&["docker-registry", "skopeo"]);
    let size_mib: u64 = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = TestDir::new("bench-nydusify")?;
    let src_reg = Registry::start(&dir).await?;
    let dst_reg = Registry::start(&dir).await?;
    println!(
        "# nydusify benchmark: a {size_mib} MiB image of 4 gzip layers, best of {runs} runs \
         (registries on 127.0.0.1)"
    );

    let layer_bytes = size_mib * MIB / 4;
    let layers: Vec<LayerSpec> = (0..4u64)
        .map(|i| {
            let mut l = LayerSpec::new(Compression::Gzip).random_file(
                format!("layer{i}/random.bin"),
                7000 + i,
                layer_bytes / 2,
            );
            let text_files = 16u64;
            for f in 0..text_files {
                l = l.file(
                    format!("layer{i}/text/{f}.txt"),
                    text_bytes(i * 100 + f, (layer_bytes / 2 / text_files) as usize),
                    0o644,
                );
            }
            l
        })
        .collect();
    let image = src_reg.push_image("src/big", "v1", &layers).await?;
    let stored: u64 = image.layers.iter().map(|(_, s)| s).sum();
    println!(
        "image: {} layers, {} MiB compressed",
        image.layers.len(),
        stored / MIB
    );

    // Baseline 1: skopeo copy registry → registry. A fresh target registry each run: skopeo
    // remembers where it put blobs and would mount them from another repository instead.
    let mut skopeo = Vec::new();
    for _ in 0..runs {
        let copy_reg = Registry::start(&dir).await?;
        let mut c = Command::new("skopeo");
        c.args([
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{}", image.reference),
            &format!("docker://{}/copy/big:v1", copy_reg.addr()),
        ]);
        skopeo.push(timed(c)?.0);
    }

    // Baseline 2: our nydus-image create of the same layers, as local gzip tars, one after
    // another (each uses every core).
    let work = dir.join("create");
    std::fs::create_dir_all(&work)?;
    let mut create = Vec::new();
    let mut create_peak = 0u64;
    for _ in 0..runs {
        let mut total = 0.0;
        for (n, (digest, _)) in image.layers.iter().enumerate() {
            let tar = image
                .oci_dir
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:"));
            let mut c = Command::new(bin("nydus-image"));
            c.args([
                "create",
                "--type",
                "tar-rafs",
                "--fs-version",
                "6",
                "--blob-inline-meta",
                "--features",
                "blob-toc",
                "--whiteout-spec",
                "none",
            ])
            .arg("--blob")
            .arg(work.join(format!("blob-{n}")))
            .arg("--bootstrap")
            .arg(work.join(format!("boot-{n}")))
            .arg(&tar);
            let (t, p) = timed(c)?;
            total += t;
            create_peak = create_peak.max(p);
        }
        create.push(total);
    }

    // nydusify convert, and convert --reverse of its output.
    let wd = dir.join("nydusify-work");
    let wd = wd.to_str().unwrap_or("/tmp");
    let mut convert = Vec::new();
    let mut convert_peak = 0u64;
    let mut reverse = Vec::new();
    let mut reverse_peak = 0u64;
    for i in 0..runs {
        let target = format!("{}/nydus/big-{i}:v1", dst_reg.addr());
        let c = nydusify(&[
            "convert",
            "--no-progress",
            "--source",
            &image.reference,
            "--target",
            &target,
            "--source-insecure",
            "--target-insecure",
            "--work-dir",
            wd,
        ]);
        let (t, p) = timed(c)?;
        convert.push(t);
        convert_peak = convert_peak.max(p);
        let c = nydusify(&[
            "convert",
            "--reverse",
            "--no-progress",
            "--source",
            &target,
            "--target",
            &format!("{}/oci/big-{i}:v1", dst_reg.addr()),
            "--source-insecure",
            "--target-insecure",
            "--work-dir",
            wd,
        ]);
        let (t, p) = timed(c)?;
        reverse.push(t);
        reverse_peak = reverse_peak.max(p);
    }

    let (s, cr, cv, rv) = (best(&skopeo), best(&create), best(&convert), best(&reverse));
    let mib = size_mib as f64;
    println!("\n| step | time (best) | MiB/s of image data | peak RSS |");
    println!("|---|---|---|---|");
    println!(
        "| skopeo copy, registry → registry (baseline) | {s:.2}s | {:.0} | |",
        mib / s
    );
    println!(
        "| nydus-image create of the 4 layer tars (baseline) | {cr:.2}s | {:.0} | {} MiB |",
        mib / cr,
        create_peak / MIB
    );
    println!(
        "| nydusify convert | {cv:.2}s | {:.0} | {} MiB |",
        mib / cv,
        convert_peak / MIB
    );
    println!(
        "| nydusify convert --reverse (gzip layers) | {rv:.2}s | {:.0} | {} MiB |",
        mib / rv,
        reverse_peak / MIB
    );
    let base = s.max(cr);
    println!(
        "\nconvert time / max(skopeo copy, nydus-image create): {:.2}   (target <= 1.5)",
        cv / base
    );
    println!(
        "nydusify peak RSS: convert {} MiB, reverse {} MiB   (target <= 300 MB)",
        convert_peak / MIB,
        reverse_peak / MIB
    );
    println!("reverse time / skopeo copy time: {:.2}", rv / s);
    Ok(())
}
