//! A scheduler, a seed peer and two peers (separate dfdaemon processes on
//! loopback): dfget on the peers gets identical bytes, every byte range leaves
//! the origin once (fetched by the seed peer the scheduler triggered), and the
//! peers' bytes come from other peers, not from the origin.

use dragonfly_api::scheduler::v2::ListHostsRequest;
use integration::agent::bin;
use integration::cluster::{start_peers, Scheduler};
use integration::image::sha256_digest;
use integration::{random_bytes, TestDir, TestOrigin};
use std::collections::BTreeSet;
use std::process::Command;

const PIECE: u64 = 4 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_and_peers_share_a_task_and_the_origin_sends_it_once() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("p2p-cluster").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let len = 10 * PIECE + 4321;
    let data = random_bytes(101, len as usize);
    let digest = sha256_digest(&data);
    let path = format!("/v2/cluster/blobs/{digest}");
    origin.put(&path, data.clone());

    let sched = Scheduler::start(&dir, "scheduler").unwrap();
    let (seed, peers) = start_peers(&dir, &sched, 2).await.unwrap();
    let (peer1, peer2) = (&peers[0], &peers[1]);
    let mut client = sched.client().await.unwrap();
    let hosts = client
        .list_hosts(ListHostsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .hosts;
    let seeds: Vec<_> = hosts
        .iter()
        .filter(|h| h.r#type == 1)
        .map(|h| h.id.clone())
        .collect();
    assert_eq!(seeds, vec!["127.0.0.1-seed-seed".to_string()]);

    let url = origin.url(&path);
    for (i, peer) in [&peer1, &peer2].iter().enumerate() {
        let out = dir.join(format!("out{i}"));
        let o = peer.dfget(&[&url, "-O", out.to_str().unwrap(), "--digest", &digest]);
        assert!(
            o.status.success(),
            "dfget on peer{}: {}",
            i + 1,
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            std::fs::read(&out).unwrap() == data,
            "bytes differ on peer{}",
            i + 1
        );
    }

    // The task left the origin once, as one stream, for the seed peer.
    let ranges: Vec<String> = origin
        .ranges_for(&path)
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(ranges, vec!["bytes=0-".to_string()], "origin GETs");
    let seed_b2s = seed
        .metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"back_to_source\"}")
        .await
        .unwrap() as u64;
    assert_eq!(
        seed_b2s, len,
        "the seed peer fetched the task from the origin"
    );
    for (name, p) in [("peer1", &peer1), ("peer2", &peer2)] {
        let remote = p
            .metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"remote_peer\"}")
            .await
            .unwrap() as u64;
        let b2s = p
            .metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"back_to_source\"}")
            .await
            .unwrap() as u64;
        assert_eq!(
            (remote, b2s),
            (len, 0),
            "{name}: bytes from peers / from the origin"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_peers_at_once_share_one_origin_download() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("p2p-cluster-4").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let len = 64 * 1024 * 1024 + 99;
    let data = random_bytes(102, len as usize);
    let digest = sha256_digest(&data);
    let path = format!("/v2/cluster4/blobs/{digest}");
    origin.put(&path, data.clone());
    let sched = Scheduler::start(&dir, "scheduler").unwrap();
    let (_seed, peers) = start_peers(&dir, &sched, 4).await.unwrap();
    let url = origin.url(&path);
    let mut runs = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        let out = dir.join(format!("out{i}"));
        let args: Vec<String> = vec![
            url.clone(),
            "-O".into(),
            out.display().to_string(),
            "--digest".into(),
            digest.clone(),
        ];
        let socket = p.socket.clone();
        runs.push(tokio::task::spawn_blocking(move || {
            let o = Command::new(bin("dfget"))
                .arg("--endpoint")
                .arg(&socket)
                .arg("--no-progress")
                .args(&args)
                .output()
                .unwrap();
            (o, out)
        }));
    }
    for r in runs {
        let (o, out) = r.await.unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(std::fs::read(&out).unwrap() == data);
    }
    let ranges: Vec<String> = origin
        .ranges_for(&path)
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let distinct: BTreeSet<String> = ranges.iter().cloned().collect();
    assert_eq!(
        ranges.len(),
        distinct.len(),
        "a range was fetched twice: {ranges:?}"
    );
    let mut remote = 0u64;
    for p in &peers {
        remote += p
            .metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"remote_peer\"}")
            .await
            .unwrap() as u64;
    }
    assert!(
        remote >= 3 * len,
        "most bytes should come from peers: {remote} of {}",
        4 * len
    );
}
