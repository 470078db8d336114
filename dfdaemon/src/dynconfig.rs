//! Schedulers from the manager (`manager.addr`): `ListSchedulers` at start and every
//! `dynconfig.refreshInterval`, the schedulers of the first cluster it answers put on the hash
//! ring. The last answer is kept in `<storage.dir>/dynconfig.json`, so a dfdaemon that starts
//! or runs while the manager is down keeps using the schedulers it last heard of. A seed peer
//! also registers itself (`UpdateSeedPeer`) and stays active (`KeepAlive`).

use crate::scheduler_client::SchedulerClient;
use dragonfly_api::manager::v2::manager_client::ManagerClient;
use dragonfly_api::manager::v2::{
    KeepAliveRequest, ListSchedulersRequest, SourceType, UpdateSeedPeerRequest,
};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// What is kept on disk: the schedulers last listed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cached {
    /// Their scheduler cluster.
    pub scheduler_cluster_id: u64,
    /// `ip:port` of each.
    pub schedulers: Vec<SocketAddr>,
}

/// Reads the kept list; `None` if there is none or it cannot be read (logged).
pub fn load(path: &Path) -> Option<Cached> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the kept scheduler list");
            return None;
        }
    };
    match serde_json::from_slice(&text) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the kept scheduler list is not valid; ignoring it");
            None
        }
    }
}

/// Writes the list atomically (a crash leaves the old or the new file).
pub fn save(path: &Path, c: &Cached) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(c).unwrap_or_default())?;
    std::fs::rename(&tmp, path)
}

/// The schedulers of the first cluster in the manager's answer (its best match).
pub fn first_cluster(list: &[dragonfly_api::manager::v2::Scheduler]) -> Option<Cached> {
    let first = list.first()?;
    let cluster = first.scheduler_cluster_id;
    let schedulers = list
        .iter()
        .filter(|s| s.scheduler_cluster_id == cluster)
        .filter_map(|s| {
            let ip: std::net::IpAddr = s.ip.parse().ok()?;
            let port = u16::try_from(s.port).ok().filter(|p| *p > 0)?;
            Some(SocketAddr::new(ip, port))
        })
        .collect::<Vec<_>>();
    (!schedulers.is_empty()).then_some(Cached {
        scheduler_cluster_id: cluster,
        schedulers,
    })
}

/// Keeps the scheduler list of `sched` up to date from the manager.
pub struct Dynconfig {
    pub channel: Channel,
    pub request: ListSchedulersRequest,
    pub cache: PathBuf,
    pub sched: Arc<SchedulerClient>,
    pub refresh: Duration,
}

impl Dynconfig {
    /// Uses the kept list if the client has no schedulers yet.
    pub fn use_kept(&self) {
        if !self.sched.addrs().is_empty() {
            return;
        }
        if let Some(c) = load(&self.cache) {
            if self.sched.set_addrs(&c.schedulers) {
                tracing::info!(schedulers = ?c.schedulers, cluster = c.scheduler_cluster_id, "using the schedulers the manager last listed");
            }
        }
    }

    /// One `ListSchedulers`; the list now in use.
    pub async fn refresh(&self) -> Result<Cached, tonic::Status> {
        let mut c = ManagerClient::new(self.channel.clone());
        let list = c
            .list_schedulers(common::manager_client::request(self.request.clone()))
            .await?
            .into_inner()
            .schedulers;
        let found = first_cluster(&list).ok_or_else(|| {
            tonic::Status::not_found("the manager listed no scheduler with an address")
        })?;
        if self.sched.set_addrs(&found.schedulers) {
            tracing::info!(schedulers = ?found.schedulers, cluster = found.scheduler_cluster_id, "schedulers from the manager");
        }
        if load(&self.cache).as_ref() != Some(&found) {
            if let Err(e) = save(&self.cache, &found) {
                tracing::warn!(path = %self.cache.display(), error = %e, "cannot keep the scheduler list");
            }
        }
        Ok(found)
    }

    /// Refreshes forever; an unreachable manager is logged once per outage and the list in use
    /// stays.
    pub async fn run(self) {
        self.use_kept();
        let mut failing = false;
        loop {
            match self.refresh().await {
                Ok(_) => {
                    if failing {
                        tracing::info!("the manager answers again");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e.message(), code = ?e.code(), schedulers = ?self.sched.addrs(), "cannot list schedulers from the manager; keeping the ones in use");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(self.refresh).await;
        }
    }
}

/// Who this seed peer is to the manager.
pub use common::manager_client::Identity as SeedPeerIdentity;

/// Registers this seed peer (`UpdateSeedPeer`) and keeps it active, forever.
pub async fn keep_seed_peer_alive(channel: Channel, me: SeedPeerIdentity, interval: Duration) {
    let message = KeepAliveRequest {
        source_type: SourceType::SeedPeerSource as i32,
        hostname: me.hostname.clone(),
        cluster_id: me.cluster_id,
        ip: me.ip.clone(),
    };
    let register = move |mut c: ManagerClient<Channel>| {
        let me = me.clone();
        async move {
            c.update_seed_peer(common::manager_client::request(UpdateSeedPeerRequest {
                source_type: SourceType::SeedPeerSource as i32,
                hostname: me.hostname.clone(),
                r#type: "super".into(),
                idc: Some(me.idc.clone()),
                location: Some(me.location.clone()),
                ip: me.ip.clone(),
                port: i32::from(me.port),
                download_port: i32::from(me.port),
                seed_peer_cluster_id: me.cluster_id,
            }))
            .await?;
            Ok(())
        }
    };
    common::manager_client::keep_alive(channel, message, interval, register).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use dragonfly_api::manager::v2::Scheduler;

    fn s(ip: &str, port: i32, cluster: u64) -> Scheduler {
        Scheduler {
            ip: ip.into(),
            port,
            scheduler_cluster_id: cluster,
            ..Default::default()
        }
    }

    #[test]
    fn the_first_cluster_of_the_answer_is_used_and_kept_across_a_restart() {
        let list = [
            s("10.0.0.1", 8002, 2),
            s("bad", 8002, 2),
            s("10.0.0.2", 8002, 2),
            s("10.0.0.3", 8002, 1),
        ];
        let c = first_cluster(&list).unwrap();
        assert_eq!(c.scheduler_cluster_id, 2);
        assert_eq!(
            c.schedulers,
            [
                "10.0.0.1:8002".parse::<SocketAddr>().unwrap(),
                "10.0.0.2:8002".parse().unwrap()
            ]
        );
        assert!(first_cluster(&[]).is_none());
        assert!(first_cluster(&[s("10.0.0.1", 0, 1)]).is_none());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dynconfig.json");
        assert!(load(&path).is_none());
        save(&path, &c).unwrap();
        assert_eq!(load(&path), Some(c));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).is_none());
    }
}
