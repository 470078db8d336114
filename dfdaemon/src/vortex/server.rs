//! Vortex server: answers `DownloadPiece` with the stored piece.

use super::{error_frame, read_frame, VortexError, MAX_REQUEST_VALUE};
use crate::storage::Store;
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use vortex_protocol::tlv::error::Code;
use vortex_protocol::tlv::piece_content::PieceContent;
use vortex_protocol::tlv::piece_metadata::PieceMetadata;
use vortex_protocol::{Message, Vortex};

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves pieces of the local store to other peers.
pub struct VortexServer {
    store: Arc<Store>,
    host_id: String,
    metrics: Arc<crate::metrics::Metrics>,
}

impl VortexServer {
    pub fn new(
        store: Arc<Store>,
        host_id: String,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        Arc::new(VortexServer {
            store,
            host_id,
            metrics,
        })
    }

    /// Accepts connections forever; one request per connection.
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
                if let Err(e) = this.handle(stream).await {
                    tracing::debug!(%peer, error = %e, "vortex request ended with an error");
                }
            });
        }
    }

    async fn handle(&self, mut stream: TcpStream) -> Result<(), VortexError> {
        let frame =
            match tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut stream, MAX_REQUEST_VALUE))
                .await
            {
                Err(_) => return Err(VortexError::Timeout),
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    let code = match e {
                        VortexError::Io(_) | VortexError::Truncated { .. } => return Err(e),
                        _ => Code::InvalidArgument,
                    };
                    stream.write_all(&error_frame(code, &e.to_string())).await?;
                    return Err(e);
                }
            };
        let req = match frame {
            Vortex::DownloadPiece(_, req) => req,
            other => {
                let msg = format!("unsupported request tag {:?}", other.header().tag());
                stream
                    .write_all(&error_frame(Code::InvalidArgument, &msg))
                    .await?;
                return Err(VortexError::Unexpected(msg));
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
            stream.write_all(&error_frame(Code::NotFound, &msg)).await?;
            return Err(VortexError::Unexpected(msg));
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
        stream.write_all(&head).await?;
        let file = task
            .open_file()
            .map_err(|e| VortexError::Malformed(e.to_string()))?;
        let mut off = offset;
        let end = offset + length;
        while off < end {
            stream.writable().await?;
            let count = (end - off).min(256 * 1024) as usize;
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
        self.metrics.upload_traffic.inc_by(length);
        stream.shutdown().await?;
        Ok(())
    }
}
