//! `dfdaemon.v2.DfdaemonDownload` on a unix socket: the download API dfget uses.

use crate::download::{DownloadRequest, Engine, Started};
use crate::storage::{Task, TaskStatus};
use common::id::{self, BlobDigest};
use dragonfly_api::common::v2::{Download, Piece, Range, TrafficType};
use dragonfly_api::dfdaemon::v2::dfdaemon_download_server::{
    DfdaemonDownload, DfdaemonDownloadServer,
};
use dragonfly_api::dfdaemon::v2::{
    download_task_response, DeleteCacheTaskRequest, DeleteLocalTaskRequest, DeleteTaskRequest,
    DownloadCacheTaskRequest, DownloadCacheTaskResponse, DownloadPersistentCacheTaskRequest,
    DownloadPersistentCacheTaskResponse, DownloadPersistentTaskRequest,
    DownloadPersistentTaskResponse, DownloadPieceFinishedResponse, DownloadTaskRequest,
    DownloadTaskResponse, DownloadTaskStartedResponse, ListLocalPersistentCacheTasksRequest,
    ListLocalPersistentCacheTasksResponse, ListLocalPersistentTasksRequest,
    ListLocalPersistentTasksResponse, ListLocalTasksRequest, ListLocalTasksResponse,
    ListTaskEntriesRequest, ListTaskEntriesResponse, StatCacheTaskRequest,
    StatLocalPersistentCacheTaskRequest, StatLocalPersistentCacheTaskResponse,
    StatLocalPersistentTaskRequest, StatLocalPersistentTaskResponse, StatLocalTaskRequest,
    StatLocalTaskResponse, StatPersistentCacheTaskRequest, StatPersistentTaskRequest,
    StatTaskRequest, UploadPersistentCacheTaskRequest, UploadPersistentTaskRequest,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The download service.
pub struct DownloadService {
    engine: Arc<Engine>,
    host_id: String,
}

impl DownloadService {
    pub fn new(engine: Arc<Engine>, host_id: String) -> Self {
        DownloadService { engine, host_id }
    }

    pub fn into_server(self) -> DfdaemonDownloadServer<Self> {
        DfdaemonDownloadServer::new(self)
    }
}

/// Starts (or joins) a download and returns the `DownloadTask` response stream
/// (shared by the download API and the upload service's seed-peer trigger).
pub async fn download_task_stream(
    engine: Arc<Engine>,
    host_id: String,
    d: Download,
) -> Result<ResponseStream<DownloadTaskResponse>, Status> {
    {
        let engine = &engine;
        let host_id = host_id.as_str();
        if d.url.is_empty() {
            return Err(Status::invalid_argument("download.url is required"));
        }
        let task_id = task_id_of(&d)?;
        let digest = match d.digest.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) if s.starts_with("crc32:") => None,
            Some(s) => Some(BlobDigest::parse(s).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "digest {s:?} is not sha256:<64 hex> or sha512:<128 hex>"
                ))
            })?),
        }
        .or_else(|| BlobDigest::from_blob_url(&d.url));
        if let Some(pl) = d.piece_length {
            if !common::piece::valid_user_piece_length(pl) {
                return Err(Status::invalid_argument(
                    "piece_length must be between 4 MiB and 1 GiB",
                ));
            }
        }
        let cached_before = engine
            .store()
            .get(&task_id)
            .map(|t| t.is_complete())
            .unwrap_or(false);
        if !cached_before && d.disable_back_to_source && !engine.has_scheduler() {
            return Err(Status::failed_precondition(format!(
                    "task {task_id} is not in the local cache, no peer has it (no scheduler is configured) and back-to-source is disabled"
                )));
        }
        let req = DownloadRequest {
            task_id: task_id.clone(),
            url: d.url.clone(),
            headers: header_map(&d.request_header)?,
            // The client's own credentials (in `headers`); dfdaemon's are never lent.
            auth: None,
            digest,
            piece_length: d.piece_length,
            parents: Vec::new(),
            disable_back_to_source: d.disable_back_to_source,
            need_back_to_source: d.need_back_to_source,
            reporter: None,
            parent_updates: None,
        };
        let started = engine
            .start(req)
            .await
            .map_err(|e| super::download_status(&e))?;
        let (task, cached) = match started {
                Started::Stored { task, cached } => (task, cached),
                Started::Origin(r) => return Err(origin_status(r.status, &r.body)),
                Started::NotCacheable(_) => {
                    return Err(Status::failed_precondition(format!(
                        "origin of {} sent no content length or an encoded body; it cannot be downloaded through the piece store",
                        d.url
                    )))
                }
            };
        let host_id = host_id.to_string();
        let peer_id = common::id::peer_id(&host_id, rand::random());
        let metrics = engine.metrics().clone();
        let output = d.output_path.clone().map(PathBuf::from);
        let (force_link, overwrite) = (d.force_hard_link, d.overwrite);
        let range = d.range;
        let stream = async_stream(move |tx| async move {
            let _use = task.use_task();
            let meta = task.meta();
            let traffic = if cached {
                TrafficType::LocalPeer
            } else {
                TrafficType::BackToSource
            };
            let have: Vec<Piece> = meta
                .pieces
                .keys()
                .filter_map(|n| piece_of(&task, *n, TrafficType::LocalPeer))
                .collect();
            let started = DownloadTaskResponse {
                host_id: host_id.clone(),
                task_id: task.id.clone(),
                peer_id: peer_id.clone(),
                response: Some(
                    download_task_response::Response::DownloadTaskStartedResponse(
                        DownloadTaskStartedResponse {
                            content_length: meta.content_length,
                            range: range.map(|r| Range {
                                start: r.start,
                                length: r.length,
                            }),
                            response_header: meta
                                .content_type
                                .iter()
                                .map(|c| ("Content-Type".to_string(), c.clone()))
                                .collect(),
                            pieces: have.clone(),
                            is_finished: meta.status == TaskStatus::Succeeded,
                        },
                    ),
                ),
            };
            if tx.send(Ok(started)).await.is_err() {
                return;
            }
            let count = task.piece_count();
            for number in 0..count {
                if let Err(e) = task.wait_piece(number).await {
                    let _ = tx.send(Err(super::store_status(&e))).await;
                    return;
                }
                if have.iter().any(|p| p.number == number) {
                    continue;
                }
                let Some(piece) = piece_of(&task, number, traffic) else {
                    continue;
                };
                let msg = DownloadTaskResponse {
                    host_id: host_id.clone(),
                    task_id: task.id.clone(),
                    peer_id: peer_id.clone(),
                    response: Some(
                        download_task_response::Response::DownloadPieceFinishedResponse(
                            DownloadPieceFinishedResponse { piece: Some(piece) },
                        ),
                    ),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            if let Err(e) = task.wait_complete().await {
                let _ = tx.send(Err(super::store_status(&e))).await;
                return;
            }
            if cached {
                metrics.traffic("local_cache", meta.content_length);
            }
            if let Some(out) = output {
                let content = task.path().to_path_buf();
                let r = tokio::task::spawn_blocking(move || {
                    link_or_copy(&content, &out, force_link, overwrite)
                })
                .await
                .unwrap_or_else(|e| Err(Status::internal(e.to_string())));
                if let Err(s) = r {
                    let _ = tx.send(Err(s)).await;
                }
            }
        });
        Ok(stream)
    }
}

/// Task ID of a `Download`, as Dragonfly computes it.
pub fn task_id_of(d: &Download) -> Result<String, Status> {
    if let Some(content) = &d.content_for_calculating_task_id {
        use sha2::Digest;
        return Ok(hex::encode(sha2::Sha256::digest(content.as_bytes())));
    }
    if d.enable_task_id_based_blob_digest {
        if let Some(dg) = BlobDigest::from_blob_url(&d.url) {
            return Ok(dg.encoded);
        }
    }
    let filtered = if d.filtered_query_params.is_empty() {
        id::default_filtered_query_params()
    } else {
        d.filtered_query_params.clone()
    };
    id::url_task_id(&id::UrlTaskId {
        url: &d.url,
        tag: d.tag.as_deref().filter(|s| !s.is_empty()),
        application: d.application.as_deref().filter(|s| !s.is_empty()),
        piece_length: d.piece_length,
        filtered_query_params: &filtered,
    })
    .map_err(|e| Status::invalid_argument(e.to_string()))
}

fn header_map(h: &std::collections::HashMap<String, String>) -> Result<HeaderMap, Status> {
    let mut out = HeaderMap::new();
    for (k, v) in h {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| Status::invalid_argument(format!("invalid header name {k:?}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| Status::invalid_argument(format!("invalid value for header {k:?}")))?;
        out.append(name, value);
    }
    out.remove(http::header::HOST);
    crate::backend::strip_hop_by_hop(&mut out);
    Ok(out)
}

fn piece_of(task: &Task, number: u32, traffic: TrafficType) -> Option<Piece> {
    let meta = task.meta();
    let p = meta.pieces.get(&number)?;
    let (offset, length) =
        common::piece::piece_range(number, meta.content_length, meta.piece_length);
    Some(Piece {
        number,
        parent_id: None,
        offset,
        length,
        digest: p.digest(),
        content: None,
        traffic_type: Some(traffic as i32),
        cost: None,
        created_at: None,
    })
}

/// Hard-links the task's content to `out`, or copies it when linking fails
/// (another filesystem) and `force_hard_link` is not set.
fn link_or_copy(
    content: &Path,
    out: &Path,
    force_hard_link: bool,
    overwrite: bool,
) -> Result<(), Status> {
    if !out.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "output path {} must be absolute",
            out.display()
        )));
    }
    if out.exists() {
        if !overwrite {
            return Err(Status::already_exists(format!(
                "{} already exists",
                out.display()
            )));
        }
        std::fs::remove_file(out)
            .map_err(|e| Status::internal(format!("cannot replace {}: {e}", out.display())))?;
    }
    match std::fs::hard_link(content, out) {
        Ok(()) => Ok(()),
        Err(e) if force_hard_link => Err(Status::failed_precondition(format!(
            "cannot hard-link {} to {}: {e}",
            content.display(),
            out.display()
        ))),
        Err(_) => std::fs::copy(content, out)
            .map(|_| ())
            .map_err(|e| Status::internal(format!("cannot write {}: {e}", out.display()))),
    }
}

fn origin_status(status: http::StatusCode, body: &[u8]) -> Status {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]).to_string();
    let msg = format!("origin answered {status}: {}", text.trim());
    match status.as_u16() {
        401 => Status::unauthenticated(msg),
        403 => Status::permission_denied(msg),
        404 => Status::not_found(msg),
        400..=499 => Status::failed_precondition(msg),
        _ => Status::unavailable(msg),
    }
}

#[tonic::async_trait]
impl DfdaemonDownload for DownloadService {
    type DownloadTaskStream = ResponseStream<DownloadTaskResponse>;

    async fn download_task(
        &self,
        request: Request<DownloadTaskRequest>,
    ) -> Result<Response<Self::DownloadTaskStream>, Status> {
        let d = request
            .into_inner()
            .download
            .ok_or_else(|| Status::invalid_argument("download is required"))?;
        let stream = download_task_stream(self.engine.clone(), self.host_id.clone(), d).await?;
        Ok(Response::new(stream))
    }

    async fn stat_task(
        &self,
        _r: Request<StatTaskRequest>,
    ) -> Result<Response<dragonfly_api::common::v2::Task>, Status> {
        Err(Status::unimplemented(
            "StatTask needs a scheduler (P2P); use StatLocalTask",
        ))
    }

    async fn stat_local_task(
        &self,
        r: Request<StatLocalTaskRequest>,
    ) -> Result<Response<StatLocalTaskResponse>, Status> {
        let id = r.into_inner().task_id;
        let task = self
            .engine
            .store()
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("task {id} is not in the local store")))?;
        Ok(Response::new(local_task(&task)))
    }

    async fn list_local_tasks(
        &self,
        _r: Request<ListLocalTasksRequest>,
    ) -> Result<Response<ListLocalTasksResponse>, Status> {
        let tasks = self
            .engine
            .store()
            .tasks()
            .iter()
            .map(|t| local_task(t))
            .collect();
        Ok(Response::new(ListLocalTasksResponse { tasks }))
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
        self.delete(&r.into_inner().task_id)
    }

    async fn delete_local_task(
        &self,
        r: Request<DeleteLocalTaskRequest>,
    ) -> Result<Response<()>, Status> {
        self.delete(&r.into_inner().task_id)
    }

    async fn delete_host(&self, _r: Request<()>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("DeleteHost needs a scheduler (P2P)"))
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
    type DownloadPersistentTaskStream = ResponseStream<DownloadPersistentTaskResponse>;
    async fn download_persistent_task(
        &self,
        _r: Request<DownloadPersistentTaskRequest>,
    ) -> Result<Response<Self::DownloadPersistentTaskStream>, Status> {
        Err(unsupported("persistent tasks"))
    }
    async fn upload_persistent_task(
        &self,
        _r: Request<UploadPersistentTaskRequest>,
    ) -> Result<Response<dragonfly_api::common::v2::PersistentTask>, Status> {
        Err(unsupported("persistent tasks"))
    }
    async fn stat_persistent_task(
        &self,
        _r: Request<StatPersistentTaskRequest>,
    ) -> Result<Response<dragonfly_api::common::v2::PersistentTask>, Status> {
        Err(unsupported("persistent tasks"))
    }
    async fn stat_local_persistent_task(
        &self,
        _r: Request<StatLocalPersistentTaskRequest>,
    ) -> Result<Response<StatLocalPersistentTaskResponse>, Status> {
        Err(unsupported("persistent tasks"))
    }
    async fn list_local_persistent_tasks(
        &self,
        _r: Request<ListLocalPersistentTasksRequest>,
    ) -> Result<Response<ListLocalPersistentTasksResponse>, Status> {
        Err(unsupported("persistent tasks"))
    }
    type DownloadPersistentCacheTaskStream = ResponseStream<DownloadPersistentCacheTaskResponse>;
    async fn download_persistent_cache_task(
        &self,
        _r: Request<DownloadPersistentCacheTaskRequest>,
    ) -> Result<Response<Self::DownloadPersistentCacheTaskStream>, Status> {
        Err(unsupported("persistent cache tasks"))
    }
    async fn upload_persistent_cache_task(
        &self,
        _r: Request<UploadPersistentCacheTaskRequest>,
    ) -> Result<Response<dragonfly_api::common::v2::PersistentCacheTask>, Status> {
        Err(unsupported("persistent cache tasks"))
    }
    async fn stat_persistent_cache_task(
        &self,
        _r: Request<StatPersistentCacheTaskRequest>,
    ) -> Result<Response<dragonfly_api::common::v2::PersistentCacheTask>, Status> {
        Err(unsupported("persistent cache tasks"))
    }
    async fn stat_local_persistent_cache_task(
        &self,
        _r: Request<StatLocalPersistentCacheTaskRequest>,
    ) -> Result<Response<StatLocalPersistentCacheTaskResponse>, Status> {
        Err(unsupported("persistent cache tasks"))
    }
    async fn list_local_persistent_cache_tasks(
        &self,
        _r: Request<ListLocalPersistentCacheTasksRequest>,
    ) -> Result<Response<ListLocalPersistentCacheTasksResponse>, Status> {
        Err(unsupported("persistent cache tasks"))
    }
}

impl DownloadService {
    fn delete(&self, id: &str) -> Result<Response<()>, Status> {
        let store = self.engine.store();
        if let Some(t) = store.get(id) {
            if t.in_use() {
                return Err(Status::failed_precondition(format!(
                    "task {id} is being read or written"
                )));
            }
        }
        match store.remove(id) {
            Ok(Some(_)) => Ok(Response::new(())),
            Ok(None) => Err(Status::not_found(format!(
                "task {id} is not in the local store"
            ))),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}

pub(crate) fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!("{what} are not supported by this dfdaemon"))
}

pub(crate) fn local_task(t: &Task) -> StatLocalTaskResponse {
    let m = t.meta();
    StatLocalTaskResponse {
        task_id: m.id.clone(),
        piece_length: Some(m.piece_length),
        content_length: Some(m.content_length),
        response_header: m
            .content_type
            .iter()
            .map(|c| ("Content-Type".to_string(), c.clone()))
            .collect(),
        ..Default::default()
    }
}

/// A response stream fed by a spawned task through a bounded channel.
pub(crate) fn async_stream<T, F, Fut>(f: F) -> ResponseStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
