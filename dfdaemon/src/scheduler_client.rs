//! Talking to schedulers (Dragonfly v2 `scheduler.v2.Scheduler`): the host is
//! announced to every scheduler; each task goes to one scheduler chosen by
//! consistent hashing of `task_id[0..5]` (as Dragonfly's client does, so all
//! peers of a task meet on the same scheduler), over an `AnnouncePeer` stream.

use crate::parent::Parent;
use dragonfly_api::common::v2::{Download, Host};
use dragonfly_api::scheduler::v2::scheduler_client::SchedulerClient as GrpcClient;
use dragonfly_api::scheduler::v2::{
    announce_peer_request, announce_peer_response, AnnounceHostRequest, AnnouncePeerRequest,
    AnnouncePeerResponse, RegisterPeerRequest,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A scheduler on the hash ring (hashed like Dragonfly's client does).
#[derive(Debug, Copy, Clone, Hash, PartialEq)]
struct VNode {
    addr: SocketAddr,
}

impl std::fmt::Display for VNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)
    }
}

/// Errors talking to a scheduler.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("no scheduler is configured")]
    NoScheduler,
    #[error("cannot resolve scheduler address {addr:?}: {message}")]
    Resolve { addr: String, message: String },
    #[error("scheduler {addr}: {message}")]
    Unavailable { addr: SocketAddr, message: String },
    #[error("scheduler {addr} answered {status}")]
    Status {
        addr: SocketAddr,
        status: Box<tonic::Status>,
    },
    #[error("scheduler {addr} closed the AnnouncePeer stream")]
    Closed { addr: SocketAddr },
}

/// What a scheduler decided for a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Download from these parents.
    Parents(Vec<Parent>),
    /// Download from the origin.
    BackToSource(String),
    /// The task is empty: nothing to download.
    Empty,
}

/// The schedulers in use and their hash ring.
struct Ring {
    ring: hashring::HashRing<VNode>,
    addrs: Vec<SocketAddr>,
}

impl Ring {
    fn of(addrs: &[SocketAddr]) -> Ring {
        let mut ring = hashring::HashRing::new();
        let mut list = Vec::new();
        for a in addrs {
            if !list.contains(a) {
                ring.add(VNode { addr: *a });
                list.push(*a);
            }
        }
        Ring { ring, addrs: list }
    }
}

/// Client of the schedulers: configured, or given by the manager (then replaced when the
/// manager's list changes).
pub struct SchedulerClient {
    ring: std::sync::RwLock<Ring>,
    channels: Mutex<HashMap<SocketAddr, Channel>>,
    host: Host,
    /// Mutual TLS to the schedulers (`scheduler.caCert`, `cert`, `key`).
    tls: Option<Arc<common::tls::Tls>>,
}

impl SchedulerClient {
    /// Resolves the `host:port` addresses; `host` is what AnnounceHost sends.
    pub async fn new(addrs: &[String], host: Host) -> Result<SchedulerClient, SchedulerError> {
        let mut resolved = Vec::new();
        for a in addrs {
            let addr = tokio::net::lookup_host(a.as_str())
                .await
                .map_err(|e| SchedulerError::Resolve {
                    addr: a.clone(),
                    message: e.to_string(),
                })?
                .next()
                .ok_or_else(|| SchedulerError::Resolve {
                    addr: a.clone(),
                    message: "no address".into(),
                })?;
            resolved.push(addr);
        }
        Ok(Self::with_addrs(&resolved, host))
    }

    /// A client of these schedulers (none: every download goes to the origin until
    /// [`set_addrs`](Self::set_addrs) gives some).
    pub fn with_addrs(addrs: &[SocketAddr], host: Host) -> SchedulerClient {
        SchedulerClient {
            ring: std::sync::RwLock::new(Ring::of(addrs)),
            channels: Mutex::new(HashMap::new()),
            host,
            tls: None,
        }
    }

    /// Talks to the schedulers over mutual TLS with `tls`.
    pub fn with_tls(mut self, tls: Option<Arc<common::tls::Tls>>) -> SchedulerClient {
        self.tls = tls;
        self
    }

    /// Uses these schedulers from now on; whether the set changed. Tasks already on a
    /// scheduler keep their stream; new ones hash over the new set.
    pub fn set_addrs(&self, addrs: &[SocketAddr]) -> bool {
        let new = Ring::of(addrs);
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        let mut old_sorted = ring.addrs.clone();
        old_sorted.sort();
        let mut new_sorted = new.addrs.clone();
        new_sorted.sort();
        if old_sorted == new_sorted {
            return false;
        }
        *ring = new;
        true
    }

    /// The schedulers in use.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.ring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .addrs
            .clone()
    }

    /// This host's ID.
    pub fn host_id(&self) -> &str {
        &self.host.id
    }

    /// The scheduler responsible for a task.
    pub fn scheduler_for(&self, task_id: &str) -> Option<SocketAddr> {
        let key: String = task_id.chars().take(5).collect();
        self.ring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .ring
            .get(&key)
            .map(|v| v.addr)
    }

    fn client(&self, addr: SocketAddr) -> Result<GrpcClient<Channel>, SchedulerError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(&addr) {
            return Ok(GrpcClient::new(c.clone()));
        }
        let channel = common::tls::endpoint(&addr.to_string(), self.tls.as_deref(), "scheduler")
            .map_err(|message| SchedulerError::Unavailable { addr, message })?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_lazy();
        channels.insert(addr, channel.clone());
        Ok(GrpcClient::new(channel))
    }

    /// Announces this host to every scheduler; returns how many accepted it.
    pub async fn announce_host(&self, interval: Duration) -> usize {
        let mut ok = 0;
        for addr in &self.addrs() {
            let Ok(mut c) = self.client(*addr) else {
                continue;
            };
            let req = AnnounceHostRequest {
                host: Some(self.host.clone()),
                interval: prost_wkt_types::Duration::try_from(interval).ok(),
            };
            match c.announce_host(req).await {
                Ok(_) => ok += 1,
                Err(e) => tracing::debug!(scheduler = %addr, error = %e, "AnnounceHost failed"),
            }
        }
        ok
    }

    /// Opens the AnnouncePeer stream for a download and registers the peer.
    pub async fn register_peer(
        &self,
        task_id: &str,
        peer_id: &str,
        download: Download,
    ) -> Result<PeerSession, SchedulerError> {
        let addr = self
            .scheduler_for(task_id)
            .ok_or(SchedulerError::NoScheduler)?;
        let mut client = self.client(addr)?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let session = PeerSession {
            addr,
            reporter: PeerReporter {
                tx,
                host_id: self.host.id.clone(),
                task_id: task_id.to_string(),
                peer_id: peer_id.to_string(),
            },
            rx: None,
        };
        session
            .send(announce_peer_request::Request::RegisterPeerRequest(
                RegisterPeerRequest {
                    download: Some(download),
                },
            ))
            .await;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let resp = tokio::time::timeout(CONNECT_TIMEOUT * 2, client.announce_peer(stream))
            .await
            .map_err(|_| SchedulerError::Unavailable {
                addr,
                message: "AnnouncePeer timed out".into(),
            })?
            .map_err(|s| SchedulerError::Status {
                addr,
                status: Box::new(s),
            })?;
        Ok(PeerSession {
            rx: Some(resp.into_inner()),
            ..session
        })
    }
}

/// One peer's AnnouncePeer stream.
pub struct PeerSession {
    addr: SocketAddr,
    reporter: PeerReporter,
    rx: Option<tonic::Streaming<AnnouncePeerResponse>>,
}

impl PeerSession {
    /// Sends one request on the stream (dropped if the stream is gone).
    pub async fn send(&self, request: announce_peer_request::Request) {
        self.reporter.send(request).await;
    }

    /// A sender usable from other tasks.
    pub fn sender(&self) -> PeerReporter {
        self.reporter.clone()
    }

    /// Waits for the scheduler's next decision.
    pub async fn next_decision(&mut self) -> Result<Decision, SchedulerError> {
        next_decision(self.addr, self.rx.as_mut()).await
    }

    /// The receiving half alone: the stream's requests end when every
    /// reporter is dropped, while decisions can still be read.
    pub fn into_decisions(self) -> PeerDecisions {
        PeerDecisions {
            addr: self.addr,
            rx: self.rx,
        }
    }
}

/// The scheduler's side of a peer's AnnouncePeer stream.
pub struct PeerDecisions {
    addr: SocketAddr,
    rx: Option<tonic::Streaming<AnnouncePeerResponse>>,
}

impl PeerDecisions {
    /// Waits for the scheduler's next decision.
    pub async fn next_decision(&mut self) -> Result<Decision, SchedulerError> {
        next_decision(self.addr, self.rx.as_mut()).await
    }
}

async fn next_decision(
    addr: SocketAddr,
    rx: Option<&mut tonic::Streaming<AnnouncePeerResponse>>,
) -> Result<Decision, SchedulerError> {
    let rx = rx.ok_or(SchedulerError::Closed { addr })?;
    loop {
        let msg = rx
            .message()
            .await
            .map_err(|s| SchedulerError::Status {
                addr,
                status: Box::new(s),
            })?
            .ok_or(SchedulerError::Closed { addr })?;
        match msg.response {
            Some(announce_peer_response::Response::NormalTaskResponse(r)) => {
                let parents = r
                    .candidate_parents
                    .iter()
                    .filter_map(parent_of)
                    .collect::<Vec<_>>();
                return Ok(Decision::Parents(parents));
            }
            Some(announce_peer_response::Response::NeedBackToSourceResponse(r)) => {
                return Ok(Decision::BackToSource(r.description.unwrap_or_default()))
            }
            Some(announce_peer_response::Response::EmptyTaskResponse(_)) => {
                return Ok(Decision::Empty)
            }
            Some(announce_peer_response::Response::MetadataOnlyResponse(_)) | None => {}
        }
    }
}

/// Sends progress reports on a peer's AnnouncePeer stream.
#[derive(Debug, Clone)]
pub struct PeerReporter {
    tx: tokio::sync::mpsc::Sender<AnnouncePeerRequest>,
    host_id: String,
    task_id: String,
    peer_id: String,
}

impl PeerReporter {
    pub async fn send(&self, request: announce_peer_request::Request) {
        let _ = self
            .tx
            .send(AnnouncePeerRequest {
                host_id: self.host_id.clone(),
                task_id: self.task_id.clone(),
                peer_id: self.peer_id.clone(),
                request: Some(request),
            })
            .await;
    }
}

/// A candidate parent as a piece source (needs its IP and ports).
fn parent_of(p: &dragonfly_api::common::v2::Peer) -> Option<Parent> {
    let h = p.host.as_ref()?;
    Some(Parent {
        id: p.id.clone(),
        ip: h.ip.parse().ok()?,
        grpc_port: u16::try_from(h.port).ok()?,
        vortex_port: u16::try_from(h.download_port).ok()?,
        // Learned from the parent's SyncPieces answers.
        quic_port: None,
        seed: h.r#type != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_map_to_a_stable_scheduler() {
        let addrs: Vec<String> = (1..=3).map(|i| format!("127.0.0.{i}:8002")).collect();
        let c = SchedulerClient::new(&addrs, Host::default()).await.unwrap();
        let a = c.scheduler_for("abcdef0123").unwrap();
        // Only the first five characters matter.
        assert_eq!(c.scheduler_for("abcdeffff").unwrap(), a);
        let used: std::collections::HashSet<_> = (0..200)
            .map(|i| c.scheduler_for(&format!("{i:05x}")).unwrap())
            .collect();
        assert!(used.len() > 1, "tasks should spread over schedulers");
        assert!(SchedulerClient::new(&[], Host::default())
            .await
            .unwrap()
            .scheduler_for("abcde")
            .is_none());
    }
}
