//! The piece store as the blob source of the lazy-loading runtime: blob N of
//! an image is the blob-digest task of that blob, read by ranges through
//! [`LazyTask`], so a chunk fetched lazily on one node is a P2P source for the
//! next and a later pull of the blob through the mirror is a cache hit.

use super::{LazyError, LazyTask};
use crate::download::{DownloadRequest, Engine};
use common::id::BlobDigest;
use http::HeaderMap;
use nydus::image::ImageBlob;
use nydus::reader::BlobReader;
use std::io;
use std::sync::Arc;

/// One blob of an image.
pub struct BlobSource {
    /// How the blob's task is fetched (task ID = the blob digest).
    pub request: DownloadRequest,
    /// Its size as the image's blob table gives it.
    pub size: u64,
    open: tokio::sync::OnceCell<Arc<LazyTask>>,
}

impl BlobSource {
    pub fn new(request: DownloadRequest, size: u64) -> BlobSource {
        BlobSource {
            request,
            size,
            open: tokio::sync::OnceCell::new(),
        }
    }
}

/// The blobs of one image, read through the piece store.
pub struct StoreBlobs {
    engine: Arc<Engine>,
    handle: tokio::runtime::Handle,
    blobs: Vec<BlobSource>,
}

/// Errors naming a blob table entry that cannot be fetched.
#[derive(Debug, thiserror::Error)]
#[error("blob {id:?} of the image is not a sha256 digest")]
pub struct BadBlobId {
    pub id: String,
}

impl StoreBlobs {
    /// Blobs in blob-table order; reads run on `handle`'s runtime.
    pub fn new(
        engine: Arc<Engine>,
        handle: tokio::runtime::Handle,
        blobs: Vec<BlobSource>,
    ) -> StoreBlobs {
        StoreBlobs {
            engine,
            handle,
            blobs,
        }
    }

    /// The blobs of `table` in the repository `repo_url`
    /// (`<scheme>://<host>/v2/<name>`), each fetched with `headers`, the registry's challenges
    /// answered by `auth`.
    pub fn registry_sources(
        repo_url: &str,
        table: &[ImageBlob],
        headers: &HeaderMap,
        auth: Option<Arc<crate::registry_auth::RegistryAuth>>,
    ) -> Result<Vec<BlobSource>, BadBlobId> {
        table
            .iter()
            .map(|b| {
                let digest = BlobDigest::parse(&format!("sha256:{}", b.id))
                    .ok_or_else(|| BadBlobId { id: b.id.clone() })?;
                let url = format!("{}/blobs/{digest}", repo_url.trim_end_matches('/'));
                Ok(BlobSource::new(
                    DownloadRequest {
                        task_id: digest.encoded.clone(),
                        url,
                        headers: headers.clone(),
                        auth: auth.clone(),
                        digest: Some(digest),
                        piece_length: None,
                        parents: Vec::new(),
                        disable_back_to_source: false,
                        need_back_to_source: false,
                        reporter: None,
                        parent_updates: None,
                    },
                    b.compressed_size,
                ))
            })
            .collect()
    }

    /// Checks that the registry lets this node read the image's blobs (a `HEAD` of the first
    /// blob, its challenge answered with the credentials), so an image whose credentials are
    /// missing or refused fails to mount with that error instead of failing its reads later.
    /// An unreachable registry or a server error is not a failure here: peers may serve the
    /// blobs.
    pub async fn check_access(&self) -> Result<(), String> {
        let Some(b) = self.blobs.first() else {
            return Ok(());
        };
        let r = &b.request;
        let status = match self
            .engine
            .backend()
            .head(
                &r.url,
                &r.headers,
                r.auth.as_deref(),
                std::time::Duration::from_secs(30),
            )
            .await
        {
            Ok(s) => s,
            Err(e @ crate::backend::BackendError::Auth { .. }) => return Err(e.to_string()),
            Err(e) => {
                tracing::info!(url = r.url, error = %e, "registry not reachable; peers may serve");
                return Ok(());
            }
        };
        match status {
            http::StatusCode::UNAUTHORIZED | http::StatusCode::FORBIDDEN => {
                let why = match &r.auth {
                    Some(a) if !a.has_credentials() => format!(
                        "no credentials are configured for {} (runtime.auths, or Docker's \
                         config.json)",
                        a.registry()
                    ),
                    Some(a) => format!("the credentials for {} were refused", a.registry()),
                    None => "the request's own Authorization was refused".into(),
                };
                Err(format!("{}: the registry answered {status}: {why}", r.url))
            }
            http::StatusCode::NOT_FOUND => Err(format!(
                "{}: the registry has no such blob in this repository",
                r.url
            )),
            _ => Ok(()),
        }
    }

    /// The blob's task, once a read opened it.
    pub fn opened(&self, blob: u32) -> Option<&Arc<LazyTask>> {
        self.blobs.get(blob as usize)?.open.get()
    }

    /// Fetches bytes `start..end` of blob `blob` in the background
    /// ([`LazyTask::prefetch`]); `end` past the blob stops at its end (the
    /// blob's real end: its metadata after the data the blob table counts
    /// included).
    pub async fn prefetch(&self, blob: u32, start: u64, end: u64) -> Result<(), LazyError> {
        let Some(b) = self.blobs.get(blob as usize) else {
            return Ok(());
        };
        self.open(b).await?.prefetch(start, end).await
    }

    /// Number of blobs.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// Whether the image has no blob.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// The blob's task, opened on first use.
    async fn open(&self, b: &BlobSource) -> Result<Arc<LazyTask>, LazyError> {
        b.open
            .get_or_try_init(|| self.engine.open_lazy_held(b.request.clone()))
            .await
            .cloned()
    }
}

impl BlobReader for StoreBlobs {
    fn read_range(&self, blob: u32, offset: u64, len: u64, fresh: bool) -> io::Result<Vec<u8>> {
        let b = self
            .blobs
            .get(blob as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no blob {blob}")))?;
        if offset.checked_add(len).is_none_or(|end| end > b.size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{len} bytes at {offset} lie beyond the {}-byte blob {}",
                    b.size, b.request.task_id
                ),
            ));
        }
        self.handle
            .block_on(self.open(b))
            .and_then(|t| t.read_blocking(offset, len, fresh))
            .map_err(|e| match e {
                LazyError::OutOfRange { .. } => io::Error::new(io::ErrorKind::UnexpectedEof, e),
                e => io::Error::other(e),
            })
    }
}
