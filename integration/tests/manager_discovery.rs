//! The control plane on loopback (separate processes): a scheduler registers with the manager
//! and stays active; a seed peer and a peer that know only the manager's address find the
//! scheduler through `ListSchedulers` and download P2P; the scheduler applies its cluster's
//! config from the manager; with the manager stopped, a restarted peer keeps using the
//! scheduler list it last heard of.

use integration::agent::Agent;
use integration::cluster::{managed_peer_yaml, Manager, Scheduler};
use integration::image::sha256_digest;
use integration::{random_bytes, wait_for, TestDir, TestOrigin};
use std::time::Duration;

const REMOTE: &str = "dragonfly_dfdaemon_download_traffic_bytes_total{type=\"remote_peer\"}";
const ORIGIN: &str = "dragonfly_dfdaemon_download_traffic_bytes_total{type=\"back_to_source\"}";

async fn dfget(dir: &TestDir, peer: &Agent, url: &str, digest: &str, data: &[u8], out: &str) {
    let out = dir.join(out);
    let o = peer.dfget(&[url, "-O", out.to_str().unwrap(), "--digest", digest]);
    assert!(
        o.status.success(),
        "dfget: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(std::fs::read(&out).unwrap() == data, "bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_find_their_scheduler_through_the_manager_and_keep_it_while_the_manager_is_down() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("manager-discovery").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let mut manager = Manager::start(&dir, "manager", "").await.unwrap();
    let session = manager.root_session().await.unwrap();

    // The scheduler registers and becomes active; it reads the default cluster's config.
    let sched = Scheduler::start_with_manager(&dir, "scheduler", &manager).unwrap();
    manager
        .wait_state(&session, "/api/v1/schedulers", "scheduler", "active")
        .await
        .unwrap();
    let list = manager
        .get_json(&session, "/api/v1/schedulers")
        .await
        .unwrap();
    assert_eq!(list[0]["port"], sched.port);
    assert_eq!(list[0]["ip"], "127.0.0.1");

    // Peers that know only the manager find the scheduler; the seed peer shows active too.
    let seed = Agent::start(&dir, "seed", &managed_peer_yaml("seed", &manager, true))
        .await
        .unwrap();
    let mut peer = Agent::start(&dir, "peer", &managed_peer_yaml("peer", &manager, false))
        .await
        .unwrap();
    sched.wait_hosts(2).await.unwrap();
    manager
        .wait_state(&session, "/api/v1/seed-peers", "seed", "active")
        .await
        .unwrap();

    let len = 9 * 1024 * 1024 + 17;
    let data = random_bytes(121, len);
    let digest = sha256_digest(&data);
    let path = format!("/v2/discovery/blobs/{digest}");
    origin.put(&path, data.clone());
    dfget(&dir, &peer, &origin.url(&path), &digest, &data, "out1").await;
    assert_eq!(peer.metric(REMOTE).await.unwrap() as usize, len);
    assert_eq!(peer.metric(ORIGIN).await.unwrap(), 0.0);
    assert_eq!(seed.metric(ORIGIN).await.unwrap() as usize, len);
    let kept: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("peer-store").join("dynconfig.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        kept["schedulers"][0],
        format!("127.0.0.1:{}", sched.port),
        "{kept}"
    );

    // A cluster config change reaches the scheduler through GetScheduler.
    let r = integration::http_client()
        .patch(manager.url("/api/v1/scheduler-clusters/1"))
        .bearer_auth(&session)
        .json(&serde_json::json!({"config": {"candidate_parent_limit": 2, "filter_parent_limit": 40}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for(
        Duration::from_secs(30),
        "scheduler applies the cluster config",
        || async {
            let log = sched.process.log();
            log.contains("cluster config from the manager applied")
                && log.contains("candidate_parent_limit: Some(2)")
        },
    )
    .await
    .unwrap();

    // The manager goes away: the peer notices, and after a restart still uses the scheduler.
    manager
        .process
        .kill(integration::process::Signal::KILL)
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "peer notices the manager is down",
        || async {
            peer.log()
                .contains("cannot list schedulers from the manager")
        },
    )
    .await
    .unwrap();
    peer.restart().await.unwrap();
    assert!(
        peer.log()
            .contains("using the schedulers the manager last listed"),
        "{}",
        peer.log_tail(30)
    );
    let data2 = random_bytes(122, len);
    let digest2 = sha256_digest(&data2);
    let path2 = format!("/v2/discovery/blobs/{digest2}");
    origin.put(&path2, data2.clone());
    dfget(&dir, &peer, &origin.url(&path2), &digest2, &data2, "out2").await;
    assert_eq!(
        peer.metric(REMOTE).await.unwrap() as usize,
        len,
        "the restarted peer got the second file from the seed peer through the scheduler"
    );
    assert_eq!(peer.metric(ORIGIN).await.unwrap(), 0.0);
    assert_eq!(seed.metric(ORIGIN).await.unwrap() as usize, 2 * len);

    // The manager comes back on its ports and database: the scheduler is active again.
    let (rest, grpc) = (manager.rest_port, manager.grpc_port);
    drop(manager);
    manager = Manager::start_on(&dir, "manager", rest, grpc, "")
        .await
        .unwrap();
    let session = manager.root_session().await.unwrap();
    manager
        .wait_state(&session, "/api/v1/schedulers", "scheduler", "active")
        .await
        .unwrap();
}
