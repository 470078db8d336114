//! The scheduler's side of the manager: it registers (`UpdateScheduler`), stays active
//! (`KeepAlive` every `manager.keepAlive.interval`), and applies its cluster's config
//! (`GetScheduler` every `dynConfig.refreshInterval`: parent limits and the peers' and seed peers'
//! upload limits).

use crate::config::ClusterConfig;
use crate::service::SchedulerService;
use dragonfly_api::manager::v2::manager_client::ManagerClient;
use dragonfly_api::manager::v2::{
    GetSchedulerRequest, KeepAliveRequest, Scheduler, SourceType, UpdateSchedulerRequest,
};
use std::time::Duration;
use tonic::transport::Channel;

/// Who this scheduler is to the manager.
pub use common::manager_client::Identity;

/// The cluster config carried by a manager's `Scheduler` answer.
pub fn cluster_config(s: &Scheduler) -> ClusterConfig {
    #[derive(serde::Deserialize, Default)]
    struct Limits {
        candidate_parent_limit: Option<u32>,
        filter_parent_limit: Option<u32>,
        load_limit: Option<u32>,
    }
    let parse = |b: &[u8]| -> Limits {
        if b.is_empty() {
            Limits::default()
        } else {
            serde_json::from_slice(b).unwrap_or_default()
        }
    };
    let (config, client) = match &s.scheduler_cluster {
        Some(c) => (parse(&c.config), parse(&c.client_config)),
        None => (Limits::default(), Limits::default()),
    };
    let seed = s
        .seed_peers
        .iter()
        .find_map(|p| p.seed_peer_cluster.as_ref())
        .map(|c| parse(&c.config))
        .unwrap_or_default();
    ClusterConfig {
        candidate_parent_limit: config.candidate_parent_limit,
        filter_parent_limit: config.filter_parent_limit,
        peer_upload_limit: client.load_limit,
        seed_peer_upload_limit: seed.load_limit,
    }
}

/// Registers, keeps alive and refreshes the cluster config, forever.
pub async fn run(
    channel: Channel,
    me: Identity,
    keepalive: Duration,
    refresh: Duration,
    service: SchedulerService,
) {
    let register = {
        let me = me.clone();
        let service = service.clone();
        move |mut c: ManagerClient<Channel>| {
            let me = me.clone();
            let service = service.clone();
            async move {
                let s = c
                    .update_scheduler(common::manager_client::request(UpdateSchedulerRequest {
                        source_type: SourceType::SchedulerSource as i32,
                        hostname: me.hostname.clone(),
                        scheduler_cluster_id: me.cluster_id,
                        idc: Some(me.idc.clone()),
                        location: Some(me.location.clone()),
                        ip: me.ip.clone(),
                        port: i32::from(me.port),
                        features: vec!["schedule".into(), "preheat".into()],
                        config: serde_json::to_vec(&serde_json::json!({
                            "manager_keep_alive_interval": keepalive.as_nanos() as u64
                        }))
                        .unwrap_or_default(),
                    }))
                    .await?
                    .into_inner();
                service.apply_cluster_config(&cluster_config(&s));
                tracing::info!(
                    cluster = me.cluster_id,
                    hostname = %me.hostname,
                    ip = %me.ip,
                    port = me.port,
                    "registered with the manager"
                );
                Ok(())
            }
        }
    };
    let message = KeepAliveRequest {
        source_type: SourceType::SchedulerSource as i32,
        hostname: me.hostname.clone(),
        cluster_id: me.cluster_id,
        ip: me.ip.clone(),
    };
    tokio::spawn(common::manager_client::keep_alive(
        channel.clone(),
        message,
        keepalive,
        register,
    ));
    let mut tick = tokio::time::interval(refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let mut c = ManagerClient::new(channel.clone());
        match c
            .get_scheduler(common::manager_client::request(GetSchedulerRequest {
                source_type: SourceType::SchedulerSource as i32,
                hostname: me.hostname.clone(),
                scheduler_cluster_id: me.cluster_id,
                ip: me.ip.clone(),
            }))
            .await
        {
            Ok(s) => service.apply_cluster_config(&cluster_config(&s.into_inner())),
            // The last config stays in force.
            Err(e) => {
                tracing::warn!(error = %e.message(), "cannot read the cluster config from the manager")
            }
        }
    }
}
