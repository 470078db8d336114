//! Configs written for upstream Dragonfly run as they are (`integration/fixtures/upstream`, as
//! Dragonfly's Helm chart renders them): the manager, the scheduler and two dfdaemons start
//! from them, log one warning per upstream key they ignore, and a download works P2P through
//! the scheduler the dfdaemons found through the manager. A typo stays an error naming the key.

use integration::agent::bin;
use integration::image::sha256_digest;
use integration::process::ChildProcess;
use integration::{free_port, random_bytes, require_root_and_tools, wait_for, TestDir, TestOrigin};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn fixture(name: &str, vars: &BTreeMap<&str, String>) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/upstream")
        .join(name);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (k, v) in vars {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    let unfilled = text
        .match_indices("${")
        .any(|(i, _)| text[i + 2..].starts_with(|c: char| c.is_ascii_uppercase()));
    assert!(!unfilled, "unfilled placeholder in {name}");
    text
}

fn write(dir: &TestDir, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The keys named by "`key` is ignored" warnings in a log.
fn ignored_keys(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("is ignored:"))
        .filter_map(|l| l.split('`').nth(1).map(str::to_string))
        .collect()
}

async fn healthy(url: String) {
    wait_for(Duration::from_secs(30), &url, || {
        let url = url.clone();
        async move {
            integration::http_client()
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await
    .unwrap();
}

async fn get_text(url: &str) -> String {
    integration::http_client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, series: &str) -> f64 {
    integration::agent::sum_metric(text, series)
}

/// Starts a dfdaemon named `name` from the upstream fixture; its metrics URL and socket.
fn dfdaemon(
    dir: &TestDir,
    name: &str,
    manager_grpc: u16,
    seed: bool,
) -> (ChildProcess, String, PathBuf) {
    let home = dir.join(name);
    std::fs::create_dir_all(&home).unwrap();
    let metrics = free_port();
    let vars: BTreeMap<&str, String> = [
        ("HOSTNAME", name.to_string()),
        ("DIR", home.display().to_string()),
        ("UPLOAD_PORT", free_port().to_string()),
        ("MANAGER_GRPC_PORT", manager_grpc.to_string()),
        ("SEED", seed.to_string()),
        ("TCP_PORT", free_port().to_string()),
        ("QUIC_PORT", free_port().to_string()),
        ("PROXY_PORT", free_port().to_string()),
        ("METRICS_PORT", metrics.to_string()),
        ("STATS_PORT", free_port().to_string()),
    ]
    .into();
    // The upstream file, plus this project's own keys that keep two daemons on one machine
    // apart (upstream's dfdaemon has no snapshotter or runtime).
    let text = format!(
        "{}\nruntime:\n  mountRoot: {h}/mounts\nsnapshotter:\n  socketPath: {h}/snapshotter.sock\n  root: {h}/snapshotter\n",
        fixture("dfdaemon.yaml", &vars),
        h = home.display()
    );
    let cfg = write(dir, &format!("{name}.yaml"), &text);
    let mut cmd = Command::new(bin("dfdaemon"));
    cmd.arg("--config").arg(&cfg);
    (
        ChildProcess::spawn(dir, name, cmd).unwrap(),
        format!("http://127.0.0.1:{metrics}"),
        home.join("dfdaemon.sock"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_manager_scheduler_and_dfdaemon_configs_run_unchanged() {
    require_root_and_tools(&[]);
    let dir = TestDir::new("upstream-configs").unwrap();
    let origin = TestOrigin::start().await.unwrap();

    // The manager.
    let (rest, grpc, manager_metrics) = (free_port(), free_port(), free_port());
    let vars: BTreeMap<&str, String> = [
        ("DIR", dir.path().display().to_string()),
        ("GRPC_PORT", grpc.to_string()),
        ("REST_PORT", rest.to_string()),
        ("METRICS_PORT", manager_metrics.to_string()),
    ]
    .into();
    let text = fixture("manager.yaml", &vars);
    let cfg = write(&dir, "manager.yaml", &text);
    let mut cmd = Command::new(bin("manager"));
    cmd.arg("--config").arg(&cfg).env(
        "DRAGONFLY_INITIAL_ROOT_PASSWORD",
        "upstream-test-password-0123",
    );
    let manager = ChildProcess::spawn(&dir, "manager", cmd).unwrap();
    healthy(format!("http://127.0.0.1:{rest}/healthy")).await;
    let keys = ignored_keys(&manager.log());
    for k in [
        "auth.jwt.key",
        "database.mysql",
        "database.redis",
        "cache",
        "job.rateLimit",
        "job.syncPeers",
        "server.name",
        "console",
    ] {
        assert_eq!(
            keys.iter().filter(|x| *x == k).count(),
            1,
            "one warning for {k}: {keys:?}"
        );
    }
    let m = get_text(&format!("http://127.0.0.1:{manager_metrics}/metrics")).await;
    assert!(m.contains("dragonfly_manager_version"), "{m}");
    // The chart's public JWT key is not what signs sessions.
    let key = std::fs::read(dir.join("manager").join("jwt.key")).unwrap();
    assert_ne!(key, b"ZHJhZ29uZmx5Cg==");

    // The scheduler registers with it.
    let (sched_port, sched_metrics) = (free_port(), free_port());
    let vars: BTreeMap<&str, String> = [
        ("PORT", sched_port.to_string()),
        ("MANAGER_GRPC_PORT", grpc.to_string()),
        ("METRICS_PORT", sched_metrics.to_string()),
    ]
    .into();
    let cfg = write(&dir, "scheduler.yaml", &fixture("scheduler.yaml", &vars));
    let mut cmd = Command::new(bin("scheduler"));
    cmd.arg("--config").arg(&cfg);
    let scheduler = ChildProcess::spawn(&dir, "scheduler", cmd).unwrap();
    wait_for(Duration::from_secs(30), "scheduler registered", || async {
        manager.log().contains("scheduler registered")
            && manager.log().contains("hostname=upstream-scheduler")
    })
    .await
    .unwrap();
    let keys = ignored_keys(&scheduler.log());
    for k in [
        "database",
        "job",
        "seedPeer.enable",
        "storage",
        "scheduler.algorithm",
    ] {
        assert_eq!(
            keys.iter().filter(|x| *x == k).count(),
            1,
            "one warning for {k}: {keys:?}"
        );
    }

    // Two dfdaemons that know only the manager.
    let (seed, seed_metrics, _) = dfdaemon(&dir, "seed", grpc, true);
    let (peer, peer_metrics, socket) = dfdaemon(&dir, "peer", grpc, false);
    healthy(format!("{seed_metrics}/healthy")).await;
    healthy(format!("{peer_metrics}/healthy")).await;
    let keys = ignored_keys(&peer.log());
    for k in [
        "server.pluginDir",
        "scheduler.enableBackToSource",
        "storage.cacheCapacity",
        "proxy.prefetch",
        "stats",
        "tracing",
    ] {
        assert_eq!(
            keys.iter().filter(|x| *x == k).count(),
            1,
            "one warning for {k}: {keys:?}"
        );
    }
    wait_for(
        Duration::from_secs(30),
        "schedulers from the manager",
        || async {
            peer.log().contains("schedulers from the manager")
                && seed.log().contains("schedulers from the manager")
        },
    )
    .await
    .unwrap();
    let sched_text = format!("http://127.0.0.1:{sched_metrics}/metrics");
    wait_for(Duration::from_secs(30), "both hosts announced", || async {
        let t = get_text(&sched_text).await;
        metric(&t, "dragonfly_scheduler_hosts{type=\"seed\"}") == 1.0
            && metric(&t, "dragonfly_scheduler_hosts{type=\"normal\"}") == 1.0
    })
    .await
    .unwrap();

    // A download through them: the peer's bytes come from the seed peer.
    let len = 6 * 1024 * 1024 + 3;
    let data = random_bytes(501, len);
    let digest = sha256_digest(&data);
    let path = format!("/v2/upstream/blobs/{digest}");
    origin.put(&path, data.clone());
    let out = dir.join("out");
    let o = Command::new(bin("dfget"))
        .arg("--endpoint")
        .arg(&socket)
        .arg("--no-progress")
        .arg(origin.url(&path))
        .arg("-O")
        .arg(&out)
        .arg("--digest")
        .arg(&digest)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == data);
    let t = get_text(&format!("{peer_metrics}/metrics")).await;
    assert_eq!(
        metric(
            &t,
            "dragonfly_dfdaemon_download_traffic_bytes_total{type=\"remote_peer\"}"
        ) as usize,
        len
    );
    let t = get_text(&sched_text).await;
    assert!(
        metric(&t, "dragonfly_scheduler_register_peer_total") >= 2.0,
        "{t}"
    );
    // Each host's upload utilisation and children are exported (one series per host).
    for name in [
        "dragonfly_scheduler_host_upload_bandwidth_utilization{",
        "dragonfly_scheduler_host_upload_peers{",
    ] {
        let hosts = t.lines().filter(|l| l.starts_with(name)).count();
        assert_eq!(hosts, 2, "{name} for both hosts:\n{t}");
    }
    // The peer's bytes are counted against the seed peer's host.
    let t = get_text(&format!("{peer_metrics}/metrics")).await;
    assert_eq!(
        metric(
            &t,
            "dragonfly_dfdaemon_parent_download_traffic_bytes_total{parent_ip=\"127.0.0.1\"}"
        ) as usize,
        len,
        "{t}"
    );

    // A typo is still an error naming the key, and --check-config says so.
    let bad = write(
        &dir,
        "typo.yaml",
        &fixture("scheduler.yaml", &vars).replace("advertisePort", "advertisePrt"),
    );
    let o = Command::new(bin("scheduler"))
        .arg("--config")
        .arg(&bad)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("advertisePrt"));
    let good = dir.join("seed.yaml");
    let o = Command::new(bin("dfdaemon"))
        .arg("--config")
        .arg(&good)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
