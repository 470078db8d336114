//! Wires the node agent together: store, engine, proxy, metrics server,
//! download API on a unix socket, GC; shuts down on SIGTERM/SIGINT.

use crate::backend::Backend;
use crate::config::Config;
use crate::download::{Engine, EngineConfig};
use crate::gc::Gc;
use crate::grpc::download::DownloadService;
use crate::metrics::{Metrics, StateLabels};
use crate::proxy::Proxy;
use crate::storage::{Store, TaskStatus};
use anyhow::Context;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

/// This host's name and IP.
pub fn host_identity(cfg: &Config) -> (String, IpAddr) {
    let hostname = cfg.host.hostname.clone().unwrap_or_else(|| {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    });
    let ip = cfg.host.ip.unwrap_or_else(common::net::detect_ip);
    (hostname, ip)
}

fn refresh_gauges(store: &Store, metrics: &Metrics) {
    let (mut done, mut running) = (0i64, 0i64);
    for t in store.tasks() {
        if t.meta().status == TaskStatus::Succeeded {
            done += 1;
        } else {
            running += 1;
        }
    }
    metrics
        .tasks
        .get_or_create(&StateLabels { state: "succeeded" })
        .set(done);
    metrics
        .tasks
        .get_or_create(&StateLabels { state: "running" })
        .set(running);
    metrics.storage_bytes.set(store.disk_usage() as i64);
    metrics
        .metadata_pending_writes
        .set(store.pending_metadata_writes() as i64);
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (store, metrics) = (store.clone(), metrics.clone());
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (store, metrics) = (store.clone(), metrics.clone());
                    async move {
                        let (status, ctype, body) = match req.uri().path() {
                            "/metrics" => {
                                refresh_gauges(&store, &metrics);
                                (
                                    StatusCode::OK,
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                    metrics.encode(),
                                )
                            }
                            "/healthy" => (StatusCode::OK, "text/plain", "OK\n".to_string()),
                            _ => (
                                StatusCode::NOT_FOUND,
                                "text/plain",
                                "not found\n".to_string(),
                            ),
                        };
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        *r.status_mut() = status;
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static(ctype),
                        );
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

/// Raises the soft open-file limit to the hard limit: every connection and
/// every task being served holds a descriptor.
fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    raise_nofile_limit();
    let (hostname, ip) = host_identity(&cfg);
    let host_id = common::id::host_id(&ip.to_string(), &hostname, cfg.seed_peer.enable);
    let (store, rec) = Store::open(&cfg.storage.dir, cfg.storage.keep)
        .with_context(|| format!("cannot open the store in {}", cfg.storage.dir.display()))?;
    tracing::info!(
        dir = %cfg.storage.dir.display(),
        complete = rec.complete,
        partial = rec.partial,
        dropped_pieces = rec.dropped_pieces,
        dropped_tasks = rec.dropped_tasks,
        orphan_files = rec.orphan_files,
        "store opened"
    );
    let store = Arc::new(store);
    let metrics = Arc::new(Metrics::new());
    let backend = Arc::new(Backend::new(&cfg.backend).context("cannot set up the HTTP client")?);
    #[cfg(feature = "fault-injection")]
    let faults = cfg.fault_injection.clone();
    let load_tls = |files: common::tls::TlsFiles, section: &str| {
        files.load(section).map_err(|e| anyhow::anyhow!(e))
    };
    let upload_server_tls = load_tls(cfg.upload.server.tls_files(), "upload.server")?;
    let upload_client_tls = load_tls(cfg.upload.client.tls_files(), "upload.client")?;
    let scheduler_tls = load_tls(cfg.scheduler.tls_files(), "scheduler")?;
    let manager_tls = load_tls(cfg.manager.tls_files(), "manager")?;
    let engine = Engine::with_transport(
        store.clone(),
        backend,
        metrics.clone(),
        EngineConfig {
            concurrent_piece_count: cfg.download.concurrent_piece_count,
            piece_timeout: cfg.download.piece_timeout,
            max_retries: cfg.backend.max_retries,
            protocol: cfg.download.protocol,
            rate_limit: cfg.download.rate_limit.as_u64(),
            background_rate_limit: cfg.download.background_rate_limit.as_u64(),
            peer_tls: upload_client_tls.clone(),
        },
        |network| {
            #[cfg(feature = "fault-injection")]
            if faults.fail_parent_fetches || faults.fail_origin_fetches > 0 {
                tracing::warn!(?faults, "fault injection in every transfer");
                return Arc::new(crate::transport::Faulty::new(network, &faults));
            }
            Arc::new(network)
        },
    );

    let proxy_addr = SocketAddr::new(cfg.proxy.server.ip, cfg.proxy.server.port);
    let proxy_listener = bind(proxy_addr, "proxy.server").await?;
    let metrics_addr = SocketAddr::new(cfg.metrics.server.ip, cfg.metrics.server.port);
    let metrics_listener = bind(metrics_addr, "metrics.server").await?;

    let sock = cfg.download.server.socket_path.clone();
    // Only root (and the socket's group) may ask the daemon to write files.
    let uds = bind_unix(&sock, 0o660, "download.server.socketPath")?;
    // The snapshotter's socket too, before anything answers /healthy: a containerd that dials
    // it once dfdaemon is healthy (after a restart, say) is not refused by a stale socket.
    let snapshotter = if cfg.snapshotter.enable {
        let s = &cfg.snapshotter;
        let overlay = snapshotter::Overlay::open(&s.root)
            .with_context(|| format!("cannot open the snapshotter at {}", s.root.display()))?;
        #[cfg(feature = "fault-injection")]
        let overlay = overlay.with_abort_at(cfg.fault_injection.abort_snapshotter_at);
        // Only root may create and mount snapshots.
        let uds = bind_unix(&s.socket_path, 0o600, "snapshotter.socketPath")?;
        Some((overlay, uds, s.socket_path.clone()))
    } else {
        None
    };

    let proxy = Arc::new(Proxy::new(&cfg.proxy, &cfg.storage, engine.clone()));
    tokio::spawn(async move {
        if let Err(e) = proxy.serve(proxy_listener).await {
            tracing::error!(error = %e, "proxy stopped");
        }
    });
    tokio::spawn(serve_metrics(
        metrics_listener,
        store.clone(),
        metrics.clone(),
    ));
    let svc = DownloadService::new(engine.clone(), host_id.clone()).into_server();
    let runtime = crate::runtime::Runtime::new(engine.clone(), cfg.runtime.clone());
    runtime.recover().await;
    let runtime_svc = crate::runtime::grpc::RuntimeService::new(runtime.clone()).into_server();
    tokio::spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(svc)
            .add_service(runtime_svc)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(uds))
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "download API stopped");
        }
    });
    tokio::spawn(Gc::new(store.clone(), metrics.clone(), cfg.gc.clone()).run());
    let snapshotter_sock = if let Some((overlay, uds, socket)) = snapshotter {
        let rafs = crate::runtime::images::SnapshotterRafs::new(
            runtime.clone(),
            cfg.snapshotter.hosts_dir.clone(),
        );
        let overlay = overlay.with_rafs(Arc::new(rafs));
        let svc = snapshotter::SnapshotsServer::new(Arc::new(overlay));
        tokio::spawn(async move {
            let r = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(uds))
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "snapshotter stopped");
            }
        });
        Some(socket)
    } else {
        None
    };

    if !cfg.scheduler.addrs.is_empty() || !cfg.manager.addr.is_empty() {
        let upload_addr = SocketAddr::new(cfg.upload.server.ip, cfg.upload.server.port);
        let upload_listener = bind(upload_addr, "upload.server").await?;
        let vortex_addr = SocketAddr::new(cfg.storage.server.ip, cfg.storage.server.tcp_port);
        let host = crate::grpc::upload::HostInfo {
            id: host_id.clone(),
            hostname: hostname.clone(),
            ip: ip.to_string(),
            port: cfg.upload.server.port,
            vortex_tcp_port: cfg.storage.server.tcp_port,
            vortex_quic_port: (!cfg.upload.disable_shared).then_some(cfg.storage.server.quic_port),
            proxy_port: cfg.proxy.server.port,
            idc: cfg.host.idc.clone(),
            location: cfg.host.location.clone(),
            disable_shared: cfg.upload.disable_shared,
            max_tx_bandwidth: cfg.upload.rate_limit.as_u64().saturating_mul(8),
            seed: cfg.seed_peer.enable,
        };
        let upload = crate::grpc::upload::UploadService::new(engine.clone(), host.clone())
            .with_allowed_hosts(cfg.proxy.allowed_registries.clone())
            .into_server();
        let mut builder = tonic::transport::Server::builder();
        if let Some(t) = &upload_server_tls {
            builder = builder
                .tls_config(t.grpc_server())
                .context("upload.server: TLS")?;
        }
        tokio::spawn(async move {
            let r = builder
                .add_service(upload)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                    upload_listener,
                ))
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "upload service stopped");
            }
        });
        if !cfg.upload.disable_shared {
            let vortex_listener = bind(vortex_addr, "storage.server.tcpPort").await?;
            let server = crate::vortex::server::VortexServer::with_tls(
                store.clone(),
                host_id.clone(),
                metrics.clone(),
                cfg.upload.rate_limit.as_u64(),
                upload_server_tls.as_deref(),
            )
            .context("upload.server: TLS for Vortex TCP")?;
            #[cfg(feature = "fault-injection")]
            if cfg.fault_injection.corrupt_uploaded_pieces {
                tracing::warn!("fault injection: every uploaded piece is corrupted");
                server.corrupt_uploads();
            }
            tokio::spawn(server.clone().serve_tcp(vortex_listener));
            let quic_addr = SocketAddr::new(cfg.storage.server.ip, cfg.storage.server.quic_port);
            let endpoint =
                crate::vortex::quic::server_endpoint(quic_addr, upload_server_tls.as_deref())
                    .with_context(|| {
                        format!("cannot listen on {quic_addr}/udp (storage.server.quicPort)")
                    })?;
            tokio::spawn(server.serve_quic(endpoint));
        }
        let announce = host.to_host(0);
        // Names are resolved (again and again) in the background: a scheduler that does not
        // resolve or answer yet leaves this node a mirror until it does.
        let sched = Arc::new(
            crate::scheduler_client::SchedulerClient::new(&cfg.scheduler.addrs, announce)
                .with_tls(scheduler_tls.clone())
                .with_metrics(metrics.clone()),
        );
        engine.set_scheduler(sched.clone());
        if !cfg.manager.addr.is_empty() {
            let channel =
                common::manager_client::channel(&cfg.manager.addr, manager_tls.as_deref())
                    .map_err(|e| anyhow::anyhow!("manager.addr: {e}"))?;
            let request = dragonfly_api::manager::v2::ListSchedulersRequest {
                source_type: if cfg.seed_peer.enable {
                    dragonfly_api::manager::v2::SourceType::SeedPeerSource
                } else {
                    dragonfly_api::manager::v2::SourceType::PeerSource
                } as i32,
                hostname: hostname.clone(),
                ip: ip.to_string(),
                idc: Some(cfg.host.idc.clone()),
                location: Some(cfg.host.location.clone()),
                version: env!("CARGO_PKG_VERSION").into(),
                commit: String::new(),
                scheduler_cluster_id: cfg.host.scheduler_cluster_id.unwrap_or(0),
            };
            let dynconfig = crate::dynconfig::Dynconfig {
                channel: channel.clone(),
                request,
                cache: cfg.storage.dir.join("dynconfig.json"),
                sched: sched.clone(),
                refresh: cfg.dynconfig.refresh_interval,
            };
            dynconfig.use_kept();
            tokio::spawn(dynconfig.run());
            if cfg.seed_peer.enable {
                tokio::spawn(crate::dynconfig::keep_seed_peer_alive(
                    channel,
                    crate::dynconfig::SeedPeerIdentity {
                        hostname: hostname.clone(),
                        ip: ip.to_string(),
                        port: cfg.upload.server.port,
                        idc: cfg.host.idc.clone(),
                        location: cfg.host.location.clone(),
                        cluster_id: cfg.seed_peer.cluster_id,
                    },
                    cfg.seed_peer.keepalive_interval,
                ));
            }
        }
        tokio::spawn(sched.run(std::time::Duration::from_secs(5)));
        tracing::info!(upload = %upload_addr, vortex = %vortex_addr, "P2P servers listening");
    }

    tracing::info!(
        %host_id,
        proxy = %proxy_addr,
        metrics = %metrics_addr,
        socket = %sock.display(),
        "dfdaemon ready"
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down");
    runtime.shutdown().await;
    let _ = store.sync_metadata().await;
    let _ = std::fs::remove_file(&sock);
    if let Some(s) = snapshotter_sock {
        let _ = std::fs::remove_file(s);
    }
    Ok(())
}

/// Listens on the unix socket `path` (its directory created, a stale socket replaced), created
/// with `mode` from the start: there is no window in which it is wider. `key` names the setting
/// in errors.
fn bind_unix(
    path: &std::path::Path,
    mode: u32,
    key: &str,
) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove stale {}", path.display())),
    }
    let old_umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(!mode & 0o777));
    let uds = tokio::net::UnixListener::bind(path);
    rustix::process::umask(old_umask);
    let uds = uds.with_context(|| format!("cannot listen on {} ({key})", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    Ok(uds)
}
