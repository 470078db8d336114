//! The manager's gRPC service (`manager.v2.Manager`, Dragonfly's): schedulers and seed peers
//! register (`UpdateScheduler`, `UpdateSeedPeer`), stay `active` while their `KeepAlive` stream
//! is open, read their cluster's config (`GetScheduler`, `GetSeedPeer`), and peers find their
//! schedulers (`ListSchedulers`, through the searcher).

use crate::clusters;
use crate::db::{Db, DbError};
use crate::instances::{self, Kind};
use dragonfly_api::manager::v2 as pb;
use dragonfly_api::manager::v2::manager_server::{Manager, ManagerServer};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// A KeepAlive stream silent for this long counts as broken (Dragonfly's schedulers send one
/// message every 5 s).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Who holds a KeepAlive stream.
type Identity = (Kind, String, String, i64);

/// The service.
#[derive(Clone)]
pub struct ManagerService {
    db: Db,
    /// Open KeepAlive streams per instance: an instance becomes inactive only when its last
    /// stream ends (a reconnect may overlap the old stream's end).
    /// Held across a count change and its database write, so a stream ending and a new one
    /// opening for the same instance are written in the order they happen.
    streams: Arc<tokio::sync::Mutex<HashMap<Identity, usize>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl ManagerService {
    pub fn new(db: Db, metrics: Arc<crate::metrics::Metrics>) -> ManagerService {
        ManagerService {
            db,
            streams: Arc::new(tokio::sync::Mutex::new(HashMap::new())),
            metrics,
        }
    }

    pub fn into_server(self) -> ManagerServer<ManagerService> {
        ManagerServer::new(self)
    }
}

fn internal(e: DbError) -> Status {
    tracing::error!(error = %e, "database");
    Status::internal(e.to_string())
}

/// `hostname` and `ip` as an instance's identity: present, bounded, an IP address.
fn identity(hostname: &str, ip: &str) -> Result<(), Status> {
    if hostname.is_empty() || hostname.len() > 256 || hostname.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "hostname: must be 1 to 256 characters without control characters",
        ));
    }
    if ip.parse::<std::net::IpAddr>().is_err() {
        return Err(Status::invalid_argument(format!(
            "ip: {ip:?} is not an IP address"
        )));
    }
    Ok(())
}

fn port(field: &str, p: i32) -> Result<i64, Status> {
    if (1..=65535).contains(&p) {
        Ok(i64::from(p))
    } else {
        Err(Status::invalid_argument(format!(
            "{field}: {p} is not a port (1-65535)"
        )))
    }
}

fn short(field: &str, s: &str) -> Result<(), Status> {
    if s.len() > 1024 {
        return Err(Status::invalid_argument(format!(
            "{field}: at most 1024 characters"
        )));
    }
    Ok(())
}

fn cluster_id(v: u64) -> Result<i64, Status> {
    i64::try_from(v).map_err(|_| Status::invalid_argument("cluster id out of range"))
}

fn json_bytes<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn scheduler_cluster_pb(c: &clusters::SchedulerCluster) -> pb::SchedulerCluster {
    pb::SchedulerCluster {
        id: c.id as u64,
        name: c.name.clone(),
        bio: c.bio.clone(),
        config: json_bytes(&c.config),
        client_config: json_bytes(&c.client_config),
        scopes: json_bytes(&c.scopes),
        seed_client_config: json_bytes(&c.seed_client_config),
    }
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn scheduler_pb(s: &instances::Scheduler) -> pb::Scheduler {
    pb::Scheduler {
        id: s.id as u64,
        hostname: s.hostname.clone(),
        idc: opt(&s.idc),
        location: opt(&s.location),
        ip: s.ip.clone(),
        port: s.port as i32,
        state: s.state.clone(),
        scheduler_cluster_id: s.scheduler_cluster_id as u64,
        scheduler_cluster: None,
        seed_peers: Vec::new(),
        features: json_bytes(&s.features),
    }
}

fn seed_peer_pb(p: &instances::SeedPeer) -> pb::SeedPeer {
    pb::SeedPeer {
        id: p.id as u64,
        hostname: p.hostname.clone(),
        r#type: p.kind.clone(),
        idc: opt(&p.idc),
        location: opt(&p.location),
        ip: p.ip.clone(),
        port: p.port as i32,
        download_port: p.download_port as i32,
        state: p.state.clone(),
        seed_peer_cluster_id: p.seed_peer_cluster_id as u64,
        seed_peer_cluster: None,
        schedulers: Vec::new(),
    }
}

impl ManagerService {
    /// Scheduler `s` with its cluster and the active seed peers serving it.
    async fn full_scheduler(&self, s: &instances::Scheduler) -> Result<pb::Scheduler, Status> {
        let (cluster, seed_peers) = self.cluster_part(s.scheduler_cluster_id).await?;
        Ok(pb::Scheduler {
            scheduler_cluster: cluster,
            seed_peers,
            ..scheduler_pb(s)
        })
    }

    /// What every scheduler of cluster `id` carries: the cluster and its active seed peers.
    async fn cluster_part(
        &self,
        id: i64,
    ) -> Result<(Option<pb::SchedulerCluster>, Vec<pb::SeedPeer>), Status> {
        let cluster = clusters::scheduler_cluster(&self.db, id)
            .await
            .map_err(internal)?;
        let seed_peers = instances::active_seed_peers_of(&self.db, id)
            .await
            .map_err(internal)?
            .iter()
            .map(seed_peer_pb)
            .collect();
        Ok((cluster.as_ref().map(scheduler_cluster_pb), seed_peers))
    }

    /// Seed peer `p` with its cluster.
    async fn full_seed_peer(&self, p: &instances::SeedPeer) -> Result<pb::SeedPeer, Status> {
        let mut out = seed_peer_pb(p);
        if let Some(c) = clusters::seed_peer_cluster(&self.db, p.seed_peer_cluster_id)
            .await
            .map_err(internal)?
        {
            out.seed_peer_cluster = Some(pb::SeedPeerCluster {
                id: c.id as u64,
                name: c.name.clone(),
                bio: c.bio.clone(),
                config: json_bytes(&c.config),
            });
        }
        Ok(out)
    }

    async fn find_seed_peer(
        &self,
        hostname: &str,
        ip: &str,
        cluster: i64,
    ) -> Result<instances::SeedPeer, Status> {
        let (list, _) = instances::list_seed_peers(
            &self.db,
            &instances::Filter {
                hostname: Some(hostname.to_string()),
                ip: Some(ip.to_string()),
                cluster_id: Some(cluster),
                state: None,
            },
            1,
            0,
        )
        .await
        .map_err(internal)?;
        list.into_iter().next().ok_or_else(|| {
            Status::not_found(format!(
                "seed peer {hostname} ({ip}) of seed peer cluster {cluster} is not registered"
            ))
        })
    }
}

#[tonic::async_trait]
impl Manager for ManagerService {
    async fn get_seed_peer(
        &self,
        request: Request<pb::GetSeedPeerRequest>,
    ) -> Result<Response<pb::SeedPeer>, Status> {
        let r = request.into_inner();
        identity(&r.hostname, &r.ip)?;
        let p = self
            .find_seed_peer(&r.hostname, &r.ip, cluster_id(r.seed_peer_cluster_id)?)
            .await?;
        Ok(Response::new(self.full_seed_peer(&p).await?))
    }

    async fn list_seed_peers(
        &self,
        _request: Request<pb::ListSeedPeersRequest>,
    ) -> Result<Response<pb::ListSeedPeersResponse>, Status> {
        let (list, _) = instances::list_seed_peers(
            &self.db,
            &instances::Filter {
                state: Some("active".into()),
                ..Default::default()
            },
            i64::MAX,
            0,
        )
        .await
        .map_err(internal)?;
        Ok(Response::new(pb::ListSeedPeersResponse {
            seed_peers: list.iter().map(seed_peer_pb).collect(),
        }))
    }

    async fn update_seed_peer(
        &self,
        request: Request<pb::UpdateSeedPeerRequest>,
    ) -> Result<Response<pb::SeedPeer>, Status> {
        let r = request.into_inner();
        identity(&r.hostname, &r.ip)?;
        let cluster = cluster_id(r.seed_peer_cluster_id)?;
        let idc = r.idc.unwrap_or_default();
        let location = r.location.unwrap_or_default();
        short("idc", &idc)?;
        short("location", &location)?;
        short("type", &r.r#type)?;
        if clusters::seed_peer_cluster(&self.db, cluster)
            .await
            .map_err(internal)?
            .is_none()
        {
            return Err(Status::not_found(format!(
                "seed_peer_cluster_id: no seed peer cluster {cluster}"
            )));
        }
        let p = instances::upsert_seed_peer(
            &self.db,
            &instances::SeedPeerUpdate {
                hostname: r.hostname,
                kind: r.r#type,
                ip: r.ip,
                port: port("port", r.port)?,
                download_port: if r.download_port == 0 {
                    0
                } else {
                    port("download_port", r.download_port)?
                },
                idc,
                location,
                cluster_id: cluster,
            },
        )
        .await
        .map_err(internal)?;
        tracing::info!(hostname = %p.hostname, ip = %p.ip, cluster, "seed peer registered");
        Ok(Response::new(self.full_seed_peer(&p).await?))
    }

    async fn delete_seed_peer(
        &self,
        request: Request<pb::DeleteSeedPeerRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        identity(&r.hostname, &r.ip)?;
        let cluster = cluster_id(r.seed_peer_cluster_id)?;
        if instances::delete_seed_peer_by_name(&self.db, &r.hostname, &r.ip, cluster)
            .await
            .map_err(internal)?
        {
            Ok(Response::new(()))
        } else {
            Err(Status::not_found(format!(
                "seed peer {} ({}) of seed peer cluster {cluster} is not registered",
                r.hostname, r.ip
            )))
        }
    }

    async fn get_scheduler(
        &self,
        request: Request<pb::GetSchedulerRequest>,
    ) -> Result<Response<pb::Scheduler>, Status> {
        let r = request.into_inner();
        identity(&r.hostname, &r.ip)?;
        let cluster = cluster_id(r.scheduler_cluster_id)?;
        let (list, _) = instances::list_schedulers(
            &self.db,
            &instances::Filter {
                hostname: Some(r.hostname.clone()),
                ip: None,
                cluster_id: Some(cluster),
                state: None,
            },
            i64::MAX,
            0,
        )
        .await
        .map_err(internal)?;
        // Dragonfly finds it by hostname and cluster; the address breaks a tie.
        let s = list
            .iter()
            .find(|s| s.ip == r.ip)
            .or(list.first())
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "scheduler {} ({}) of scheduler cluster {cluster} is not registered",
                    r.hostname, r.ip
                ))
            })?;
        Ok(Response::new(self.full_scheduler(&s).await?))
    }

    async fn update_scheduler(
        &self,
        request: Request<pb::UpdateSchedulerRequest>,
    ) -> Result<Response<pb::Scheduler>, Status> {
        let r = request.into_inner();
        identity(&r.hostname, &r.ip)?;
        let cluster = cluster_id(r.scheduler_cluster_id)?;
        let idc = r.idc.unwrap_or_default();
        let location = r.location.unwrap_or_default();
        short("idc", &idc)?;
        short("location", &location)?;
        if r.features.len() > 32 || r.features.iter().any(|f| f.len() > 64) {
            return Err(Status::invalid_argument(
                "features: at most 32 names of at most 64 characters",
            ));
        }
        if clusters::scheduler_cluster(&self.db, cluster)
            .await
            .map_err(internal)?
            .is_none()
        {
            return Err(Status::not_found(format!(
                "scheduler_cluster_id: no scheduler cluster {cluster}"
            )));
        }
        let s = instances::upsert_scheduler(
            &self.db,
            &instances::SchedulerUpdate {
                hostname: r.hostname,
                ip: r.ip,
                port: port("port", r.port)?,
                idc,
                location,
                features: r.features,
                cluster_id: cluster,
            },
        )
        .await
        .map_err(internal)?;
        tracing::info!(hostname = %s.hostname, ip = %s.ip, port = s.port, cluster, "scheduler registered");
        Ok(Response::new(self.full_scheduler(&s).await?))
    }

    async fn list_schedulers(
        &self,
        request: Request<pb::ListSchedulersRequest>,
    ) -> Result<Response<pb::ListSchedulersResponse>, Status> {
        let r = request.into_inner();
        self.metrics.list_schedulers.inc();
        let who = instances::Seeker {
            hostname: r.hostname,
            ip: r.ip,
            idc: r.idc.unwrap_or_default(),
            location: r.location.unwrap_or_default(),
            cluster_id: cluster_id(r.scheduler_cluster_id)?,
        };
        let found = instances::search(&self.db, &who).await.map_err(internal)?;
        if found.is_empty() {
            self.metrics.list_schedulers_failures.inc();
            let scope = if who.cluster_id != 0 {
                format!("in scheduler cluster {}", who.cluster_id)
            } else {
                "in any scheduler cluster".to_string()
            };
            return Err(Status::not_found(format!("no active scheduler {scope}")));
        }
        let mut schedulers = Vec::with_capacity(found.len());
        // Read once per cluster, not once per scheduler (this answers every peer's refresh).
        let mut parts = HashMap::new();
        for s in &found {
            if let std::collections::hash_map::Entry::Vacant(e) =
                parts.entry(s.scheduler_cluster_id)
            {
                e.insert(self.cluster_part(s.scheduler_cluster_id).await?);
            }
            let (cluster, seed_peers) = &parts[&s.scheduler_cluster_id];
            schedulers.push(pb::Scheduler {
                scheduler_cluster: cluster.clone(),
                seed_peers: seed_peers.clone(),
                ..scheduler_pb(s)
            });
        }
        Ok(Response::new(pb::ListSchedulersResponse { schedulers }))
    }

    async fn list_applications(
        &self,
        _request: Request<pb::ListApplicationsRequest>,
    ) -> Result<Response<pb::ListApplicationsResponse>, Status> {
        // No application priorities are configured here: the answer is the empty list.
        Ok(Response::new(pb::ListApplicationsResponse {
            applications: Vec::new(),
        }))
    }

    async fn keep_alive(
        &self,
        request: Request<tonic::Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<()>, Status> {
        let mut stream = request.into_inner();
        let first = match tokio::time::timeout(KEEPALIVE_TIMEOUT, stream.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return Ok(Response::new(())),
            Ok(Err(s)) => return Err(s),
            Err(_) => return Err(Status::deadline_exceeded("no KeepAlive message")),
        };
        identity(&first.hostname, &first.ip)?;
        let kind = match pb::SourceType::try_from(first.source_type) {
            Ok(pb::SourceType::SchedulerSource) => Kind::Scheduler,
            Ok(pb::SourceType::SeedPeerSource) => Kind::SeedPeer,
            _ => {
                return Err(Status::invalid_argument(
                    "source_type: KeepAlive is for schedulers and seed peers",
                ))
            }
        };
        let cluster = cluster_id(first.cluster_id)?;
        let who: Identity = (kind, first.hostname.clone(), first.ip.clone(), cluster);
        {
            let mut streams = self.streams.lock().await;
            if !instances::set_state(&self.db, kind, &first.hostname, &first.ip, cluster, true)
                .await
                .map_err(internal)?
            {
                return Err(Status::not_found(format!(
                    "{} {} ({}) of cluster {cluster} is not registered: call Update first",
                    kind.noun(),
                    first.hostname,
                    first.ip
                )));
            }
            *streams.entry(who.clone()).or_insert(0) += 1;
        }
        tracing::info!(kind = kind.noun(), hostname = %who.1, ip = %who.2, cluster, "active");
        // The watch runs on its own task: when the connection drops, hyper drops this
        // handler, but the task still sees the stream end and marks the instance inactive.
        let svc = self.clone();
        let watch = tokio::spawn(async move {
            let why = loop {
                match tokio::time::timeout(KEEPALIVE_TIMEOUT, stream.message()).await {
                    Ok(Ok(Some(_))) => continue,
                    Ok(Ok(None)) => break "stream closed".to_string(),
                    Ok(Err(s)) => break s.message().to_string(),
                    Err(_) => break format!("silent for {}s", KEEPALIVE_TIMEOUT.as_secs()),
                }
            };
            let mut streams = svc.streams.lock().await;
            let left = match streams.get_mut(&who) {
                Some(n) => {
                    *n = n.saturating_sub(1);
                    *n
                }
                None => 0,
            };
            if left == 0 {
                streams.remove(&who);
                if let Err(e) =
                    instances::set_state(&svc.db, kind, &who.1, &who.2, cluster, false).await
                {
                    tracing::error!(error = %e, "database");
                }
                tracing::warn!(kind = kind.noun(), hostname = %who.1, ip = %who.2, cluster, reason = %why, "inactive");
            }
        });
        let _ = watch.await;
        Ok(Response::new(()))
    }
}
