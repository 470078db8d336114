//! P2P with faulty parents, as separate daemon processes on loopback: a parent
//! that corrupts what it uploads (the `fault-injection` test-build config) and
//! a parent killed while it serves a peer.

use integration::agent::Agent;
use integration::cluster::{peer_yaml, start_peers, Scheduler};
use integration::image::sha256_digest;
use integration::{random_bytes, wait_for, TestDir, TestOrigin};
use std::time::Duration;

const MIB: usize = 1024 * 1024;
const UPLOADED_TCP: &str = "dragonfly_dfdaemon_upload_traffic_bytes_total{protocol=\"tcp\"}";
const FROM_PEERS: &str = "dragonfly_dfdaemon_download_traffic_bytes_total{type=\"remote_peer\"}";

fn blob(origin: &TestOrigin, seed: u64, len: usize) -> (String, String, String, Vec<u8>) {
    let data = random_bytes(seed, len);
    let digest = sha256_digest(&data);
    let path = format!("/v2/faults/blobs/{digest}");
    origin.put(&path, data.clone());
    (origin.url(&path), path, digest, data)
}

/// A peer config with `extra` YAML lines appended.
fn yaml(name: &str, scheduler: &Scheduler, extra: &str) -> String {
    format!("{}{extra}", peer_yaml(name, scheduler.port, false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parent_that_corrupts_pieces_is_rejected_reported_and_excluded() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("p2p-corrupt-parent").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let sched = Scheduler::start(&dir, "scheduler").unwrap();
    let (_seed, _) = start_peers(&dir, &sched, 0).await.unwrap();
    let bad = Agent::start(
        &dir,
        "bad",
        &yaml("bad", &sched, "faultInjection:\n  corruptUploadedPieces: true\n"),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nthe dfdaemon binary must be built with the fault-injection feature \
             (hack/test.sh does: cargo build --workspace --bins --features dfdaemon/fault-injection)"
        )
    });
    // One piece at a time, so the first bad piece is also the last one asked of `bad`.
    let child = Agent::start(
        &dir,
        "child",
        &yaml("child", &sched, "  concurrentPieceCount: 1\n"),
    )
    .await
    .unwrap();
    sched.wait_hosts(3).await.unwrap();

    // The child's parents are `bad` and the seed peer; with one request at a time it asks
    // them in turn once both have announced their pieces. Under load `bad` may announce only
    // after the seed has served the whole blob, so blobs are fetched until the child asked
    // `bad` for one (it then drops `bad`: at most one piece per blob reaches `bad`).
    let mut asked = None;
    for attempt in 0..5u64 {
        let (url, path, digest, data) = blob(&origin, 301 + attempt, 24 * MIB);
        let o = bad.dfget(&[
            &url,
            "-O",
            dir.join(format!("bad{attempt}.out")).to_str().unwrap(),
            "--digest",
            &digest,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let origin_requests = origin.requests_for(&path);
        let from_peers = child.metric(FROM_PEERS).await.unwrap() as usize;
        let out = dir.join(format!("child{attempt}.out"));
        let o = child.dfget(&[&url, "-O", out.to_str().unwrap(), "--digest", &digest]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            std::fs::read(&out).unwrap() == data,
            "the child's bytes differ"
        );
        // Every byte the child stored came from a parent, none from the origin.
        assert_eq!(
            child.metric(FROM_PEERS).await.unwrap() as usize - from_peers,
            data.len()
        );
        assert_eq!(origin.requests_for(&path), origin_requests);
        if bad.metric(UPLOADED_TCP).await.unwrap() > 0.0 {
            asked = Some(attempt);
            break;
        }
    }
    assert!(
        asked.is_some(),
        "the child never asked `bad` in 5 blobs; its log:\n{}",
        child.log_tail(40)
    );

    // `bad` sent exactly one piece (4 MiB) before the child dropped it.
    let sent = bad.metric(UPLOADED_TCP).await.unwrap();
    assert_eq!(
        sent as usize,
        4 * MIB,
        "bytes `bad` uploaded; the child's log:\n{}",
        child.log_tail(40)
    );
    assert!(
        child.log().contains("dropping parent"),
        "the child should log the rejected parent:\n{}",
        child.log_tail(30)
    );
    // The scheduler heard of it.
    let sched_log = std::fs::read_to_string(dir.logs_dir().join("scheduler.log")).unwrap();
    let reported = sched_log
        .lines()
        .any(|l| l.contains("reported a failing parent") && l.contains("127.0.0.1-bad-"));
    assert!(
        reported,
        "no failure report for `bad` in the scheduler log:\n{sched_log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parent_killed_mid_transfer_is_replaced_and_the_bytes_are_identical() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("p2p-kill-parent").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let sched = Scheduler::start(&dir, "scheduler").unwrap();
    let (seed, _) = start_peers(&dir, &sched, 0).await.unwrap();
    // The parent uploads at 4 MiB/s, so serving the child takes seconds.
    let mut parent = Agent::start(
        &dir,
        "parent",
        &yaml("parent", &sched, "upload:\n  rateLimit: 4MiB\n"),
    )
    .await
    .unwrap();
    let child = Agent::start(
        &dir,
        "child",
        &yaml("child", &sched, "  concurrentPieceCount: 2\n"),
    )
    .await
    .unwrap();
    sched.wait_hosts(3).await.unwrap();

    let (url, path, digest, data) = blob(&origin, 302, 40 * MIB);
    let o = parent.dfget(&[
        &url,
        "-O",
        dir.join("p.out").to_str().unwrap(),
        "--digest",
        &digest,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let origin_requests = origin.requests_for(&path);
    let seed_sent_before = seed.metric(UPLOADED_TCP).await.unwrap();

    let out = dir.join("child.out");
    let run = child.dfget_spawn(&[&url, "-O", out.to_str().unwrap(), "--digest", &digest]);
    // Once the parent has served the child a piece, kill it.
    wait_for(
        Duration::from_secs(60),
        "the parent serves the child",
        || async { parent.metric(UPLOADED_TCP).await.unwrap_or(0.0) > 0.0 },
    )
    .await
    .unwrap();
    parent.kill9().await;
    let o = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "the child's bytes differ"
    );
    // Everything came from peers (the killed parent, then the seed), nothing from the origin.
    assert_eq!(child.metric(FROM_PEERS).await.unwrap() as usize, data.len());
    assert_eq!(origin.requests_for(&path), origin_requests);
    let seed_sent = seed.metric(UPLOADED_TCP).await.unwrap() - seed_sent_before;
    assert!(
        seed_sent > 0.0 && (seed_sent as usize) < data.len(),
        "the seed should have sent the rest, sent {seed_sent}"
    );
}

/// Faults injected into a peer's own transport (the test build's `faultInjection`): every
/// piece fetch from a parent fails before a byte moves, and its first two fetches from the
/// origin fail as a connection reset would. It drops its parents, takes every piece from the
/// origin, retries the two failed fetches, and its bytes are right.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transport_faults_send_a_peer_to_the_origin_and_failed_fetches_are_retried() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("p2p-transport-faults").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let sched = Scheduler::start(&dir, "scheduler").unwrap();
    let (_seed, peers) = start_peers(&dir, &sched, 1).await.unwrap();
    let child = Agent::start(
        &dir,
        "child",
        &yaml(
            "child",
            &sched,
            "faultInjection:\n  failParentFetches: true\n  failOriginFetches: 2\n",
        ),
    )
    .await
    .unwrap();
    sched.wait_hosts(3).await.unwrap();

    let (url, _, digest, data) = blob(&origin, 303, 16 * MIB);
    let o = peers[0].dfget(&[
        &url,
        "-O",
        dir.join("first.out").to_str().unwrap(),
        "--digest",
        &digest,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let out = dir.join("child.out");
    let o = child.dfget(&[&url, "-O", out.to_str().unwrap(), "--digest", &digest]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "the child's bytes differ"
    );
    assert_eq!(child.metric(FROM_PEERS).await.unwrap_or(0.0), 0.0);
    let from_origin = child
        .metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"back_to_source\"}")
        .await
        .unwrap();
    assert_eq!(from_origin as usize, data.len());
    let log = child.log();
    assert!(
        log.contains("dropping parent"),
        "the child should drop its parents:\n{}",
        child.log_tail(30)
    );
    let injected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("fault injected"))
        .collect();
    let at_parents = injected
        .iter()
        .filter(|l| l.contains("fault injection: piece"))
        .count();
    let at_origin = injected
        .iter()
        .filter(|l| l.trim_end().ends_with(": fault injection"))
        .count();
    assert!(
        at_parents >= 1 && at_origin == 2,
        "faults injected: {at_parents} at parents, {at_origin} at the origin:\n{}",
        injected.join("\n")
    );
}
