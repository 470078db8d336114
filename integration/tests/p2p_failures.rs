//! P2P when things go wrong: no scheduler, a scheduler restarted mid-run, and
//! malformed AnnouncePeer / AnnounceHost requests.

use dragonfly_api::common::v2::Host;
use dragonfly_api::scheduler::v2::announce_peer_request::Request as Req;
use dragonfly_api::scheduler::v2::{
    AnnounceHostRequest, AnnouncePeerRequest, DownloadPeerStartedRequest, ListHostsRequest,
};
use integration::agent::Agent;
use integration::cluster::{peer_yaml, Scheduler};
use integration::image::sha256_digest;
use integration::{free_port, random_bytes, TestDir, TestOrigin};
use std::time::Duration;

const MIB: usize = 1024 * 1024;

fn blob(origin: &TestOrigin, seed: u64, len: usize) -> (String, String, Vec<u8>) {
    let data = random_bytes(seed, len);
    let digest = sha256_digest(&data);
    let path = format!("/v2/failures/blobs/{digest}");
    origin.put(&path, data.clone());
    (origin.url(&path), digest, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_scheduler_dfget_falls_back_to_the_origin_unless_told_not_to() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("p2p-no-scheduler").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let nobody = free_port();
    let peer = Agent::start(&dir, "peer", &peer_yaml("peer", nobody, false))
        .await
        .unwrap();
    let (url, digest, data) = blob(&origin, 111, 9 * MIB);
    let out = dir.join("out");
    let o = peer.dfget(&[&url, "-O", out.to_str().unwrap(), "--digest", &digest]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == data);
    let b2s = peer
        .metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"back_to_source\"}")
        .await
        .unwrap();
    assert_eq!(b2s as usize, data.len());

    let (url2, _, _) = blob(&origin, 112, MIB);
    let o = peer.dfget(&[
        &url2,
        "-O",
        dir.join("out2").to_str().unwrap(),
        "--disable-back-to-source",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("back-to-source is disabled"), "{err}");
    assert_eq!(
        origin.requests_for(&url2.replace(&origin.base_url(), "")),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduler_killed_mid_run_and_restarted_gets_peers_back_and_p2p_resumes() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("p2p-sched-restart").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let mut sched = Scheduler::start(&dir, "scheduler").unwrap();
    let sport = sched.port;
    // The seed peer uploads at 8 MiB/s and peer1 at 4 MiB/s, so peer2's download from them
    // takes seconds and peer2 asks both (a child takes turns among its idle parents).
    let seed = Agent::start(
        &dir,
        "seed",
        &format!(
            "{}upload:\n  rateLimit: 8MiB\n",
            peer_yaml("seed", sport, true)
        ),
    )
    .await
    .unwrap();
    let yaml = |name: &str, extra: &str| format!("{}{extra}", peer_yaml(name, sport, false));
    let peer1 = Agent::start(
        &dir,
        "peer1",
        &yaml("peer1", "upload:\n  rateLimit: 4MiB\n"),
    )
    .await
    .unwrap();
    let peer2 = Agent::start(&dir, "peer2", &yaml("peer2", "  concurrentPieceCount: 2\n"))
        .await
        .unwrap();
    let peer3 = Agent::start(&dir, "peer3", &yaml("peer3", ""))
        .await
        .unwrap();
    sched.wait_hosts(4).await.unwrap();
    let (url, digest, data) = blob(&origin, 113, 40 * MIB);
    let path = url.replace(&origin.base_url(), "");
    let o = peer1.dfget(&[
        &url,
        "-O",
        dir.join("a").to_str().unwrap(),
        "--digest",
        &digest,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let origin_requests = origin.requests_for(&path);

    // peer2 downloads from peer1; the scheduler dies mid-run with all its state.
    let out2 = dir.join("b");
    let run = peer2.dfget_spawn(&[&url, "-O", out2.to_str().unwrap(), "--digest", &digest]);
    integration::wait_for(Duration::from_secs(60), "peer1 serves peer2", || async {
        peer1
            .metric("dragonfly_dfdaemon_upload_traffic_bytes_total{protocol=\"tcp\"}")
            .await
            .unwrap_or(0.0)
            > 0.0
    })
    .await
    .unwrap();
    sched.process.kill9().unwrap();
    sched.process.wait_exit(Duration::from_secs(10)).await;
    let sched2 = Scheduler::start_on(&dir, "scheduler-restarted", sport).unwrap();
    // The running download completes from its parents.
    let o = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(&out2).unwrap() == data,
        "peer2's bytes differ"
    );
    assert_eq!(origin.requests_for(&path), origin_requests);

    // Peers announce themselves to the new scheduler (every 5 s); a new download
    // registers there and is served by peers, not the origin.
    sched2.wait_hosts(4).await.unwrap();
    let out3 = dir.join("c");
    let o = peer3.dfget(&[&url, "-O", out3.to_str().unwrap(), "--digest", &digest]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out3).unwrap() == data);
    assert_eq!(
        origin.requests_for(&path),
        origin_requests,
        "after the restart the task came from peers, not the origin"
    );
    let remote = peer3
        .metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"remote_peer\"}")
        .await
        .unwrap();
    assert_eq!(remote as usize, data.len());
    drop(seed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_scheduler_requests_get_errors_and_the_scheduler_keeps_serving() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("p2p-sched-bad-input").unwrap();
    let sched = Scheduler::start(&dir, "scheduler").unwrap();
    let mut c = sched.client().await.unwrap();

    // A host without an IP.
    let e = c
        .announce_host(AnnounceHostRequest {
            host: Some(Host {
                id: "x".into(),
                ip: "not-an-ip".into(),
                ..Default::default()
            }),
            interval: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // An AnnouncePeer stream that starts with anything but RegisterPeerRequest.
    let req = AnnouncePeerRequest {
        host_id: "h".into(),
        task_id: "a".repeat(64),
        peer_id: "p".into(),
        request: Some(Req::DownloadPeerStartedRequest(
            DownloadPeerStartedRequest {},
        )),
    };
    let mut stream = c
        .announce_peer(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let e = stream.message().await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("RegisterPeerRequest"),
        "{}",
        e.message()
    );

    // A register for a host that never announced itself.
    let req = AnnouncePeerRequest {
        host_id: "ghost".into(),
        task_id: "b".repeat(64),
        peer_id: "p2".into(),
        request: Some(Req::RegisterPeerRequest(
            dragonfly_api::scheduler::v2::RegisterPeerRequest {
                download: Some(Default::default()),
            },
        )),
    };
    let mut stream = c
        .announce_peer(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let e = stream.message().await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());

    // Still serving.
    c.announce_host(AnnounceHostRequest {
        host: Some(Host {
            id: "127.0.0.1-ok".into(),
            ip: "127.0.0.1".into(),
            ..Default::default()
        }),
        interval: None,
    })
    .await
    .unwrap();
    let hosts = c
        .list_hosts(ListHostsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert_eq!(hosts.len(), 1);
}
