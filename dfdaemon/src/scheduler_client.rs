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
use std::error::Error as _;
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

/// The ring key of a task: its first five characters, as Dragonfly's client hashes it (so
/// our peers and upstream ones meet on the same scheduler).
fn ring_key(task_id: &str) -> String {
    task_id.chars().take(5).collect()
}

/// The scheduler among `addrs` that a task hashes to (what [`SchedulerClient::scheduler_for`]
/// answers with `addrs` in use).
pub fn scheduler_of(addrs: &[SocketAddr], task_id: &str) -> Option<SocketAddr> {
    Ring::of(addrs).ring.get(&ring_key(task_id)).map(|v| v.addr)
}

/// Client of the schedulers: configured (`scheduler.addrs`, names re-resolved), or given by
/// the manager (then replaced when the manager's list changes). Tasks hash over the schedulers
/// that answer their health check; one that stops answering leaves the ring at once and its
/// tasks hash to the others.
pub struct SchedulerClient {
    ring: std::sync::RwLock<Ring>,
    channels: Mutex<HashMap<SocketAddr, Channel>>,
    host: Host,
    /// Mutual TLS to the schedulers (`scheduler.caCert`, `cert`, `key`).
    tls: Option<Arc<common::tls::Tls>>,
    /// `scheduler.addrs` as configured (`host:port`), resolved again by [`Self::refresh`].
    names: Vec<String>,
    /// What each name resolved to last (every address), kept while it does not resolve.
    resolved: Mutex<HashMap<String, Vec<SocketAddr>>>,
    /// Addresses the manager gave ([`Self::set_addrs`]).
    given: Mutex<Vec<SocketAddr>>,
    /// Schedulers whose AnnounceHost failed last time (logged once until they recover).
    failing: Mutex<std::collections::HashSet<SocketAddr>>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// How long a health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

impl SchedulerClient {
    /// A client of the schedulers named by `names` (`host:port`); `host` is what AnnounceHost
    /// sends. Nothing is resolved yet: [`Self::refresh`] does, and a name that does not
    /// resolve leaves this node a mirror until it does.
    pub fn new(names: &[String], host: Host) -> SchedulerClient {
        SchedulerClient {
            ring: std::sync::RwLock::new(Ring::of(&[])),
            channels: Mutex::new(HashMap::new()),
            host,
            tls: None,
            names: names.to_vec(),
            resolved: Mutex::new(HashMap::new()),
            given: Mutex::new(Vec::new()),
            failing: Mutex::new(Default::default()),
            metrics: None,
        }
    }

    /// A client of these schedulers, all in use at once (none: every download goes to the
    /// origin until [`set_addrs`](Self::set_addrs) gives some).
    pub fn with_addrs(addrs: &[SocketAddr], host: Host) -> SchedulerClient {
        let c = Self::new(&[], host);
        c.set_addrs(addrs);
        c
    }

    /// Talks to the schedulers over mutual TLS with `tls`.
    pub fn with_tls(mut self, tls: Option<Arc<common::tls::Tls>>) -> SchedulerClient {
        self.tls = tls;
        self
    }

    /// Counts announce failures and healthy schedulers in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> SchedulerClient {
        self.metrics = Some(metrics);
        self
    }

    /// Uses these schedulers from the manager from now on, instead of the configured ones
    /// (none: the configured ones again); whether the set in use changed. Tasks already on a
    /// scheduler keep their stream; new ones hash over the new set. [`Self::refresh`] drops
    /// those that fail their health check.
    pub fn set_addrs(&self, addrs: &[SocketAddr]) -> bool {
        *lock(&self.given) = addrs.to_vec();
        self.use_ring(&self.candidates())
    }

    /// The manager's schedulers if it gave any, else the configured ones as last resolved.
    fn candidates(&self) -> Vec<SocketAddr> {
        let given = lock(&self.given).clone();
        let mut all = if given.is_empty() {
            lock(&self.resolved).values().flatten().copied().collect()
        } else {
            given
        };
        all.sort();
        all.dedup();
        all
    }

    /// Puts `addrs` on the ring; whether the set changed.
    fn use_ring(&self, addrs: &[SocketAddr]) -> bool {
        let new = Ring::of(addrs);
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        let mut old_sorted = ring.addrs.clone();
        old_sorted.sort();
        let mut new_sorted = new.addrs.clone();
        new_sorted.sort();
        if let Some(m) = &self.metrics {
            m.schedulers_healthy.set(new_sorted.len() as i64);
        }
        if old_sorted == new_sorted {
            return false;
        }
        tracing::info!(schedulers = ?new_sorted, "schedulers in use");
        *ring = new;
        true
    }

    /// Resolves the configured names again (every address of each) and puts on the ring the
    /// schedulers, configured or given, that answer their gRPC health check. A name that does
    /// not resolve keeps its last addresses (a DNS hiccup does not drop a scheduler).
    pub async fn refresh(&self) {
        for name in &self.names {
            match tokio::time::timeout(HEALTH_TIMEOUT, tokio::net::lookup_host(name.as_str())).await
            {
                Ok(Ok(addrs)) => {
                    let mut list: Vec<SocketAddr> = addrs.collect();
                    list.dedup();
                    lock(&self.resolved).insert(name.clone(), list);
                }
                Ok(Err(e)) => {
                    tracing::warn!(scheduler = %name, error = %e, "cannot resolve scheduler address")
                }
                Err(_) => {
                    tracing::warn!(scheduler = %name, "resolving scheduler address timed out")
                }
            }
        }
        let candidates = self.candidates();
        let checks = candidates.iter().map(|a| self.healthy(*a));
        let results = futures_util::future::join_all(checks).await;
        let mut healthy = Vec::new();
        for (addr, ok) in candidates.iter().zip(results) {
            if ok {
                healthy.push(*addr);
            } else {
                // Not announced to while it does not answer: that is an announce failure.
                self.failed(*addr, "no answer to the gRPC health check");
            }
        }
        self.use_ring(&healthy);
    }

    /// Counts a failure to reach `addr`, logged at WARN once until it answers again.
    fn failed(&self, addr: SocketAddr, error: &str) {
        if let Some(m) = &self.metrics {
            m.announce_host_failures.inc();
        }
        if lock(&self.failing).insert(addr) {
            tracing::warn!(scheduler = %addr, error, "AnnounceHost failed");
        } else {
            tracing::debug!(scheduler = %addr, error, "AnnounceHost failed again");
        }
    }

    /// Whether the scheduler at `addr` answers its gRPC health check as serving (one without
    /// a health service counts as up if it answers at all).
    async fn healthy(&self, addr: SocketAddr) -> bool {
        let Ok(channel) = self.channel(addr) else {
            return false;
        };
        let mut c = tonic_health::pb::health_client::HealthClient::new(channel);
        let req = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        match tokio::time::timeout(HEALTH_TIMEOUT, c.check(req)).await {
            Ok(Ok(r)) => {
                r.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            }
            Ok(Err(s)) => s.code() == tonic::Code::Unimplemented,
            Err(_) => false,
        }
    }

    /// Takes `addr` off the ring until it passes a health check again (it refused a
    /// connection).
    pub fn mark_down(&self, addr: SocketAddr) {
        let current = self.addrs();
        if !current.contains(&addr) {
            return;
        }
        tracing::warn!(scheduler = %addr, "scheduler unreachable; its tasks go to the others");
        let rest: Vec<SocketAddr> = current.into_iter().filter(|a| *a != addr).collect();
        self.use_ring(&rest);
        lock(&self.channels).remove(&addr);
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
        self.ring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .ring
            .get(&ring_key(task_id))
            .map(|v| v.addr)
    }

    fn channel(&self, addr: SocketAddr) -> Result<Channel, SchedulerError> {
        let mut channels = lock(&self.channels);
        if let Some(c) = channels.get(&addr) {
            return Ok(c.clone());
        }
        let channel = common::tls::endpoint(&addr.to_string(), self.tls.as_deref(), "scheduler")
            .map_err(|message| SchedulerError::Unavailable { addr, message })?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_lazy();
        channels.insert(addr, channel.clone());
        Ok(channel)
    }

    fn client(&self, addr: SocketAddr) -> Result<GrpcClient<Channel>, SchedulerError> {
        Ok(GrpcClient::new(self.channel(addr)?))
    }

    /// Announces this host to every scheduler in use; returns how many accepted it. A
    /// failure is counted, and logged at WARN once until that scheduler accepts again.
    pub async fn announce_host(&self, interval: Duration) -> usize {
        let mut ok = 0;
        for addr in &self.addrs() {
            let result = match self.client(*addr) {
                Ok(mut c) => {
                    let req = AnnounceHostRequest {
                        host: Some(self.host.clone()),
                        interval: prost_wkt_types::Duration::try_from(interval).ok(),
                    };
                    c.announce_host(req)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(()) => {
                    ok += 1;
                    if lock(&self.failing).remove(addr) {
                        tracing::info!(scheduler = %addr, "AnnounceHost accepted again");
                    }
                }
                Err(e) => self.failed(*addr, &e),
            }
        }
        ok
    }

    /// Keeps the schedulers in use current: every `every`, names re-resolved, health checked,
    /// the host announced.
    pub async fn run(self: Arc<Self>, every: Duration) {
        loop {
            self.refresh().await;
            self.announce_host(every).await;
            tokio::time::sleep(every).await;
        }
    }

    /// Opens the AnnouncePeer stream for a download and registers the peer, on the scheduler
    /// the task hashes to. A scheduler that cannot be reached leaves the ring and the task
    /// goes to the next one (so a dead scheduler sends no download to the origin while
    /// another answers).
    pub async fn register_peer(
        &self,
        task_id: &str,
        peer_id: &str,
        download: Download,
    ) -> Result<PeerSession, SchedulerError> {
        let mut last = SchedulerError::NoScheduler;
        for _ in 0..self.addrs().len().max(1) {
            let Some(addr) = self.scheduler_for(task_id) else {
                return Err(last);
            };
            match self
                .register_on(addr, task_id, peer_id, download.clone())
                .await
            {
                Ok(s) => return Ok(s),
                Err(e @ SchedulerError::Unavailable { .. }) => {
                    self.mark_down(addr);
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn register_on(
        &self,
        addr: SocketAddr,
        task_id: &str,
        peer_id: &str,
        download: Download,
    ) -> Result<PeerSession, SchedulerError> {
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
            .map_err(|s| {
                // The connection failed (refused, reset, TLS): the scheduler is not there.
                if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
                    && s.source().is_some()
                {
                    SchedulerError::Unavailable {
                        addr,
                        message: s.to_string(),
                    }
                } else {
                    SchedulerError::Status {
                        addr,
                        status: Box::new(s),
                    }
                }
            })?;
        Ok(PeerSession {
            rx: Some(resp.into_inner()),
            ..session
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        let addrs: Vec<SocketAddr> = (1..=3)
            .map(|i| format!("127.0.0.{i}:8002").parse().unwrap())
            .collect();
        let c = SchedulerClient::with_addrs(&addrs, Host::default());
        let a = c.scheduler_for("abcdef0123").unwrap();
        // Only the first five characters matter.
        assert_eq!(c.scheduler_for("abcdeffff").unwrap(), a);
        let used: std::collections::HashSet<_> = (0..200)
            .map(|i| c.scheduler_for(&format!("{i:05x}")).unwrap())
            .collect();
        assert!(used.len() > 1, "tasks should spread over schedulers");
        // A scheduler marked down takes none of them; the others keep theirs.
        c.mark_down(a);
        let b = c.scheduler_for("abcdef0123").unwrap();
        assert_ne!(b, a);
        assert!((0..200).all(|i| c.scheduler_for(&format!("{i:05x}")) != Some(a)));
        assert!(SchedulerClient::new(&[], Host::default())
            .scheduler_for("abcde")
            .is_none());
    }

    #[tokio::test]
    async fn names_that_do_not_resolve_or_answer_leave_no_scheduler_in_use() {
        // Nothing listens on port 1; `.invalid` never resolves (RFC 6761).
        let c = SchedulerClient::new(
            &[
                "127.0.0.1:1".to_string(),
                "scheduler.invalid:8002".to_string(),
            ],
            Host::default(),
        );
        c.refresh().await;
        assert!(c.addrs().is_empty());
        assert!(c.scheduler_for("abcde").is_none());
    }
}
