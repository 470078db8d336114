//! Control plane: users, personal access tokens, and (to come) clusters, schedulers, seed
//! peers and preheat jobs with Harbor's Open API.
//!
//! What runs today: the `manager` binary with its database (SQLite by default, PostgreSQL by
//! config), migrations, the root user's first password (never a default), console sessions and
//! personal access tokens over REST.

pub mod auth;
pub mod clusters;
pub mod config;
pub mod db;
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
    let key = auth::jwt_key(&config.server.work_home)?;
    Ok(rest::AppState::new(db, key, config.auth.jwt.timeout))
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
