//! Back-to-source engine: one download per task (single flight), content
//! length from a ranged probe, concurrent ranged piece GETs with retries,
//! pieces streamed to the store as they land, digest verified before a task
//! is marked complete.

use crate::backend::{error_chain, parse_content_range, Backend, MAX_ERROR_BODY};
use crate::lazy::plan::retry_after;
use crate::metrics::{Metrics, TrafficLabels};
use crate::storage::{now_millis, FailureKind, PieceMeta, Store, Task, TaskMeta, TaskStatus};
use crate::transport::{store_body, Network, Source, Transport, TransportError};
use bytes::{Bytes, BytesMut};
use common::id::BlobDigest;
use common::piece::{piece_length_for, piece_range};
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use sha2::Digest;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Bytes buffered before one write to the content file.
const WRITE_CHUNK: usize = 1024 * 1024;

/// What to download.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    pub task_id: String,
    pub url: String,
    /// Headers sent to the origin (e.g. registry `Authorization`).
    pub headers: HeaderMap,
    /// Answers the origin's `401` challenges (requests dfdaemon makes on its own behalf: the
    /// lazy-loading runtime's blob reads; never a proxied client's).
    pub auth: Option<Arc<crate::registry_auth::RegistryAuth>>,
    /// Expected content digest; the task completes only if the content matches.
    pub digest: Option<BlobDigest>,
    /// A user-chosen piece length (else Dragonfly's rule).
    pub piece_length: Option<u64>,
    /// Peers that may have the task; tried before the origin.
    pub parents: Vec<crate::parent::Parent>,
    /// Fail instead of going to the origin when the parents cannot provide everything.
    pub disable_back_to_source: bool,
    /// Go to the origin even if a scheduler could offer parents (seed peers).
    pub need_back_to_source: bool,
    /// Where failed pieces from parents are reported (the scheduler's
    /// AnnouncePeer stream), so the scheduler stops handing out that parent.
    pub reporter: Option<crate::scheduler_client::PeerReporter>,
    /// Every parent the scheduler has given so far, updated while the
    /// download runs (more parents join as they start downloading).
    pub parent_updates: Option<watch::Receiver<Vec<crate::parent::Parent>>>,
}

/// An origin reply that is passed back to the client and not cached.
#[derive(Debug, Clone)]
pub struct OriginReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How a download started.
pub enum Started {
    /// The task is stored (or being stored): read it from the store.
    Stored { task: Arc<Task>, cached: bool },
    /// The origin answered with an error: pass it through.
    Origin(OriginReply),
    /// The origin's answer cannot be cached (no length, or an encoding);
    /// `Some` hands the live response to the first caller, `None` tells a
    /// joining caller to fetch it directly.
    NotCacheable(Option<reqwest::Response>),
}

/// Errors of a download, typed up to the fronts (gRPC codes, HTTP statuses): see
/// [`DownloadError::kind`].
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The origin could not be reached or refused the range (after retries).
    #[error("origin {url}: {message}")]
    Origin { url: String, message: String },
    #[error(transparent)]
    Store(#[from] crate::storage::StoreError),
    /// The content does not match the digest it was asked with; nothing was kept.
    #[error("download of task {task_id} failed: digest mismatch: {reason}")]
    DigestMismatch { task_id: String, reason: String },
    /// Neither the parents nor (back-to-source disabled) the origin can provide the task.
    #[error("download of task {task_id} failed: {reason}")]
    NoSource { task_id: String, reason: String },
    /// A transfer broke off (the origin stalled, sent too many or too few bytes).
    #[error("download of task {task_id} failed: {reason}")]
    Failed { task_id: String, reason: String },
    /// A local failure (a worker died).
    #[error("download of task {task_id} failed: {reason}")]
    Internal { task_id: String, reason: String },
}

impl DownloadError {
    /// What kind of failure this is, for the fronts and for readers that joined the download.
    pub fn kind(&self) -> FailureKind {
        match self {
            DownloadError::Store(e) => e.kind(),
            DownloadError::DigestMismatch { .. } => FailureKind::DigestMismatch,
            DownloadError::Internal { .. } => FailureKind::Internal,
            DownloadError::Origin { .. }
            | DownloadError::NoSource { .. }
            | DownloadError::Failed { .. } => FailureKind::Unavailable,
        }
    }

    /// The error a reader that joined a download gets when it failed with `reason` of `kind`.
    fn joined(task_id: String, reason: String, kind: FailureKind) -> DownloadError {
        match kind {
            FailureKind::DigestMismatch => DownloadError::DigestMismatch { task_id, reason },
            FailureKind::Internal => DownloadError::Internal { task_id, reason },
            FailureKind::Unavailable => DownloadError::Failed { task_id, reason },
        }
    }
}

#[derive(Clone)]
enum StartState {
    Ready(Arc<Task>),
    Origin(OriginReply),
    NotCacheable,
    Failed(String, FailureKind),
}

struct Inflight {
    state: watch::Receiver<Option<StartState>>,
    response: Mutex<Option<reqwest::Response>>,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub concurrent_piece_count: u32,
    pub piece_timeout: Duration,
    pub max_retries: u32,
    /// Transport for pieces from parents.
    pub protocol: crate::config::Protocol,
    /// Bytes per second downloaded, all tasks together (0: unlimited).
    pub rate_limit: u64,
    /// Bytes per second fetched in the background for range-read tasks (0: unlimited).
    pub background_rate_limit: u64,
    /// Mutual TLS to parents (`upload.client`): upload gRPC, Vortex TCP and QUIC.
    pub peer_tls: Option<Arc<common::tls::Tls>>,
}

/// The back-to-source engine.
pub struct Engine {
    pub(crate) store: Arc<Store>,
    backend: Arc<Backend>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: EngineConfig,
    inflight: Mutex<HashMap<String, Arc<Inflight>>>,
    /// Tasks open for range reads, so every reader of a task shares one.
    pub(crate) lazy: tokio::sync::Mutex<HashMap<String, std::sync::Weak<crate::lazy::LazyTask>>>,
    /// Bytes of uncommitted pieces that range reads stored, by task ID (with the task's
    /// creation time), kept while no reader has the task open.
    pub(crate) lazy_partial: Mutex<HashMap<String, (u64, crate::lazy::plan::Ranges)>>,
    /// Range-read tasks opened lately, kept open a while so that a client reading a blob by
    /// many Range requests (Nydus's nydusd through the proxy) keeps one peer session.
    pub(crate) lazy_recent: Mutex<Vec<(std::time::Instant, Arc<crate::lazy::LazyTask>)>>,
    /// Whether a sweeper closes the expired entries of `lazy_recent`.
    pub(crate) lazy_sweeping: std::sync::atomic::AtomicBool,
    /// Background piece completions of range-read tasks run one at a time.
    pub(crate) background_fill: tokio::sync::Semaphore,
    /// Shared download rate limit.
    pub(crate) limiter: Arc<crate::rate_limit::RateLimiter>,
    /// Rate limit of background fetches of range-read tasks.
    pub(crate) background_limiter: crate::rate_limit::RateLimiter,
    /// Scheduler client when P2P is configured.
    pub(crate) scheduler: std::sync::OnceLock<Arc<crate::scheduler_client::SchedulerClient>>,
    /// How bytes are fetched (origin, Vortex TCP and QUIC).
    transport: Arc<dyn Transport>,
    /// Pieces from parents.
    pub(crate) peers: Arc<crate::p2p::Peers>,
}

/// How the body of the first GET is used.
enum Body {
    /// It covers the task from offset 0 (`ranges`: the origin serves ranges, so what the
    /// stream does not bring can be fetched by ranges).
    Stream {
        resp: reqwest::Response,
        ranges: bool,
    },
    /// A ranged GET: its body is piece `.0` when it covers exactly that piece.
    FirstPiece(Option<(u32, reqwest::Response)>),
}

/// The digest check of a download ([`Engine::spawn_verifier`]).
struct Verifier {
    handle: tokio::task::JoinHandle<Result<String, DownloadError>>,
    /// Takes committed pieces' bytes in order; dropped, the verifier reads the file instead.
    feed: Option<tokio::sync::mpsc::Sender<FedPiece>>,
}

/// A committed piece's bytes, as the stream received them.
struct FedPiece {
    offset: u64,
    chunks: Vec<Bytes>,
}

impl FedPiece {
    fn len(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum()
    }
}

/// Pieces fed to a verifier that it has not hashed yet, at most: a stream ahead of the hash
/// waits (the task cannot complete before the hash anyway).
const FEED_PIECES: usize = 4;
/// Pieces longer than this are not held in memory for the verifier (it reads them back).
const MAX_FED_PIECE: u64 = 16 * 1024 * 1024;

enum Probe {
    /// Range supported; the reply covered `range` of `total` bytes.
    Ranged {
        total: u64,
        range: (u64, u64),
        resp: reqwest::Response,
    },
    /// No range support: the whole body follows.
    Whole {
        total: u64,
        resp: reqwest::Response,
    },
    Empty,
    Error(OriginReply),
    NotCacheable(reqwest::Response),
}

impl Engine {
    pub fn new(
        store: Arc<Store>,
        backend: Arc<Backend>,
        metrics: Arc<Metrics>,
        config: EngineConfig,
    ) -> Arc<Engine> {
        Self::with_transport(store, backend, metrics, config, |n| Arc::new(n))
    }

    /// [`Engine::new`] with every transfer going through the transport `wrap` makes of the
    /// network's (test builds inject faults so).
    pub fn with_transport(
        store: Arc<Store>,
        backend: Arc<Backend>,
        metrics: Arc<Metrics>,
        config: EngineConfig,
        wrap: impl FnOnce(Network) -> Arc<dyn Transport>,
    ) -> Arc<Engine> {
        let limiter = Arc::new(crate::rate_limit::RateLimiter::new(config.rate_limit));
        let background_limiter = crate::rate_limit::RateLimiter::new(config.background_rate_limit);
        let transport = wrap(Network::new(
            backend.clone(),
            limiter.clone(),
            config.piece_timeout,
            config.protocol,
            config.peer_tls.clone(),
        ));
        let peers = Arc::new(crate::p2p::Peers::new(
            transport.clone(),
            store.clone(),
            metrics.clone(),
            config.concurrent_piece_count as usize,
            config.piece_timeout,
            config.peer_tls.clone(),
        ));
        Arc::new(Engine {
            store,
            backend,
            metrics,
            config,
            inflight: Mutex::new(HashMap::new()),
            lazy: tokio::sync::Mutex::new(HashMap::new()),
            background_fill: tokio::sync::Semaphore::new(1),
            background_limiter,
            lazy_partial: Mutex::new(HashMap::new()),
            lazy_recent: Mutex::new(Vec::new()),
            lazy_sweeping: std::sync::atomic::AtomicBool::new(false),
            scheduler: std::sync::OnceLock::new(),
            limiter,
            transport,
            peers,
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether downloads go through a scheduler (P2P).
    pub fn has_scheduler(&self) -> bool {
        self.scheduler.get().is_some()
    }

    /// Routes downloads through schedulers (P2P) from now on.
    pub fn set_scheduler(&self, s: Arc<crate::scheduler_client::SchedulerClient>) {
        let _ = self.scheduler.set(s);
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Whether a whole-task download of `task_id` is running.
    pub fn is_downloading(&self, task_id: &str) -> bool {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(task_id)
    }

    /// Starts (or joins) the download of a task and returns once its content
    /// length is known, so the caller can stream pieces as they land.
    pub async fn start(self: &Arc<Self>, req: DownloadRequest) -> Result<Started, DownloadError> {
        if let Some(t) = self.store.get(&req.task_id) {
            if t.is_complete() {
                if let Some(want) = &req.digest {
                    self.check_stored_digest(&t, want).await?;
                }
                self.store.touch(&t);
                return Ok(Started::Stored {
                    task: t,
                    cached: true,
                });
            }
        }
        let (inflight, first) = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&req.task_id) {
                Some(f) => (f.clone(), false),
                None => {
                    let (tx, rx) = watch::channel(None);
                    let f = Arc::new(Inflight {
                        state: rx,
                        response: Mutex::new(None),
                    });
                    map.insert(req.task_id.clone(), f.clone());
                    let engine = self.clone();
                    let req = req.clone();
                    let f2 = f.clone();
                    tokio::spawn(async move { engine.drive(req, tx, f2).await });
                    (f, true)
                }
            }
        };
        let mut rx = inflight.state.clone();
        let state = loop {
            if let Some(s) = rx.borrow_and_update().clone() {
                break s;
            }
            if rx.changed().await.is_err() {
                // The driver ended without publishing: its task panicked.
                break StartState::Failed("download driver stopped".into(), FailureKind::Internal);
            }
        };
        Ok(match state {
            StartState::Ready(task) => Started::Stored {
                task,
                cached: false,
            },
            StartState::Origin(r) => Started::Origin(r),
            StartState::NotCacheable => {
                let resp = if first {
                    inflight
                        .response
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take()
                } else {
                    None
                };
                Started::NotCacheable(resp)
            }
            StartState::Failed(reason, kind) => {
                return Err(DownloadError::joined(req.task_id, reason, kind))
            }
        })
    }

    /// A stored task asked for with digest `want` (the digest is not part of a URL task's ID):
    /// its content must have that digest. Compared with the digest it was verified with, else
    /// computed from the content file.
    async fn check_stored_digest(
        &self,
        task: &Arc<Task>,
        want: &common::id::BlobDigest,
    ) -> Result<(), DownloadError> {
        let prefix = format!("{}:", want.algorithm);
        let got = match task.meta().digest {
            Some(d) if d.starts_with(&prefix) => d[prefix.len()..].to_string(),
            _ => {
                let (t, algorithm) = (task.clone(), want.algorithm.clone());
                tokio::task::spawn_blocking(move || {
                    let mut h = ContentHasher::new(&algorithm);
                    h.update_from(&t, 0, t.content_length())
                        .map(|()| h.finish())
                })
                .await
                .map_err(|e| DownloadError::Internal {
                    task_id: task.id.clone(),
                    reason: format!("digest of the stored content: {e}"),
                })??
            }
        };
        if got == want.encoded {
            return Ok(());
        }
        self.metrics.digest_mismatches.inc();
        Err(DownloadError::DigestMismatch {
            task_id: task.id.clone(),
            reason: format!(
                "the stored content's digest {}:{got} does not match {want}",
                want.algorithm
            ),
        })
    }

    async fn drive(
        self: Arc<Self>,
        req: DownloadRequest,
        tx: watch::Sender<Option<StartState>>,
        inflight: Arc<Inflight>,
    ) {
        let span = tracing::info_span!("download", task_id = %req.task_id);
        let _e = span.enter();
        drop(_e);
        let result = self.run(&req, &tx, &inflight).await;
        if let Err(e) = &result {
            tracing::warn!(task_id = %req.task_id, url = %req.url, error = %e, "download failed");
            tx.send_if_modified(|s| {
                if s.is_none() {
                    *s = Some(StartState::Failed(e.to_string(), e.kind()));
                    true
                } else {
                    false
                }
            });
        }
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&req.task_id);
    }

    async fn run(
        self: &Arc<Self>,
        req: &DownloadRequest,
        tx: &watch::Sender<Option<StartState>>,
        inflight: &Inflight,
    ) -> Result<(), DownloadError> {
        if req.parents.is_empty() {
            if let Some(sched) = self.scheduler.get().cloned() {
                return self.run_scheduled(&sched, req, tx, inflight).await;
            }
        }
        self.run_direct(req, tx, inflight).await
    }

    /// Registers with the scheduler, downloads from the parents it gives (or
    /// the origin when told to), and reports progress on the AnnouncePeer
    /// stream. A scheduler that cannot be reached means the origin.
    async fn run_scheduled(
        self: &Arc<Self>,
        sched: &crate::scheduler_client::SchedulerClient,
        req: &DownloadRequest,
        tx: &watch::Sender<Option<StartState>>,
        inflight: &Inflight,
    ) -> Result<(), DownloadError> {
        use crate::scheduler_client::Decision;
        use dragonfly_api::scheduler::v2::announce_peer_request::Request as R;
        use dragonfly_api::scheduler::v2::*;
        let peer_id = common::id::peer_id(sched.host_id(), rand::random());
        let download = announced_download(req);
        let mut session = match sched.register_peer(&req.task_id, &peer_id, download).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(task_id = %req.task_id, error = %e, "scheduler unavailable; going to the origin");
                return self.run_direct(req, tx, inflight).await;
            }
        };
        let decision = match tokio::time::timeout(
            self.config.piece_timeout,
            session.next_decision(),
        )
        .await
        {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::warn!(task_id = %req.task_id, error = %e, "scheduling failed; going to the origin");
                Decision::BackToSource(e.to_string())
            }
            Err(_) => Decision::BackToSource("no scheduling decision in time".into()),
        };
        let reporter = session.sender();
        let sent = Arc::new(tokio::sync::Mutex::new(std::collections::BTreeSet::new()));
        let (p2p, result) = match decision {
            Decision::Parents(parents) if !parents.is_empty() && !req.need_back_to_source => {
                tracing::info!(task_id = %req.task_id, parents = parents.len(), "downloading from parents");
                session
                    .send(R::DownloadPeerStartedRequest(DownloadPeerStartedRequest {}))
                    .await;
                // The scheduler may add parents while this runs (peers that start
                // downloading after us): they join the running download.
                let (more_tx, more_rx) = watch::channel(parents.clone());
                // Reads until the scheduler ends the stream, which it does once our
                // last report is sent and every reporter is dropped.
                let mut decisions = session.into_decisions();
                tokio::spawn(async move {
                    while let Ok(d) = decisions.next_decision().await {
                        if let Decision::Parents(new) = d {
                            more_tx.send_modify(|all| {
                                for p in new {
                                    if !all.iter().any(|q| q.id == p.id) {
                                        all.push(p);
                                    }
                                }
                            });
                        }
                    }
                });
                let mut r = req.clone();
                r.parents = parents;
                r.reporter = Some(reporter.clone());
                r.parent_updates = Some(more_rx);
                let watcher =
                    spawn_piece_reporter(tx.subscribe(), reporter.clone(), false, sent.clone());
                let result = self.run_direct(&r, tx, inflight).await;
                watcher.abort();
                (true, result)
            }
            _ if req.disable_back_to_source => (
                false,
                Err(DownloadError::NoSource {
                    task_id: req.task_id.clone(),
                    reason:
                        "the scheduler has no parent for this task and back-to-source is disabled"
                            .into(),
                }),
            ),
            _ => {
                session
                    .send(R::DownloadPeerBackToSourceStartedRequest(
                        DownloadPeerBackToSourceStartedRequest { description: None },
                    ))
                    .await;
                let watcher =
                    spawn_piece_reporter(tx.subscribe(), reporter.clone(), true, sent.clone());
                let result = self.run_direct(req, tx, inflight).await;
                watcher.abort();
                (false, result)
            }
        };
        // Report the pieces the watcher may not have sent yet, then the outcome.
        let ready = tx.borrow().clone();
        if let Some(StartState::Ready(task)) = ready {
            report_pieces(&task, &reporter, !p2p, &mut *sent.lock().await).await;
        }
        let end = match (&result, p2p) {
            (Ok(()), true) => R::DownloadPeerFinishedRequest(DownloadPeerFinishedRequest {}),
            (Ok(()), false) => R::DownloadPeerBackToSourceFinishedRequest(
                DownloadPeerBackToSourceFinishedRequest {},
            ),
            (Err(e), true) => R::DownloadPeerFailedRequest(DownloadPeerFailedRequest {
                description: Some(e.to_string()),
            }),
            (Err(e), false) => {
                R::DownloadPeerBackToSourceFailedRequest(DownloadPeerBackToSourceFailedRequest {
                    description: Some(e.to_string()),
                })
            }
        };
        reporter.send(end).await;
        result
    }

    async fn run_direct(
        self: &Arc<Self>,
        req: &DownloadRequest,
        tx: &watch::Sender<Option<StartState>>,
        inflight: &Inflight,
    ) -> Result<(), DownloadError> {
        let existing = self.store.get(&req.task_id).filter(|t| !t.is_complete());
        if !req.parents.is_empty() {
            if let Some(r) = self.run_p2p(req, tx, existing.clone()).await {
                return r;
            }
        }
        if req.disable_back_to_source {
            return Err(DownloadError::NoSource {
                task_id: req.task_id.clone(),
                reason: "no parent could provide the task and back-to-source is disabled".into(),
            });
        }
        // A task with nothing stored yet is fetched by one streamed GET (`bytes=0-`): the
        // origin sends it in order at its own pace (no per-range cost), pieces are recorded
        // as they land. A task with pieces stored resumes with ranged GETs of what is missing.
        let resume = existing.as_ref().filter(|t| !t.meta().pieces.is_empty());
        let probe_range = match resume {
            Some(t) => {
                let first = t.missing_pieces().first().copied().unwrap_or(0);
                let (off, len) = piece_range(first, t.content_length(), t.piece_length());
                (off, off + len.max(1) - 1)
            }
            None => (0, crate::backend::OPEN_ENDED),
        };
        let probe = self.probe(req, probe_range).await?;
        let (task, body) = match probe {
            Probe::Error(r) => {
                let _ = tx.send(Some(StartState::Origin(r)));
                return Ok(());
            }
            Probe::NotCacheable(resp) => {
                *inflight.response.lock().unwrap_or_else(|p| p.into_inner()) = Some(resp);
                let _ = tx.send(Some(StartState::NotCacheable));
                return Ok(());
            }
            Probe::Empty => {
                let task = self.create_task(req, 0, existing, None)?;
                let _ = tx.send(Some(StartState::Ready(task.clone())));
                let verifier = self.spawn_verifier(req, &task, false);
                return self.conclude(req, &task, Ok(()), verifier).await;
            }
            Probe::Whole { total, resp } => {
                let task = self.create_task(req, total, None, content_type(&resp))?;
                (
                    task,
                    Body::Stream {
                        resp,
                        ranges: false,
                    },
                )
            }
            Probe::Ranged { total, range, resp } if range == (0, total - 1) => {
                let task = self.create_task(req, total, existing, content_type(&resp))?;
                (task, Body::Stream { resp, ranges: true })
            }
            Probe::Ranged { total, range, resp } => {
                let task = self.create_task(req, total, existing, content_type(&resp))?;
                let pl = task.piece_length();
                let p = (range.0 / pl) as u32;
                let (off, len) = piece_range(p, total, pl);
                let body = if range == (off, off + len - 1) && !task.has_piece(p) {
                    Some((p, resp))
                } else {
                    None
                };
                (task, Body::FirstPiece(body))
            }
        };
        task.clear_failure();
        let _ = tx.send(Some(StartState::Ready(task.clone())));
        let _use = task.use_task();
        let r = match body {
            Body::Stream { resp, ranges } => {
                let mut verifier = self.spawn_verifier(req, &task, true);
                let feed = verifier.as_mut().and_then(|v| v.feed.take());
                let streamed = self.fetch_stream(req, &task, resp, feed, ranges).await;
                let r = match streamed {
                    // The stream broke off: what it did not store is fetched by ranges, with
                    // the usual retries.
                    Err(e) if ranges && !matches!(e, DownloadError::Store(_)) => {
                        tracing::info!(task_id = %task.id, error = %e, missing = task.missing_pieces().len(),
                            "origin stream ended early; fetching the rest by ranges");
                        self.fetch_pieces(req, &task, None).await
                    }
                    r => r,
                };
                return self.conclude(req, &task, r, verifier).await;
            }
            Body::FirstPiece(first) => first,
        };
        let verifier = self.spawn_verifier(req, &task, false);
        let r = self.fetch_pieces(req, &task, r).await;
        self.conclude(req, &task, r, verifier).await
    }

    /// Hashes the content in order while pieces land, so verification ends right after the
    /// last piece instead of re-reading the whole task. With `feed`, the stream that fetches
    /// the task hands over each committed piece's bytes ([`Verifier::feed`]) and the hash
    /// reads nothing back; pieces the feed does not bring (it ended early, or there was none)
    /// are read from the content file once stored. The hash runs on the blocking pool, beside
    /// the download rather than in its way.
    fn spawn_verifier(
        &self,
        req: &DownloadRequest,
        task: &Arc<Task>,
        feed: bool,
    ) -> Option<Verifier> {
        let algorithm = req.digest.as_ref()?.algorithm.clone();
        let task = task.clone();
        let (feed_tx, mut feed_rx) = if feed && task.piece_length() <= MAX_FED_PIECE {
            let (tx, rx) = tokio::sync::mpsc::channel::<FedPiece>(FEED_PIECES);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let handle = tokio::spawn(async move {
            let internal = |e: tokio::task::JoinError| DownloadError::Internal {
                task_id: task.id.clone(),
                reason: e.to_string(),
            };
            let mut hasher = ContentHasher::new(&algorithm);
            for number in 0..task.piece_count() {
                let (off, len) = piece_range(number, task.content_length(), task.piece_length());
                if let Some(rx) = feed_rx.as_mut() {
                    match rx.recv().await {
                        Some(piece) if piece.offset == off && piece.len() == len => {
                            hasher = tokio::task::spawn_blocking(move || {
                                for c in &piece.chunks {
                                    hasher.update(c);
                                }
                                hasher
                            })
                            .await
                            .map_err(internal)?;
                            continue;
                        }
                        // The stream ended (or fed out of order): the file from here on.
                        _ => feed_rx = None,
                    }
                }
                task.wait_stored(number).await?;
                let t = task.clone();
                hasher = tokio::task::spawn_blocking(move || {
                    hasher.update_from(&t, off, len)?;
                    Ok::<_, crate::storage::StoreError>(hasher)
                })
                .await
                .map_err(internal)??;
            }
            Ok(hasher.finish())
        });
        Some(Verifier {
            handle,
            feed: feed_tx,
        })
    }

    /// Downloads from parents (falling back to the origin for what they cannot
    /// provide). `None` when no parent could describe the task: the caller goes
    /// to the origin as if there were no parents.
    async fn run_p2p(
        self: &Arc<Self>,
        req: &DownloadRequest,
        tx: &watch::Sender<Option<StartState>>,
        existing: Option<Arc<Task>>,
    ) -> Option<Result<(), DownloadError>> {
        let (total, piece_length) = crate::parent::describe_task(
            &req.parents,
            &req.task_id,
            self.config.piece_timeout,
            self.config.peer_tls.as_deref(),
        )
        .await?;
        let task = match self.create_task_with(req, total, existing, None, Some(piece_length)) {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        task.clear_failure();
        let _ = tx.send(Some(StartState::Ready(task.clone())));
        let _use = task.use_task();
        let verifier = self.spawn_verifier(req, &task, false);
        let from_parents = self
            .peers
            .fetch_from_parents(
                &task,
                &req.parents,
                req.reporter.as_ref(),
                req.parent_updates.clone(),
            )
            .await;
        let fetched = if task.missing_pieces().is_empty() {
            Ok(())
        } else if req.disable_back_to_source {
            Err(DownloadError::NoSource {
                task_id: task.id.clone(),
                reason: format!(
                    "parents could not provide every piece ({}) and back-to-source is disabled",
                    from_parents
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default()
                ),
            })
        } else {
            tracing::info!(task_id = %task.id, missing = task.missing_pieces().len(), "fetching the rest from the origin");
            self.fetch_pieces(req, &task, None).await
        };
        Some(self.conclude(req, &task, fetched, verifier).await)
    }

    fn create_task(
        &self,
        req: &DownloadRequest,
        total: u64,
        existing: Option<Arc<Task>>,
        content_type: Option<String>,
    ) -> Result<Arc<Task>, DownloadError> {
        self.create_task_with(req, total, existing, content_type, None)
    }

    pub(crate) fn create_task_with(
        &self,
        req: &DownloadRequest,
        total: u64,
        existing: Option<Arc<Task>>,
        content_type: Option<String>,
        piece_length: Option<u64>,
    ) -> Result<Arc<Task>, DownloadError> {
        let piece_length = piece_length.or(req.piece_length);
        if let Some(t) = existing {
            if t.content_length() == total && piece_length.is_none_or(|p| p == t.piece_length()) {
                return Ok(t);
            }
            tracing::info!(task_id = %req.task_id, "origin content length changed; restarting task");
        }
        let now = now_millis();
        Ok(self.store.create(TaskMeta {
            id: req.task_id.clone(),
            url: req.url.clone(),
            content_length: total,
            piece_length: piece_length.unwrap_or_else(|| piece_length_for(total)),
            status: TaskStatus::Running,
            digest: req.digest.as_ref().map(|d| d.to_string()),
            content_type,
            pieces: BTreeMap::new(),
            created_at: now,
            accessed_at: now,
        })?)
    }

    /// Issues the first GET; retried on connection errors and 5xx.
    async fn probe(
        &self,
        req: &DownloadRequest,
        range: (u64, u64),
    ) -> Result<Probe, DownloadError> {
        let mut attempt = 0;
        loop {
            let result = match tokio::time::timeout(
                self.config.piece_timeout,
                self.backend.get(
                    &req.task_id,
                    &req.url,
                    &req.headers,
                    req.auth.as_deref(),
                    Some(range),
                    None,
                ),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(crate::backend::BackendError::Request {
                    url: req.url.clone(),
                    message: format!(
                        "no response within download.pieceTimeout ({})",
                        humantime::format_duration(self.config.piece_timeout)
                    ),
                }),
            };
            let retryable = match &result {
                Err(_) => true,
                Ok(r) => r.status().is_server_error(),
            };
            attempt += 1;
            if let Some(wait) = retry_after(attempt, self.config.max_retries, retryable) {
                tokio::time::sleep(wait).await;
                continue;
            }
            let resp = result.map_err(|e| DownloadError::Origin {
                url: req.url.clone(),
                message: e.to_string(),
            })?;
            return Ok(classify(resp).await);
        }
    }

    /// Fetches every missing piece with `concurrent_piece_count` workers;
    /// pieces a reader waits for go first.
    async fn fetch_pieces(
        self: &Arc<Self>,
        req: &DownloadRequest,
        task: &Arc<Task>,
        first: Option<(u32, reqwest::Response)>,
    ) -> Result<(), DownloadError> {
        let pending: BTreeSet<u32> = task
            .missing_pieces()
            .into_iter()
            .filter(|p| Some(*p) != first.as_ref().map(|f| f.0))
            .collect();
        let pending = Arc::new(Mutex::new(pending));
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = tokio::task::JoinSet::new();
        if let Some((p, resp)) = first {
            let (engine, task, stop) = (self.clone(), task.clone(), stop.clone());
            let req = req.clone();
            workers.spawn(async move {
                let r = match engine.store_piece_body(&task, p, resp).await {
                    Ok(()) => Ok(()),
                    // The probe body broke: fetch the piece again like any other.
                    Err(_) => engine.fetch_piece(&req, &task, p).await,
                };
                if r.is_err() {
                    stop.store(true, Ordering::Release);
                }
                r
            });
        }
        let n = self.config.concurrent_piece_count.max(1);
        for _ in 0..n {
            let (engine, task, pending, stop) =
                (self.clone(), task.clone(), pending.clone(), stop.clone());
            let req = req.clone();
            workers.spawn(async move {
                loop {
                    if stop.load(Ordering::Acquire) {
                        return Ok(());
                    }
                    let next = {
                        let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
                        let n = task.take_wanted(&p).or_else(|| p.first().copied());
                        if let Some(n) = n {
                            p.remove(&n);
                        }
                        n
                    };
                    let Some(number) = next else { return Ok(()) };
                    if task.has_piece(number) {
                        // A range reader completed it meanwhile.
                        continue;
                    }
                    if let Err(e) = engine.fetch_piece(&req, &task, number).await {
                        stop.store(true, Ordering::Release);
                        return Err(e);
                    }
                }
            });
        }
        let mut first_err = None;
        while let Some(r) = workers.join_next().await {
            let r = r.unwrap_or_else(|e| {
                Err(DownloadError::Internal {
                    task_id: task.id.clone(),
                    reason: format!("piece worker panicked: {e}"),
                })
            });
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// GETs one piece's range, retrying with exponential backoff, and commits it.
    async fn fetch_piece(
        &self,
        req: &DownloadRequest,
        task: &Arc<Task>,
        number: u32,
    ) -> Result<(), DownloadError> {
        let (off, len) = piece_range(number, task.content_length(), task.piece_length());
        let crc = self
            .fetch_origin_range(req, task, off, off + len, &format!("piece {number}"))
            .await?;
        self.commit_fetched_piece(task, number, len, crc);
        Ok(())
    }

    /// GETs bytes `start..end` of `task` from the origin into its content file, retrying
    /// with exponential backoff; the CRC-32 of the bytes. `what` names them in errors.
    pub(crate) async fn fetch_origin_range(
        &self,
        req: &DownloadRequest,
        task: &Arc<Task>,
        start: u64,
        end: u64,
        what: &str,
    ) -> Result<u32, DownloadError> {
        let mut attempt = 0;
        let source = Source::Origin {
            task_id: &req.task_id,
            url: &req.url,
            headers: &req.headers,
            auth: req.auth.as_deref(),
        };
        loop {
            match self.transport.fetch(source, task, start, end, what).await {
                Ok(crc) => return Ok(crc),
                Err(TransportError::Store(e)) => return Err(e.into()),
                Err(e) => {
                    let retryable = matches!(e, TransportError::Origin { retry: true, .. });
                    attempt += 1;
                    if let Some(wait) = retry_after(attempt, self.config.max_retries, retryable) {
                        tracing::debug!(task_id = %task.id, start, end, attempt, error = %e, "retrying range");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Err(DownloadError::Origin {
                        url: req.url.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
    }

    /// Streams a response body (exactly one piece) into the store and commits the piece.
    async fn store_piece_body(
        &self,
        task: &Arc<Task>,
        number: u32,
        resp: reqwest::Response,
    ) -> Result<(), DownloadError> {
        let (off, len) = piece_range(number, task.content_length(), task.piece_length());
        let what = format!("piece {number}");
        let timeout = self.config.piece_timeout;
        let crc = store_body(task, off, off + len, resp, &what, &self.limiter, timeout)
            .await
            .map_err(|e| match e {
                TransportError::Store(e) => DownloadError::Store(e),
                e => DownloadError::Failed {
                    task_id: task.id.clone(),
                    reason: e.to_string(),
                },
            })?;
        self.commit_fetched_piece(task, number, len, crc);
        Ok(())
    }

    fn commit_fetched_piece(&self, task: &Task, number: u32, length: u64, crc32: u32) {
        self.store
            .commit_piece(task, number, PieceMeta { length, crc32 });
        self.piece_fetched(length);
    }

    fn piece_fetched(&self, len: u64) {
        self.metrics.traffic("back_to_source", len);
        self.metrics
            .pieces
            .get_or_create(&TrafficLabels {
                r#type: "back_to_source",
            })
            .inc();
    }

    /// Stores a body that starts at offset 0 of the task, in order: each piece is committed
    /// as its last byte is written (its CRC-32 computed on the way) and handed to the digest
    /// verifier through `feed`. The bytes go from the response to the content file without a
    /// copy in between (vectored writes of the chunks as received). A piece already stored (a
    /// reader asked for it ahead of the stream, and a ranged GET fetched it) is not written
    /// again, but its bytes must be the same. Pieces readers wait for ahead of the stream are
    /// fetched by ranged GETs beside it (origins that serve ranges only).
    async fn fetch_stream(
        self: &Arc<Self>,
        req: &DownloadRequest,
        task: &Arc<Task>,
        resp: reqwest::Response,
        feed: Option<tokio::sync::mpsc::Sender<FedPiece>>,
        ranges: bool,
    ) -> Result<(), DownloadError> {
        let at_piece = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let ahead = async {
            if !ranges {
                return std::future::pending().await;
            }
            let mut changed = task.subscribe();
            loop {
                let next = at_piece.load(Ordering::Acquire).saturating_add(1);
                let beyond: BTreeSet<u32> = task
                    .missing_pieces()
                    .into_iter()
                    .filter(|n| *n > next)
                    .collect();
                if let Some(n) = task.take_wanted(&beyond) {
                    if let Err(e) = self.fetch_piece(req, task, n).await {
                        tracing::debug!(task_id = %task.id, piece = n, error = %e, "piece ahead of the stream failed");
                    }
                    continue;
                }
                if changed.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        };
        tokio::select! {
            r = self.store_stream(task, resp, feed, &at_piece) => r,
            () = ahead => unreachable!("the ranged fetcher beside a stream never ends"),
        }
    }

    async fn store_stream(
        &self,
        task: &Arc<Task>,
        resp: reqwest::Response,
        mut feed: Option<tokio::sync::mpsc::Sender<FedPiece>>,
        at_piece: &std::sync::atomic::AtomicU32,
    ) -> Result<(), DownloadError> {
        let total = task.content_length();
        let pl = task.piece_length();
        let fail = |m: String| DownloadError::Failed {
            task_id: task.id.clone(),
            reason: m,
        };
        let mut stream = resp.bytes_stream();
        // Bytes received so far; where the unwritten batch starts, and the batch.
        let mut pos = 0u64;
        let mut batch_at = 0u64;
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batch_len = 0usize;
        // The current piece: its CRC-32, its chunks (for the verifier), whether it was stored
        // before the stream reached it.
        let mut crc = crc32fast::Hasher::new();
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut stored_before = task.has_piece(0);
        while pos < total {
            let next = tokio::time::timeout(self.config.piece_timeout, stream.next())
                .await
                .map_err(|_| fail(crate::transport::stalled(self.config.piece_timeout)))?;
            let Some(c) = next else { break };
            let mut c = c.map_err(|e| fail(error_chain(&e)))?;
            self.limiter.acquire(c.len() as u64).await;
            if pos + c.len() as u64 > total {
                return Err(fail("origin sent more bytes than Content-Length".into()));
            }
            while !c.is_empty() {
                let number = (pos / pl) as u32;
                let (off, len) = piece_range(number, total, pl);
                let part = c.split_to(((off + len - pos) as usize).min(c.len()));
                pos += part.len() as u64;
                crc.update(&part);
                if feed.is_some() {
                    chunks.push(part.clone());
                }
                if !stored_before {
                    batch_len += part.len();
                    batch.push(part);
                }
                let piece_done = pos == off + len;
                if !batch.is_empty() && (piece_done || batch_len >= WRITE_CHUNK) {
                    let (t, at, data) = (task.clone(), batch_at, std::mem::take(&mut batch));
                    crate::storage::blocking::blocking(move || t.write_chunks_at(at, &data))
                        .await
                        .map_err(|e| fail(e.to_string()))??;
                    batch_at += batch_len as u64;
                    batch_len = 0;
                }
                if !piece_done {
                    continue;
                }
                let got = std::mem::replace(&mut crc, crc32fast::Hasher::new()).finalize();
                match task.piece(number) {
                    Some(p) if p.crc32 != got => {
                        return Err(fail(format!(
                            "origin sent different bytes for piece {number} than a ranged GET of it"
                        )))
                    }
                    Some(_) => {}
                    None => self.commit_fetched_piece(task, number, len, got),
                }
                if let Some(f) = &feed {
                    let piece = FedPiece {
                        offset: off,
                        chunks: std::mem::take(&mut chunks),
                    };
                    if f.send(piece).await.is_err() {
                        feed = None;
                    }
                }
                at_piece.store(number + 1, Ordering::Release);
                stored_before = task.has_piece(number + 1);
                batch_at = pos;
            }
        }
        if pos != total {
            return Err(fail(format!("origin sent {pos} of {total} bytes")));
        }
        Ok(())
    }

    async fn conclude(
        &self,
        req: &DownloadRequest,
        task: &Arc<Task>,
        fetched: Result<(), DownloadError>,
        verifier: Option<Verifier>,
    ) -> Result<(), DownloadError> {
        if let Err(e) = fetched {
            if let Some(v) = verifier {
                v.handle.abort();
            }
            match &e {
                DownloadError::Store(s) if s.is_disk_full() => {
                    if let Err(r) = self.store.fail_disk_full(task, &e.to_string()) {
                        tracing::warn!(task_id = task.id, error = %r, "cannot drop the task");
                    }
                }
                _ => self.store.mark_failed(task, &e.to_string(), e.kind()),
            }
            return Err(e);
        }
        let computed = match verifier {
            None => None,
            Some(v) => Some(v.handle.await.map_err(|e| DownloadError::Internal {
                task_id: task.id.clone(),
                reason: format!("digest verifier: {e}"),
            })??),
        };
        self.finish(req, task, computed).await
    }

    /// Checks the digest (if any) and marks the task complete, or purges it.
    async fn finish(
        &self,
        req: &DownloadRequest,
        task: &Arc<Task>,
        computed: Option<String>,
    ) -> Result<(), DownloadError> {
        if let (Some(want), Some(got)) = (&req.digest, computed) {
            if got != want.encoded {
                let reason = format!(
                    "content digest {}:{got} does not match {want}; nothing was cached",
                    want.algorithm
                );
                self.metrics.digest_mismatches.inc();
                tracing::warn!(task_id = %task.id, url = %req.url, %reason, "digest mismatch");
                self.store
                    .purge(task, &reason, FailureKind::DigestMismatch)?;
                return Err(DownloadError::DigestMismatch {
                    task_id: task.id.clone(),
                    reason,
                });
            }
        }
        self.store.mark_succeeded(task).await?;
        tracing::info!(task_id = %task.id, bytes = task.content_length(), "task complete");
        Ok(())
    }
}

/// The `Download` a peer registers with the scheduler for `req`.
pub(crate) fn announced_download(req: &DownloadRequest) -> dragonfly_api::common::v2::Download {
    dragonfly_api::common::v2::Download {
        url: req.url.clone(),
        digest: req.digest.as_ref().map(|d| d.to_string()),
        piece_length: req.piece_length,
        request_header: req
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        need_back_to_source: req.need_back_to_source,
        disable_back_to_source: req.disable_back_to_source,
        enable_task_id_based_blob_digest: req
            .digest
            .as_ref()
            .is_some_and(|d| d.encoded == req.task_id),
        ..Default::default()
    }
}

/// SHA-256 or SHA-512, fed from the content file.
pub(crate) enum ContentHasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl ContentHasher {
    pub(crate) fn new(algorithm: &str) -> Self {
        if algorithm == "sha512" {
            ContentHasher::Sha512(sha2::Sha512::new())
        } else {
            ContentHasher::Sha256(sha2::Sha256::new())
        }
    }

    /// Hashes `len` bytes at `off` of the task's content (blocking).
    pub(crate) fn update_from(
        &mut self,
        task: &Task,
        off: u64,
        len: u64,
    ) -> Result<(), crate::storage::StoreError> {
        let mut buf = vec![0u8; WRITE_CHUNK.min(len as usize)];
        let mut pos = off;
        while pos < off + len {
            let n = (off + len - pos).min(buf.len() as u64) as usize;
            task.read_at(pos, &mut buf[..n])?;
            self.update(&buf[..n]);
            pos += n as u64;
        }
        Ok(())
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            ContentHasher::Sha256(h) => h.update(data),
            ContentHasher::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> String {
        match self {
            ContentHasher::Sha256(h) => hex::encode(h.finalize()),
            ContentHasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

/// Reports pieces of the task (once it exists) to the scheduler as they land.
fn spawn_piece_reporter(
    mut state: watch::Receiver<Option<StartState>>,
    reporter: crate::scheduler_client::PeerReporter,
    back_to_source: bool,
    sent: Arc<tokio::sync::Mutex<std::collections::BTreeSet<u32>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let task = loop {
            if let Some(StartState::Ready(t)) = state.borrow_and_update().clone() {
                break t;
            }
            if state.changed().await.is_err() {
                return;
            }
        };
        let mut changed = task.subscribe();
        loop {
            report_pieces(&task, &reporter, back_to_source, &mut *sent.lock().await).await;
            if changed.changed().await.is_err() {
                return;
            }
        }
    })
}

/// Sends `DownloadPiece[BackToSource]FinishedRequest` for stored pieces not yet in `sent`.
pub(crate) async fn report_pieces(
    task: &Task,
    reporter: &crate::scheduler_client::PeerReporter,
    back_to_source: bool,
    sent: &mut std::collections::BTreeSet<u32>,
) {
    use dragonfly_api::scheduler::v2::announce_peer_request::Request as R;
    use dragonfly_api::scheduler::v2::*;
    let meta = task.meta();
    for (n, p) in &meta.pieces {
        if !sent.insert(*n) {
            continue;
        }
        let (offset, length) = piece_range(*n, meta.content_length, meta.piece_length);
        let piece = dragonfly_api::common::v2::Piece {
            number: *n,
            offset,
            length,
            digest: p.digest(),
            traffic_type: Some(if back_to_source {
                dragonfly_api::common::v2::TrafficType::BackToSource as i32
            } else {
                dragonfly_api::common::v2::TrafficType::RemotePeer as i32
            }),
            ..Default::default()
        };
        let req = if back_to_source {
            R::DownloadPieceBackToSourceFinishedRequest(DownloadPieceBackToSourceFinishedRequest {
                piece: Some(piece),
            })
        } else {
            R::DownloadPieceFinishedRequest(DownloadPieceFinishedRequest { piece: Some(piece) })
        };
        reporter.send(req).await;
    }
}

fn content_type(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// 100 ms, 200 ms, 400 ms, ... (attempt counts from 1), at most 6.4 s.
fn identity_encoding(h: &HeaderMap) -> bool {
    match h
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(v) => v.trim().is_empty() || v.trim().eq_ignore_ascii_case("identity"),
    }
}

async fn classify(resp: reqwest::Response) -> Probe {
    let status = resp.status();
    let headers = resp.headers().clone();
    if status == StatusCode::PARTIAL_CONTENT {
        let cr = headers
            .get(http::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_content_range);
        return match cr {
            Some((Some(range), total)) if identity_encoding(&headers) => {
                Probe::Ranged { total, range, resp }
            }
            _ => Probe::NotCacheable(resp),
        };
    }
    if status == StatusCode::OK {
        return match resp.content_length() {
            Some(total) if identity_encoding(&headers) => {
                if total == 0 {
                    Probe::Empty
                } else {
                    Probe::Whole { total, resp }
                }
            }
            _ => Probe::NotCacheable(resp),
        };
    }
    if status == StatusCode::RANGE_NOT_SATISFIABLE {
        let empty = headers
            .get(http::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_content_range)
            == Some((None, 0));
        if empty {
            return Probe::Empty;
        }
    }
    // Anything else goes back to the client as the origin sent it.
    let mut body = BytesMut::new();
    let mut stream = resp.bytes_stream();
    while let Some(Ok(c)) = stream.next().await {
        let room = MAX_ERROR_BODY.saturating_sub(body.len());
        body.extend_from_slice(&c[..c.len().min(room)]);
        if room <= c.len() {
            break;
        }
    }
    Probe::Error(OriginReply {
        status,
        headers,
        body: body.freeze(),
    })
}
