//! How a task's bytes reach the store: one [`Transport`] over the origin (HTTP range GETs
//! through the backend), Vortex over TCP and Vortex over QUIC. A transport writes the bytes into
//! the task's content file as they arrive and returns their CRC-32 (for a parent's piece, the
//! CRC-32 the parent sent, which the bytes matched); what to fetch, from where, and whether to
//! try again is the engine's business. Test builds wrap the transport to inject faults
//! ([`Faulty`], the `faultInjection` config section).

use crate::backend::{error_chain, parse_content_range, Backend};
use crate::config::Protocol;
use crate::parent::Parent;
use crate::rate_limit::RateLimiter;
use crate::storage::{StoreError, Task};
use crate::vortex::client::PieceSink;
use crate::vortex::quic::QuicClient;
use crate::vortex::VortexError;
use bytes::BytesMut;
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Bytes buffered before each write into the content file.
const WRITE_CHUNK: usize = 1024 * 1024;

/// Where bytes are fetched from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// The origin: a range GET of `url` with `headers` (`task_id` names the task to the
    /// backend, for its per-task redirect cache).
    Origin {
        task_id: &'a str,
        url: &'a str,
        headers: &'a HeaderMap,
        /// Answers the origin's `401` challenges.
        auth: Option<&'a crate::registry_auth::RegistryAuth>,
    },
    /// A parent: piece `number` over Vortex (QUIC when `download.protocol` is quic and the
    /// parent serves it, TCP otherwise).
    Parent { parent: &'a Parent, number: u32 },
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The origin could not be reached, answered an error, or the transfer broke off;
    /// `retry`: another attempt may succeed.
    #[error("{message}")]
    Origin { message: String, retry: bool },
    /// A parent failed or sent a bad piece.
    #[error(transparent)]
    Parent(#[from] VortexError),
    /// Writing into the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A transfer in progress.
pub type Fetching<'a> = Pin<Box<dyn Future<Output = Result<u32, TransportError>> + Send + 'a>>;

/// Fetches bytes of a task into its content file.
pub trait Transport: Send + Sync {
    /// Fetches bytes `start..end` of `task` from `source` (for a parent: exactly its piece)
    /// into the content file; their CRC-32. `what` names the bytes in errors.
    fn fetch<'a>(
        &'a self,
        source: Source<'a>,
        task: &'a Arc<Task>,
        start: u64,
        end: u64,
        what: &'a str,
    ) -> Fetching<'a>;
}

/// The transports of the network: the backend for the origin, Vortex for parents.
pub struct Network {
    backend: Arc<Backend>,
    limiter: Arc<RateLimiter>,
    /// How long a transfer may send nothing.
    timeout: Duration,
    protocol: Protocol,
    /// Created on first use.
    quic: OnceLock<Result<Arc<QuicClient>, String>>,
    /// Mutual TLS to parents (`upload.client`).
    tls: Option<Arc<common::tls::Tls>>,
    /// Vortex TCP over TLS, with `tls` (an error if its client config could not be built:
    /// then no piece is fetched over plain TCP instead).
    tcp_tls: Result<Option<tokio_rustls::TlsConnector>, String>,
}

impl Network {
    /// Transfers through `backend` and Vortex (`protocol`), charged to `limiter`; a transfer
    /// that sends nothing for `timeout` fails. With `tls`, Vortex runs over mutual TLS.
    pub fn new(
        backend: Arc<Backend>,
        limiter: Arc<RateLimiter>,
        timeout: Duration,
        protocol: Protocol,
        tls: Option<Arc<common::tls::Tls>>,
    ) -> Network {
        let tcp_tls = tls
            .as_ref()
            .map(|t| {
                t.rustls_client(false)
                    .map(|c| tokio_rustls::TlsConnector::from(Arc::new(c)))
                    .map_err(|e| format!("upload.client: {e}"))
            })
            .transpose();
        Network {
            backend,
            limiter,
            timeout,
            protocol,
            quic: OnceLock::new(),
            tls,
            tcp_tls,
        }
    }

    fn quic(&self) -> Result<Arc<QuicClient>, VortexError> {
        self.quic
            .get_or_init(|| {
                QuicClient::with_tls(self.tls.as_deref())
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| VortexError::Io(std::io::Error::other(e)))
    }

    async fn origin_range(
        &self,
        (task_id, url, headers, auth): (
            &str,
            &str,
            &HeaderMap,
            Option<&crate::registry_auth::RegistryAuth>,
        ),
        task: &Arc<Task>,
        start: u64,
        end: u64,
        what: &str,
    ) -> Result<u32, TransportError> {
        let failed = |message: String, retry: bool| TransportError::Origin { message, retry };
        let length = task.content_length();
        let resp = self
            .backend
            .get(
                task_id,
                url,
                headers,
                auth,
                Some((start, end - 1)),
                Some(self.timeout),
            )
            .await
            .map_err(|e| failed(e.to_string(), true))?;
        let status = resp.status();
        let whole = status == StatusCode::OK && start == 0 && end == length;
        if status != StatusCode::PARTIAL_CONTENT && !whole {
            let retry = status.is_server_error()
                || status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::REQUEST_TIMEOUT;
            return Err(failed(format!("{what}: origin answered {status}"), retry));
        }
        if status == StatusCode::PARTIAL_CONTENT {
            let cr = resp
                .headers()
                .get(http::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range);
            if cr != Some((Some((start, end - 1)), length)) {
                return Err(failed(
                    format!("{what}: origin sent a different range ({cr:?})"),
                    false,
                ));
            }
        }
        store_body(task, start, end, resp, what, &self.limiter, self.timeout).await
    }

    async fn parent_piece(
        &self,
        parent: &Parent,
        number: u32,
        task: &Arc<Task>,
        start: u64,
        end: u64,
    ) -> Result<u32, TransportError> {
        let length = end - start;
        self.limiter.acquire(length).await;
        let mut sink = TaskSink { task: task.clone() };
        let info = match (self.protocol, parent.quic_port) {
            (Protocol::Quic, Some(port)) => {
                self.quic()?
                    .download_piece_into(
                        SocketAddr::new(parent.ip, port),
                        &task.id,
                        number,
                        start,
                        length,
                        self.timeout,
                        &mut sink,
                    )
                    .await?
            }
            _ => {
                crate::vortex::client::download_piece_into(
                    SocketAddr::new(parent.ip, parent.vortex_port),
                    &task.id,
                    number,
                    start,
                    length,
                    self.timeout,
                    self.tcp_tls
                        .as_ref()
                        .map_err(|e| VortexError::Io(std::io::Error::other(e.clone())))?
                        .as_ref(),
                    &mut sink,
                )
                .await?
            }
        };
        Ok(info.crc32)
    }
}

impl Transport for Network {
    fn fetch<'a>(
        &'a self,
        source: Source<'a>,
        task: &'a Arc<Task>,
        start: u64,
        end: u64,
        what: &'a str,
    ) -> Fetching<'a> {
        Box::pin(async move {
            match source {
                Source::Origin {
                    task_id,
                    url,
                    headers,
                    auth,
                } => {
                    self.origin_range((task_id, url, headers, auth), task, start, end, what)
                        .await
                }
                Source::Parent { parent, number } => {
                    self.parent_piece(parent, number, task, start, end).await
                }
            }
        })
    }
}

/// Writes a piece's bytes into the task's content file as they arrive; the piece counts only
/// once committed after its CRC-32 matched.
struct TaskSink {
    task: Arc<Task>,
}

impl PieceSink for TaskSink {
    async fn put(&mut self, offset: u64, data: Vec<u8>) -> Result<Vec<u8>, VortexError> {
        let task = self.task.clone();
        crate::storage::blocking::blocking(move || task.write_at(offset, &data).map(|()| data))
            .await
            .map_err(VortexError::Io)?
            .map_err(|e| VortexError::Io(std::io::Error::other(e.to_string())))
    }
}

/// Streams a response body (exactly bytes `start..end`) into `task`'s content file, charging
/// `limiter`; the CRC-32 of the bytes. A body that sends nothing for `timeout` fails.
pub(crate) async fn store_body(
    task: &Arc<Task>,
    start: u64,
    end: u64,
    resp: reqwest::Response,
    what: &str,
    limiter: &RateLimiter,
    timeout: Duration,
) -> Result<u32, TransportError> {
    let len = end - start;
    let mut stream = resp.bytes_stream();
    let mut crc = crc32fast::Hasher::new();
    let mut buf = BytesMut::with_capacity(WRITE_CHUNK.min(len as usize));
    let mut written = 0u64;
    let fail = |m: String| TransportError::Origin {
        message: format!("{what}: {m}"),
        retry: true,
    };
    loop {
        let chunk = tokio::time::timeout(timeout, stream.next())
            .await
            .map_err(|_| fail(stalled(timeout)))?;
        let done = chunk.is_none();
        if let Some(c) = chunk {
            let c = c.map_err(|e| fail(error_chain(&e)))?;
            limiter.acquire(c.len() as u64).await;
            if written + buf.len() as u64 + c.len() as u64 > len {
                return Err(fail("origin sent more bytes than the range".into()));
            }
            buf.extend_from_slice(&c);
        }
        if buf.len() >= WRITE_CHUNK || (done && !buf.is_empty()) {
            let data = buf.split().freeze();
            crc.update(&data);
            let t = task.clone();
            let at = start + written;
            written += data.len() as u64;
            crate::storage::blocking::blocking(move || t.write_at(at, &data))
                .await
                .map_err(|e| fail(e.to_string()))??;
        }
        if done {
            break;
        }
    }
    if written != len {
        return Err(fail(format!("origin sent {written} of {len} bytes")));
    }
    Ok(crc.finalize())
}

/// The message of an origin that went quiet.
pub(crate) fn stalled(timeout: Duration) -> String {
    format!(
        "origin sent nothing for download.pieceTimeout ({})",
        humantime::format_duration(timeout)
    )
}

/// Faults a test build injects into every transfer (`faultInjection`): fetches from parents
/// fail before a byte moves (`failParentFetches`), and the first `failOriginFetches` fetches
/// from the origin fail as a retryable error.
#[cfg(feature = "fault-injection")]
pub struct Faulty<T> {
    inner: T,
    fail_parents: bool,
    origin_failures_left: std::sync::atomic::AtomicU32,
}

#[cfg(feature = "fault-injection")]
impl<T: Transport> Faulty<T> {
    pub fn new(inner: T, f: &crate::config::FaultInjection) -> Faulty<T> {
        Faulty {
            inner,
            fail_parents: f.fail_parent_fetches,
            origin_failures_left: std::sync::atomic::AtomicU32::new(f.fail_origin_fetches),
        }
    }
}

#[cfg(feature = "fault-injection")]
impl<T: Transport> Transport for Faulty<T> {
    fn fetch<'a>(
        &'a self,
        source: Source<'a>,
        task: &'a Arc<Task>,
        start: u64,
        end: u64,
        what: &'a str,
    ) -> Fetching<'a> {
        use std::sync::atomic::Ordering;
        let fault = match source {
            Source::Parent { parent, number } if self.fail_parents => Some(TransportError::Parent(
                VortexError::Io(std::io::Error::other(format!(
                    "fault injection: piece {number} from {}",
                    parent.id
                ))),
            )),
            Source::Origin { .. }
                if self
                    .origin_failures_left
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok() =>
            {
                Some(TransportError::Origin {
                    message: format!("{what}: fault injection"),
                    retry: true,
                })
            }
            _ => None,
        };
        match fault {
            Some(e) => {
                tracing::warn!(task_id = %task.id, error = %e, "fault injected");
                Box::pin(async move { Err(e) })
            }
            None => self.inner.fetch(source, task, start, end, what),
        }
    }
}
