//! Cluster routes: scheduler clusters, seed peer clusters, their combined view (`/clusters`),
//! and the schedulers and seed peers registered in them.

use super::*;
use crate::{clusters, instances};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSchedulerCluster {
    name: String,
    #[serde(default)]
    bio: String,
    config: clusters::SchedulerClusterConfig,
    client_config: clusters::ClientConfig,
    seed_client_config: clusters::SeedClientConfig,
    #[serde(default)]
    scopes: clusters::Scopes,
    #[serde(default)]
    is_default: bool,
    #[serde(default)]
    seed_peer_cluster_id: i64,
}

fn scheduler_cluster_problems(
    config: Option<&clusters::SchedulerClusterConfig>,
    client: Option<&clusters::ClientConfig>,
    scopes: Option<&clusters::Scopes>,
) -> Vec<String> {
    let mut p = Vec::new();
    if let Some(c) = config {
        p.extend(c.problems("config"));
    }
    if let Some(c) = client {
        p.extend(c.problems("client_config"));
    }
    if let Some(s) = scopes {
        p.extend(s.problems("scopes"));
    }
    p
}

async fn create_scheduler_cluster(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    JsonBody(req): JsonBody<CreateSchedulerCluster>,
) -> Result<Json<clusters::SchedulerCluster>, ApiError> {
    require_root(&c)?;
    check_name("name", &req.name)?;
    reject(scheduler_cluster_problems(
        Some(&req.config),
        Some(&req.client_config),
        Some(&req.scopes),
    ))?;
    if req.seed_peer_cluster_id > 0
        && clusters::seed_peer_cluster(&s.db, req.seed_peer_cluster_id)
            .await?
            .is_none()
    {
        return Err(ApiError::bad(format!(
            "seed_peer_cluster_id: no seed peer cluster {}",
            req.seed_peer_cluster_id
        )));
    }
    let name = req.name.trim();
    let id = clusters::create_scheduler_cluster(
        &s.db,
        name,
        &req.bio,
        &req.config,
        &req.client_config,
        &req.seed_client_config,
        &req.scopes,
        req.is_default,
    )
    .await
    .map_err(|e| conflict(e, "scheduler cluster", name))?;
    if req.seed_peer_cluster_id > 0 {
        clusters::link(&s.db, req.seed_peer_cluster_id, id).await?;
    }
    clusters::scheduler_cluster(&s.db, id)
        .await?
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

#[derive(Deserialize)]
struct NameQuery {
    name: Option<String>,
    page: Option<i64>,
    per_page: Option<i64>,
}

/// One page of `table` as the API lists it.
async fn cluster_page<T, F, Fut>(
    s: &AppState,
    table: clusters::Table,
    path: &str,
    q: Result<Query<NameQuery>, axum::extract::rejection::QueryRejection>,
    get: F,
) -> Result<Response, ApiError>
where
    T: Serialize,
    F: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, DbError>>,
{
    let Query(q) = q.map_err(|e| ApiError::bad(e.body_text()))?;
    let (page, per_page, offset) = page_of(q.page, q.per_page)?;
    let (ids, total) =
        clusters::list_ids(&s.db, table, q.name.as_deref(), per_page, offset).await?;
    let mut list = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(c) = get(id).await? {
            list.push(c);
        }
    }
    let mut kept = Vec::new();
    if let Some(n) = q.name {
        kept.push(("name".to_string(), n));
    }
    let link = link_header(path, kept, page, per_page, total);
    Ok(([(header::LINK, link)], Json(list)).into_response())
}

async fn list_scheduler_clusters(
    State(s): State<Arc<AppState>>,
    q: Result<Query<NameQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let db = s.db.clone();
    cluster_page(
        &s,
        clusters::Table::SchedulerClusters,
        "/api/v1/scheduler-clusters",
        q,
        |id| {
            let db = db.clone();
            async move { clusters::scheduler_cluster(&db, id).await }
        },
    )
    .await
}

async fn get_scheduler_cluster(
    State(s): State<Arc<AppState>>,
    Path(id): Path<i64>,
) -> Result<Json<clusters::SchedulerCluster>, ApiError> {
    clusters::scheduler_cluster(&s.db, id)
        .await?
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

async fn update_scheduler_cluster(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    Path(id): Path<i64>,
    JsonBody(req): JsonBody<clusters::SchedulerClusterPatch>,
) -> Result<Json<clusters::SchedulerCluster>, ApiError> {
    require_root(&c)?;
    if let Some(n) = &req.name {
        check_name("name", n)?;
    }
    reject(scheduler_cluster_problems(
        req.config.as_ref(),
        req.client_config.as_ref(),
        req.scopes.as_ref(),
    ))?;
    if clusters::scheduler_cluster(&s.db, id).await?.is_none() {
        return Err(ApiError::not_found());
    }
    if let Some(spc) = req.seed_peer_cluster_id.filter(|v| *v > 0) {
        if clusters::seed_peer_cluster(&s.db, spc).await?.is_none() {
            return Err(ApiError::bad(format!(
                "seed_peer_cluster_id: no seed peer cluster {spc}"
            )));
        }
    }
    clusters::update_scheduler_cluster(&s.db, id, &req)
        .await
        .map_err(|e| conflict(e, "scheduler cluster", req.name.as_deref().unwrap_or("")))?;
    if let Some(spc) = req.seed_peer_cluster_id.filter(|v| *v > 0) {
        clusters::link(&s.db, spc, id).await?;
    }
    get_scheduler_cluster(State(s), Path(id)).await
}

async fn delete_scheduler_cluster(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    delete_cluster(&s, &c, clusters::Table::SchedulerClusters, id).await
}

/// Deletes cluster `id` of `table` (root only); 404 if there is none.
async fn delete_cluster(
    s: &AppState,
    c: &Claims,
    table: clusters::Table,
    id: i64,
) -> Result<StatusCode, ApiError> {
    require_root(c)?;
    if clusters::delete(&s.db, table, id).await? {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::not_found())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSeedPeerCluster {
    name: String,
    #[serde(default)]
    bio: String,
    config: clusters::SeedPeerClusterConfig,
}

async fn create_seed_peer_cluster(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    JsonBody(req): JsonBody<CreateSeedPeerCluster>,
) -> Result<Json<clusters::SeedPeerCluster>, ApiError> {
    require_root(&c)?;
    check_name("name", &req.name)?;
    reject(req.config.problems("config"))?;
    let name = req.name.trim();
    let id = clusters::create_seed_peer_cluster(&s.db, name, &req.bio, &req.config)
        .await
        .map_err(|e| conflict(e, "seed peer cluster", name))?;
    get_seed_peer_cluster(State(s), Path(id)).await
}

async fn list_seed_peer_clusters(
    State(s): State<Arc<AppState>>,
    q: Result<Query<NameQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let db = s.db.clone();
    cluster_page(
        &s,
        clusters::Table::SeedPeerClusters,
        "/api/v1/seed-peer-clusters",
        q,
        |id| {
            let db = db.clone();
            async move { clusters::seed_peer_cluster(&db, id).await }
        },
    )
    .await
}

async fn get_seed_peer_cluster(
    State(s): State<Arc<AppState>>,
    Path(id): Path<i64>,
) -> Result<Json<clusters::SeedPeerCluster>, ApiError> {
    clusters::seed_peer_cluster(&s.db, id)
        .await?
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

async fn update_seed_peer_cluster(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    Path(id): Path<i64>,
    JsonBody(req): JsonBody<clusters::SeedPeerClusterPatch>,
) -> Result<Json<clusters::SeedPeerCluster>, ApiError> {
    require_root(&c)?;
    if let Some(n) = &req.name {
        check_name("name", n)?;
    }
    if let Some(cfg) = &req.config {
        reject(cfg.problems("config"))?;
    }
    if !clusters::update_seed_peer_cluster(&s.db, id, &req)
        .await
        .map_err(|e| conflict(e, "seed peer cluster", req.name.as_deref().unwrap_or("")))?
    {
        return Err(ApiError::not_found());
    }
    get_seed_peer_cluster(State(s), Path(id)).await
}

async fn delete_seed_peer_cluster(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    delete_cluster(&s, &c, clusters::Table::SeedPeerClusters, id).await
}

/// `PUT /seed-peer-clusters/{id}/scheduler-clusters/{scheduler_cluster_id}`: the seed peer
/// cluster now serves that scheduler cluster (its only one).
async fn link_clusters(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    Path((id, sc)): Path<(i64, i64)>,
) -> Result<StatusCode, ApiError> {
    require_root(&c)?;
    if clusters::seed_peer_cluster(&s.db, id).await?.is_none()
        || clusters::scheduler_cluster(&s.db, sc).await?.is_none()
    {
        return Err(ApiError::not_found());
    }
    clusters::link(&s.db, id, sc).await?;
    Ok(StatusCode::OK)
}

/// The session routes of clusters and their instances (under `/api/v1`).
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/scheduler-clusters",
            post(create_scheduler_cluster).get(list_scheduler_clusters),
        )
        .route(
            "/scheduler-clusters/{id}",
            get(get_scheduler_cluster)
                .patch(update_scheduler_cluster)
                .delete(delete_scheduler_cluster),
        )
        .route(
            "/seed-peer-clusters",
            post(create_seed_peer_cluster).get(list_seed_peer_clusters),
        )
        .route(
            "/seed-peer-clusters/{id}",
            get(get_seed_peer_cluster)
                .patch(update_seed_peer_cluster)
                .delete(delete_seed_peer_cluster),
        )
        .route(
            "/seed-peer-clusters/{id}/scheduler-clusters/{scheduler_cluster_id}",
            axum::routing::put(link_clusters),
        )
        .route("/schedulers", get(list_schedulers))
        .route(
            "/schedulers/{id}",
            get(get_scheduler).delete(delete_scheduler),
        )
        .route("/seed-peers", get(list_seed_peers))
        .route(
            "/seed-peers/{id}",
            get(get_seed_peer).delete(delete_seed_peer),
        )
        .merge(open_routes())
}

/// The combined cluster routes, also on the Open API (scope `cluster`).
pub(super) fn open_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/clusters", post(create_cluster).get(list_clusters))
        .route(
            "/clusters/{id}",
            get(get_cluster)
                .patch(update_cluster)
                .delete(delete_combined),
        )
}

#[derive(Deserialize)]
struct InstanceQuery {
    hostname: Option<String>,
    ip: Option<String>,
    state: Option<String>,
    scheduler_cluster_id: Option<i64>,
    seed_peer_cluster_id: Option<i64>,
    page: Option<i64>,
    per_page: Option<i64>,
}

impl InstanceQuery {
    fn filter(&self, kind: instances::Kind) -> Result<instances::Filter, ApiError> {
        if let Some(s) = &self.state {
            if s != "active" && s != "inactive" {
                return Err(ApiError::bad(format!(
                    "state: {s:?} is neither active nor inactive"
                )));
            }
        }
        Ok(instances::Filter {
            hostname: self.hostname.clone(),
            ip: self.ip.clone(),
            state: self.state.clone(),
            cluster_id: match kind {
                instances::Kind::Scheduler => self.scheduler_cluster_id,
                instances::Kind::SeedPeer => self.seed_peer_cluster_id,
            },
        })
    }

    fn kept(&self) -> Vec<(String, String)> {
        let mut k = Vec::new();
        let mut keep = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                k.push((name.to_string(), v));
            }
        };
        keep("hostname", self.hostname.clone());
        keep("ip", self.ip.clone());
        keep("state", self.state.clone());
        keep(
            "scheduler_cluster_id",
            self.scheduler_cluster_id.map(|v| v.to_string()),
        );
        keep(
            "seed_peer_cluster_id",
            self.seed_peer_cluster_id.map(|v| v.to_string()),
        );
        k
    }
}

async fn list_schedulers(
    State(s): State<Arc<AppState>>,
    q: Result<Query<InstanceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad(e.body_text()))?;
    let (page, per_page, offset) = page_of(q.page, q.per_page)?;
    let (list, total) = instances::list_schedulers(
        &s.db,
        &q.filter(instances::Kind::Scheduler)?,
        per_page,
        offset,
    )
    .await?;
    let link = link_header("/api/v1/schedulers", q.kept(), page, per_page, total);
    Ok(([(header::LINK, link)], Json(list)).into_response())
}

async fn get_scheduler(
    State(s): State<Arc<AppState>>,
    Path(id): Path<i64>,
) -> Result<Json<instances::Scheduler>, ApiError> {
    instances::scheduler(&s.db, id)
        .await?
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

async fn delete_scheduler(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    delete_instance(&s, &c, instances::Kind::Scheduler, id).await
}

async fn list_seed_peers(
    State(s): State<Arc<AppState>>,
    q: Result<Query<InstanceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad(e.body_text()))?;
    let (page, per_page, offset) = page_of(q.page, q.per_page)?;
    let (list, total) = instances::list_seed_peers(
        &s.db,
        &q.filter(instances::Kind::SeedPeer)?,
        per_page,
        offset,
    )
    .await?;
    let link = link_header("/api/v1/seed-peers", q.kept(), page, per_page, total);
    Ok(([(header::LINK, link)], Json(list)).into_response())
}

async fn get_seed_peer(
    State(s): State<Arc<AppState>>,
    Path(id): Path<i64>,
) -> Result<Json<instances::SeedPeer>, ApiError> {
    instances::seed_peer(&s.db, id)
        .await?
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

async fn delete_seed_peer(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    delete_instance(&s, &c, instances::Kind::SeedPeer, id).await
}

async fn delete_instance(
    s: &AppState,
    c: &Claims,
    kind: instances::Kind,
    id: i64,
) -> Result<StatusCode, ApiError> {
    require_root(c)?;
    if instances::delete(&s.db, kind, id).await? {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::not_found())
    }
}

/// A cluster as Dragonfly's `/clusters` routes show it: a scheduler cluster (its id is the
/// cluster's) with the seed peer cluster serving it.
#[derive(Debug, Serialize)]
struct Cluster {
    id: i64,
    name: String,
    bio: String,
    scopes: clusters::Scopes,
    scheduler_cluster_id: i64,
    seed_peer_cluster_id: i64,
    scheduler_cluster_config: clusters::SchedulerClusterConfig,
    seed_peer_cluster_config: clusters::SeedPeerClusterConfig,
    peer_cluster_config: clusters::ClientConfig,
    created_at: String,
    updated_at: String,
    is_default: bool,
}

async fn cluster(db: &crate::db::Db, id: i64) -> Result<Option<Cluster>, DbError> {
    let Some(sc) = clusters::scheduler_cluster(db, id).await? else {
        return Ok(None);
    };
    let spc = match sc.seed_peer_clusters.first() {
        Some(r) => clusters::seed_peer_cluster(db, r.id).await?,
        None => None,
    };
    Ok(Some(Cluster {
        id: sc.id,
        name: sc.name,
        bio: sc.bio,
        scopes: sc.scopes,
        scheduler_cluster_id: sc.id,
        seed_peer_cluster_id: spc.as_ref().map_or(0, |p| p.id),
        scheduler_cluster_config: sc.config,
        seed_peer_cluster_config: spc.map(|p| p.config).unwrap_or_default(),
        peer_cluster_config: sc.client_config,
        created_at: sc.created_at,
        updated_at: sc.updated_at,
        is_default: sc.is_default,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCluster {
    name: String,
    #[serde(default)]
    bio: String,
    #[serde(default)]
    scopes: clusters::Scopes,
    scheduler_cluster_config: clusters::SchedulerClusterConfig,
    seed_peer_cluster_config: clusters::SeedPeerClusterConfig,
    peer_cluster_config: clusters::ClientConfig,
    #[serde(default)]
    is_default: bool,
}

async fn create_cluster(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    JsonBody(req): JsonBody<CreateCluster>,
) -> Result<Json<Cluster>, ApiError> {
    require_root(&c)?;
    check_name("name", &req.name)?;
    let mut p = scheduler_cluster_problems(
        Some(&req.scheduler_cluster_config),
        Some(&req.peer_cluster_config),
        Some(&req.scopes),
    );
    p.extend(
        req.seed_peer_cluster_config
            .problems("seed_peer_cluster_config"),
    );
    reject(p)?;
    let name = req.name.trim();
    let spc =
        clusters::create_seed_peer_cluster(&s.db, name, &req.bio, &req.seed_peer_cluster_config)
            .await
            .map_err(|e| conflict(e, "seed peer cluster", name))?;
    let sc = match clusters::create_scheduler_cluster(
        &s.db,
        name,
        &req.bio,
        &req.scheduler_cluster_config,
        &req.peer_cluster_config,
        &clusters::SeedClientConfig::default(),
        &req.scopes,
        req.is_default,
    )
    .await
    {
        Ok(id) => id,
        Err(e) => {
            // Nothing half made stays behind.
            clusters::delete(&s.db, clusters::Table::SeedPeerClusters, spc).await?;
            return Err(conflict(e, "scheduler cluster", name));
        }
    };
    clusters::link(&s.db, spc, sc).await?;
    cluster(&s.db, sc)
        .await?
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

async fn list_clusters(
    State(s): State<Arc<AppState>>,
    q: Result<Query<NameQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let db = s.db.clone();
    cluster_page(
        &s,
        clusters::Table::SchedulerClusters,
        "/api/v1/clusters",
        q,
        |id| {
            let db = db.clone();
            async move { cluster(&db, id).await }
        },
    )
    .await
}

async fn get_cluster(
    State(s): State<Arc<AppState>>,
    Path(id): Path<i64>,
) -> Result<Json<Cluster>, ApiError> {
    cluster(&s.db, id)
        .await?
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateCluster {
    name: Option<String>,
    bio: Option<String>,
    scopes: Option<clusters::Scopes>,
    scheduler_cluster_config: Option<clusters::SchedulerClusterConfig>,
    seed_peer_cluster_config: Option<clusters::SeedPeerClusterConfig>,
    peer_cluster_config: Option<clusters::ClientConfig>,
    is_default: Option<bool>,
}

async fn update_cluster(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    Path(id): Path<i64>,
    JsonBody(req): JsonBody<UpdateCluster>,
) -> Result<Json<Cluster>, ApiError> {
    require_root(&c)?;
    if let Some(n) = &req.name {
        check_name("name", n)?;
    }
    let mut p = scheduler_cluster_problems(
        req.scheduler_cluster_config.as_ref(),
        req.peer_cluster_config.as_ref(),
        req.scopes.as_ref(),
    );
    if let Some(cfg) = &req.seed_peer_cluster_config {
        p.extend(cfg.problems("seed_peer_cluster_config"));
    }
    reject(p)?;
    let Some(current) = cluster(&s.db, id).await? else {
        return Err(ApiError::not_found());
    };
    let name = req.name.as_deref().map(str::trim).map(str::to_string);
    clusters::update_scheduler_cluster(
        &s.db,
        id,
        &clusters::SchedulerClusterPatch {
            name: name.clone(),
            bio: req.bio.clone(),
            config: req.scheduler_cluster_config,
            client_config: req.peer_cluster_config,
            seed_client_config: None,
            scopes: req.scopes,
            is_default: req.is_default,
            seed_peer_cluster_id: None,
        },
    )
    .await
    .map_err(|e| conflict(e, "scheduler cluster", name.as_deref().unwrap_or("")))?;
    if current.seed_peer_cluster_id > 0 {
        clusters::update_seed_peer_cluster(
            &s.db,
            current.seed_peer_cluster_id,
            &clusters::SeedPeerClusterPatch {
                name: name.clone(),
                bio: req.bio,
                config: req.seed_peer_cluster_config,
            },
        )
        .await
        .map_err(|e| conflict(e, "seed peer cluster", name.as_deref().unwrap_or("")))?;
    }
    get_cluster(State(s), Path(id)).await
}

async fn delete_combined(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    require_root(&c)?;
    let Some(current) = cluster(&s.db, id).await? else {
        return Err(ApiError::not_found());
    };
    clusters::delete(&s.db, clusters::Table::SchedulerClusters, id).await?;
    if current.seed_peer_cluster_id > 0 {
        clusters::delete(
            &s.db,
            clusters::Table::SeedPeerClusters,
            current.seed_peer_cluster_id,
        )
        .await?;
    }
    Ok(StatusCode::OK)
}
