//! A multi-host cluster in network namespaces (hack/cluster.sh): 1 seed peer
//! and 4 peers fetch a 256 MiB blob at once; every host gets identical bytes,
//! the origin serves each byte once, and the peers' bytes come from peers.

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
    fn up(dir: PathBuf, hosts: u32) -> Cluster {
        let _ = Command::new("bash")
            .arg(script())
            .arg("down")
            .env("CLUSTER_DIR", &dir)
            .status();
        let o = Command::new("bash")
            .arg(script())
            .args(["up", &hosts.to_string()])
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
    let cluster = Cluster::up(dir.join("cluster"), 5);
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
    let mut remote = 0.0;
    for p in 1..=4 {
        let m = cluster.in_ns(
            &format!("dfrs-peer{p}"),
            &[
                "curl",
                "-sf",
                &format!("http://10.231.0.{}:4002/metrics", 10 + p),
            ],
        );
        remote += sum_metric(
            &String::from_utf8_lossy(&m.stdout),
            "dragonfly_dfdaemon_download_traffic_bytes_total{type=\"remote_peer\"}",
        );
    }
    assert_eq!(
        remote as u64,
        4 * 256 * 1024 * 1024,
        "the peers got everything from peers"
    );
}
