//! Mutual TLS on every P2P port, with upstream's keys (`caCert`, `cert`, `key`): a scheduler,
//! a seed peer, a peer and a manager with certificates from one cluster CA. The peer downloads
//! P2P (over TLS gRPC and Vortex TCP over TLS, the seed triggered over TLS), and callers
//! without a certificate from that CA are refused on the upload gRPC port, Vortex TCP, Vortex
//! QUIC, the scheduler and the manager. `DownloadTask` for a host outside
//! `proxy.allowedRegistries` is refused with and without mutual TLS.

use dfdaemon::vortex::client::download_piece_into;
use dragonfly_api::common::v2::Download;
use dragonfly_api::dfdaemon::v2::dfdaemon_upload_client::DfdaemonUploadClient;
use dragonfly_api::dfdaemon::v2::{DownloadTaskRequest, StatTaskRequest};
use dragonfly_api::manager::v2::manager_client::ManagerClient;
use dragonfly_api::manager::v2::ListSchedulersRequest;
use dragonfly_api::scheduler::v2::scheduler_client::SchedulerClient;
use dragonfly_api::scheduler::v2::ListHostsRequest;
use integration::agent::Agent;
use integration::certs::{Issued, TestCa};
use integration::cluster::{file_task_id, peer_yaml, Manager, Scheduler};
use integration::{free_port, random_bytes, TestDir, TestOrigin};
use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::Channel;

const MIB: usize = 1024 * 1024;
const FROM_PEERS: &str = "dragonfly_dfdaemon_download_traffic_bytes_total{type=\"remote_peer\"}";

/// A channel to `addr` over mutual TLS with `tls`, or plain without.
fn channel(addr: &str, tls: Option<&Issued>) -> Channel {
    let t = tls.map(|i| i.load().unwrap());
    common::tls::endpoint(addr, t.as_deref(), "test")
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

/// Waits until the scheduler at `addr`, reached over mutual TLS with `id`, knows `n` hosts.
async fn wait_hosts_over_tls(addr: &str, id: &Issued, n: usize) {
    integration::cluster::wait_for_hosts(SchedulerClient::new(channel(addr, Some(id))), n)
        .await
        .unwrap();
}

/// A TLS client that shows no certificate (it trusts the cluster CA).
fn channel_without_certificate(addr: &str, ca: &Issued) -> Channel {
    let pem = std::fs::read(&ca.ca_cert).unwrap();
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem))
                .domain_name("127.0.0.1"),
        )
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

/// A peer config over mutual TLS everywhere: upload server and client, scheduler.
fn tls_peer_yaml(name: &str, scheduler_port: u16, seed: bool, id: &Issued, extra: &str) -> String {
    format!(
        "host:\n  hostname: {name}\n  ip: 127.0.0.1\n\
         scheduler:\n  addrs: ['127.0.0.1:{scheduler_port}']\n  caCert: '{ca}'\n  cert: '{cert}'\n  key: '{key}'\n\
         seedPeer:\n  enable: {seed}\n\
         download:\n  pieceTimeout: 20s\n\
         upload:\n  server: {tls}\n  client: {tls}\n{extra}",
        ca = id.ca_cert.display(),
        cert = id.cert.display(),
        key = id.key.display(),
        tls = id.yaml(),
    )
}

/// The Vortex TCP and QUIC ports of an agent, from its config file.
fn vortex_ports(a: &Agent) -> (u16, u16) {
    let cfg: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&a.config_path).unwrap()).unwrap();
    let port = |k: &str| cfg["storage"]["server"][k].as_u64().unwrap() as u16;
    (port("tcpPort"), port("quicPort"))
}

fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>) {
    match r {
        Ok(v) => panic!("{what}: answered {v:?}, expected a refused connection"),
        Err(s) => assert!(
            matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Cancelled
            ),
            "{what}: expected a transport failure, got {s:?}"
        ),
    }
}

/// Drops what it is given.
struct Discard;

impl dfdaemon::vortex::client::PieceSink for Discard {
    async fn put(
        &mut self,
        _offset: u64,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, dfdaemon::vortex::VortexError> {
        Ok(data)
    }
}

/// `DownloadTask` for `url` is refused with `PERMISSION_DENIED`, naming `host_port`.
async fn refused_by_allowlist(c: &mut DfdaemonUploadClient<Channel>, url: &str, host_port: &str) {
    let Err(e) = c.download_task(file_download(url)).await else {
        panic!("{url}: a URL outside the allowlist was accepted");
    };
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("{host_port} is not in proxy.allowedRegistries")),
        "{e:?}"
    );
}

fn file_download(url: &str) -> DownloadTaskRequest {
    DownloadTaskRequest {
        download: Some(Download {
            url: url.to_string(),
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_mutual_tls_peers_download_p2p_and_callers_without_a_certificate_are_refused() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("mtls").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let ca = TestCa::new(&dir.join(""), "cluster").unwrap();
    let node = ca.issue("node").unwrap();
    let rogue_ca = TestCa::new(&dir.join(""), "rogue").unwrap();
    let rogue = rogue_ca.issue("intruder").unwrap();

    let sched_port = free_port();
    let sched = Scheduler::start_with(
        &dir,
        "scheduler",
        sched_port,
        &format!(
            "server:\n  tls: {t}\nseedPeer:\n  tls: {t}\npeer:\n  tls: {t}\n",
            t = node.yaml()
        ),
    )
    .unwrap();
    let origin_addr = origin.addr();
    let allow = format!("proxy:\n  allowedRegistries: ['{origin_addr}']\n");
    let seed = Agent::start(
        &dir,
        "seed",
        &tls_peer_yaml("seed", sched_port, true, &node, &allow),
    )
    .await
    .unwrap();
    let peer = Agent::start(
        &dir,
        "peer",
        &tls_peer_yaml("peer", sched_port, false, &node, &allow),
    )
    .await
    .unwrap();
    let sched_addr = format!("127.0.0.1:{sched_port}");
    wait_hosts_over_tls(&sched_addr, &node, 2).await;

    // P2P over TLS: the seed is triggered over TLS, the peer's pieces come from it.
    let data = random_bytes(77, 24 * MIB);
    origin.put("/files/mtls.bin", data.clone());
    let url = origin.url("/files/mtls.bin");
    let out = dir.join("peer.out");
    let o = peer.dfget(&[&url, "-O", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "the peer's bytes differ"
    );
    assert_eq!(
        peer.metric(FROM_PEERS).await.unwrap() as usize,
        data.len(),
        "every byte came from the seed peer, over TLS; peer log:\n{}",
        peer.log_tail(30)
    );
    assert_eq!(
        origin.requests_for("/files/mtls.bin"),
        1,
        "the origin sent the file once"
    );

    // Vortex QUIC with verification: a client with a cluster certificate gets piece 0.
    let task_id = file_task_id(&url);
    let piece_length = common::piece::piece_length_for(data.len() as u64);
    let (offset, length) = common::piece::piece_range(0, data.len() as u64, piece_length);
    let (tcp_port, quic_port) = vortex_ports(&seed);
    let quic_addr = SocketAddr::from(([127, 0, 0, 1], quic_port));
    let tcp_addr = SocketAddr::from(([127, 0, 0, 1], tcp_port));
    let good = node.load().unwrap();
    let quic = dfdaemon::vortex::quic::QuicClient::with_tls(Some(&good)).unwrap();
    let piece = quic
        .download_piece(
            quic_addr,
            &task_id,
            0,
            offset,
            length,
            Duration::from_secs(10),
        )
        .await
        .expect("a client with a cluster certificate is served over QUIC");
    assert!(piece.content[..] == data[..length as usize]);

    // Refused: callers without a certificate from the cluster CA, on every port.
    let upload_addr = format!("127.0.0.1:{}", seed.upload_port);
    let stat = || StatTaskRequest {
        task_id: task_id.clone(),
        ..Default::default()
    };
    let mut ok = DfdaemonUploadClient::new(channel(&upload_addr, Some(&node)));
    assert!(
        ok.stat_task(stat()).await.is_ok(),
        "a cluster certificate reaches the upload service"
    );
    let mut plain = DfdaemonUploadClient::new(channel(&upload_addr, None));
    refused("upload gRPC, plain", plain.stat_task(stat()).await);
    let mut bare = DfdaemonUploadClient::new(channel_without_certificate(&upload_addr, &node));
    refused(
        "upload gRPC, TLS without a certificate",
        bare.stat_task(stat()).await,
    );
    let mut intruder = DfdaemonUploadClient::new(channel(&upload_addr, Some(&rogue)));
    refused(
        "upload gRPC, another CA's certificate",
        intruder.stat_task(stat()).await,
    );
    let mut plain_sched = SchedulerClient::new(channel(&sched_addr, None));
    refused(
        "scheduler, plain",
        plain_sched.list_hosts(ListHostsRequest::default()).await,
    );
    let mut rogue_sched = SchedulerClient::new(channel(&sched_addr, Some(&rogue)));
    refused(
        "scheduler, another CA's certificate",
        rogue_sched.list_hosts(ListHostsRequest::default()).await,
    );
    let mut sink = Discard;
    let plain_tcp = dfdaemon::vortex::client::download_piece(
        tcp_addr,
        &task_id,
        0,
        offset,
        length,
        Duration::from_secs(10),
    )
    .await;
    assert!(plain_tcp.is_err(), "Vortex TCP without TLS was served");
    let rogue_tls = rogue.load().unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        rogue_tls.rustls_client(false).unwrap(),
    ));
    let rogue_tcp = download_piece_into(
        tcp_addr,
        &task_id,
        0,
        offset,
        length,
        Duration::from_secs(10),
        Some(&connector),
        &mut sink,
    )
    .await;
    assert!(
        rogue_tcp.is_err(),
        "Vortex TCP served another CA's certificate"
    );
    let unverified = dfdaemon::vortex::quic::QuicClient::new().unwrap();
    let r = unverified
        .download_piece(
            quic_addr,
            &task_id,
            0,
            offset,
            length,
            Duration::from_secs(10),
        )
        .await;
    assert!(
        r.is_err(),
        "Vortex QUIC served a client without a certificate"
    );

    // The manager's gRPC port.
    let manager = Manager::start(&dir, "manager", &format!("    tls: {}\n", node.yaml()))
        .await
        .unwrap();
    let manager_addr = format!("127.0.0.1:{}", manager.grpc_port);
    let mut m = ManagerClient::new(channel(&manager_addr, Some(&node)));
    // No scheduler registered with this manager: its answer says so (the call got through).
    let r = m.list_schedulers(ListSchedulersRequest::default()).await;
    assert!(
        matches!(&r, Err(s) if s.code() == tonic::Code::NotFound && s.message().contains("no active scheduler")),
        "a cluster certificate reaches the manager: {r:?}"
    );
    let mut m_plain = ManagerClient::new(channel(&manager_addr, None));
    refused(
        "manager, plain",
        m_plain
            .list_schedulers(ListSchedulersRequest::default())
            .await,
    );
    let mut m_rogue = ManagerClient::new(channel(&manager_addr, Some(&rogue)));
    refused(
        "manager, another CA's certificate",
        m_rogue
            .list_schedulers(ListSchedulersRequest::default())
            .await,
    );

    // DownloadTask for a host outside proxy.allowedRegistries, over mutual TLS.
    refused_by_allowlist(
        &mut ok,
        "http://10.255.255.1:8080/internal/secret",
        "10.255.255.1:8080",
    )
    .await;
    drop(sched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_mutual_tls_download_task_still_obeys_the_allowlist() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("allowlist-upload").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let sched = Scheduler::start(&dir, "scheduler").unwrap();
    let origin_addr = origin.addr();
    let seed = Agent::start(
        &dir,
        "seed",
        &format!(
            "{}proxy:\n  allowedRegistries: ['{origin_addr}']\n",
            peer_yaml("seed", sched.port, true)
        ),
    )
    .await
    .unwrap();
    sched.wait_hosts(1).await.unwrap();
    let mut c =
        DfdaemonUploadClient::new(channel(&format!("127.0.0.1:{}", seed.upload_port), None));
    refused_by_allowlist(
        &mut c,
        "http://169.254.169.254/latest/meta-data/",
        "169.254.169.254:80",
    )
    .await;
    // An allowed host is downloaded.
    let data = random_bytes(78, MIB);
    origin.put("/files/allowed.bin", data.clone());
    let mut s = c
        .download_task(file_download(&origin.url("/files/allowed.bin")))
        .await
        .expect("an allowed host is accepted")
        .into_inner();
    while s.message().await.expect("download stream").is_some() {}
    assert_eq!(origin.requests_for("/files/allowed.bin"), 1);
    assert!(
        seed.log()
            .contains("DownloadTask refused: not in proxy.allowedRegistries"),
        "the refusal is logged:\n{}",
        seed.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_preheat_runs_over_mutual_tls_from_the_manager_through_the_scheduler_to_the_seed() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("mtls-preheat").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let ca = TestCa::new(&dir.join(""), "cluster").unwrap();
    let node = ca.issue("node").unwrap();
    let manager = Manager::start(
        &dir,
        "manager",
        &format!(
            "    tls: {}\njob:\n  preheat:\n    allowedHosts: ['127.0.0.1:{}']\n",
            node.yaml(),
            origin.addr().port()
        ),
    )
    .await
    .unwrap();
    let session = manager.root_session().await.unwrap();
    // The scheduler registers over TLS (manager.tls) and serves jobs over TLS (server.tls).
    let sched_port = free_port();
    let _sched = Scheduler::start_with(
        &dir,
        "scheduler",
        sched_port,
        &format!(
            "server:\n  host: scheduler\n  tls: {t}\n\
             manager:\n  addr: 127.0.0.1:{m}\n  schedulerClusterID: 1\n  keepAlive: {{interval: 1s}}\n  tls: {t}\n\
             dynConfig: {{refreshInterval: 1s}}\nseedPeer:\n  tls: {t}\npeer:\n  tls: {t}\n",
            t = node.yaml(),
            m = manager.grpc_port
        ),
    )
    .unwrap();
    manager
        .wait_state(&session, "/api/v1/schedulers", "scheduler", "active")
        .await
        .unwrap();
    // The seed peer finds the scheduler through the manager, over TLS both ways.
    let seed = Agent::start(
        &dir,
        "seed",
        &format!(
            "host:\n  hostname: seed\n  ip: 127.0.0.1\n\
             manager:\n  addr: https://127.0.0.1:{m}\n  caCert: '{ca}'\n  cert: '{cert}'\n  key: '{key}'\n\
             scheduler:\n  caCert: '{ca}'\n  cert: '{cert}'\n  key: '{key}'\n\
             dynconfig:\n  refreshInterval: 1s\nseedPeer:\n  enable: true\n  keepaliveInterval: 1s\n\
             upload:\n  server: {t}\n  client: {t}\n",
            m = manager.grpc_port,
            ca = node.ca_cert.display(),
            cert = node.cert.display(),
            key = node.key.display(),
            t = node.yaml(),
        ),
    )
    .await
    .unwrap();
    wait_hosts_over_tls(&format!("127.0.0.1:{sched_port}"), &node, 1).await;
    let token = manager
        .create_token(&session, "harbor", &["job"])
        .await
        .unwrap();
    let harbor = integration::harbor::HarborProvider::new(&manager.url(""), &token);
    let data = random_bytes(79, 3 * MIB);
    origin.put("/files/preheat.bin", data.clone());
    let url = origin.url("/files/preheat.bin");
    let id = harbor
        .create(&serde_json::json!({
            "type": "preheat",
            "args": {"type": "file", "url": url, "scope": "single_seed_peer"}
        }))
        .await
        .unwrap();
    let job = harbor
        .wait(id, Duration::from_millis(300), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(job["state"], "SUCCESS", "{job}");
    assert_eq!(
        integration::harbor::successes(&job),
        vec![(url.clone(), "seed".to_string(), "127.0.0.1".to_string())]
    );
    let task_id = file_task_id(&url);
    assert!(std::fs::read(seed.task_path(&task_id)).unwrap() == data);
    assert_eq!(origin.requests_for("/files/preheat.bin"), 1);
}
