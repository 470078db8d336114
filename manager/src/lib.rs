//! Control plane: users, personal access tokens, and (to come) clusters, schedulers, seed
//! peers and preheat jobs with Harbor's Open API.
//!
//! What runs today: the `manager` binary with its database (SQLite by default, PostgreSQL by
//! config), migrations, the root user's first password (never a default), console sessions and
//! personal access tokens over REST.

pub mod audit;
pub mod auth;
pub mod clusters;
pub mod config;
pub mod console;
pub mod db;
pub mod grpc;
pub mod instances;
pub mod jobs;
pub mod metrics;
pub mod resolve;
pub mod rest;

use std::sync::Arc;

/// Opens the database (migrated), makes sure the root user exists, and returns the REST state.
pub async fn prepare(config: &config::ManagerConfig) -> anyhow::Result<Arc<rest::AppState>> {
    let db = db::Db::open(config).await?;
    match auth::ensure_root(&db, &config.server.work_home).await? {
        auth::RootSetup::Existing => {}
        auth::RootSetup::FromEnv => tracing::info!(
            "created user root with the password from {}",
            auth::INITIAL_ROOT_PASSWORD_ENV
        ),
        auth::RootSetup::Generated(path) => tracing::warn!(
            path = %path.display(),
            "created user root with a generated password, written to this file (mode 0600): sign in and keep it elsewhere, then remove the file"
        ),
    }
    if auth::ensure_env_token(&db).await? {
        tracing::info!(
            "root's personal access token \"default\" is the one in {}",
            auth::PAT_ENV
        );
    }
    if clusters::seed(&db).await? {
        tracing::info!("created the default scheduler cluster and seed peer cluster, cluster-1");
    }
    // No KeepAlive stream is open yet: every scheduler and seed peer is inactive until its
    // stream comes back.
    instances::all_inactive(&db).await?;
    let key = auth::jwt_key(&config.server.work_home)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(metrics::Metrics::new());
    if config.job.preheat.allowed_hosts.is_empty() {
        tracing::warn!("job.preheat.allowedHosts is empty: preheat jobs are refused until it names the registries and file hosts peers may fetch from");
    }
    let grpc_tls = match &config.server.grpc.tls {
        Some(files) => files
            .load("server.grpc.tls")
            .map_err(|e| anyhow::anyhow!(e))?,
        None => None,
    };
    let runner = Arc::new(jobs::Runner::new(
        db.clone(),
        metrics.clone(),
        config.job.preheat.clone(),
        grpc_tls.clone(),
    )?);
    let resumed = runner.resume().await?;
    let sweeper = runner.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = sweeper.resume().await {
                tracing::warn!(error = %e, "looking for pending jobs");
            }
        }
    });
    let gc_db = db.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tick.tick().await;
            match audit::collect(&gc_db).await {
                Ok((0, 0)) => {}
                Ok((audits, jobs)) => {
                    tracing::info!(audits, jobs, "old audit records and finished jobs removed")
                }
                Err(e) => tracing::warn!(error = %e, "collecting old audit records and jobs"),
            }
        }
    });
    if resumed > 0 {
        tracing::info!(jobs = resumed, "pending jobs run again");
    }
    Ok(rest::AppState::new(
        db,
        key,
        config.auth.jwt.timeout,
        metrics,
        runner,
        grpc_tls,
    ))
}

/// Serves only `/metrics` on `listener` (the `metrics.addr` port) until `shutdown` completes.
pub async fn serve_metrics(
    state: Arc<rest::AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(rest::metrics))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the gRPC listener: the first free port of `server.grpc.port`.
pub async fn bind_grpc(config: &config::ManagerConfig) -> anyhow::Result<tokio::net::TcpListener> {
    let g = &config.server.grpc;
    let mut last = None;
    for port in g.port.ports() {
        match tokio::net::TcpListener::bind((g.listen_ip, port)).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "server.grpc: cannot listen on {}:{}..={}: {}",
        g.listen_ip,
        g.port.start,
        g.port.end.max(g.port.start),
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// Serves gRPC (`manager.v2.Manager` and gRPC health) on `listener` until `shutdown` completes.
pub async fn serve_grpc(
    state: Arc<rest::AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let service = grpc::ManagerService::new(state.db.clone(), state.metrics.clone());
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<dragonfly_api::manager::v2::manager_server::ManagerServer<grpc::ManagerService>>()
        .await;
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = &state.grpc_tls {
        builder = builder.tls_config(t.grpc_server())?;
    }
    builder
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}

/// Serves REST on `listener` until `shutdown` completes.
pub async fn serve(
    state: Arc<rest::AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = rest::router(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
