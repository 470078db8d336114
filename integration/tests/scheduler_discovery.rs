//! Scheduler discovery: names in `scheduler.addrs` are resolved again and again, every address
//! is used, and the hash ring holds the schedulers that pass their health check.
//! - Two schedulers behind one name (two loopback addresses in a hosts file the test writes,
//!   the peers in mount namespaces that see it as `/etc/hosts`): one is killed mid-run and
//!   the downloads keep going through the other, none to the origin because of it.
//! - A dfdaemon started before any scheduler serves as a mirror, and joins P2P when one
//!   appears.

use dfdaemon::scheduler_client::scheduler_of;
use integration::agent::Agent;
use integration::cluster::{file_task_id, peer_yaml, Scheduler};
use integration::process::Signal;
use integration::{free_port, random_bytes, TestDir, TestOrigin};
use std::net::SocketAddr;

const MIB: usize = 1024 * 1024;
const FROM_PEERS: &str = "dragonfly_dfdaemon_download_traffic_bytes_total{type=\"remote_peer\"}";
const ANNOUNCE_FAILURES: &str = "dragonfly_dfdaemon_announce_host_failures_total";
const SCHEDULERS: &str = "dragonfly_dfdaemon_schedulers_healthy";
const FROM_ORIGIN: &str =
    "dragonfly_dfdaemon_download_traffic_bytes_total{type=\"back_to_source\"}";

fn named_peer_yaml(name: &str, addr: &str, seed: bool) -> String {
    format!(
        "host:\n  hostname: {name}\n  ip: 127.0.0.1\nscheduler:\n  addrs: ['{addr}']\nseedPeer:\n  enable: {seed}\ndownload:\n  pieceTimeout: 20s\n"
    )
}

/// Puts `n` files of `size` bytes on the origin (seeded by `base`); their URLs and bytes.
fn files(origin: &TestOrigin, base: u64, n: u64, size: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let data = random_bytes(base + i, size);
            let path = format!("/files/discovery-{}.bin", base + i);
            origin.put(&path, data.clone());
            (origin.url(&path), data)
        })
        .collect()
}

/// A free port at which neither of the two schedulers takes almost every task: tasks hash
/// over the schedulers' addresses as Dragonfly's client hashes them (one point per scheduler
/// on the ring), so some ports give one of them nearly all.
fn balanced_port(a: std::net::IpAddr, b: std::net::IpAddr) -> u16 {
    for _ in 0..500 {
        let port = free_port();
        let addrs = [SocketAddr::new(a, port), SocketAddr::new(b, port)];
        let to_a = (0..1000u32)
            .filter(|i| {
                let id = integration::image::sha256_digest(&i.to_le_bytes());
                let id = id.trim_start_matches("sha256:");
                scheduler_of(&addrs, id) == Some(addrs[0])
            })
            .count();
        if (300..=700).contains(&to_a) {
            return port;
        }
    }
    panic!("no port in 500 splits tasks between 127.0.0.2 and 127.0.0.3 within 30-70 %");
}

/// Files on the origin (seeded from `base`) until `want_a` hash to `a` and `want_b` to `b`.
fn files_for(
    origin: &TestOrigin,
    base: u64,
    addrs: [SocketAddr; 2],
    (want_a, want_b): (usize, usize),
) -> Vec<(String, Vec<u8>)> {
    let (mut n_a, mut n_b, mut out) = (0, 0, Vec::new());
    let mut i = base;
    while n_a < want_a || n_b < want_b {
        let path = format!("/files/discovery-{i}.bin");
        let url = origin.url(&path);
        let to_a = scheduler_of(&addrs, &file_task_id(&url)) == Some(addrs[0]);
        i += 1;
        if (to_a && n_a >= want_a) || (!to_a && n_b >= want_b) {
            continue;
        }
        if to_a {
            n_a += 1;
        } else {
            n_b += 1;
        }
        let data = random_bytes(i, 2 * MIB);
        origin.put(&path, data.clone());
        out.push((url, data));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schedulers_behind_one_name_keep_serving_when_one_dies() {
    integration::require_root_and_tools(&["unshare", "mount"]);
    let dir = TestDir::new("sched-discovery").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let (ip_a, ip_b) = ([127, 0, 0, 2].into(), [127, 0, 0, 3].into());
    let port = balanced_port(ip_a, ip_b);
    let addrs = [SocketAddr::new(ip_a, port), SocketAddr::new(ip_b, port)];
    let a = Scheduler::start_with(&dir, "sched-a", port, "server:\n  ip: 127.0.0.2\n").unwrap();
    let b = Scheduler::start_with(&dir, "sched-b", port, "server:\n  ip: 127.0.0.3\n").unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.2 schedulers.dfrs.test\n127.0.0.3 schedulers.dfrs.test\n",
    )
    .unwrap();
    let name = format!("schedulers.dfrs.test:{port}");
    let seed =
        Agent::start_with_hosts_file(&dir, "seed", &named_peer_yaml("seed", &name, true), &hosts)
            .await
            .unwrap();
    let peer =
        Agent::start_with_hosts_file(&dir, "peer", &named_peer_yaml("peer", &name, false), &hosts)
            .await
            .unwrap();
    // Both addresses of the name are used: each scheduler hears of both hosts.
    a.wait_hosts(2).await.unwrap();
    b.wait_hosts(2).await.unwrap();

    let fetch = |set: &[(String, Vec<u8>)], tag: &str| {
        for (i, (url, data)) in set.iter().enumerate() {
            let out = dir.join(format!("{tag}-{i}.out"));
            let o = peer.dfget(&[url, "-O", out.to_str().unwrap()]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert!(std::fs::read(&out).unwrap() == *data, "{url}: bytes differ");
        }
    };
    // Two tasks for each scheduler: each schedules its own.
    let before = files_for(&origin, 500, addrs, (2, 2));
    fetch(&before, "before");
    let total: usize = before.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(peer.metric(FROM_PEERS).await.unwrap() as usize, total);
    for (s, n) in [(&a, "A"), (&b, "B")] {
        let triggered = s.process.log().matches("triggering seed peer").count();
        assert_eq!(
            triggered, 2,
            "scheduler {n} scheduled {triggered} of its 2 tasks"
        );
    }

    // A dies; four tasks that hash to it and two that hash to B.
    a.process.kill(Signal::KILL).unwrap();
    drop(a);
    let after = files_for(&origin, 600, addrs, (4, 2));
    fetch(&after, "after");
    let total_after: usize = after.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(
        peer.metric(FROM_PEERS).await.unwrap() as usize,
        total + total_after,
        "every byte came from the seed peer; peer log:\n{}",
        peer.log_tail(30)
    );
    assert_eq!(
        peer.metric(FROM_ORIGIN).await.unwrap(),
        0.0,
        "the peer went to the origin"
    );
    for (url, _) in before.iter().chain(&after) {
        let path = url
            .split_once("/files/")
            .map(|(_, p)| format!("/files/{p}"))
            .unwrap();
        assert_eq!(
            origin.requests_for(&path),
            1,
            "{url}: fetched once, by the seed peer"
        );
    }
    assert_eq!(
        b.process.log().matches("triggering seed peer").count(),
        8,
        "B scheduled its own tasks and A's"
    );
    drop(seed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dfdaemon_started_before_its_scheduler_is_a_mirror_until_the_scheduler_appears() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("sched-late").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let port = free_port();
    let seed = Agent::start(&dir, "seed", &peer_yaml("seed", port, true))
        .await
        .unwrap();
    let peer = Agent::start(&dir, "peer", &peer_yaml("peer", port, false))
        .await
        .unwrap();
    // No scheduler yet: the peer is a mirror (it fetches from the origin itself).
    let early = files(&origin, 700, 1, MIB);
    let out = dir.join("early.out");
    let o = peer.dfget(&[&early[0].0, "-O", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == early[0].1);
    assert_eq!(peer.metric(FROM_ORIGIN).await.unwrap() as usize, MIB);

    // Its scheduler does not answer: counted and logged as announce failures.
    integration::wait_for(
        std::time::Duration::from_secs(20),
        "announce failures counted",
        || async { seed.metric(ANNOUNCE_FAILURES).await.unwrap_or(0.0) > 0.0 },
    )
    .await
    .unwrap();
    assert_eq!(seed.metric(SCHEDULERS).await.unwrap(), 0.0);
    assert!(
        seed.log().contains("AnnounceHost failed"),
        "{}",
        seed.log_tail(20)
    );

    let sched = Scheduler::start_on(&dir, "scheduler", port).unwrap();
    sched.wait_hosts(2).await.unwrap();
    assert_eq!(seed.metric(SCHEDULERS).await.unwrap(), 1.0);
    let late = files(&origin, 701, 1, 4 * MIB);
    let out = dir.join("late.out");
    let o = peer.dfget(&[&late[0].0, "-O", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == late[0].1);
    assert_eq!(
        peer.metric(FROM_PEERS).await.unwrap() as usize,
        4 * MIB,
        "the peer joined P2P; log:\n{}",
        peer.log_tail(20)
    );
    assert!(
        seed.log().contains("schedulers in use"),
        "{}",
        seed.log_tail(20)
    );
}
