//! A child peer downloading a task from a parent peer (in-process engines,
//! real gRPC and Vortex over loopback, a real HTTP origin): bytes identical,
//! no origin traffic when the parent has everything, only the missing pieces
//! from the origin when it does not, and a parent that sends corrupt pieces
//! is dropped.

use dfdaemon::backend::Backend;
use dfdaemon::download::{DownloadRequest, Engine, EngineConfig, Started};
use dfdaemon::grpc::upload::{HostInfo, UploadService};
use dfdaemon::metrics::Metrics;
use dfdaemon::parent::Parent;
use dfdaemon::storage::Store;
use dfdaemon::vortex::server::VortexServer;
use integration::agent::sum_metric;
use integration::image::sha256_digest;
use integration::{random_bytes, ObjectOptions, TestDir, TestOrigin};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const PIECE: u64 = 4 * 1024 * 1024;

struct Peer {
    engine: Arc<Engine>,
    parent: Parent,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Peer {
    async fn start(dir: &TestDir, name: &str, piece_timeout: Duration) -> Peer {
        Self::start_with(dir, name, piece_timeout, Default::default()).await
    }

    async fn start_with(
        dir: &TestDir,
        name: &str,
        piece_timeout: Duration,
        protocol: dfdaemon::config::Protocol,
    ) -> Peer {
        let (store, _) = Store::open(&dir.join(name), true).unwrap();
        let store = Arc::new(store);
        let metrics = Arc::new(Metrics::new());
        let engine = Engine::new(
            store.clone(),
            Arc::new(Backend::new(&Default::default()).unwrap()),
            metrics.clone(),
            EngineConfig {
                concurrent_piece_count: 4,
                piece_timeout,
                max_retries: 0,
                protocol,
                rate_limit: 0,
                background_rate_limit: 0,
                peer_tls: None,
            },
        );
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let vortex = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (gport, vport) = (
            grpc.local_addr().unwrap().port(),
            vortex.local_addr().unwrap().port(),
        );
        let quic =
            dfdaemon::vortex::quic::server_endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let qport = quic.local_addr().unwrap().port();
        let id = format!("127.0.0.1-{name}");
        let host = HostInfo {
            id: id.clone(),
            hostname: name.into(),
            ip: "127.0.0.1".into(),
            port: gport,
            vortex_tcp_port: vport,
            vortex_quic_port: Some(qport),
            proxy_port: 0,
            idc: String::new(),
            location: String::new(),
            disable_shared: false,
            max_tx_bandwidth: 0,
            seed: false,
        };
        let svc = UploadService::new(engine.clone(), host).into_server();
        let servers = vec![
            tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc))
                    .await;
            }),
            {
                let v = VortexServer::new(store, id.clone(), metrics);
                tokio::spawn(async move {
                    tokio::join!(v.clone().serve_tcp(vortex), v.serve_quic(quic));
                })
            },
        ];
        Peer {
            engine,
            parent: Parent {
                id,
                ip: "127.0.0.1".parse().unwrap(),
                grpc_port: gport,
                vortex_port: vport,
                quic_port: Some(qport),
                seed: false,
            },
            servers,
        }
    }

    async fn download(&self, url: &str, parents: Vec<Parent>) -> Result<Vec<u8>, String> {
        let digest = common::id::BlobDigest::from_blob_url(url);
        let req = DownloadRequest {
            task_id: digest.as_ref().unwrap().encoded.clone(),
            url: url.to_string(),
            headers: Default::default(),
            auth: None,
            digest,
            piece_length: None,
            parents,
            disable_back_to_source: false,
            need_back_to_source: false,
            reporter: None,
            parent_updates: None,
        };
        let task = match self.engine.start(req).await.map_err(|e| e.to_string())? {
            Started::Stored { task, .. } => task,
            _ => return Err("not stored".into()),
        };
        task.wait_complete().await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; task.content_length() as usize];
        task.read_at(0, &mut buf).map_err(|e| e.to_string())?;
        Ok(buf)
    }

    /// Stops serving piece bytes (Vortex) while still announcing pieces: a
    /// parent that dies between announcing a piece and sending it.
    fn kill_piece_server(&self) {
        self.servers[1].abort();
    }

    fn metric(&self, series: &str) -> f64 {
        sum_metric(&self.engine.metrics().encode(), series)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

fn ranges(origin: &TestOrigin, path: &str) -> BTreeSet<String> {
    origin
        .ranges_for(path)
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

fn piece_ranges(len: u64, pieces: std::ops::Range<u64>) -> BTreeSet<String> {
    pieces
        .map(|i| format!("bytes={}-{}", i * PIECE, ((i + 1) * PIECE).min(len) - 1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn child_gets_everything_from_a_complete_parent_over_tcp() {
    whole_task_from_parent(dfdaemon::config::Protocol::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn child_gets_everything_from_a_complete_parent_over_quic() {
    whole_task_from_parent(dfdaemon::config::Protocol::Quic).await;
}

/// Everything from the parent, nothing from the origin.
async fn whole_task_from_parent(protocol: dfdaemon::config::Protocol) {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("p2p-complete").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let data = random_bytes(91, (7 * PIECE + 999) as usize);
    let path = format!("/v2/p2p/blobs/{}", sha256_digest(&data));
    origin.put(&path, data.clone());
    let parent = Peer::start(&dir, "parent", Duration::from_secs(10)).await;
    let child = Peer::start_with(&dir, "child", Duration::from_secs(10), protocol).await;
    assert!(parent.download(&origin.url(&path), vec![]).await.unwrap() == data);
    let origin_gets = origin.requests_for(&path);
    let got = child
        .download(&origin.url(&path), vec![parent.parent.clone()])
        .await
        .unwrap();
    assert!(got == data, "child bytes differ");
    assert_eq!(
        origin.requests_for(&path),
        origin_gets,
        "the child went to the origin"
    );
    assert_eq!(
        child.metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"remote_peer\"}")
            as u64,
        data.len() as u64
    );
    let transport = match protocol {
        dfdaemon::config::Protocol::Tcp => "tcp",
        dfdaemon::config::Protocol::Quic => "quic",
    };
    assert_eq!(
        parent.metric(&format!(
            "dragonfly_dfdaemon_upload_traffic_bytes_total{{protocol=\"{transport}\"}}"
        )) as u64,
        data.len() as u64,
        "all bytes must go over {transport}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_pieces_come_from_the_origin_and_a_corrupting_parent_is_dropped() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("p2p-partial").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let len = 8 * PIECE;
    let data = random_bytes(92, len as usize);
    let path = format!("/v2/p2p/blobs/{}", sha256_digest(&data));
    // The parent gets pieces 0-3, then the origin stalls and its download fails.
    origin.put_with(
        &path,
        data.clone(),
        ObjectOptions {
            stall_from_offset: Some(4 * PIECE),
            ..Default::default()
        },
    );
    let parent = Peer::start(&dir, "parent", Duration::from_secs(1)).await;
    assert!(parent.download(&origin.url(&path), vec![]).await.is_err());
    let task_id = sha256_digest(&data)
        .trim_start_matches("sha256:")
        .to_string();
    let ptask = parent.engine.store().get(&task_id).unwrap();
    assert_eq!(ptask.missing_pieces(), vec![4, 5, 6, 7]);
    // Piece 2 rots on the parent's disk.
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new()
            .write(true)
            .open(ptask.path())
            .unwrap(),
        b"bit rot",
        2 * PIECE + 10,
    )
    .unwrap();
    origin.update(&path, |o| o.stall_from_offset = None);
    origin.release_all();
    origin.clear_requests();

    let child = Peer::start(&dir, "child", Duration::from_secs(1)).await;
    let got = child
        .download(&origin.url(&path), vec![parent.parent.clone()])
        .await
        .unwrap();
    assert!(got == data, "child bytes differ");
    // From the origin: the pieces the parent lacks, plus the one it corrupted
    // (after the parent was dropped, whatever it had not yet sent).
    let fetched = ranges(&origin, &path);
    assert!(fetched.is_superset(&piece_ranges(len, 4..8)), "{fetched:?}");
    assert!(
        fetched.contains(&piece_ranges(len, 2..3).into_iter().next().unwrap()),
        "{fetched:?}"
    );
    let from_peer = child
        .metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"remote_peer\"}")
        as u64;
    let from_origin = child
        .metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"back_to_source\"}")
        as u64;
    assert_eq!(from_peer + from_origin, len);
    assert!(
        from_peer >= PIECE,
        "at least one good piece came from the parent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parent_that_dies_is_dropped_and_the_others_finish_the_task() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("p2p-dead-parent").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let data = random_bytes(93, (9 * PIECE + 17) as usize);
    let path = format!("/v2/p2p/blobs/{}", sha256_digest(&data));
    origin.put(&path, data.clone());
    let alive = Peer::start(&dir, "alive", Duration::from_secs(10)).await;
    let dying = Peer::start(&dir, "dying", Duration::from_secs(10)).await;
    assert!(alive.download(&origin.url(&path), vec![]).await.unwrap() == data);
    assert!(dying.download(&origin.url(&path), vec![]).await.unwrap() == data);
    let origin_gets = origin.requests_for(&path);
    dying.kill_piece_server();
    // Give the abort a moment to close the listener.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let child = Peer::start(&dir, "child", Duration::from_secs(10)).await;
    let got = child
        .download(
            &origin.url(&path),
            vec![dying.parent.clone(), alive.parent.clone()],
        )
        .await
        .unwrap();
    assert!(got == data, "child bytes differ");
    assert_eq!(
        origin.requests_for(&path),
        origin_gets,
        "the origin was not needed"
    );
    assert_eq!(
        child.metric("dragonfly_dfdaemon_download_traffic_bytes_total{type=\"remote_peer\"}")
            as u64,
        data.len() as u64
    );
}
