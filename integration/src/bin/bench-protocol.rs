//! hack/bench/protocol.sh: one parent, one child, one task on loopback. The
//! child fetches every piece over Vortex TCP, then over Vortex QUIC; the
//! baseline is a raw TCP copy of the same file (sendfile to a reading socket).
//! Prints ratios; never fails on timing. (The parent's RSS is not reported:
//! parent, child and the in-memory origin share this process.)

use dfdaemon::backend::Backend;
use dfdaemon::config::Protocol;
use dfdaemon::download::{DownloadRequest, Engine, EngineConfig, Started};
use dfdaemon::grpc::upload::{HostInfo, UploadService};
use dfdaemon::metrics::Metrics;
use dfdaemon::p2p::Parent;
use dfdaemon::storage::Store;
use dfdaemon::vortex::server::VortexServer;
use integration::image::sha256_digest;
use integration::{random_bytes, TestDir, TestOrigin};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

fn engine(dir: &TestDir, name: &str, protocol: Protocol) -> Arc<Engine> {
    let (store, _) = Store::open(&dir.join(name), true).expect("store");
    Engine::new(
        Arc::new(store),
        Arc::new(Backend::new(&Default::default()).expect("backend")),
        Arc::new(Metrics::new()),
        EngineConfig {
            concurrent_piece_count: 8,
            piece_timeout: Duration::from_secs(60),
            max_retries: 0,
            protocol,
            rate_limit: 0,
        },
    )
}

async fn download(e: &Arc<Engine>, url: &str, parents: Vec<Parent>) -> Duration {
    let digest = common::id::BlobDigest::from_blob_url(url);
    let req = DownloadRequest {
        task_id: digest.as_ref().expect("blob url").encoded.clone(),
        url: url.to_string(),
        headers: Default::default(),
        digest,
        piece_length: None,
        disable_back_to_source: !parents.is_empty(),
        parents,
        need_back_to_source: false,
        reporter: None,
        parent_updates: None,
    };
    let t0 = Instant::now();
    let Ok(Started::Stored { task, .. }) = e.start(req).await else {
        panic!("download did not start")
    };
    task.wait_complete().await.expect("download");
    t0.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    integration::require_root_and_tools(&[]);
    let mib: usize = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = TestDir::new("bench-protocol")?;
    let origin = TestOrigin::start().await?;
    let data = random_bytes(77, mib * 1024 * 1024);
    let path = format!("/v2/bench/blobs/{}", sha256_digest(&data));
    origin.put(&path, data);
    let url = origin.url(&path);

    // The parent gets the task from the origin and serves it.
    let parent = engine(&dir, "parent", Protocol::Tcp);
    download(&parent, &url, vec![]).await;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let vortex = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let quic = dfdaemon::vortex::quic::server_endpoint("127.0.0.1:0".parse()?)?;
    let (gport, vport, qport) = (
        grpc.local_addr()?.port(),
        vortex.local_addr()?.port(),
        quic.local_addr()?.port(),
    );
    let host = HostInfo {
        id: "127.0.0.1-parent".into(),
        hostname: "parent".into(),
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
    let svc = UploadService::new(parent.clone(), host).into_server();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc)),
    );
    let server = VortexServer::new(
        parent.store().clone(),
        "127.0.0.1-parent".into(),
        parent.metrics().clone(),
    );
    tokio::spawn(server.clone().serve_tcp(vortex));
    tokio::spawn(server.serve_quic(quic));
    let p = Parent {
        id: "127.0.0.1-parent".into(),
        ip: "127.0.0.1".parse()?,
        grpc_port: gport,
        vortex_port: vport,
        quic_port: Some(qport),
        seed: false,
    };
    let tcp = download(
        &engine(&dir, "child-tcp", Protocol::Tcp),
        &url,
        vec![p.clone()],
    )
    .await;
    let quic_t = download(&engine(&dir, "child-quic", Protocol::Quic), &url, vec![p]).await;

    // Baseline: the parent's content file over one raw TCP connection.
    let file = parent
        .store()
        .tasks()
        .first()
        .map(|t| t.path().to_path_buf())
        .expect("parent task");
    // sendfile(2) from the file to the socket: the fastest plain transfer.
    let raw = std::net::TcpListener::bind("127.0.0.1:0")?;
    let raw_addr = raw.local_addr()?;
    std::thread::spawn(move || {
        if let (Ok((s, _)), Ok(f)) = (raw.accept(), std::fs::File::open(&file)) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let mut off = 0u64;
            while off < len {
                let count = (len - off).min(1 << 30) as usize;
                match rustix::fs::sendfile(&s, &f, Some(&mut off), count) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    });
    let t0 = Instant::now();
    let mut c = tokio::net::TcpStream::connect(raw_addr).await?;
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0usize;
    loop {
        let n = c.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let raw_t = t0.elapsed();
    anyhow::ensure!(got == mib * 1024 * 1024, "raw copy got {got} bytes");

    let gb = (mib * 1024 * 1024) as f64 / 1e9;
    println!("# protocol: one parent, one child, {mib} MiB on loopback (8 pieces in flight)");
    println!("| transfer | time | rate | vs raw TCP | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| raw TCP copy (baseline) | {:.3}s | {:.2} GB/s | 1.00 | |",
        raw_t.as_secs_f64(),
        gb / raw_t.as_secs_f64()
    );
    println!(
        "| Vortex TCP | {:.3}s | {:.2} GB/s | {:.2} | >= 0.8 |",
        tcp.as_secs_f64(),
        gb / tcp.as_secs_f64(),
        raw_t.as_secs_f64() / tcp.as_secs_f64()
    );
    println!(
        "| Vortex QUIC | {:.3}s | {:.2} GB/s | {:.2} | >= 0.5 |",
        quic_t.as_secs_f64(),
        gb / quic_t.as_secs_f64(),
        raw_t.as_secs_f64() / quic_t.as_secs_f64()
    );
    Ok(())
}
