//! The manager's gRPC service (`manager.v2.Manager`) on a real listener, over SQLite and a real
//! PostgreSQL: schedulers and seed peers register, are active exactly while their KeepAlive
//! stream is open, and peers find schedulers through the searcher.

mod support;

use dragonfly_api::manager::v2::manager_client::ManagerClient;
use dragonfly_api::manager::v2::{
    GetSchedulerRequest, KeepAliveRequest, ListSchedulersRequest, SourceType,
    UpdateSchedulerRequest, UpdateSeedPeerRequest,
};
use std::time::{Duration, Instant};
use support::{root_session, start, Backend, Manager};
use tonic::Code;

on_both!(keepalive: instances_are_active_exactly_while_their_keepalive_stream_is_open);
on_both!(searcher: list_schedulers_ranks_clusters_by_their_scopes);

async fn client(m: &Manager) -> ManagerClient<tonic::transport::Channel> {
    ManagerClient::connect(m.grpc.clone()).await.unwrap()
}

fn scheduler(hostname: &str, ip: &str, cluster: u64) -> UpdateSchedulerRequest {
    UpdateSchedulerRequest {
        source_type: SourceType::SchedulerSource as i32,
        hostname: hostname.into(),
        scheduler_cluster_id: cluster,
        idc: Some(String::new()),
        location: Some(String::new()),
        ip: ip.into(),
        port: 8002,
        features: Vec::new(),
        config: Vec::new(),
    }
}

fn keepalive_of(kind: SourceType, hostname: &str, ip: &str, cluster: u64) -> KeepAliveRequest {
    KeepAliveRequest {
        source_type: kind as i32,
        hostname: hostname.into(),
        cluster_id: cluster,
        ip: ip.into(),
    }
}

/// Opens a KeepAlive stream and sends its first message; dropping the sender ends it.
fn keep_alive(
    c: &ManagerClient<tonic::transport::Channel>,
    first: KeepAliveRequest,
) -> (
    tokio::sync::mpsc::Sender<KeepAliveRequest>,
    tokio::task::JoinHandle<Result<tonic::Response<()>, tonic::Status>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.try_send(first).unwrap();
    let mut c = c.clone();
    let call = tokio::spawn(async move {
        c.keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    (tx, call)
}

async fn get_json(m: &Manager, session: &str, path: &str) -> serde_json::Value {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", m.url))
        .bearer_auth(session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

/// Waits until the REST list at `path` shows `state` for `hostname` (the KeepAlive handling is
/// asynchronous); fails after 20 s with what it saw.
async fn wait_state(m: &Manager, session: &str, path: &str, hostname: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = get_json(m, session, path).await;
        let seen = list
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["hostname"] == hostname)
            .map(|s| s["state"].clone());
        if seen.as_ref().and_then(|s| s.as_str()) == Some(state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{hostname} never became {state} in {path}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn instances_are_active_exactly_while_their_keepalive_stream_is_open(b: Backend<'_>) {
    let m = start(b).await;
    let session = root_session(&m).await;
    let mut c = client(&m).await;

    // Registration: inactive until its KeepAlive stream opens; the cluster's config comes back.
    let s = c
        .update_scheduler(scheduler("sched-a", "127.0.0.1", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state, "inactive");
    assert_eq!(s.port, 8002);
    let features: Vec<String> = serde_json::from_slice(&s.features).unwrap();
    assert_eq!(features, ["schedule", "preheat"]);
    let config: serde_json::Value =
        serde_json::from_slice(&s.scheduler_cluster.as_ref().unwrap().config).unwrap();
    assert_eq!(config["candidate_parent_limit"], 3);
    assert_eq!(config["filter_parent_limit"], 15);
    let list = get_json(&m, &session, "/api/v1/schedulers").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["state"], "inactive");
    assert_eq!(list[0]["scheduler_cluster_id"], 1);
    // Registering again updates the same record.
    let mut again = scheduler("sched-a", "127.0.0.1", 1);
    again.port = 8003;
    c.update_scheduler(again).await.unwrap();
    let list = get_json(&m, &session, "/api/v1/schedulers").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["port"], 8003);
    // No active scheduler yet: peers are told so.
    let peer = ListSchedulersRequest {
        source_type: SourceType::PeerSource as i32,
        hostname: "node-1".into(),
        ip: "127.0.0.2".into(),
        ..Default::default()
    };
    let e = c.list_schedulers(peer.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    let (tx, call) = keep_alive(
        &c,
        keepalive_of(SourceType::SchedulerSource, "sched-a", "127.0.0.1", 1),
    );
    wait_state(&m, &session, "/api/v1/schedulers", "sched-a", "active").await;
    let found = c.list_schedulers(peer.clone()).await.unwrap().into_inner();
    assert_eq!(found.schedulers.len(), 1);
    assert_eq!(found.schedulers[0].hostname, "sched-a");
    assert_eq!(found.schedulers[0].port, 8003);
    assert_eq!(
        found.schedulers[0].scheduler_cluster.as_ref().unwrap().name,
        "cluster-1"
    );

    // A seed peer of the linked seed peer cluster shows in GetScheduler once active.
    let sp = c
        .update_seed_peer(UpdateSeedPeerRequest {
            source_type: SourceType::SeedPeerSource as i32,
            hostname: "seed-1".into(),
            r#type: "super".into(),
            idc: None,
            location: None,
            ip: "127.0.0.3".into(),
            port: 4000,
            download_port: 4000,
            seed_peer_cluster_id: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sp.seed_peer_cluster.as_ref().unwrap().name, "cluster-1");
    let get = GetSchedulerRequest {
        source_type: SourceType::SchedulerSource as i32,
        hostname: "sched-a".into(),
        scheduler_cluster_id: 1,
        ip: "127.0.0.1".into(),
    };
    assert!(c
        .get_scheduler(get.clone())
        .await
        .unwrap()
        .into_inner()
        .seed_peers
        .is_empty());
    let (seed_tx, seed_call) = keep_alive(
        &c,
        keepalive_of(SourceType::SeedPeerSource, "seed-1", "127.0.0.3", 1),
    );
    wait_state(&m, &session, "/api/v1/seed-peers", "seed-1", "active").await;
    let got = c.get_scheduler(get.clone()).await.unwrap().into_inner();
    assert_eq!(got.state, "active");
    assert_eq!(got.seed_peers.len(), 1);
    assert_eq!(got.seed_peers[0].hostname, "seed-1");

    // Streams that end make their instance inactive, and peers are no longer sent there.
    drop(tx);
    call.await.unwrap().unwrap();
    wait_state(&m, &session, "/api/v1/schedulers", "sched-a", "inactive").await;
    let e = c.list_schedulers(peer).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    drop(seed_tx);
    seed_call.await.unwrap().unwrap();
    wait_state(&m, &session, "/api/v1/seed-peers", "seed-1", "inactive").await;
    assert!(c
        .get_scheduler(get)
        .await
        .unwrap()
        .into_inner()
        .seed_peers
        .is_empty());

    // Bad input names what is wrong; nothing is stored.
    let e = c
        .update_scheduler(scheduler("sched-b", "127.0.0.1", 99))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("scheduler cluster 99"), "{e:?}");
    let e = c
        .update_scheduler(scheduler("sched-b", "not-an-ip", 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("ip:"), "{e:?}");
    let mut bad = scheduler("sched-b", "127.0.0.1", 1);
    bad.port = 0;
    let e = c.update_scheduler(bad).await.unwrap_err();
    assert!(e.message().starts_with("port:"), "{e:?}");
    let e = c
        .update_scheduler(scheduler("'; DROP TABLE schedulers; --", "127.0.0.1", 1))
        .await
        .unwrap();
    assert_eq!(e.into_inner().hostname, "'; DROP TABLE schedulers; --");
    let (_tx, unknown) = keep_alive(
        &c,
        keepalive_of(SourceType::SchedulerSource, "nobody", "127.0.0.9", 1),
    );
    let e = unknown.await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("not registered"), "{e:?}");
    let list = get_json(&m, &session, "/api/v1/schedulers").await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sched-a", "'; DROP TABLE schedulers; --"]);

    // REST: one scheduler, deletion by root.
    let id = list[0]["id"].as_i64().unwrap();
    let one = get_json(&m, &session, &format!("/api/v1/schedulers/{id}")).await;
    assert_eq!(one["hostname"], "sched-a");
    let r = reqwest::Client::new()
        .delete(format!("{}/api/v1/schedulers/{id}", m.url))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/schedulers/{id}", m.url))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

async fn list_schedulers_ranks_clusters_by_their_scopes(b: Backend<'_>) {
    let m = start(b).await;
    let session = root_session(&m).await;
    // A second cluster for 10.1.0.0/16 and idc "east".
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/clusters", m.url))
        .bearer_auth(&session)
        .json(&serde_json::json!({
            "name": "east",
            "scopes": {"cidrs": ["10.1.0.0/16"], "idc": "east|east-2"},
            "scheduler_cluster_config": {"candidate_parent_limit": 4, "filter_parent_limit": 40},
            "seed_peer_cluster_config": {"load_limit": 500},
            "peer_cluster_config": {"load_limit": 100}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let east: serde_json::Value = r.json().await.unwrap();
    let east_id = east["id"].as_u64().unwrap();
    assert_ne!(east_id, 1);

    let mut c = client(&m).await;
    let mut streams = Vec::new();
    for (host, ip, cluster) in [
        ("sched-default", "127.0.0.1", 1),
        ("sched-east", "127.0.0.2", east_id),
    ] {
        c.update_scheduler(scheduler(host, ip, cluster))
            .await
            .unwrap();
        streams.push(keep_alive(
            &c,
            keepalive_of(SourceType::SchedulerSource, host, ip, cluster),
        ));
        wait_state(&m, &session, "/api/v1/schedulers", host, "active").await;
    }
    let ask = |ip: &str, idc: Option<&str>, cluster: u64| ListSchedulersRequest {
        source_type: SourceType::PeerSource as i32,
        hostname: "node-1".into(),
        ip: ip.into(),
        idc: idc.map(str::to_string),
        scheduler_cluster_id: cluster,
        ..Default::default()
    };
    let order = |r: dragonfly_api::manager::v2::ListSchedulersResponse| -> Vec<String> {
        r.schedulers.into_iter().map(|s| s.hostname).collect()
    };
    // In the east CIDR: east first; elsewhere: the default cluster first; every cluster listed.
    let by_cidr = c.list_schedulers(ask("10.1.2.3", None, 0)).await.unwrap();
    assert_eq!(order(by_cidr.into_inner()), ["sched-east", "sched-default"]);
    let by_idc = c
        .list_schedulers(ask("192.168.0.1", Some("EAST-2"), 0))
        .await
        .unwrap();
    assert_eq!(order(by_idc.into_inner()), ["sched-east", "sched-default"]);
    let other = c
        .list_schedulers(ask("192.168.0.1", None, 0))
        .await
        .unwrap();
    assert_eq!(order(other.into_inner()), ["sched-default", "sched-east"]);
    // A peer that names its cluster gets that cluster's schedulers only, with its config.
    let only = c
        .list_schedulers(ask("10.1.2.3", None, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only.schedulers.len(), 1);
    assert_eq!(only.schedulers[0].hostname, "sched-default");
    let east_only = c
        .list_schedulers(ask("10.1.2.3", None, east_id))
        .await
        .unwrap()
        .into_inner();
    let cfg: serde_json::Value = serde_json::from_slice(
        &east_only.schedulers[0]
            .scheduler_cluster
            .as_ref()
            .unwrap()
            .client_config,
    )
    .unwrap();
    assert_eq!(cfg["load_limit"], 100);
    // The metrics count the searches and show the instances' states from the database.
    let text = reqwest::get(format!("{}/metrics", m.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("dragonfly_manager_search_scheduler_cluster_total 5"),
        "{text}"
    );
    assert!(
        text.contains("dragonfly_manager_instances{kind=\"scheduler\",state=\"active\"} 2"),
        "{text}"
    );
    drop(streams);
}
