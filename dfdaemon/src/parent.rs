//! The peers a task's pieces may come from ([`Parent`]), as the scheduler hands them out, and
//! what this peer asks them over their upload gRPC service before fetching pieces.

use dragonfly_api::dfdaemon::v2::dfdaemon_upload_client::DfdaemonUploadClient;
use dragonfly_api::dfdaemon::v2::StatLocalTaskRequest;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A peer that may serve pieces of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub id: String,
    pub ip: IpAddr,
    /// Upload gRPC port (SyncPieces, StatLocalTask).
    pub grpc_port: u16,
    /// Vortex TCP port.
    pub vortex_port: u16,
    /// Vortex QUIC port, if the parent serves QUIC.
    pub quic_port: Option<u16>,
    /// A seed peer (host type super seed): used when normal parents cannot keep up.
    pub seed: bool,
}

impl Parent {
    fn grpc_addr(&self) -> String {
        SocketAddr::new(self.ip, self.grpc_port).to_string()
    }
}

/// A client of `p`'s upload service, if it answers within 3 s.
/// Over mutual TLS with `tls` (`upload.client`).
pub(crate) async fn connect(
    p: &Parent,
    tls: Option<&common::tls::Tls>,
) -> Option<DfdaemonUploadClient<tonic::transport::Channel>> {
    let ep = common::tls::endpoint(&p.grpc_addr(), tls, "upload.client")
        .ok()?
        .connect_timeout(CONNECT_TIMEOUT);
    tokio::time::timeout(CONNECT_TIMEOUT, ep.connect())
        .await
        .ok()?
        .ok()
        .map(DfdaemonUploadClient::new)
}

/// Content length and piece length of a task, from the first parent that
/// knows it; retried for up to `wait` (a seed peer may just be starting).
pub async fn describe_task(
    parents: &[Parent],
    task_id: &str,
    wait: std::time::Duration,
    tls: Option<&common::tls::Tls>,
) -> Option<(u64, u64)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(d) = describe_once(parents, task_id, tls).await {
            return Some(d);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn describe_once(
    parents: &[Parent],
    task_id: &str,
    tls: Option<&common::tls::Tls>,
) -> Option<(u64, u64)> {
    for p in parents {
        let Some(mut c) = connect(p, tls).await else {
            continue;
        };
        let r = c
            .stat_local_task(StatLocalTaskRequest {
                task_id: task_id.to_string(),
                remote_ip: None,
            })
            .await;
        if let Ok(r) = r {
            let r = r.into_inner();
            if let (Some(len), Some(pl)) = (r.content_length, r.piece_length) {
                if pl > 0 {
                    return Some((len, pl));
                }
            }
        }
    }
    None
}
