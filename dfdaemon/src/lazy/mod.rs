//! Range-driven reads of a task, for lazy loading: a read fetches only what
//! covers its bytes (a whole piece from a parent that holds it, else just the
//! missing bytes from the origin, so a 100 KiB read does not cost a 4 MiB
//! piece), joins fetches already in flight, and never returns bytes that are
//! not stored (the sparse file's zeros). Pieces that become whole are
//! committed with their CRC, so they are served to other peers and a later
//! full download of the task (the mirror) fetches only what is still missing.
//! When every piece is present the content digest is checked and the task
//! completes as if downloaded whole.
//!
//! What to fetch is decided by the sans-IO [`plan::Planner`]; this module does
//! the I/O around it.

pub mod blobs;
pub mod plan;

use crate::backend::parse_content_range;
use crate::download::{ContentHasher, DownloadError, DownloadRequest, Engine, Started};
use crate::p2p::ParentSet;
use crate::scheduler_client::PeerReporter;
use crate::storage::{PieceMeta, StoreError, Task, TaskUse};
use common::piece::piece_range;
use dragonfly_api::scheduler::v2::announce_peer_request::Request as R;
use dragonfly_api::scheduler::v2::*;
use http::StatusCode;
use plan::{Fetch, Planner};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// How long a range-read task stays open after it was last opened.
const KEEP_OPEN: std::time::Duration = std::time::Duration::from_secs(300);
/// Most range-read tasks kept open that way.
const KEEP_OPEN_MAX: usize = 64;

/// Largest origin range fetched by one GET.
const MAX_RANGE: u64 = 16 << 20;

/// Errors of a range read.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    #[error("bytes {start}..{end} lie beyond the {length}-byte task {task_id}")]
    OutOfRange {
        task_id: String,
        start: u64,
        end: u64,
        length: u64,
    },
    #[error("origin {url}: {message}")]
    Origin { url: String, message: String },
    #[error("task {task_id} was removed from the store while open")]
    Removed { task_id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Download(#[from] DownloadError),
}

impl LazyError {
    /// What kind of failure this is, for the fronts.
    pub fn kind(&self) -> crate::storage::FailureKind {
        use crate::storage::FailureKind;
        match self {
            LazyError::OutOfRange { .. } => FailureKind::Internal,
            LazyError::Origin { .. } | LazyError::Removed { .. } => FailureKind::Unavailable,
            LazyError::Store(e) => e.kind(),
            LazyError::Download(e) => e.kind(),
        }
    }
}

/// Bytes a range-read task fetched, by source, and bytes it returned.
#[derive(Debug, Default)]
pub struct LazyStats {
    /// Bytes fetched from the origin.
    pub origin_bytes: AtomicU64,
    /// Bytes of pieces fetched from parents.
    pub parent_bytes: AtomicU64,
    /// Bytes returned to readers.
    pub read_bytes: AtomicU64,
    /// Bytes dropped because they failed a reader's check.
    pub dropped_bytes: AtomicU64,
}

/// A task open for range reads. Holds the task in use (GC keeps it) and, with
/// a scheduler, the peer's AnnouncePeer stream (pieces are reported as they
/// are committed, parents the scheduler adds join).
pub struct LazyTask {
    engine: Arc<Engine>,
    req: DownloadRequest,
    task: TaskUse,
    planner: Mutex<Planner>,
    changed: watch::Sender<u64>,
    parents: Option<Arc<ParentSet>>,
    reporter: Option<(PeerReporter, bool)>,
    reported: tokio::sync::Mutex<BTreeSet<u32>>,
    verifying: AtomicBool,
    /// Pieces being completed in the background.
    filling: Mutex<BTreeSet<u32>>,
    decisions: Option<tokio::task::JoinHandle<()>>,
    handle: tokio::runtime::Handle,
    /// Counters.
    pub stats: LazyStats,
}

impl Drop for LazyTask {
    fn drop(&mut self) {
        // The partial bytes stay known for the next reader of the task.
        if !self.task.is_complete() && !self.task.is_removed() {
            let partial = self.lock().partial().clone();
            if partial.total() > 0 {
                self.engine
                    .lazy_partial
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(self.task.id.clone(), (self.task.meta().created_at, partial));
            }
        }
        if let Some(d) = &self.decisions {
            d.abort();
        }
        if let Some(p) = &self.parents {
            tracing::info!(task_id = %self.task.id, pieces_by_parent = ?p.fetched_by_parent(),
                "range reads closed");
        }
    }
}

/// What the scheduler said for a range-read peer.
struct Scheduled {
    parents: Vec<crate::parent::Parent>,
    reporter: PeerReporter,
    back_to_source: bool,
    decisions: Option<crate::scheduler_client::PeerDecisions>,
}

impl Engine {
    /// Opens `req`'s task for range reads: the stored task if there is one (a
    /// whole-task download running is joined), else a new one whose length
    /// comes from the parents the scheduler gives or from a one-byte origin
    /// probe. Every opener of a task shares one [`LazyTask`]. The task stays open a while
    /// after this opening ([`KEEP_OPEN`]), for readers by separate requests (the proxy).
    pub async fn open_lazy(
        self: &Arc<Self>,
        req: DownloadRequest,
    ) -> Result<Arc<LazyTask>, LazyError> {
        let t = self.open_lazy_held(req).await?;
        self.keep_open(&t);
        Ok(t)
    }

    /// [`Engine::open_lazy`] for a reader that holds the task for as long as it reads (an
    /// image's mount): it is closed, and GC may evict it, as soon as the last holder lets go.
    pub async fn open_lazy_held(
        self: &Arc<Self>,
        req: DownloadRequest,
    ) -> Result<Arc<LazyTask>, LazyError> {
        let mut open = self.lazy.lock().await;
        open.retain(|_, w| w.strong_count() > 0);
        if let Some(t) = open.get(&req.task_id).and_then(|w| w.upgrade()) {
            if !t.task.is_removed() {
                return Ok(t);
            }
        }
        let t = self.open_lazy_new(req).await?;
        open.insert(t.req.task_id.clone(), Arc::downgrade(&t));
        Ok(t)
    }

    /// Keeps `t` open for [`KEEP_OPEN`] after its last opening (at most [`KEEP_OPEN_MAX`]
    /// tasks), so the readers of a blob by separate Range requests share its state and its
    /// peer session instead of registering anew each time. A sweeper closes the expired
    /// ones (it runs while any is kept), so an idle task is not held from GC.
    fn keep_open(self: &Arc<Self>, t: &Arc<LazyTask>) {
        let now = std::time::Instant::now();
        let mut recent = self.lazy_recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|(at, r)| {
            now.duration_since(*at) < KEEP_OPEN && !Arc::ptr_eq(r, t) && !r.task.is_removed()
        });
        if recent.len() >= KEEP_OPEN_MAX {
            recent.remove(0);
        }
        recent.push((now, t.clone()));
        drop(recent);
        if !self.lazy_sweeping.swap(true, Ordering::AcqRel) {
            let engine = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(KEEP_OPEN / 10).await;
                    let Some(e) = engine.upgrade() else { return };
                    let mut recent = e.lazy_recent.lock().unwrap_or_else(|p| p.into_inner());
                    let now = std::time::Instant::now();
                    recent.retain(|(at, r)| {
                        now.duration_since(*at) < KEEP_OPEN && !r.task.is_removed()
                    });
                    if recent.is_empty() {
                        // Under the lock: a keep_open that comes next starts a new sweeper.
                        e.lazy_sweeping.store(false, Ordering::Release);
                        return;
                    }
                }
            });
        }
    }

    async fn open_lazy_new(
        self: &Arc<Self>,
        req: DownloadRequest,
    ) -> Result<Arc<LazyTask>, LazyError> {
        if self.is_downloading(&req.task_id) {
            // Join the running download: it creates the task.
            if let Started::Stored { task, .. } = self.start(req.clone()).await? {
                return Ok(LazyTask::new(self, req, task, None));
            }
        }
        if let Some(t) = self.store.get(&req.task_id) {
            return Ok(LazyTask::new(self, req, t, None));
        }
        let scheduled = match (req.parents.is_empty(), self.scheduler.get().cloned()) {
            (true, Some(s)) => self.register_lazy(&s, &req).await,
            _ => None,
        };
        let parents = match &scheduled {
            Some(s) => s.parents.clone(),
            None => req.parents.clone(),
        };
        let described = if parents.is_empty() {
            None
        } else {
            crate::parent::describe_task(
                &parents,
                &req.task_id,
                self.config.piece_timeout,
                self.config.peer_tls.as_deref(),
            )
            .await
        };
        let task = match described {
            Some((total, pl)) => self.create_task_with(&req, total, None, None, Some(pl))?,
            None => {
                if req.disable_back_to_source {
                    return Err(DownloadError::NoSource {
                        task_id: req.task_id.clone(),
                        reason: "no parent could describe the task and back-to-source is disabled"
                            .into(),
                    }
                    .into());
                }
                let total = self.probe_length(&req).await?;
                self.create_task_with(&req, total, None, None, None)?
            }
        };
        tracing::info!(task_id = %task.id, bytes = task.content_length(),
            parents = parents.len(), "task open for range reads");
        Ok(LazyTask::new(self, req, task, scheduled))
    }

    /// Registers a range-read peer with the scheduler: its parents, or the
    /// origin when it is the first (or told to go there).
    async fn register_lazy(
        &self,
        sched: &crate::scheduler_client::SchedulerClient,
        req: &DownloadRequest,
    ) -> Option<Scheduled> {
        use crate::scheduler_client::Decision;
        let peer_id = common::id::peer_id(sched.host_id(), rand::random());
        let download = crate::download::announced_download(req);
        let mut session = match sched.register_peer(&req.task_id, &peer_id, download).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(task_id = %req.task_id, error = %e, "scheduler unavailable; range reads go to the origin");
                return None;
            }
        };
        let decision =
            match tokio::time::timeout(self.config.piece_timeout, session.next_decision()).await {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => Decision::BackToSource(e.to_string()),
                Err(_) => Decision::BackToSource("no scheduling decision in time".into()),
            };
        let reporter = session.sender();
        match decision {
            Decision::Parents(parents) if !parents.is_empty() => {
                session
                    .send(R::DownloadPeerStartedRequest(DownloadPeerStartedRequest {}))
                    .await;
                Some(Scheduled {
                    parents,
                    reporter,
                    back_to_source: false,
                    decisions: Some(session.into_decisions()),
                })
            }
            _ => {
                session
                    .send(R::DownloadPeerBackToSourceStartedRequest(
                        DownloadPeerBackToSourceStartedRequest { description: None },
                    ))
                    .await;
                Some(Scheduled {
                    parents: Vec::new(),
                    reporter,
                    back_to_source: true,
                    decisions: None,
                })
            }
        }
    }

    /// The content length from a one-byte ranged GET.
    async fn probe_length(&self, req: &DownloadRequest) -> Result<u64, LazyError> {
        let origin = |message: String| LazyError::Origin {
            url: req.url.clone(),
            message,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self
                .backend()
                .get(
                    &req.task_id,
                    &req.url,
                    &req.headers,
                    req.auth.as_deref(),
                    Some((0, 0)),
                    Some(self.config.piece_timeout),
                )
                .await;
            let (retryable, message) = match r {
                Ok(resp) => {
                    let status = resp.status();
                    let cr = resp
                        .headers()
                        .get(http::header::CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_content_range);
                    match (status, cr) {
                        (StatusCode::PARTIAL_CONTENT, Some((Some(_), total))) => return Ok(total),
                        (StatusCode::RANGE_NOT_SATISFIABLE, Some((None, 0))) => return Ok(0),
                        (StatusCode::OK, _) => {
                            return Err(origin(
                                "the origin ignores Range requests; range reads need them".into(),
                            ))
                        }
                        _ => (
                            status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS,
                            format!("answered {status} to a range request"),
                        ),
                    }
                }
                Err(e) => (true, e.to_string()),
            };
            match plan::retry_after(attempt, self.config.max_retries, retryable) {
                Some(d) => tokio::time::sleep(d).await,
                None => return Err(origin(message)),
            }
        }
    }
}

impl LazyTask {
    fn new(
        engine: &Arc<Engine>,
        req: DownloadRequest,
        task: Arc<Task>,
        scheduled: Option<Scheduled>,
    ) -> Arc<LazyTask> {
        let created = task.meta().created_at;
        let kept = engine
            .lazy_partial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task.id)
            .filter(|(at, _)| *at == created)
            .map(|(_, r)| r)
            .unwrap_or_default();
        let planner =
            Planner::new(task.content_length(), task.piece_length(), MAX_RANGE).with_partial(kept);
        let (parents, reporter, decisions) = match scheduled {
            Some(s) => {
                let parents = (!s.back_to_source).then(|| {
                    let set = Arc::new(ParentSet::new(
                        &task.id,
                        task.missing_pieces(),
                        engine.config.peer_tls.clone(),
                    ));
                    set.join(&s.parents);
                    set
                });
                // Parents the scheduler adds later (peers that start after us) join.
                let decisions = match (s.decisions, &parents) {
                    (Some(mut d), Some(set)) => {
                        let set = set.clone();
                        Some(tokio::spawn(async move {
                            while let Ok(d) = d.next_decision().await {
                                if let crate::scheduler_client::Decision::Parents(new) = d {
                                    set.join(&new);
                                }
                            }
                        }))
                    }
                    _ => None,
                };
                (parents, Some((s.reporter, s.back_to_source)), decisions)
            }
            None if !req.parents.is_empty() => {
                let set = Arc::new(ParentSet::new(
                    &task.id,
                    task.missing_pieces(),
                    engine.config.peer_tls.clone(),
                ));
                set.join(&req.parents);
                (Some(set), None, None)
            }
            None => (None, None, None),
        };
        let t = Arc::new(LazyTask {
            engine: engine.clone(),
            req,
            task: task.use_task(),
            planner: Mutex::new(planner),
            changed: watch::channel(0).0,
            parents,
            reporter,
            reported: tokio::sync::Mutex::new(BTreeSet::new()),
            verifying: AtomicBool::new(false),
            filling: Mutex::new(BTreeSet::new()),
            decisions,
            handle: tokio::runtime::Handle::current(),
            stats: LazyStats::default(),
        });
        if t.reporter.is_some() {
            // Pieces already stored are announced at once.
            let t2 = t.clone();
            tokio::spawn(async move { t2.report().await });
        }
        t
    }

    /// The task.
    pub fn task(&self) -> &Arc<Task> {
        &self.task
    }

    /// Content length.
    pub fn len(&self) -> u64 {
        self.task.content_length()
    }

    /// Whether the task is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Planner> {
        self.planner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn check_removed(&self) -> Result<(), LazyError> {
        if self.task.is_removed() {
            return Err(LazyError::Removed {
                task_id: self.task.id.clone(),
            });
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset`, fetching what is not stored. With
    /// `fresh`, the bytes failed the reader's check: they are dropped from the
    /// store and fetched again from the origin.
    pub async fn read(
        self: &Arc<Self>,
        offset: u64,
        len: u64,
        fresh: bool,
    ) -> Result<Vec<u8>, LazyError> {
        let Some(end) = self.begin_read(offset, len, fresh)? else {
            return Ok(Vec::new());
        };
        self.fill(offset, end, fresh).await?;
        let t = self.clone();
        crate::storage::blocking::blocking(move || t.stored(offset, end))
            .await
            .map_err(|source| StoreError::Io {
                path: self.task.path().to_path_buf(),
                source,
            })?
    }

    /// [`LazyTask::read`] from a thread outside the runtime (FUSE workers): the stored bytes
    /// are read on the calling thread, without a hop to the blocking pool.
    pub fn read_blocking(
        self: &Arc<Self>,
        offset: u64,
        len: u64,
        fresh: bool,
    ) -> Result<Vec<u8>, LazyError> {
        let Some(end) = self.begin_read(offset, len, fresh)? else {
            return Ok(Vec::new());
        };
        crate::storage::blocking::as_blocking_caller(|| {
            self.handle.block_on(self.fill(offset, end, fresh))
        })?;
        self.stored(offset, end)
    }

    /// Checks a read of `len` bytes at `offset` and, with `fresh`, drops those bytes; the
    /// read's end, or `None` for an empty read.
    fn begin_read(&self, offset: u64, len: u64, fresh: bool) -> Result<Option<u64>, LazyError> {
        let length = self.task.content_length();
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= length)
            .ok_or_else(|| LazyError::OutOfRange {
                task_id: self.task.id.clone(),
                start: offset,
                end: offset.saturating_add(len),
                length,
            })?;
        if len == 0 {
            return Ok(None);
        }
        if fresh {
            self.drop_range(offset, end);
        }
        Ok(Some(end))
    }

    /// The stored bytes `offset..end` (blocking file I/O).
    fn stored(&self, offset: u64, end: u64) -> Result<Vec<u8>, LazyError> {
        let mut data = vec![0u8; (end - offset) as usize];
        self.task.read_at(offset, &mut data)?;
        self.check_removed()?;
        self.stats
            .read_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.engine.metrics.lazy("local", data.len() as u64);
        Ok(data)
    }

    /// Fetches until every byte of `start..end` is stored.
    async fn fill(self: &Arc<Self>, start: u64, end: u64, fresh: bool) -> Result<(), LazyError> {
        if self.task.is_complete() && !fresh {
            return Ok(());
        }
        loop {
            self.check_removed()?;
            let mut changed = self.changed.subscribe();
            let mut stored = self.task.subscribe();
            let task = &self.task;
            if !fresh && self.engine.is_downloading(&task.id) {
                // A whole-task download runs: ask it for these pieces first.
                let needed = self.lock().needed(start, end, |n| task.has_piece(n));
                if needed.is_empty() {
                    return Ok(());
                }
                for n in needed {
                    task.want(n);
                }
            } else {
                if !fresh {
                    // Parents that just joined may not have said what they hold yet:
                    // give them a moment before going to the origin.
                    if let Some(p) = &self.parents {
                        if let Some(wait) = p.settling() {
                            let notified = p.changed().notified();
                            let _ = tokio::time::timeout(wait, notified).await;
                            continue;
                        }
                    }
                }
                let plan = self.lock().plan(
                    start,
                    end,
                    |n| task.has_piece(n),
                    |n| self.parents.as_ref().and_then(|p| p.holder(n)),
                    fresh,
                );
                if plan.ready() {
                    return Ok(());
                }
                if !plan.fetches.is_empty() {
                    let results = futures_util::future::join_all(
                        plan.fetches.into_iter().map(|f| self.run_fetch(f)),
                    )
                    .await;
                    for r in results {
                        r?;
                    }
                    continue;
                }
            }
            // Another reader or the download fetches these bytes: wait for news.
            tokio::select! {
                _ = changed.changed() => {}
                _ = stored.changed() => {}
            }
        }
    }

    async fn run_fetch(self: &Arc<Self>, f: Fetch) -> Result<(), LazyError> {
        match f {
            Fetch::Range { start, end } => {
                let r = self.fetch_range(start, end).await;
                let (covered, touched) = {
                    let mut pl = self.lock();
                    (pl.range_done(start, end, r.is_ok()), pl.pieces(start, end))
                };
                self.bump();
                if r.is_ok() {
                    self.stats
                        .origin_bytes
                        .fetch_add(end - start, Ordering::Relaxed);
                    self.engine.metrics.lazy("origin", end - start);
                    self.commit(covered).await?;
                    if self.reporter.is_some() {
                        // With P2P, pieces are what peers exchange: complete the ones
                        // this read touched, so the next node gets them from us.
                        for n in touched {
                            self.complete_piece(n);
                        }
                    }
                }
                r
            }
            Fetch::Piece { number, parent } => {
                let p = self
                    .parents
                    .as_ref()
                    .and_then(|s| Some((s, s.parent(parent)?)));
                let ok = match &p {
                    Some((_, q)) => {
                        self.engine
                            .peers
                            .fetch_piece_from(&self.task, number, q)
                            .await
                    }
                    None => false,
                };
                let (off, len) =
                    piece_range(number, self.task.content_length(), self.task.piece_length());
                {
                    let mut pl = self.lock();
                    pl.piece_done(number);
                    if ok {
                        pl.committed(number);
                    } else {
                        // The failed transfer may have written over bytes of the piece.
                        pl.forget(off, off + len);
                    }
                }
                self.bump();
                if let Some((set, q)) = p {
                    if ok {
                        set.fetched(parent);
                        self.stats.parent_bytes.fetch_add(len, Ordering::Relaxed);
                        self.engine.metrics.lazy("parent", len);
                        self.report().await;
                        self.maybe_complete();
                    } else if set.fail(parent) {
                        if let Some((r, _)) = &self.reporter {
                            r.send(R::DownloadPieceFailedRequest(DownloadPieceFailedRequest {
                                piece_number: Some(number),
                                parent_id: q.id.clone(),
                                temporary: false,
                            }))
                            .await;
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// GETs bytes `start..end` from the origin into the content file, with retries.
    async fn fetch_range(&self, start: u64, end: u64) -> Result<(), LazyError> {
        let what = format!("bytes {start}..{end}");
        self.engine
            .fetch_origin_range(&self.req, &self.task, start, end, &what)
            .await
            .map_err(|e| match e {
                DownloadError::Origin { url, message } => LazyError::Origin { url, message },
                e => e.into(),
            })?;
        self.engine.metrics.traffic("back_to_source", end - start);
        Ok(())
    }

    /// Commits pieces whose bytes are all present, with their CRC.
    async fn commit(self: &Arc<Self>, pieces: Vec<u32>) -> Result<(), LazyError> {
        if pieces.is_empty() {
            return Ok(());
        }
        for n in pieces {
            let t = self.task.clone();
            let (off, len) = piece_range(n, t.content_length(), t.piece_length());
            let crc = crate::storage::blocking::blocking(move || {
                let mut buf = vec![0u8; len as usize];
                t.read_at(off, &mut buf).map(|()| crc32fast::hash(&buf))
            })
            .await
            .map_err(|source| StoreError::Io {
                path: self.task.path().to_path_buf(),
                source,
            })??;
            self.engine.store().commit_piece(
                &self.task,
                n,
                PieceMeta {
                    length: len,
                    crc32: crc,
                },
            );
            self.lock().committed(n);
        }
        self.bump();
        self.report().await;
        self.maybe_complete();
        Ok(())
    }

    /// Fetches bytes `start..end` in the background: 16 MiB at a time, one
    /// background fetch at a time per engine, beside on-demand reads.
    pub async fn prefetch(self: &Arc<Self>, start: u64, end: u64) -> Result<(), LazyError> {
        let end = end.min(self.task.content_length());
        let mut pos = start;
        while pos < end {
            let to = end.min(pos + MAX_RANGE);
            self.background_fill(pos, to).await?;
            pos = to;
        }
        Ok(())
    }

    /// [`Self::fill`] in the background: one background fetch at a time per engine, the bytes
    /// it fetched charged to `download.backgroundRateLimit` afterwards (waiting there keeps
    /// the average).
    async fn background_fill(self: &Arc<Self>, start: u64, end: u64) -> Result<(), LazyError> {
        let _permit = self.engine.background_fill.acquire().await;
        let fetched = || {
            self.stats.origin_bytes.load(Ordering::Relaxed)
                + self.stats.parent_bytes.load(Ordering::Relaxed)
        };
        let before = fetched();
        let r = self.fill(start, end, false).await;
        self.engine
            .background_limiter
            .acquire(fetched().saturating_sub(before))
            .await;
        r
    }

    /// Fetches the rest of piece `number` in the background, one piece at a
    /// time per engine so on-demand reads keep the bandwidth.
    fn complete_piece(self: &Arc<Self>, number: u32) {
        if self.task.has_piece(number)
            || !self
                .filling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(number)
        {
            return;
        }
        let t = self.clone();
        tokio::spawn(async move {
            let (off, len) = piece_range(number, t.task.content_length(), t.task.piece_length());
            if let Err(e) = t.background_fill(off, off + len).await {
                tracing::debug!(task_id = %t.task.id, piece = number, error = %e, "completing a piece failed");
            }
            t.filling
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&number);
        });
    }

    /// Announces committed pieces to the scheduler.
    async fn report(&self) {
        if let Some((r, back_to_source)) = &self.reporter {
            let mut sent = self.reported.lock().await;
            crate::download::report_pieces(&self.task, r, *back_to_source, &mut sent).await;
        }
    }

    /// With every piece present, checks the digest and completes the task (a
    /// whole-task download that runs does that itself).
    fn maybe_complete(self: &Arc<Self>) {
        if self.task.is_complete()
            || !self.task.missing_pieces().is_empty()
            || self.engine.is_downloading(&self.task.id)
            || self.verifying.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let t = self.clone();
        tokio::spawn(async move {
            let r = t.verify().await;
            t.verifying.store(false, Ordering::Release);
            if let Err(e) = r {
                tracing::warn!(task_id = %t.task.id, error = %e, "completing a range-read task failed");
            }
        });
    }

    async fn verify(self: &Arc<Self>) -> Result<(), LazyError> {
        let task = self.task.clone();
        if let Some(want) = self.req.digest.clone() {
            let algorithm = want.algorithm.clone();
            let t = task.clone();
            let got = tokio::task::spawn_blocking(move || {
                let mut h = ContentHasher::new(&algorithm);
                h.update_from(&t, 0, t.content_length())
                    .map(|()| h.finish())
            })
            .await
            .map_err(|e| StoreError::Io {
                path: task.path().to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })??;
            if got != want.encoded {
                // Some piece is wrong and nothing says which: fetch everything again.
                self.engine.metrics.digest_mismatches.inc();
                tracing::warn!(task_id = %task.id, url = %self.req.url,
                    "content digest {}:{got} does not match {want}; dropping the range-read pieces", want.algorithm);
                let all: Vec<u32> = (0..task.piece_count()).collect();
                self.engine.store().drop_pieces(&task, &all);
                let mut pl = self.lock();
                pl.forget(0, task.content_length());
                drop(pl);
                self.bump();
                return Ok(());
            }
        }
        self.engine.store().mark_succeeded(&task).await?;
        tracing::info!(task_id = %task.id, bytes = task.content_length(), "range-read task complete");
        if let Some((r, back_to_source)) = &self.reporter {
            self.report().await;
            r.send(if *back_to_source {
                R::DownloadPeerBackToSourceFinishedRequest(
                    DownloadPeerBackToSourceFinishedRequest {},
                )
            } else {
                R::DownloadPeerFinishedRequest(DownloadPeerFinishedRequest {})
            })
            .await;
        }
        Ok(())
    }

    /// Drops stored bytes `start..end` (they failed a check): the committed
    /// pieces holding them are uncommitted, their other bytes kept as partial.
    fn drop_range(&self, start: u64, end: u64) {
        let mut pl = self.lock();
        let pieces: Vec<u32> = pl
            .pieces(start, end)
            .filter(|n| self.task.has_piece(*n))
            .collect();
        self.engine.store().drop_pieces(&self.task, &pieces);
        for n in &pieces {
            pl.uncommitted(*n);
        }
        pl.forget(start, end);
        drop(pl);
        self.stats
            .dropped_bytes
            .fetch_add(end - start, Ordering::Relaxed);
        tracing::warn!(task_id = %self.task.id, start, end, "dropped bytes that failed a check; fetching them from the origin");
    }
}
