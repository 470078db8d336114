//! The gRPC shell of the scheduler: `scheduler.v2.Scheduler` over the sans-IO
//! core. It converts wire messages, waits where the core says to retry, calls
//! seed peers it is told to trigger, and keeps the announced host records
//! (addresses and ports) that candidate parents are described with.

use crate::metrics::TypeLabels;
use crate::{
    FailReason, HostId, HostInfo, HostType, PeerId, PieceFinished, RegisterDecision, RegisterPeer,
    ScheduleDecision, Scheduler, SchedulerError, TaskId, TaskInfo,
};
use dragonfly_api::common::v2::{Download, Host, Peer};
use dragonfly_api::dfdaemon::v2::dfdaemon_upload_client::DfdaemonUploadClient;
use dragonfly_api::dfdaemon::v2::DownloadTaskRequest;
use dragonfly_api::scheduler::v2;
use dragonfly_api::scheduler::v2::announce_peer_request::Request as Req;
use dragonfly_api::scheduler::v2::announce_peer_response::Response as Resp;
use dragonfly_api::scheduler::v2::scheduler_server::{Scheduler as SchedulerApi, SchedulerServer};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

type AnnounceSender = tokio::sync::mpsc::Sender<Result<v2::AnnouncePeerResponse, Status>>;

struct Inner {
    core: Scheduler,
    /// Each registered peer's AnnouncePeer response stream (to push added parents).
    streams: HashMap<PeerId, AnnounceSender>,
    /// Announced hosts as sent (addresses, ports, load), by host ID.
    hosts: HashMap<String, Host>,
    rng: StdRng,
}

/// The scheduler service.
#[derive(Clone)]
pub struct SchedulerService {
    inner: Arc<Mutex<Inner>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Mutual TLS to seed peers when triggering them (`seedPeer.tls`).
    seed_tls: Option<Arc<common::tls::Tls>>,
}

fn status(e: SchedulerError) -> Status {
    match e {
        SchedulerError::HostNotFound(_)
        | SchedulerError::TaskNotFound(_)
        | SchedulerError::PeerNotFound(_) => Status::not_found(e.to_string()),
        _ => Status::failed_precondition(e.to_string()),
    }
}

fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not supported by this scheduler"))
}

impl SchedulerService {
    /// A service over a scheduling core.
    pub fn new(core: Scheduler) -> SchedulerService {
        SchedulerService {
            inner: Arc::new(Mutex::new(Inner {
                core,
                streams: HashMap::new(),
                hosts: HashMap::new(),
                rng: StdRng::from_os_rng(),
            })),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            seed_tls: None,
        }
    }

    /// Triggers seed peers over mutual TLS with `tls` (`seedPeer.tls`).
    pub fn with_seed_tls(mut self, tls: Option<Arc<common::tls::Tls>>) -> SchedulerService {
        self.seed_tls = tls;
        self
    }

    /// The metrics in Prometheus' text format, the host, task and peer counts read now.
    pub fn render_metrics(&self) -> String {
        use crate::metrics::{StateLabels, TypeLabels};
        let m = &self.metrics;
        {
            let inner = self.lock();
            let seeds = inner.core.seed_host_count() as i64;
            let all = inner.core.hosts().count() as i64;
            m.hosts
                .get_or_create(&TypeLabels { r#type: "seed" })
                .set(seeds);
            m.hosts
                .get_or_create(&TypeLabels { r#type: "normal" })
                .set(all - seeds);
            m.tasks.set(inner.core.tasks().count() as i64);
            let mut by_state: HashMap<String, i64> = HashMap::new();
            for p in inner.core.peers() {
                *by_state.entry(p.state().as_str().to_string()).or_default() += 1;
            }
            m.peers.clear();
            for (state, n) in by_state {
                m.peers.get_or_create(&StateLabels { state }).set(n);
            }
            m.host_upload_utilization.clear();
            m.host_upload_peers.clear();
            for h in inner.core.hosts() {
                let labels = crate::metrics::HostLabels {
                    host_id: h.id().to_string(),
                };
                // The host's own measurement, not the scheduler's estimate with reservations.
                let used = if h.max_tx_bandwidth > 0 {
                    h.tx_bandwidth as f64 / h.max_tx_bandwidth as f64
                } else {
                    0.0
                };
                m.host_upload_utilization.get_or_create(&labels).set(used);
                m.host_upload_peers
                    .get_or_create(&labels)
                    .set(i64::from(h.concurrent_upload_count()));
            }
        }
        m.render()
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> SchedulerServer<Self> {
        SchedulerServer::new(self)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hosts announced (as they sent themselves), in no order.
    pub fn announced_hosts(&self) -> Vec<Host> {
        self.lock().hosts.values().cloned().collect()
    }

    /// The seed peer host the hash ring gives `task_id` (the one triggered for that task).
    pub fn seed_host_for(&self, task_id: &str) -> Option<crate::HostId> {
        self.lock().core.seed_host_for(task_id)
    }

    /// Applies a cluster's settings from the manager (logged when something changes).
    pub fn apply_cluster_config(&self, c: &crate::config::ClusterConfig) {
        let changed = self.lock().core.apply_cluster_config(c);
        if !changed.is_empty() {
            tracing::info!(?changed, config = ?c, "cluster config from the manager applied");
        }
    }

    /// Runs a GC pass of the core (the caller's timer decides when).
    pub fn collect_garbage(&self) {
        let now = SystemTime::now();
        let mut inner = self.lock();
        let decisions = inner.core.collect_garbage(now);
        if let Err(e) = inner.core.apply_gc(&decisions, now) {
            tracing::warn!(error = %e, "gc");
        }
        for h in &decisions.hosts {
            inner.hosts.remove(h.as_str());
        }
    }

    /// A candidate parent as the wire `Peer`, with its host's addresses.
    fn peer_message(inner: &Inner, id: &PeerId) -> Option<Peer> {
        let p = inner.core.peer(id)?;
        let host = inner.hosts.get(p.host_id().as_str())?.clone();
        Some(Peer {
            id: id.to_string(),
            state: p.state().as_str().to_string(),
            host: Some(host),
            ..Default::default()
        })
    }

    /// Turns a decision into the answer, waiting and retrying while the core
    /// says to; `None` when the stream must end with an error.
    async fn settle(
        &self,
        peer: &PeerId,
        mut decision: ScheduleDecision,
    ) -> Result<AnnounceAnswer, Status> {
        loop {
            match decision {
                ScheduleDecision::RetryLater(d) => {
                    tokio::time::sleep(d).await;
                    let mut inner = self.lock();
                    let inner = &mut *inner;
                    decision = inner
                        .core
                        .schedule_candidate_parents(peer, SystemTime::now(), &mut inner.rng)
                        .map_err(status)?;
                }
                ScheduleDecision::Parents(ids) => {
                    bump(&self.metrics.schedule, "parents");
                    let inner = self.lock();
                    let parents: Vec<Peer> = ids
                        .iter()
                        .filter_map(|id| Self::peer_message(&inner, id))
                        .collect();
                    return Ok(AnnounceAnswer::Respond(Resp::NormalTaskResponse(
                        v2::NormalTaskResponse {
                            candidate_parents: parents,
                        },
                    )));
                }
                ScheduleDecision::NeedBackToSource(reason) => {
                    bump(&self.metrics.schedule, "back_to_source");
                    return Ok(AnnounceAnswer::Respond(Resp::NeedBackToSourceResponse(
                        v2::NeedBackToSourceResponse {
                            description: Some(format!("{reason:?}")),
                        },
                    )));
                }
                ScheduleDecision::Fail(reason) => {
                    bump(&self.metrics.schedule, "fail");
                    return Err(fail_status(reason));
                }
            }
        }
    }

    /// `peer` started downloading, so it may now serve its task's other peers: give them
    /// more parents (they keep theirs) and push each a `NormalTaskResponse` with the ones
    /// added. Peers that read only their first response ignore it.
    fn top_up(inner: &mut Inner, peer: &PeerId) {
        let Some(task) = inner.core.peer(peer).map(|p| p.task_id().clone()) else {
            return;
        };
        let added = match inner.core.top_up_parents(&task, Some(peer), &mut inner.rng) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(task_id = %task, error = %e, "adding parents failed");
                return;
            }
        };
        for (child, parents) in added {
            let Some(tx) = inner.streams.get(&child) else {
                continue;
            };
            let candidate_parents: Vec<Peer> = parents
                .iter()
                .filter_map(|id| Self::peer_message(inner, id))
                .collect();
            let r = v2::AnnouncePeerResponse {
                response: Some(Resp::NormalTaskResponse(v2::NormalTaskResponse {
                    candidate_parents,
                })),
            };
            // A full or closed stream only means the child does not learn of these.
            let _ = tx.try_send(Ok(r));
        }
    }

    /// Calls `DfdaemonUpload.DownloadTask` on a seed peer (in the background).
    fn trigger_seed(&self, seed_host: HostId, seed_peer: PeerId, download: Download) {
        let addr = self.lock().hosts.get(seed_host.as_str()).and_then(|h| {
            let port = u16::try_from(h.port).ok()?;
            Some(match h.ip.parse::<std::net::IpAddr>() {
                Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
                Err(_) => format!("{}:{port}", h.ip),
            })
        });
        let this = self.clone();
        bump(&self.metrics.seed_trigger, "started");
        tokio::spawn(async move {
            let result = async {
                let addr = addr.ok_or_else(|| "seed host has no address".to_string())?;
                let channel =
                    common::tls::endpoint(&addr, this.seed_tls.as_deref(), "seedPeer.tls")?
                        .connect()
                        .await
                        .map_err(|e| format!("{addr}: {e}"))?;
                let mut c = DfdaemonUploadClient::new(channel);
                let mut d = download;
                d.need_back_to_source = true;
                d.output_path = None;
                let mut s = c
                    .download_task(DownloadTaskRequest { download: Some(d) })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                while s.message().await.map_err(|e| e.to_string())?.is_some() {}
                Ok::<(), String>(())
            }
            .await;
            if let Err(e) = result {
                bump(&this.metrics.seed_trigger, "failed");
                tracing::warn!(seed = %seed_host, error = %e, "seed peer trigger failed");
                let _ = this
                    .lock()
                    .core
                    .seed_trigger_failed(&seed_peer, SystemTime::now());
            }
        });
    }

    /// Handles one AnnouncePeer stream.
    async fn announce_loop(self, requests: Streaming<v2::AnnouncePeerRequest>, tx: AnnounceSender) {
        let mut peer = None;
        self.announce_requests(requests, tx, &mut peer).await;
        if let Some(id) = peer {
            self.lock().streams.remove(&id);
        }
    }

    /// The requests of one AnnouncePeer stream; `peer` is set once it registers.
    async fn announce_requests(
        &self,
        mut requests: Streaming<v2::AnnouncePeerRequest>,
        tx: AnnounceSender,
        peer: &mut Option<PeerId>,
    ) {
        let send = |r: Resp| v2::AnnouncePeerResponse { response: Some(r) };
        while let Ok(Some(msg)) = requests.message().await {
            let Some(request) = msg.request else {
                let _ = tx
                    .send(Err(Status::invalid_argument("request is empty")))
                    .await;
                return;
            };
            let now = SystemTime::now();
            let answer = match (request, &*peer) {
                (Req::RegisterPeerRequest(r), None) => {
                    match self
                        .register(&msg.host_id, &msg.task_id, &msg.peer_id, r)
                        .await
                    {
                        Ok((id, a)) => {
                            self.lock().streams.insert(id.clone(), tx.clone());
                            *peer = Some(id);
                            Ok(a)
                        }
                        Err(s) => Err(s),
                    }
                }
                (Req::RegisterPeerRequest(_), Some(_)) => Err(Status::failed_precondition(
                    "the peer is already registered on this stream",
                )),
                (_, None) => Err(Status::failed_precondition(
                    "the first request on an AnnouncePeer stream must be RegisterPeerRequest",
                )),
                (other, Some(id)) => self.report(id, other, now).await,
            };
            match answer {
                Ok(AnnounceAnswer::Respond(r)) => {
                    if tx.send(Ok(send(r))).await.is_err() {
                        return;
                    }
                }
                Ok(AnnounceAnswer::Nothing) => {}
                Err(s) => {
                    let _ = tx.send(Err(s)).await;
                    return;
                }
            }
        }
    }

    async fn register(
        &self,
        host_id: &str,
        task_id: &str,
        peer_id: &str,
        r: v2::RegisterPeerRequest,
    ) -> Result<(PeerId, AnnounceAnswer), Status> {
        let download = r.download.ok_or_else(|| {
            Status::invalid_argument("register_peer_request.download is required")
        })?;
        let mut reg = RegisterPeer::new(peer_id, task_id, host_id);
        reg.need_back_to_source = download.need_back_to_source;
        reg.concurrent_piece_count = download.concurrent_piece_count;
        reg.task = TaskInfo {
            content_length: download.actual_content_length,
            piece_length: download.actual_piece_length.or(download.piece_length),
            total_pieces: download
                .actual_piece_count
                .and_then(|n| u32::try_from(n).ok()),
        };
        let registration = {
            let mut inner = self.lock();
            let inner = &mut *inner;
            inner
                .core
                .register_peer(reg, SystemTime::now(), &mut inner.rng)
                .map_err(|e| {
                    self.metrics.register_peer_failure.inc();
                    status(e)
                })?
        };
        self.metrics.register_peer.inc();
        if let Some(t) = registration.seed_trigger.clone() {
            self.trigger_seed(t.seed_host_id, t.seed_peer_id, download);
        }
        let id = registration.peer_id.clone();
        let answer = match registration.decision {
            RegisterDecision::Empty => {
                AnnounceAnswer::Respond(Resp::EmptyTaskResponse(v2::EmptyTaskResponse {}))
            }
            RegisterDecision::MetadataOnly => {
                AnnounceAnswer::Respond(Resp::MetadataOnlyResponse(v2::MetadataOnlyResponse {}))
            }
            RegisterDecision::Schedule(d) => self.settle(&id, d).await?,
        };
        Ok((id, answer))
    }

    async fn report(&self, id: &PeerId, r: Req, now: SystemTime) -> Result<AnnounceAnswer, Status> {
        let piece = |p: Option<dragonfly_api::common::v2::Piece>| -> Result<PieceFinished, Status> {
            let p = p.ok_or_else(|| Status::invalid_argument("piece is required"))?;
            Ok(PieceFinished {
                number: p.number,
                cost: p
                    .cost
                    .and_then(|c| Duration::try_from(c).ok())
                    .unwrap_or_default(),
            })
        };
        let m = &self.metrics;
        match &r {
            Req::DownloadPeerStartedRequest(_) => bump(&m.download_peer_started, "p2p"),
            Req::DownloadPeerBackToSourceStartedRequest(_) => {
                bump(&m.download_peer_started, "back_to_source")
            }
            Req::DownloadPeerFinishedRequest(_) => bump(&m.download_peer_finished, "p2p"),
            Req::DownloadPeerBackToSourceFinishedRequest(_) => {
                bump(&m.download_peer_finished, "back_to_source")
            }
            Req::DownloadPeerFailedRequest(_) => bump(&m.download_peer_failure, "p2p"),
            Req::DownloadPeerBackToSourceFailedRequest(_) => {
                bump(&m.download_peer_failure, "back_to_source")
            }
            Req::DownloadPieceFinishedRequest(_) => bump(&m.download_piece_finished, "p2p"),
            Req::DownloadPieceBackToSourceFinishedRequest(_) => {
                bump(&m.download_piece_finished, "back_to_source")
            }
            Req::DownloadPieceFailedRequest(_) => {
                m.download_piece_failure.inc();
            }
            _ => {}
        }
        let result: Result<Option<ScheduleDecision>, SchedulerError> = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            let core = &mut inner.core;
            match r {
                Req::DownloadPeerStartedRequest(_) => core
                    .download_peer_started(id, now)
                    .map(|_| Self::top_up(inner, id))
                    .map(|_| None),
                Req::DownloadPeerBackToSourceStartedRequest(_) => core
                    .download_peer_back_to_source_started(id, now)
                    .map(|_| Self::top_up(inner, id))
                    .map(|_| None),
                Req::DownloadPeerFinishedRequest(_) => {
                    core.download_peer_finished(id, now).map(|_| None)
                }
                Req::DownloadPeerBackToSourceFinishedRequest(_) => core
                    .download_peer_back_to_source_finished(id, TaskInfo::default(), now)
                    .map(|_| None),
                Req::DownloadPeerFailedRequest(_) => {
                    core.download_peer_failed(id, now).map(|_| None)
                }
                Req::DownloadPeerBackToSourceFailedRequest(_) => core
                    .download_peer_back_to_source_failed(id, now)
                    .map(|_| None),
                Req::DownloadPieceFinishedRequest(p) => core
                    .download_piece_finished(id, piece(p.piece)?, now)
                    .map(|_| None),
                Req::DownloadPieceBackToSourceFinishedRequest(p) => core
                    .download_piece_finished(id, piece(p.piece)?, now)
                    .map(|_| None),
                Req::DownloadPieceFailedRequest(p) => {
                    tracing::info!(peer_id = %id, parent_id = %p.parent_id, piece = ?p.piece_number,
                        temporary = p.temporary, "peer reported a failing parent; not given to it again");
                    let parent = PeerId::from(p.parent_id.clone());
                    core.download_piece_failed(id, Some(&parent), now)
                        .map(|_| None)
                }
                Req::DownloadPieceBackToSourceFailedRequest(_) | Req::RegisterPeerRequest(_) => {
                    Ok(None)
                }
                Req::ReschedulePeerRequest(r) => {
                    let blocked: Vec<PeerId> = r
                        .candidate_parents
                        .iter()
                        .map(|p| PeerId::from(p.id.clone()))
                        .collect();
                    core.reschedule_peer(id, &blocked, now, &mut inner.rng)
                        .map(Some)
                }
            }
        };
        match result.map_err(status)? {
            Some(d) => self.settle(id, d).await,
            None => Ok(AnnounceAnswer::Nothing),
        }
    }
}

enum AnnounceAnswer {
    Respond(Resp),
    Nothing,
}

/// Counts one event of kind `t`.
fn bump(
    family: &prometheus_client::metrics::family::Family<
        TypeLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    t: &'static str,
) {
    family.get_or_create(&TypeLabels { r#type: t }).inc();
}

fn fail_status(reason: FailReason) -> Status {
    Status::failed_precondition(format!("scheduling failed: {reason:?}"))
}

fn host_info(h: &Host) -> HostInfo {
    let net = h.network.clone().unwrap_or_default();
    HostInfo {
        id: HostId::from(h.id.clone()),
        host_type: HostType::from_wire(h.r#type).unwrap_or(HostType::Normal),
        disable_shared: h.disable_shared,
        concurrent_upload_limit: None,
        idc: net.idc.unwrap_or_default(),
        location: net.location.unwrap_or_default(),
        max_tx_bandwidth: net.max_tx_bandwidth,
        tx_bandwidth: net.tx_bandwidth.unwrap_or(0),
    }
}

#[tonic::async_trait]
impl SchedulerApi for SchedulerService {
    type AnnouncePeerStream = ResponseStream<v2::AnnouncePeerResponse>;

    async fn announce_peer(
        &self,
        request: Request<Streaming<v2::AnnouncePeerRequest>>,
    ) -> Result<Response<Self::AnnouncePeerStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(self.clone().announce_loop(request.into_inner(), tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn stat_peer(&self, r: Request<v2::StatPeerRequest>) -> Result<Response<Peer>, Status> {
        let id = PeerId::from(r.into_inner().peer_id);
        let inner = self.lock();
        Self::peer_message(&inner, &id)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("peer {id} not found")))
    }

    async fn delete_peer(&self, r: Request<v2::DeletePeerRequest>) -> Result<Response<()>, Status> {
        let id = PeerId::from(r.into_inner().peer_id);
        self.lock()
            .core
            .leave_peer(&id, SystemTime::now())
            .map_err(status)?;
        Ok(Response::new(()))
    }

    async fn stat_task(
        &self,
        r: Request<v2::StatTaskRequest>,
    ) -> Result<Response<dragonfly_api::common::v2::Task>, Status> {
        let id = TaskId::from(r.into_inner().task_id);
        let inner = self.lock();
        let t = inner
            .core
            .task(&id)
            .ok_or_else(|| Status::not_found(format!("task {id} not found")))?;
        Ok(Response::new(dragonfly_api::common::v2::Task {
            id: id.to_string(),
            content_length: t.content_length().unwrap_or(0),
            piece_count: t.total_pieces().unwrap_or(0),
            state: t.state().as_str().to_string(),
            peer_count: inner.core.peers().filter(|p| p.task_id() == &id).count() as u32,
            ..Default::default()
        }))
    }

    async fn delete_task(&self, r: Request<v2::DeleteTaskRequest>) -> Result<Response<()>, Status> {
        let id = TaskId::from(r.into_inner().task_id);
        self.lock()
            .core
            .remove_task(&id, SystemTime::now())
            .map_err(status)?;
        Ok(Response::new(()))
    }

    async fn announce_host(
        &self,
        r: Request<v2::AnnounceHostRequest>,
    ) -> Result<Response<()>, Status> {
        let host = r
            .into_inner()
            .host
            .ok_or_else(|| Status::invalid_argument("host is required"))?;
        if host.id.is_empty() || host.ip.parse::<std::net::IpAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "host needs an id and an IP address (got id {:?}, ip {:?})",
                host.id, host.ip
            )));
        }
        self.metrics.announce_host.inc();
        let mut inner = self.lock();
        inner
            .core
            .announce_host(host_info(&host), SystemTime::now());
        inner.hosts.insert(host.id.clone(), host);
        Ok(Response::new(()))
    }

    async fn list_hosts(
        &self,
        _r: Request<v2::ListHostsRequest>,
    ) -> Result<Response<v2::ListHostsResponse>, Status> {
        let hosts = self.lock().hosts.values().cloned().collect();
        Ok(Response::new(v2::ListHostsResponse { hosts }))
    }

    async fn delete_host(&self, r: Request<v2::DeleteHostRequest>) -> Result<Response<()>, Status> {
        let id = HostId::from(r.into_inner().host_id);
        let mut inner = self.lock();
        inner
            .core
            .remove_host(&id, SystemTime::now())
            .map_err(status)?;
        inner.hosts.remove(id.as_str());
        Ok(Response::new(()))
    }

    type AnnounceCachePeerStream = ResponseStream<v2::AnnounceCachePeerResponse>;
    type AnnouncePersistentPeerStream = ResponseStream<v2::AnnouncePersistentPeerResponse>;
    type AnnouncePersistentCachePeerStream =
        ResponseStream<v2::AnnouncePersistentCachePeerResponse>;
    async fn announce_cache_peer(
        &self,
        _r: tonic::Request<tonic::Streaming<v2::AnnounceCachePeerRequest>>,
    ) -> Result<tonic::Response<Self::AnnounceCachePeerStream>, Status> {
        Err(unsupported("announce_cache_peer"))
    }
    async fn stat_cache_peer(
        &self,
        _r: tonic::Request<v2::StatCachePeerRequest>,
    ) -> Result<tonic::Response<dragonfly_api::common::v2::CachePeer>, Status> {
        Err(unsupported("stat_cache_peer"))
    }
    async fn delete_cache_peer(
        &self,
        _r: tonic::Request<v2::DeleteCachePeerRequest>,
    ) -> Result<tonic::Response<()>, Status> {
        Err(unsupported("delete_cache_peer"))
    }
    async fn stat_cache_task(
        &self,
        _r: tonic::Request<v2::StatCacheTaskRequest>,
    ) -> Result<tonic::Response<dragonfly_api::common::v2::CacheTask>, Status> {
        Err(unsupported("stat_cache_task"))
    }
    async fn delete_cache_task(
        &self,
        _r: tonic::Request<v2::DeleteCacheTaskRequest>,
    ) -> Result<tonic::Response<()>, Status> {
        Err(unsupported("delete_cache_task"))
    }
    async fn announce_persistent_peer(
        &self,
        _r: tonic::Request<tonic::Streaming<v2::AnnouncePersistentPeerRequest>>,
    ) -> Result<tonic::Response<Self::AnnouncePersistentPeerStream>, Status> {
        Err(unsupported("announce_persistent_peer"))
    }
    async fn stat_persistent_peer(
        &self,
        _r: tonic::Request<v2::StatPersistentPeerRequest>,
    ) -> Result<tonic::Response<dragonfly_api::common::v2::PersistentPeer>, Status> {
        Err(unsupported("stat_persistent_peer"))
    }
    async fn delete_persistent_peer(
        &self,
        _r: tonic::Request<v2::DeletePersistentPeerRequest>,
    ) -> Result<tonic::Response<()>, Status> {
        Err(unsupported("delete_persistent_peer"))
    }
    async fn upload_persistent_task_started(
        &self,
        _r: tonic::Request<v2::UploadPersistentTaskStartedRequest>,
    ) -> Result<tonic::Response<()>, Status> {
        Err(unsupported("upload_persistent_task_started"))
    }
    async fn upload_persistent_task_finished(
        &self,
        _r: tonic::Request<v2::UploadPersistentTaskFinishedRequest>,
    ) -> Result<tonic::Response<dragonfly_api::common::v2::PersistentTask>, Status> {
        Err(unsupported("upload_persistent_task_finished"))
    }
    async fn upload_persistent_task_failed(
        &self,
        _r: tonic::Request<v2::UploadPersistentTaskFailedRequest>,
    ) -> Result<tonic::Response<()>, Status> {
        Err(unsupported("upload_persistent_task_failed"))
    }
    async fn stat_persistent_task(
        &self,
        _r: tonic::Request<v2::StatPersistentTaskRequest>,
    ) -> Result<tonic::Response<dragonfly_api::common::v2::PersistentTask>, Status> {
        Err(unsupported("stat_persistent_task"))
    }
    async fn delete_persistent_task(
        &self,
        _r: tonic::Request<v2::DeletePersistentTaskRequest>,
    ) -> Result<tonic::Response<()>, Status> {
        Err(unsupported("delete_persistent_task"))
    }
    async fn announce_persistent_cache_peer(
        &self,
        _r: tonic::Request<tonic::Streaming<v2::AnnouncePersistentCachePeerRequest>>,
    ) -> Result<tonic::Response<Self::AnnouncePersistentCachePeerStream>, Status> {
        Err(unsupported("announce_persistent_cache_peer"))
    }
    async fn stat_persistent_cache_peer(
        &self,
        _r: tonic::Request<v2::StatPersistentCachePeerRequest>,
    ) -> Result<tonic::Response<dragonfly_api::common::v2::PersistentCachePeer>, Status> {
        Err(unsupported("stat_persistent_cache_peer"))
    }
    async fn delete_persistent_cache_peer(
        &self,
        _r: tonic::Request<v2::DeletePersistentCachePeerRequest>,
    ) -> Result<tonic::Response<()>, Status> {
        Err(unsupported("delete_persistent_cache_peer"))
    }
    async fn upload_persistent_cache_task_started(
        &self,
        _r: tonic::Request<v2::UploadPersistentCacheTaskStartedRequest>,
    ) -> Result<tonic::Response<()>, Status> {
        Err(unsupported("upload_persistent_cache_task_started"))
    }
    async fn upload_persistent_cache_task_finished(
        &self,
        _r: tonic::Request<v2::UploadPersistentCacheTaskFinishedRequest>,
    ) -> Result<tonic::Response<dragonfly_api::common::v2::PersistentCacheTask>, Status> {
        Err(unsupported("upload_persistent_cache_task_finished"))
    }
    async fn upload_persistent_cache_task_failed(
        &self,
        _r: tonic::Request<v2::UploadPersistentCacheTaskFailedRequest>,
    ) -> Result<tonic::Response<()>, Status> {
        Err(unsupported("upload_persistent_cache_task_failed"))
    }
    async fn stat_persistent_cache_task(
        &self,
        _r: tonic::Request<v2::StatPersistentCacheTaskRequest>,
    ) -> Result<tonic::Response<dragonfly_api::common::v2::PersistentCacheTask>, Status> {
        Err(unsupported("stat_persistent_cache_task"))
    }
    async fn delete_persistent_cache_task(
        &self,
        _r: tonic::Request<v2::DeletePersistentCacheTaskRequest>,
    ) -> Result<tonic::Response<()>, Status> {
        Err(unsupported("delete_persistent_cache_task"))
    }
    async fn preheat_image(
        &self,
        _r: tonic::Request<v2::PreheatImageRequest>,
    ) -> Result<tonic::Response<()>, Status> {
        Err(unsupported("preheat_image"))
    }
    async fn stat_image(
        &self,
        _r: tonic::Request<v2::StatImageRequest>,
    ) -> Result<tonic::Response<v2::StatImageResponse>, Status> {
        Err(unsupported("stat_image"))
    }
    async fn preheat_file(
        &self,
        _r: tonic::Request<v2::PreheatFileRequest>,
    ) -> Result<tonic::Response<()>, Status> {
        Err(unsupported("preheat_file"))
    }
    async fn stat_file(
        &self,
        _r: tonic::Request<v2::StatFileRequest>,
    ) -> Result<tonic::Response<v2::StatFileResponse>, Status> {
        Err(unsupported("stat_file"))
    }
}
