//! Harbor's P2P preheat end to end, on loopback (separate processes): a manager, a scheduler
//! registered with it, a seed peer and three peers that found the scheduler through the
//! manager, a token-authenticated registry, and a client that calls the manager exactly as
//! Harbor's Dragonfly provider does. Every scope and narrowing reaches SUCCESS with per-host
//! results; a CRI pull on a preheated node then sends no blob GET to the registry.

use integration::agent::Agent;
use integration::cluster::{Manager, Scheduler};
use integration::harbor::{failures, successes, HarborProvider};
use integration::{
    random_bytes, require_root_and_tools, Compression, Containerd, HostsToml, ImageInfo, LayerSpec,
    MirrorHost, Registry, TestDir, TestOrigin,
};
use std::collections::BTreeSet;
use std::time::Duration;

const TOOLS: &[&str] = &[
    "docker-registry",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "skopeo",
    "openssl",
];
const MIB: u64 = 1024 * 1024;
const POLL: Duration = Duration::from_millis(500);
const LIMIT: Duration = Duration::from_secs(120);

/// A peer named `name` on its own loopback address `ip` (so `ips` can pick it), finding its
/// scheduler through the manager.
fn peer_yaml(name: &str, ip: &str, manager: &Manager, seed: bool) -> String {
    format!(
        "host:\n  hostname: {name}\n  ip: {ip}\nupload:\n  server:\n    ip: {ip}\nstorage:\n  server:\n    ip: {ip}\n\
         manager:\n  addr: {}\ndynconfig:\n  refreshInterval: 1s\nseedPeer:\n  enable: {seed}\n  keepaliveInterval: 1s\n\
         download:\n  pieceTimeout: 20s\n",
        manager.grpc_url()
    )
}

struct Cluster {
    manager: Manager,
    _scheduler: Scheduler,
    seed: Agent,
    peers: Vec<Agent>,
    harbor: HarborProvider,
}

const PEER_IPS: [&str; 3] = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];

async fn cluster(dir: &TestDir, allowed: &[String]) -> Cluster {
    let allowed: Vec<String> = allowed.iter().map(|h| format!("'{h}'")).collect();
    let manager = Manager::start(
        dir,
        "manager",
        &format!(
            "job:\n  preheat:\n    allowedHosts: [{}]\n",
            allowed.join(", ")
        ),
    )
    .await
    .unwrap();
    let session = manager.root_session().await.unwrap();
    let scheduler = Scheduler::start_with_manager(dir, "scheduler", &manager).unwrap();
    manager
        .wait_state(&session, "/api/v1/schedulers", "scheduler", "active")
        .await
        .unwrap();
    let seed = Agent::start(dir, "seed", &peer_yaml("seed", "127.0.0.1", &manager, true))
        .await
        .unwrap();
    let mut peers = Vec::new();
    for (i, ip) in PEER_IPS.iter().enumerate() {
        let name = format!("peer{}", i + 1);
        peers.push(
            Agent::start(dir, &name, &peer_yaml(&name, ip, &manager, false))
                .await
                .unwrap(),
        );
    }
    scheduler.wait_hosts(4).await.unwrap();
    let token = manager
        .create_token(&session, "harbor", &["job"])
        .await
        .unwrap();
    let harbor = HarborProvider::new(&manager.url(""), &token);
    assert!(harbor.healthy().await.unwrap());
    Cluster {
        manager,
        _scheduler: scheduler,
        seed,
        peers,
        harbor,
    }
}

fn blobs(image: &ImageInfo) -> Vec<(String, u64)> {
    let mut v = vec![image.config.clone()];
    v.extend(image.layers.iter().cloned());
    v
}

fn blob_url(registry: &Registry, image: &ImageInfo, digest: &str) -> String {
    format!("{}/v2/{}/blobs/{digest}", registry.url(), image.repo)
}

fn manifest_url(registry: &Registry, image: &ImageInfo) -> String {
    format!(
        "{}/v2/{}/manifests/{}",
        registry.url(),
        image.repo,
        image.tag
    )
}

/// Which of the agents hold the blob `digest` complete in their store.
fn holders(agents: &[(&str, &Agent)], digest: &str) -> BTreeSet<String> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    agents
        .iter()
        .filter(|(_, a)| a.task_path(hex).exists())
        .map(|(n, _)| n.to_string())
        .collect()
}

/// Harbor's registry token for pulling `repo` (what Harbor puts in `args.headers`).
fn harbor_token(registry: &Registry, repo: &str) -> String {
    registry
        .token_server()
        .unwrap()
        .issue_token("distributor", &[(repo, &["pull"])])
}

/// Posts a job, waits for its end, and checks it succeeded; the job.
async fn run_job(harbor: &HarborProvider, body: serde_json::Value) -> serde_json::Value {
    let (status, v) = harbor.post(&body).await.unwrap();
    assert_eq!(status, 200, "{body}: {v}");
    let job = harbor
        .wait(v["id"].as_u64().unwrap(), POLL, LIMIT)
        .await
        .unwrap();
    assert_eq!(job["state"], "SUCCESS", "{job}");
    job
}

async fn push(registry: &Registry, repo: &str, seed: u64, sizes: &[u64]) -> ImageInfo {
    let layers: Vec<LayerSpec> = sizes
        .iter()
        .enumerate()
        .map(|(i, s)| LayerSpec::random(seed + i as u64, *s, Compression::Gzip))
        .collect();
    registry.push_image(repo, "v1", &layers).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn harbor_preheats_every_scope_and_a_preheated_node_pulls_nothing_from_the_registry() {
    require_root_and_tools(TOOLS);
    let dir = TestDir::new("preheat").unwrap();
    let registry = Registry::start_with_token_auth(&dir).await.unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let c = cluster(
        &dir,
        &[
            registry.addr(),
            format!("127.0.0.1:{}", origin.addr().port()),
        ],
    )
    .await;
    let agents: Vec<(&str, &Agent)> = std::iter::once(("seed", &c.seed))
        .chain(["peer1", "peer2", "peer3"].into_iter().zip(c.peers.iter()))
        .collect();

    // all_peers: every blob (config and layers) on the three peers, under blob-digest task
    // IDs; the registry served each blob once (to the seed peer the peers fetched from).
    let mut layers = vec![LayerSpec::busybox(Compression::Gzip).unwrap()];
    layers.push(LayerSpec::random(301, 3 * MIB, Compression::Gzip));
    layers.push(LayerSpec::random(302, 6 * MIB, Compression::None));
    let image = registry
        .push_image("library/app", "v1", &layers)
        .await
        .unwrap();
    let id = c
        .harbor
        .create(&HarborProvider::image_body(
            &manifest_url(&registry, &image),
            &harbor_token(&registry, &image.repo),
            "all_peers",
            None,
        ))
        .await
        .unwrap();
    let job = c.harbor.wait(id, POLL, LIMIT).await.unwrap();
    assert_eq!(job["state"], "SUCCESS", "{job}");
    assert!(failures(&job).is_empty(), "{job}");
    let mut want = Vec::new();
    for (d, size) in blobs(&image) {
        for (i, ip) in PEER_IPS.iter().enumerate() {
            want.push((
                blob_url(&registry, &image, &d),
                format!("peer{}", i + 1),
                ip.to_string(),
            ));
        }
        assert_eq!(
            holders(&agents[1..], &d),
            ["peer1", "peer2", "peer3"].map(String::from).into(),
            "{d}"
        );
        assert_eq!(
            registry.blob_get_bytes(&d),
            size,
            "bytes of {d} the registry sent"
        );
    }
    want.sort();
    assert_eq!(successes(&job), want);
    // The job carries Harbor's fields; the registry token is not shown back.
    assert_eq!(job["args"]["headers"]["Authorization"], "<redacted>");
    assert_eq!(job["args"]["scope"], "all_peers");
    assert_eq!(
        job["result"]["job_states"][0]["results"][0]["scheduler_cluster_id"],
        1
    );

    // A node's containerd pulls the preheated image through its mirror: no blob GET reaches
    // the registry.
    let gets_before: usize = blobs(&image)
        .iter()
        .map(|(d, _)| registry.blob_gets(d))
        .sum();
    let hosts = dir.join("certs.d");
    HostsToml::with_mirror(
        registry.url(),
        MirrorHost::new(c.peers[0].proxy_url()).header("X-Dragonfly-Registry", registry.url()),
    )
    .write(&hosts, &registry.addr())
    .unwrap();
    let containerd = Containerd::start(&dir, &hosts).await.unwrap();
    let (user, password) = registry.credentials().unwrap();
    containerd
        .cri_pull_with_auth(&image.reference, user, password)
        .await
        .unwrap();
    let content = containerd.content_digests().await.unwrap();
    for (d, _) in blobs(&image) {
        assert!(content.contains(&d), "{d} missing from containerd");
    }
    let served = c.peers[0]
        .metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"local_cache\"}")
        .await
        .unwrap() as u64;
    assert!(
        served >= image.layers.iter().map(|(_, s)| s).sum::<u64>(),
        "the pull was served from the preheated store ({served} bytes)"
    );
    let gets_after: usize = blobs(&image)
        .iter()
        .map(|(d, _)| registry.blob_gets(d))
        .sum();
    assert_eq!(
        gets_after, gets_before,
        "blob GETs sent to the registry by the pull"
    );
    drop(containerd);
    let first_layer = image.layers[1].0.clone();

    // single_seed_peer (Harbor's default): the seed peer only.
    let image = push(&registry, "library/seedonly", 310, &[2 * MIB, MIB]).await;
    let id = c
        .harbor
        .create(&HarborProvider::image_body(
            &manifest_url(&registry, &image),
            &harbor_token(&registry, &image.repo),
            "single_seed_peer",
            Some(&[1]),
        ))
        .await
        .unwrap();
    let job = c.harbor.wait(id, POLL, LIMIT).await.unwrap();
    assert_eq!(job["state"], "SUCCESS", "{job}");
    let hosts: BTreeSet<String> = successes(&job).into_iter().map(|t| t.1).collect();
    assert_eq!(hosts, ["seed".to_string()].into());
    for (d, _) in blobs(&image) {
        assert_eq!(holders(&agents, &d), ["seed".to_string()].into(), "{d}");
    }

    // count 2, ips, percentage 50: exactly the hosts asked for.
    for (n, (args, want)) in [
        (serde_json::json!({"count": 2}), vec!["peer1", "peer2"]),
        (serde_json::json!({"ips": ["127.0.0.13"]}), vec!["peer3"]),
        (serde_json::json!({"percentage": 50}), vec!["peer1"]),
    ]
    .into_iter()
    .enumerate()
    {
        let image = push(
            &registry,
            &format!("library/narrow{n}"),
            320 + 10 * n as u64,
            &[MIB],
        )
        .await;
        let mut body = HarborProvider::image_body(
            &manifest_url(&registry, &image),
            &harbor_token(&registry, &image.repo),
            "all_peers",
            None,
        );
        for (k, v) in args.as_object().unwrap() {
            body["args"][k] = v.clone();
        }
        let id = c.harbor.create(&body).await.unwrap();
        let job = c.harbor.wait(id, POLL, LIMIT).await.unwrap();
        assert_eq!(job["state"], "SUCCESS", "{args}: {job}");
        let hosts: BTreeSet<String> = successes(&job).into_iter().map(|t| t.1).collect();
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(hosts, want, "{args}");
        for (d, _) in blobs(&image) {
            let held: BTreeSet<String> = holders(&agents[1..], &d);
            assert_eq!(held, want, "{args}: holders of {d}");
        }
    }

    // A file preheat of several URLs: every peer holds every file, and dfget on a peer then
    // gets it without asking the origin.
    let mut files = Vec::new();
    for i in 0..2u64 {
        let data = random_bytes(340 + i, (3 * MIB + i) as usize);
        let path = format!("/files/model-{i}.bin");
        origin.put(&path, data.clone());
        files.push((origin.url(&path), path, data));
    }
    let job = run_job(
        &c.harbor,
        serde_json::json!({
            "type": "preheat",
            "args": {"type": "file", "urls": files.iter().map(|f| f.0.clone()).collect::<Vec<_>>(), "scope": "all_peers"},
        }),
    )
    .await;
    assert_eq!(successes(&job).len(), 2 * 3, "{job}");
    for (url, path, data) in &files {
        let before = origin.requests_for(path);
        let out = dir.join(format!("dfget-{}", path.rsplit('/').next().unwrap()));
        let o = c.peers[1].dfget(&[url, "-O", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(std::fs::read(&out).unwrap() == *data);
        assert_eq!(
            origin.requests_for(path),
            before,
            "dfget of {url} asked the origin"
        );
    }

    // Jobs are listed newest first; the metrics count them by state.
    let session = c.manager.root_session().await.unwrap();
    let list = c
        .manager
        .get_json(&session, "/api/v1/jobs?per_page=100")
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 6);
    assert!(list[0]["id"].as_u64() > list[5]["id"].as_u64());
    let metrics = integration::http_client()
        .get(c.manager.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("dragonfly_manager_jobs{type=\"preheat\",state=\"SUCCESS\"} 6"),
        "{metrics}"
    );

    // get_task: the hosts holding a layer; delete_task: it is then gone from all of them.
    let hex = first_layer.strip_prefix("sha256:").unwrap().to_string();
    let held = holders(&agents, &first_layer);
    assert_eq!(held.len(), 4, "{held:?}");
    let job = run_job(
        &c.harbor,
        serde_json::json!({"type": "get_task", "args": {"task_id": hex}}),
    )
    .await;
    let peers: BTreeSet<String> = job["result"]["job_states"][0]["results"][0]["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["hostname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(peers, held);
    let job = run_job(
        &c.harbor,
        serde_json::json!({"type": "delete_task", "args": {"task_id": hex}}),
    )
    .await;
    let deleted: BTreeSet<String> = successes(&job).into_iter().map(|t| t.1).collect();
    assert_eq!(deleted, held);
    assert!(holders(&agents, &first_layer).is_empty());
}
