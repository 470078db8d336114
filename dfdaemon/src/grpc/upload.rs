//! `dfdaemon.v2.DfdaemonUpload` (TCP :4000): what other peers and schedulers
//! ask of this peer: which pieces it has (`SyncPieces`), its live load
//! (`SyncHost`), seed-peer downloads (`DownloadTask`), task stat and delete.

use super::download::{
    async_stream, download_task_stream, local_task, unsupported, ResponseStream,
};
use crate::download::Engine;
use crate::storage::Task;
use dragonfly_api::common::v2::{Host, Network, Piece, SizeScope, TrafficType};
use dragonfly_api::dfdaemon::v2::dfdaemon_upload_server::{DfdaemonUpload, DfdaemonUploadServer};
use dragonfly_api::dfdaemon::v2::*;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// How often `SyncHost` sends this host's load.
pub const SYNC_HOST_INTERVAL: Duration = Duration::from_secs(1);

/// What this host announces about itself.
#[derive(Debug, Clone)]
pub struct HostInfo {
    pub id: String,
    pub hostname: String,
    pub ip: String,
    /// Upload gRPC port.
    pub port: u16,
    /// Vortex TCP port.
    pub vortex_tcp_port: u16,
    /// Vortex QUIC port (None: not served).
    pub vortex_quic_port: Option<u16>,
    pub proxy_port: u16,
    pub idc: String,
    pub location: String,
    pub disable_shared: bool,
    /// Upload bandwidth limit in bits per second (0: unknown).
    pub max_tx_bandwidth: u64,
    /// Announced as a seed peer (host type 1, super seed).
    pub seed: bool,
}

impl HostInfo {
    /// As `common.v2.Host` (what AnnounceHost and SyncHost send).
    pub fn to_host(&self, tx_bps: u64) -> Host {
        Host {
            id: self.id.clone(),
            r#type: u32::from(self.seed),
            hostname: self.hostname.clone(),
            ip: self.ip.clone(),
            port: i32::from(self.port),
            download_port: i32::from(self.vortex_tcp_port),
            proxy_port: i32::from(self.proxy_port),
            os: std::env::consts::OS.to_string(),
            disable_shared: self.disable_shared,
            network: Some(Network {
                idc: Some(self.idc.clone()).filter(|s| !s.is_empty()),
                location: Some(self.location.clone()).filter(|s| !s.is_empty()),
                max_tx_bandwidth: self.max_tx_bandwidth,
                tx_bandwidth: Some(tx_bps),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The upload service.
pub struct UploadService {
    engine: Arc<Engine>,
    host: HostInfo,
    /// The SyncPieces streams open per task, in order of arrival (a seed peer's turns,
    /// [`common::swarm::offered_first`]).
    subscribers: Arc<Mutex<Subscribers>>,
    /// Hosts a caller may have this peer download from (`proxy.allowedRegistries`; empty:
    /// any).
    allowed: Vec<String>,
}

#[derive(Default)]
struct Subscribers {
    next: u64,
    by_task: HashMap<String, Vec<u64>>,
}

/// A SyncPieces stream's place among its task's subscribers; leaves when dropped.
struct Subscription {
    all: Arc<Mutex<Subscribers>>,
    task_id: String,
    id: u64,
}

impl Subscription {
    fn join(all: &Arc<Mutex<Subscribers>>, task_id: &str) -> Subscription {
        let mut s = all.lock().unwrap_or_else(|p| p.into_inner());
        s.next += 1;
        let id = s.next;
        s.by_task.entry(task_id.to_string()).or_default().push(id);
        Subscription {
            all: all.clone(),
            task_id: task_id.to_string(),
            id,
        }
    }

    /// This stream's index among its task's subscribers, and their number.
    fn turn(&self) -> (usize, usize) {
        let s = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let list = s
            .by_task
            .get(&self.task_id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let index = list.iter().position(|i| *i == self.id).unwrap_or(0);
        (index, list.len())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut s = self.all.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = s.by_task.get_mut(&self.task_id) {
            list.retain(|i| *i != self.id);
            if list.is_empty() {
                s.by_task.remove(&self.task_id);
            }
        }
    }
}

impl UploadService {
    pub fn new(engine: Arc<Engine>, host: HostInfo) -> Self {
        UploadService {
            engine,
            host,
            subscribers: Arc::default(),
            allowed: Vec::new(),
        }
    }

    /// Only URLs on these hosts may be downloaded for a remote caller, as through the proxy
    /// (`proxy.allowedRegistries`: `host`, `host:port`, `*.suffix`; empty: any).
    pub fn with_allowed_hosts(mut self, allowed: Vec<String>) -> Self {
        self.allowed = allowed;
        self
    }

    /// Refuses a URL whose host is not allowed.
    fn check_allowed(&self, raw: &str) -> Result<(), Status> {
        let url = url::Url::parse(raw)
            .map_err(|e| Status::invalid_argument(format!("download.url {raw:?}: {e}")))?;
        let host = url
            .host_str()
            .ok_or_else(|| Status::invalid_argument(format!("download.url {raw:?} has no host")))?;
        let port = url.port_or_known_default().unwrap_or(0);
        if crate::proxy::host_allowed(&self.allowed, host, port) {
            return Ok(());
        }
        tracing::warn!(%host, port, "DownloadTask refused: not in proxy.allowedRegistries");
        Err(Status::permission_denied(format!(
            "{host}:{port} is not in proxy.allowedRegistries"
        )))
    }

    pub fn into_server(self) -> DfdaemonUploadServer<Self> {
        DfdaemonUploadServer::new(self)
    }

    fn task(&self, id: &str) -> Result<Arc<Task>, Status> {
        self.engine
            .store()
            .get(id)
            .ok_or_else(|| Status::not_found(format!("task {id} is not on this peer")))
    }

    /// This host as `common.v2.Host`, with the measured upload rate.
    fn host_message(&self, tx_bps: u64) -> Host {
        self.host.to_host(tx_bps)
    }
}

/// Dragonfly's size scope of a task.
pub fn size_scope(content_length: u64, piece_length: u64) -> SizeScope {
    match content_length {
        0 => SizeScope::Empty,
        1..=128 => SizeScope::Tiny,
        n if n <= piece_length => SizeScope::Small,
        _ => SizeScope::Normal,
    }
}

fn task_message(t: &Task) -> dragonfly_api::common::v2::Task {
    let m = t.meta();
    let pieces = m
        .pieces
        .iter()
        .map(|(n, p)| {
            let (offset, length) = common::piece::piece_range(*n, m.content_length, m.piece_length);
            Piece {
                number: *n,
                offset,
                length,
                digest: p.digest(),
                traffic_type: Some(TrafficType::LocalPeer as i32),
                ..Default::default()
            }
        })
        .collect();
    dragonfly_api::common::v2::Task {
        id: m.id.clone(),
        r#type: 0,
        url: m.url.clone(),
        digest: m.digest.clone(),
        content_length: m.content_length,
        piece_count: common::piece::piece_count(m.content_length, m.piece_length),
        size_scope: size_scope(m.content_length, m.piece_length) as i32,
        pieces,
        state: if t.is_complete() {
            "Succeeded"
        } else {
            "Running"
        }
        .to_string(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl DfdaemonUpload for UploadService {
    type DownloadTaskStream = ResponseStream<DownloadTaskResponse>;

    /// A scheduler asks this (seed) peer to download a task.
    async fn download_task(
        &self,
        request: Request<DownloadTaskRequest>,
    ) -> Result<Response<Self::DownloadTaskStream>, Status> {
        let mut d = request
            .into_inner()
            .download
            .ok_or_else(|| Status::invalid_argument("download is required"))?;
        // A remote caller never chooses where this peer writes files, nor a host the proxy
        // would not reach.
        d.output_path = None;
        self.check_allowed(&d.url)?;
        let s = download_task_stream(self.engine.clone(), self.host.id.clone(), d).await?;
        Ok(Response::new(s))
    }

    async fn stat_task(
        &self,
        r: Request<StatTaskRequest>,
    ) -> Result<Response<dragonfly_api::common::v2::Task>, Status> {
        let t = self.task(&r.into_inner().task_id)?;
        Ok(Response::new(task_message(&t)))
    }

    async fn stat_local_task(
        &self,
        r: Request<StatLocalTaskRequest>,
    ) -> Result<Response<StatLocalTaskResponse>, Status> {
        let t = self.task(&r.into_inner().task_id)?;
        Ok(Response::new(local_task(&t)))
    }

    async fn list_task_entries(
        &self,
        _r: Request<ListTaskEntriesRequest>,
    ) -> Result<Response<ListTaskEntriesResponse>, Status> {
        Err(Status::unimplemented(
            "recursive downloads are not supported",
        ))
    }

    async fn delete_task(&self, r: Request<DeleteTaskRequest>) -> Result<Response<()>, Status> {
        let id = r.into_inner().task_id;
        let t = self.task(&id)?;
        if t.in_use() {
            return Err(Status::failed_precondition(format!(
                "task {id} is being read or written"
            )));
        }
        self.engine
            .store()
            .remove(&id)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(()))
    }

    type SyncPiecesStream = ResponseStream<SyncPiecesResponse>;

    /// Streams each interested piece's metadata as soon as this peer has it.
    async fn sync_pieces(
        &self,
        r: Request<SyncPiecesRequest>,
    ) -> Result<Response<Self::SyncPiecesStream>, Status> {
        let req = r.into_inner();
        if self.host.disable_shared {
            return Err(Status::permission_denied("this peer does not share pieces"));
        }
        let task = self.task(&req.task_id)?;
        let count = task.piece_count();
        let mut wanted: BTreeSet<u32> = req.interested_piece_numbers.iter().copied().collect();
        if let Some(bad) = wanted.iter().find(|n| **n >= count) {
            return Err(Status::invalid_argument(format!(
                "piece {bad} is out of range: task {} has {count} pieces",
                task.id
            )));
        }
        if wanted.is_empty() {
            wanted = (0..count).collect();
        }
        let (ip, port) = (self.host.ip.clone(), i32::from(self.host.vortex_tcp_port));
        let quic_port = self.host.vortex_quic_port.map(i32::from);
        // A seed peer still fetching the task takes turns offering new pieces.
        let seed = self.host.seed;
        let (piece_length, upload) = (task.piece_length(), self.host.max_tx_bandwidth / 8);
        let subscription = Subscription::join(&self.subscribers, &task.id);
        Ok(Response::new(async_stream(move |tx| async move {
            let _use = task.use_task();
            let _subscription = &subscription;
            let mut changed = task.subscribe();
            // When this stream first saw each piece it holds back. Once the piece's first
            // transfer is over, the first child passes it on and this stream is offered it only
            // when the task is complete; if that transfer does not finish within the hold
            // (the first child died or does not ask), it is offered here too.
            let mut seen: HashMap<u32, tokio::time::Instant> = HashMap::new();
            loop {
                let meta = task.meta();
                let now = tokio::time::Instant::now();
                let taking_turns = seed && !task.is_complete();
                let (index, count) = subscription.turn();
                let hold = common::swarm::offer_hold(piece_length, upload, count);
                let mut release: Option<tokio::time::Instant> = None;
                let ready: Vec<u32> = wanted
                    .iter()
                    .copied()
                    .filter(|n| meta.pieces.contains_key(n))
                    .filter(|n| {
                        if !taking_turns || common::swarm::offered_first(*n, index, count) {
                            return true;
                        }
                        if task.was_uploaded(*n) {
                            return false;
                        }
                        let due = *seen.entry(*n).or_insert(now) + hold;
                        if due <= now {
                            return true;
                        }
                        release = Some(release.map_or(due, |r| r.min(due)));
                        false
                    })
                    .collect();
                for n in ready {
                    wanted.remove(&n);
                    let (offset, length) =
                        common::piece::piece_range(n, meta.content_length, meta.piece_length);
                    let msg = SyncPiecesResponse {
                        number: n,
                        offset,
                        length,
                        ip: ip.clone(),
                        tcp_port: Some(port),
                        quic_port,
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                if wanted.is_empty() {
                    return;
                }
                if let Some((reason, _)) = task.failure() {
                    let _ = tx.send(Err(Status::aborted(reason))).await;
                    return;
                }
                let wake = async {
                    match release {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = changed.changed() => if r.is_err() {
                        let _ = tx.send(Err(Status::aborted("task removed"))).await;
                        return;
                    },
                    () = wake => {}
                }
            }
        })))
    }

    type SyncHostStream = ResponseStream<Host>;

    /// Streams this host's load every second (used by children to weigh parents).
    async fn sync_host(
        &self,
        _r: Request<SyncHostRequest>,
    ) -> Result<Response<Self::SyncHostStream>, Status> {
        let this = UploadService {
            engine: self.engine.clone(),
            host: self.host.clone(),
            subscribers: self.subscribers.clone(),
            allowed: self.allowed.clone(),
        };
        Ok(Response::new(async_stream(move |tx| async move {
            let metrics = this.engine.metrics().clone();
            let mut last = metrics.uploaded_total();
            let mut tick = tokio::time::interval(SYNC_HOST_INTERVAL);
            loop {
                tick.tick().await;
                let now = metrics.uploaded_total();
                let bps = (now - last) * 8 * 1000 / (SYNC_HOST_INTERVAL.as_millis() as u64).max(1);
                last = now;
                if tx.send(Ok(this.host_message(bps))).await.is_err() {
                    return;
                }
            }
        })))
    }

    type DownloadCacheTaskStream = ResponseStream<DownloadCacheTaskResponse>;
    async fn download_cache_task(
        &self,
        _r: Request<DownloadCacheTaskRequest>,
    ) -> Result<Response<Self::DownloadCacheTaskStream>, Status> {
        Err(unsupported("cache tasks"))
    }
    async fn stat_cache_task(
        &self,
        _r: Request<StatCacheTaskRequest>,
    ) -> Result<Response<dragonfly_api::common::v2::CacheTask>, Status> {
        Err(unsupported("cache tasks"))
    }
    async fn delete_cache_task(
        &self,
        _r: Request<DeleteCacheTaskRequest>,
    ) -> Result<Response<()>, Status> {
        Err(unsupported("cache tasks"))
    }
    type SyncCachePiecesStream = ResponseStream<SyncCachePiecesResponse>;
    async fn sync_cache_pieces(
        &self,
        _r: Request<SyncCachePiecesRequest>,
    ) -> Result<Response<Self::SyncCachePiecesStream>, Status> {
        Err(unsupported("cache tasks"))
    }
    async fn download_cache_piece(
        &self,
        _r: Request<DownloadCachePieceRequest>,
    ) -> Result<Response<DownloadCachePieceResponse>, Status> {
        Err(unsupported("cache tasks"))
    }
    type DownloadPersistentTaskStream = ResponseStream<DownloadPersistentTaskResponse>;
    async fn download_persistent_task(
        &self,
        _r: Request<DownloadPersistentTaskRequest>,
    ) -> Result<Response<Self::DownloadPersistentTaskStream>, Status> {
        Err(unsupported("persistent tasks"))
    }
    type SyncPersistentPiecesStream = ResponseStream<SyncPersistentPiecesResponse>;
    async fn sync_persistent_pieces(
        &self,
        _r: Request<SyncPersistentPiecesRequest>,
    ) -> Result<Response<Self::SyncPersistentPiecesStream>, Status> {
        Err(unsupported("persistent tasks"))
    }
    async fn update_persistent_task(
        &self,
        _r: Request<UpdatePersistentTaskRequest>,
    ) -> Result<Response<()>, Status> {
        Err(unsupported("persistent tasks"))
    }
    async fn stat_persistent_task(
        &self,
        _r: Request<StatPersistentTaskRequest>,
    ) -> Result<Response<dragonfly_api::common::v2::PersistentTask>, Status> {
        Err(unsupported("persistent tasks"))
    }
    async fn delete_persistent_task(
        &self,
        _r: Request<DeletePersistentTaskRequest>,
    ) -> Result<Response<()>, Status> {
        Err(unsupported("persistent tasks"))
    }
    type DownloadPersistentCacheTaskStream = ResponseStream<DownloadPersistentCacheTaskResponse>;
    async fn download_persistent_cache_task(
        &self,
        _r: Request<DownloadPersistentCacheTaskRequest>,
    ) -> Result<Response<Self::DownloadPersistentCacheTaskStream>, Status> {
        Err(unsupported("persistent cache tasks"))
    }
    async fn update_persistent_cache_task(
        &self,
        _r: Request<UpdatePersistentCacheTaskRequest>,
    ) -> Result<Response<()>, Status> {
        Err(unsupported("persistent cache tasks"))
    }
    async fn stat_persistent_cache_task(
        &self,
        _r: Request<StatPersistentCacheTaskRequest>,
    ) -> Result<Response<dragonfly_api::common::v2::PersistentCacheTask>, Status> {
        Err(unsupported("persistent cache tasks"))
    }
    async fn delete_persistent_cache_task(
        &self,
        _r: Request<DeletePersistentCacheTaskRequest>,
    ) -> Result<Response<()>, Status> {
        Err(unsupported("persistent cache tasks"))
    }
    type SyncPersistentCachePiecesStream = ResponseStream<SyncPersistentCachePiecesResponse>;
    async fn sync_persistent_cache_pieces(
        &self,
        _r: Request<SyncPersistentCachePiecesRequest>,
    ) -> Result<Response<Self::SyncPersistentCachePiecesStream>, Status> {
        Err(unsupported("persistent cache tasks"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_scopes() {
        let p = 4 << 20;
        assert_eq!(size_scope(0, p), SizeScope::Empty);
        assert_eq!(size_scope(128, p), SizeScope::Tiny);
        assert_eq!(size_scope(129, p), SizeScope::Small);
        assert_eq!(size_scope(p, p), SizeScope::Small);
        assert_eq!(size_scope(p + 1, p), SizeScope::Normal);
    }
}
