//! Vortex server: answers `DownloadPiece` with the stored piece, over TCP (one
//! request per connection, body sent with sendfile) or QUIC (one request per
//! bidirectional stream).

use super::{error_frame, read_frame, VortexError, MAX_REQUEST_VALUE};
use crate::storage::{Store, TaskUse};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use vortex_protocol::tlv::error::Code;
use vortex_protocol::tlv::piece_content::PieceContent;
use vortex_protocol::tlv::piece_metadata::PieceMetadata;
use vortex_protocol::{Message, Vortex};

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes per sendfile call / per QUIC write.
const CHUNK: u64 = 256 * 1024;

/// Serves pieces of the local store to other peers.
pub struct VortexServer {
    store: Arc<Store>,
    host_id: String,
    metrics: Arc<crate::metrics::Metrics>,
    limiter: crate::rate_limit::RateLimiter,
    /// Fault injection: flip a byte of every piece body sent.
    corrupt: std::sync::atomic::AtomicBool,
    /// Mutual TLS on Vortex TCP (`upload.server`): only clients with a certificate from its CA.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// What to send back for a request.
enum Answer {
    Error(Bytes, VortexError),
    Piece {
        head: Bytes,
        task: TaskUse,
        number: u32,
        offset: u64,
        length: u64,
    },
}

impl VortexServer {
    pub fn new(
        store: Arc<Store>,
        host_id: String,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        Self::with_rate_limit(store, host_id, metrics, 0)
    }

    /// A server sending at most `bytes_per_sec` over all connections (0: unlimited).
    pub fn with_rate_limit(
        store: Arc<Store>,
        host_id: String,
        metrics: Arc<crate::metrics::Metrics>,
        bytes_per_sec: u64,
    ) -> Arc<Self> {
        Arc::new(VortexServer {
            store,
            host_id,
            metrics,
            limiter: crate::rate_limit::RateLimiter::new(bytes_per_sec),
            corrupt: std::sync::atomic::AtomicBool::new(false),
            tls: None,
        })
    }

    /// [`VortexServer::with_rate_limit`], serving Vortex TCP over mutual TLS with `tls` (only
    /// to clients with a certificate from its CA).
    pub fn with_tls(
        store: Arc<Store>,
        host_id: String,
        metrics: Arc<crate::metrics::Metrics>,
        bytes_per_sec: u64,
        tls: Option<&common::tls::Tls>,
    ) -> Result<Arc<Self>, VortexError> {
        let tls = match tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                t.rustls_server(false)
                    .map_err(|e| VortexError::Io(std::io::Error::other(e.to_string())))?,
            ))),
            None => None,
        };
        Ok(Arc::new(VortexServer {
            store,
            host_id,
            metrics,
            limiter: crate::rate_limit::RateLimiter::new(bytes_per_sec),
            corrupt: std::sync::atomic::AtomicBool::new(false),
            tls,
        }))
    }

    /// Fault injection (test builds): from now on every piece body sent has
    /// one byte flipped while its header keeps the stored CRC32.
    #[cfg(feature = "fault-injection")]
    pub fn corrupt_uploads(&self) {
        self.corrupt
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes the upload rate limiter has been asked for so far.
    pub fn rate_limited_bytes(&self) -> u64 {
        self.limiter.acquired()
    }

    fn corrupting(&self) -> bool {
        self.corrupt.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Accepts TCP connections forever; one request per connection.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "vortex accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.handle_tcp(stream).await {
                    tracing::debug!(%peer, error = %e, "vortex request ended with an error");
                }
            });
        }
    }

    /// Accepts QUIC connections forever; one request per bidirectional stream.
    pub async fn serve_quic(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let this = self.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let this = this.clone();
                    tokio::spawn(async move {
                        if let Err(e) = this.handle_quic(send, recv).await {
                            tracing::debug!(error = %e, "vortex quic request ended with an error");
                        }
                    });
                }
            });
        }
    }

    /// Reads one request and decides the answer.
    async fn answer<R: AsyncRead + Unpin>(&self, recv: &mut R) -> Result<Answer, VortexError> {
        let frame = match tokio::time::timeout(REQUEST_TIMEOUT, read_frame(recv, MAX_REQUEST_VALUE))
            .await
        {
            Err(_) => return Err(VortexError::Timeout),
            Ok(Ok(f)) => f,
            Ok(Err(e @ (VortexError::Io(_) | VortexError::Truncated { .. }))) => return Err(e),
            Ok(Err(e)) => {
                return Ok(Answer::Error(
                    error_frame(Code::InvalidArgument, &e.to_string()),
                    e,
                ))
            }
        };
        let req = match frame {
            Vortex::DownloadPiece(_, req) => req,
            other => {
                let msg = format!("unsupported request tag {:?}", other.header().tag());
                return Ok(Answer::Error(
                    error_frame(Code::InvalidArgument, &msg),
                    VortexError::Unexpected(msg),
                ));
            }
        };
        let found = self.store.get(&req.task_id).and_then(|t| {
            let meta = t.meta();
            let p = *meta.pieces.get(&req.piece_number)?;
            Some((t, meta, p))
        });
        let Some((task, meta, piece)) = found else {
            let msg = format!(
                "piece {} of task {} is not here",
                req.piece_number, req.task_id
            );
            return Ok(Answer::Error(
                error_frame(Code::NotFound, &msg),
                VortexError::Unexpected(msg),
            ));
        };
        let task = task.use_task();
        let (offset, length) =
            common::piece::piece_range(req.piece_number, meta.content_length, meta.piece_length);
        let content = PieceContent {
            metadata: PieceMetadata {
                number: req.piece_number,
                offset,
                length,
                digest: piece.digest(),
                parent_id: self.host_id.clone(),
                traffic_type: dragonfly_api::common::v2::TrafficType::RemotePeer as u8,
                cost: Duration::ZERO,
                created_at: chrono::Utc::now().naive_utc(),
            },
        };
        let mut head = BytesMut::new();
        content.encode_packet(&mut head);
        Ok(Answer::Piece {
            head: head.freeze(),
            task,
            number: req.piece_number,
            offset,
            length,
        })
    }

    /// Serves one request over TLS (no `sendfile`: the bytes are encrypted in user space).
    async fn handle_tls(
        &self,
        stream: TcpStream,
        acceptor: tokio_rustls::TlsAcceptor,
    ) -> Result<(), VortexError> {
        // A client that never finishes its handshake holds nothing for long.
        let mut s = tokio::time::timeout(REQUEST_TIMEOUT, acceptor.accept(stream))
            .await
            .map_err(|_| VortexError::Timeout)??;
        match self.answer(&mut s).await? {
            Answer::Error(frame, e) => {
                s.write_all(&frame).await?;
                let _ = s.shutdown().await;
                Err(e)
            }
            Answer::Piece {
                head,
                task,
                number,
                offset,
                length,
            } => {
                s.write_all(&head).await?;
                let corrupt = self.corrupting();
                send_body(
                    &mut Written(&mut s),
                    &task,
                    offset,
                    length,
                    &self.limiter,
                    corrupt,
                )
                .await?;
                self.metrics.uploaded("tcp", length);
                s.shutdown().await?;
                if !corrupt {
                    task.piece_uploaded(number);
                }
                Ok(())
            }
        }
    }

    async fn handle_tcp(&self, mut stream: TcpStream) -> Result<(), VortexError> {
        if let Some(acceptor) = &self.tls {
            return self.handle_tls(stream, acceptor.clone()).await;
        }
        let (head, task, number, offset, length) = match self.answer(&mut stream).await? {
            Answer::Error(frame, e) => {
                stream.write_all(&frame).await?;
                return Err(e);
            }
            Answer::Piece {
                head,
                task,
                number,
                offset,
                length,
            } => (head, task, number, offset, length),
        };
        stream.write_all(&head).await?;
        if self.corrupting() {
            send_body(
                &mut Written(&mut stream),
                &task,
                offset,
                length,
                &self.limiter,
                true,
            )
            .await?;
            self.metrics.uploaded("tcp", length);
            stream.shutdown().await?;
            return Ok(());
        }
        let file = task
            .open_file()
            .map_err(|e| VortexError::Malformed(e.to_string()))?;
        let mut off = offset;
        let end = offset + length;
        // Without a rate limit the kernel is asked for the whole piece at once.
        let chunk = if self.limiter.is_limited() {
            CHUNK
        } else {
            length
        };
        while off < end {
            // Tokens once per chunk, for the bytes of the chunk: a socket that is
            // not writable yet (WouldBlock) or a short send must not be charged again.
            let chunk_end = off + (end - off).min(chunk);
            self.limiter.acquire(chunk_end - off).await;
            while off < chunk_end {
                stream.writable().await?;
                let count = (chunk_end - off) as usize;
                match stream.try_io(Interest::WRITABLE, || {
                    rustix::fs::sendfile(&stream, &*file, Some(&mut off), count)
                        .map_err(std::io::Error::from)
                }) {
                    Ok(0) => return Err(VortexError::Malformed("content file ended early".into())),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.metrics.uploaded("tcp", length);
        stream.shutdown().await?;
        task.piece_uploaded(number);
        Ok(())
    }

    async fn handle_quic(
        &self,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> Result<(), VortexError> {
        match self.answer(&mut recv).await? {
            Answer::Error(frame, e) => {
                send.write_all(&frame).await.map_err(std::io::Error::from)?;
                let _ = send.finish();
                Err(e)
            }
            Answer::Piece {
                head,
                task,
                number,
                offset,
                length,
            } => {
                send.write_all(&head).await.map_err(std::io::Error::from)?;
                let corrupt = self.corrupting();
                send_body(&mut send, &task, offset, length, &self.limiter, corrupt).await?;
                self.metrics.uploaded("quic", length);
                if send.finish().is_ok() && !corrupt {
                    task.piece_uploaded(number);
                }
                Ok(())
            }
        }
    }
}

/// Where [`send_body`] puts each chunk it read.
trait ChunkWriter {
    async fn put(&mut self, chunk: Vec<u8>) -> Result<(), VortexError>;
}

/// Each chunk is handed to quinn, which keeps it until the peer acknowledged it (no copy into
/// quinn's send buffer).
impl ChunkWriter for quinn::SendStream {
    async fn put(&mut self, chunk: Vec<u8>) -> Result<(), VortexError> {
        self.write_chunk(Bytes::from(chunk))
            .await
            .map_err(std::io::Error::from)?;
        Ok(())
    }
}

/// A byte stream (plain TCP, TLS) written chunk by chunk.
struct Written<'a, W>(&'a mut W);

impl<W: tokio::io::AsyncWrite + Unpin> ChunkWriter for Written<'_, W> {
    async fn put(&mut self, chunk: Vec<u8>) -> Result<(), VortexError> {
        Ok(self.0.write_all(&chunk).await?)
    }
}

/// Sends a piece from the content file in bounded chunks, each read into a buffer of its own
/// (`corrupt`: fault injection, the first byte is flipped).
async fn send_body<W: ChunkWriter>(
    w: &mut W,
    task: &TaskUse,
    offset: u64,
    length: u64,
    limiter: &crate::rate_limit::RateLimiter,
    corrupt: bool,
) -> Result<(), VortexError> {
    let file = task
        .open_file()
        .map_err(|e| VortexError::Malformed(e.to_string()))?;
    let mut pos = offset;
    let end = offset + length;
    while pos < end {
        let n = (end - pos).min(CHUNK) as usize;
        limiter.acquire(n as u64).await;
        let mut chunk = crate::storage::blocking::read_exact_at(&file, vec![0; n], pos).await?;
        if corrupt && pos == offset {
            chunk[0] ^= 0xff;
        }
        w.put(chunk).await?;
        pos += n as u64;
    }
    Ok(())
}
