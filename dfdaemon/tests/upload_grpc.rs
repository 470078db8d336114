//! The upload service over real gRPC on loopback: pieces are announced as
//! soon as they are stored, stat/delete act on the store, bad requests get
//! the right status codes, and SyncHost streams this host.

use dfdaemon::backend::Backend;
use dfdaemon::download::{Engine, EngineConfig};
use dfdaemon::grpc::upload::{HostInfo, UploadService};
use dfdaemon::metrics::Metrics;
use dfdaemon::storage::{now_millis, PieceMeta, Store, Task, TaskMeta, TaskStatus};
use dragonfly_api::dfdaemon::v2::dfdaemon_upload_client::DfdaemonUploadClient;
use dragonfly_api::dfdaemon::v2::{
    DeleteTaskRequest, StatTaskRequest, SyncHostRequest, SyncPiecesRequest,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

const PIECE: u64 = 4 * 1024 * 1024;

fn put(store: &Store, t: &Task, n: u32) {
    let (off, len) = common::piece::piece_range(n, t.content_length(), PIECE);
    let data = vec![n as u8; len as usize];
    t.write_at(off, &data).unwrap();
    store.commit_piece(
        t,
        n,
        PieceMeta {
            length: len,
            crc32: crc32fast::hash(&data),
        },
    );
}

async fn setup() -> (
    tempfile::TempDir,
    Arc<Store>,
    Arc<Task>,
    DfdaemonUploadClient<Channel>,
) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), true).unwrap();
    let store = Arc::new(store);
    let metrics = Arc::new(Metrics::new());
    let backend = Arc::new(Backend::new(&Default::default()).unwrap());
    let engine = Engine::new(
        store.clone(),
        backend,
        metrics,
        EngineConfig {
            concurrent_piece_count: 4,
            piece_timeout: Duration::from_secs(10),
            max_retries: 0,
            protocol: Default::default(),
            rate_limit: 0,
            background_rate_limit: 0,
            peer_tls: None,
        },
    );
    let task = store
        .create(TaskMeta {
            id: "d".repeat(64),
            url: "http://o/x".into(),
            content_length: 3 * PIECE - 10,
            piece_length: PIECE,
            status: TaskStatus::Running,
            digest: None,
            content_type: None,
            pieces: BTreeMap::new(),
            created_at: now_millis(),
            accessed_at: now_millis(),
        })
        .unwrap();
    let host = HostInfo {
        id: "127.0.0.1-parent".into(),
        hostname: "parent".into(),
        ip: "127.0.0.1".into(),
        port: 4000,
        vortex_tcp_port: 4005,
        vortex_quic_port: Some(4006),
        proxy_port: 4001,
        idc: "idc-a".into(),
        location: "cn|hz".into(),
        disable_shared: false,
        max_tx_bandwidth: 8_000_000_000,
        seed: false,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = UploadService::new(engine, host).into_server();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let client = DfdaemonUploadClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (dir, store, task, client)
}

#[tokio::test]
async fn sync_pieces_announces_pieces_as_they_land() {
    let (_d, store, task, mut client) = setup().await;
    put(&store, &task, 0);
    let mut stream = client
        .sync_pieces(SyncPiecesRequest {
            host_id: "child".into(),
            task_id: task.id.clone(),
            interested_piece_numbers: vec![0, 1, 2],
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!((first.number, first.offset, first.length), (0, 0, PIECE));
    assert_eq!(
        (first.ip.as_str(), first.tcp_port),
        ("127.0.0.1", Some(4005))
    );
    put(&store, &task, 2);
    let second = stream.message().await.unwrap().unwrap();
    assert_eq!(
        (second.number, second.offset, second.length),
        (2, 2 * PIECE, PIECE - 10)
    );
    put(&store, &task, 1);
    assert_eq!(stream.message().await.unwrap().unwrap().number, 1);
    assert!(
        stream.message().await.unwrap().is_none(),
        "stream ends when all are sent"
    );
}

#[tokio::test]
async fn bad_requests_get_precise_statuses() {
    let (_d, _store, task, mut client) = setup().await;
    let e = client
        .sync_pieces(SyncPiecesRequest {
            host_id: "child".into(),
            task_id: "e".repeat(64),
            interested_piece_numbers: vec![0],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = client
        .sync_pieces(SyncPiecesRequest {
            host_id: "child".into(),
            task_id: task.id.clone(),
            interested_piece_numbers: vec![3],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("out of range"), "{}", e.message());
}

#[tokio::test]
async fn stat_delete_and_sync_host() {
    let (_d, store, task, mut client) = setup().await;
    put(&store, &task, 1);
    let t = client
        .stat_task(StatTaskRequest {
            task_id: task.id.clone(),
            remote_ip: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.content_length, 3 * PIECE - 10);
    assert_eq!(t.piece_count, 3);
    assert_eq!(t.pieces.len(), 1);
    assert_eq!(t.state, "Running");

    let mut hosts = client
        .sync_host(SyncHostRequest {
            host_id: "child".into(),
            peer_id: "p".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let h = hosts.message().await.unwrap().unwrap();
    assert_eq!(h.id, "127.0.0.1-parent");
    assert_eq!(h.download_port, 4005);
    let net = h.network.unwrap();
    assert_eq!(net.idc.as_deref(), Some("idc-a"));
    assert_eq!(net.max_tx_bandwidth, 8_000_000_000);

    client
        .delete_task(DeleteTaskRequest {
            task_id: task.id.clone(),
            remote_ip: None,
        })
        .await
        .unwrap();
    assert!(store.get(&task.id).is_none());
    let e = client
        .stat_task(StatTaskRequest {
            task_id: task.id.clone(),
            remote_ip: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}
