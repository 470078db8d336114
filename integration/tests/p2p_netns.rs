//! A multi-host cluster in network namespaces (hack/cluster.sh), every host's uplink shaped
//! to 1 Gbit/s: 1 seed peer and 4 peers fetch a 256 MiB blob at once; every host gets
//! identical bytes, the origin serves each byte once, the peers' bytes come from peers, and
//! the swarm uses every uplink: every host uploads, none more than twice the blob.

use integration::agent::{bin, sum_metric};
use integration::image::sha256_digest;
use integration::{random_bytes, TestDir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

struct Cluster {
    dir: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/cluster.sh")
}

impl Cluster {
    fn up(dir: PathBuf, hosts: u32, rate: &str) -> Cluster {
        let _ = Command::new("bash")
            .arg(script())
            .arg("down")
            .env("CLUSTER_DIR", &dir)
            .status();
        let o = Command::new("bash")
            .arg(script())
            .args(["up", &hosts.to_string(), rate])
            .env("CLUSTER_DIR", &dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "cluster up: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Cluster { dir }
    }

    fn in_ns(&self, ns: &str, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("down")
            .env("CLUSTER_DIR", &self.dir)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_seed_and_four_peers_in_namespaces_share_a_256_mib_blob() {
    integration::require_root_and_tools(&["ip", "tc", "curl", "docker-registry"]);
    let dir = TestDir::new("p2p-netns").unwrap();
    let cluster = Cluster::up(dir.join("cluster"), 5, "1gbit");
    let data = random_bytes(121, 256 * 1024 * 1024);
    let digest = sha256_digest(&data);
    let blob = dir.join("blob");
    std::fs::write(&blob, &data).unwrap();
    drop(data);
    let origin = "http://10.231.0.3:5000";
    let o = cluster.in_ns(
        "dfrs-origin",
        &[
            "curl",
            "-sf",
            "-X",
            "POST",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("{origin}/v2/t/blobs/uploads/"),
        ],
    );
    let head = String::from_utf8_lossy(&o.stdout).to_string();
    let location = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("Location: ")
                .or_else(|| l.strip_prefix("location: "))
        })
        .expect("upload location")
        .trim()
        .to_string();
    let put = cluster.in_ns(
        "dfrs-origin",
        &[
            "curl",
            "-sf",
            "-X",
            "PUT",
            "-T",
            blob.to_str().unwrap(),
            &format!("{location}&digest={digest}"),
        ],
    );
    assert!(
        put.status.success(),
        "push: {}",
        String::from_utf8_lossy(&put.stderr)
    );
    // Hosts announce themselves every 5 s; let every peer be known to the scheduler.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let url = format!("{origin}/v2/t/blobs/{digest}");
    let mut runs = Vec::new();
    for p in 1..=4 {
        let sock = dir.join(format!("cluster/peer{p}/dfdaemon.sock"));
        let out = dir.join(format!("out{p}"));
        let (url, digest) = (url.clone(), digest.clone());
        runs.push(tokio::task::spawn_blocking(move || {
            let o = Command::new(bin("dfget"))
                .arg("--no-progress")
                .arg("-e")
                .arg(&sock)
                .args([url.as_str(), "--digest", digest.as_str(), "-O"])
                .arg(&out)
                .output()
                .unwrap();
            (p, o, out)
        }));
    }
    for r in runs {
        let (p, o, out) = r.await.unwrap();
        assert!(
            o.status.success(),
            "peer{p}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        // dfget verified the digest; the file is there with the right size.
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 256 * 1024 * 1024);
    }

    // The origin sent the blob's bytes once in all.
    let log = std::fs::read_to_string(dir.join("cluster/origin.log")).unwrap();
    let sent: u64 = log
        .lines()
        .filter(|l| l.contains("\"GET /v2/t/blobs/"))
        .filter_map(|l| {
            let after = l.split("HTTP/1.1\" ").nth(1)?;
            let mut it = after.split_whitespace();
            let status: u16 = it.next()?.parse().ok()?;
            let bytes: u64 = it.next()?.parse().ok()?;
            (200..300).contains(&status).then_some(bytes)
        })
        .sum();
    assert_eq!(
        sent,
        256 * 1024 * 1024,
        "bytes the origin sent for the blob"
    );
    const SIZE: u64 = 256 * 1024 * 1024;
    let metrics = |ns: &str, ip: &str| {
        let m = cluster.in_ns(ns, &["curl", "-sf", &format!("http://{ip}:4002/metrics")]);
        String::from_utf8_lossy(&m.stdout).to_string()
    };
    let mut remote = 0.0;
    let mut uploads = vec![(
        "seed".to_string(),
        sum_metric(
            &metrics("dfrs-seed", "10.231.0.10"),
            "dragonfly_dfdaemon_upload_traffic_bytes_total",
        ),
    )];
    for p in 1..=4 {
        let m = metrics(&format!("dfrs-peer{p}"), &format!("10.231.0.{}", 10 + p));
        let from_peers = sum_metric(
            &m,
            "dragonfly_dfdaemon_download_traffic_bytes_total{type=\"remote_peer\"}",
        );
        // Every byte from a peer is counted against the parent host it came from.
        let by_parent = sum_metric(&m, "dragonfly_dfdaemon_parent_download_traffic_bytes_total");
        assert_eq!(by_parent, from_peers, "peer{p}: bytes by parent");
        remote += from_peers;
        uploads.push((
            format!("peer{p}"),
            sum_metric(&m, "dragonfly_dfdaemon_upload_traffic_bytes_total"),
        ));
    }
    assert_eq!(
        remote as u64,
        4 * SIZE,
        "the peers got everything from peers"
    );
    // Each byte a peer got was uploaded once, and every host's uplink took part.
    let total: f64 = uploads.iter().map(|(_, u)| u).sum();
    let mib: Vec<String> = uploads
        .iter()
        .map(|(h, u)| format!("{h} {:.0} MiB", u / 1048576.0))
        .collect();
    eprintln!("uploads: {}", mib.join(", "));
    assert_eq!(total as u64, 4 * SIZE, "uploads: {uploads:?}");
    for (host, up) in &uploads {
        assert!(*up > 0.0, "{host} uploaded nothing: {uploads:?}");
        assert!(
            *up <= 2.0 * SIZE as f64,
            "{host} uploaded over twice the blob: {uploads:?}"
        );
    }
}
