//! Vortex over TCP and QUIC between a server on a real store and the client: whole
//! pieces arrive intact, corrupt pieces are rejected by CRC-32, and malformed
//! frames get an error reply while the server keeps serving.

use dfdaemon::metrics::Metrics;
use dfdaemon::storage::{now_millis, PieceMeta, Store, TaskMeta, TaskStatus};
use dfdaemon::vortex::client::download_piece;
use dfdaemon::vortex::server::VortexServer;
use dfdaemon::vortex::{read_frame, VortexError, MAX_METADATA_VALUE};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vortex_protocol::tlv::error::Code;
use vortex_protocol::Vortex;

const PIECE: u64 = 4 * 1024 * 1024;
const T: Duration = Duration::from_secs(10);

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

async fn setup() -> (tempfile::TempDir, Arc<Store>, SocketAddr, String, Vec<u8>) {
    let (d, store, tcp, _quic, id, bytes) = setup_both().await;
    (d, store, tcp, id, bytes)
}

/// A store with pieces 0 and 2 of a 3-piece task, served over TCP and QUIC.
async fn setup_both() -> (
    tempfile::TempDir,
    Arc<Store>,
    SocketAddr,
    SocketAddr,
    String,
    Vec<u8>,
) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), true).unwrap();
    let store = Arc::new(store);
    let id = "b".repeat(64);
    let len = 2 * PIECE + 12345;
    let bytes = data(len as usize);
    let task = store
        .create(TaskMeta {
            id: id.clone(),
            url: "http://o/x".into(),
            content_length: len,
            piece_length: PIECE,
            status: TaskStatus::Running,
            digest: None,
            content_type: None,
            pieces: BTreeMap::new(),
            created_at: now_millis(),
            accessed_at: now_millis(),
        })
        .unwrap();
    // Pieces 0 and 2 are here; piece 1 is not.
    for n in [0u32, 2] {
        let (off, l) = common::piece::piece_range(n, len, PIECE);
        let chunk = &bytes[off as usize..(off + l) as usize];
        task.write_at(off, chunk).unwrap();
        store.commit_piece(
            &task,
            n,
            PieceMeta {
                length: l,
                crc32: crc32fast::hash(chunk),
            },
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = VortexServer::new(
        store.clone(),
        "127.0.0.1-test".into(),
        Arc::new(Metrics::new()),
    );
    tokio::spawn(server.clone().serve_tcp(listener));
    let quic =
        dfdaemon::vortex::quic::server_endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let quic_addr = quic.local_addr().unwrap();
    tokio::spawn(server.serve_quic(quic));
    (dir, store, addr, quic_addr, id, bytes)
}

#[tokio::test]
async fn quic_carries_pieces_over_one_pooled_connection_and_checks_them() {
    let (_d, store, _tcp, addr, id, bytes) = setup_both().await;
    let client = Arc::new(dfdaemon::vortex::quic::QuicClient::new().unwrap());
    let len = bytes.len() as u64;
    let mut handles = Vec::new();
    for n in [0u32, 2, 0, 2] {
        let (c, id) = (client.clone(), id.clone());
        let (off, l) = common::piece::piece_range(n, len, PIECE);
        handles.push(tokio::spawn(async move {
            (n, c.download_piece(addr, &id, n, off, l, T).await)
        }));
    }
    for h in handles {
        let (n, r) = h.await.unwrap();
        let p = r.unwrap();
        let (off, l) = common::piece::piece_range(n, len, PIECE);
        assert_eq!(&p.content[..], &bytes[off as usize..(off + l) as usize]);
    }
    let (off, l) = common::piece::piece_range(1, len, PIECE);
    match client.download_piece(addr, &id, 1, off, l, T).await {
        Err(VortexError::Remote {
            code: Code::NotFound,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    store.get(&id).unwrap().write_at(5, b"flipped").unwrap();
    let err = client
        .download_piece(addr, &id, 0, 0, PIECE, T)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CRC-32"), "{err}");
}

#[tokio::test]
async fn stored_pieces_arrive_intact_and_missing_ones_are_not_found() {
    let (_d, _store, addr, id, bytes) = setup().await;
    let len = bytes.len() as u64;
    for n in [0u32, 2] {
        let (off, l) = common::piece::piece_range(n, len, PIECE);
        let p = download_piece(addr, &id, n, off, l, T).await.unwrap();
        assert_eq!(&p.content[..], &bytes[off as usize..(off + l) as usize]);
        assert_eq!(p.parent_id, "127.0.0.1-test");
        assert!(p.digest.starts_with("crc32:"));
    }
    let (off, l) = common::piece::piece_range(1, len, PIECE);
    match download_piece(addr, &id, 1, off, l, T).await {
        Err(VortexError::Remote {
            code: Code::NotFound,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    match download_piece(addr, &"c".repeat(64), 0, 0, PIECE, T).await {
        Err(VortexError::Remote {
            code: Code::NotFound,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_corrupt_piece_is_rejected_by_crc() {
    let (_d, store, addr, id, bytes) = setup().await;
    let t = store.get(&id).unwrap();
    t.write_at(100, b"corruption").unwrap();
    let err = download_piece(addr, &id, 0, 0, PIECE, T).await.unwrap_err();
    assert!(matches!(err, VortexError::BadPiece { .. }), "{err}");
    assert!(err.to_string().contains("CRC-32"), "{err}");
    // The client also refuses a piece described at another offset.
    let (off, l) = common::piece::piece_range(2, bytes.len() as u64, PIECE);
    let err = download_piece(addr, &id, 2, off + 1, l, T)
        .await
        .unwrap_err();
    assert!(matches!(err, VortexError::BadPiece { .. }), "{err}");
}

async fn raw(addr: SocketAddr, bytes: &[u8]) -> Result<Vortex, VortexError> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_frame(&mut s, MAX_METADATA_VALUE).await
}

fn expect_error(r: Result<Vortex, VortexError>, code: Code, needle: &str) {
    match r {
        Ok(Vortex::Error(_, e)) => {
            assert_eq!(e.code, code);
            assert!(e.message.contains(needle), "{}", e.message);
        }
        other => panic!("expected an Error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_server_keeps_serving() {
    let (_d, _store, addr, id, bytes) = setup().await;
    // A header announcing 4 GiB: refused before allocation.
    expect_error(
        raw(addr, &[9, 0, 0xff, 0xff, 0xff, 0xff]).await,
        Code::InvalidArgument,
        "exceeds",
    );
    // DownloadPiece with a short value.
    expect_error(
        raw(addr, &[9, 0, 0, 0, 0, 3, 1, 2, 3]).await,
        Code::InvalidArgument,
        "",
    );
    // A reserved tag, and a response frame sent as a request (out of order).
    expect_error(
        raw(addr, &[9, 200, 0, 0, 0, 0]).await,
        Code::InvalidArgument,
        "unsupported",
    );
    expect_error(
        raw(addr, &[9, 254, 0, 0, 0, 0]).await,
        Code::InvalidArgument,
        "unsupported",
    );
    // A truncated frame: the server just drops the connection.
    {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&[9, 0, 0, 0]).await.unwrap();
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    }
    // Still serving.
    let p = download_piece(addr, &id, 0, 0, PIECE, T).await.unwrap();
    assert_eq!(&p.content[..], &bytes[..PIECE as usize]);
}

/// A reader too slow for the socket makes the server's sendfile hit a full
/// socket (WouldBlock) many times; the upload limiter must still be charged
/// exactly the piece's bytes once (charging every retry again once stalled
/// rate-limited parents for minutes).
#[tokio::test]
async fn a_slow_reader_is_charged_each_byte_once_by_the_upload_limiter() {
    let (_d, store, _tcp, _quic, id, bytes) = setup_both().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // A limit far above what this test sends: it never waits, only counts.
    let server = VortexServer::with_rate_limit(
        store.clone(),
        "127.0.0.1-limited".into(),
        Arc::new(Metrics::new()),
        1 << 40,
    );
    tokio::spawn(server.clone().serve_tcp(listener));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    let mut req = bytes::BytesMut::new();
    vortex_protocol::Message::encode_packet(
        &vortex_protocol::tlv::download_piece::DownloadPiece::new(id.clone(), 0),
        &mut req,
    );
    s.write_all(&req).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Let the server fill the socket and find it full before reading on.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.ends_with(&bytes[..PIECE as usize]),
        "the piece arrived intact"
    );
    assert_eq!(server.rate_limited_bytes(), PIECE);
}
