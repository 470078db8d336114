//! Vortex client: fetches one piece from a parent and checks it.

use super::{read_frame, read_full, VortexError, MAX_METADATA_VALUE, MAX_PIECE_LENGTH};
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpSocket;
use vortex_protocol::tlv::download_piece::DownloadPiece;
use vortex_protocol::{Message, Vortex};

/// A piece received from a parent.
#[derive(Debug, Clone)]
pub struct ReceivedPiece {
    pub number: u32,
    pub offset: u64,
    pub parent_id: String,
    pub digest: String,
    pub content: Bytes,
}

/// Bytes per read while receiving a piece body.
const RECV_CHUNK: usize = 1024 * 1024;

/// Largest receive buffer asked for a piece connection (the kernel doubles it).
const RECV_BUFFER: usize = 4 * 1024 * 1024;

/// Where a piece's bytes go while they arrive, chunk by chunk, before the
/// CRC-32 over the whole piece is known: the bytes count only once
/// [`receive_piece_into`] returns Ok.
pub trait PieceSink {
    /// Stores `data` at task offset `offset`; gives the buffer back for reuse.
    fn put(
        &mut self,
        offset: u64,
        data: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, VortexError>> + Send;
}

/// A sink keeping the piece in memory.
pub(crate) struct MemorySink {
    base: u64,
    content: BytesMut,
}

impl PieceSink for MemorySink {
    async fn put(&mut self, offset: u64, data: Vec<u8>) -> Result<Vec<u8>, VortexError> {
        let at = usize::try_from(offset - self.base)
            .map_err(|_| VortexError::Malformed("offset out of range".into()))?;
        self.content[at..at + data.len()].copy_from_slice(&data);
        Ok(data)
    }
}

/// What [`receive_piece_into`] learned about a piece whose bytes it stored.
#[derive(Debug, Clone)]
pub struct PieceInfo {
    pub parent_id: String,
    /// `crc32:<n>`, as the parent sent it (and as the bytes matched).
    pub digest: String,
    pub crc32: u32,
}

/// Parses `crc32:<decimal>`.
pub fn parse_crc32_digest(d: &str) -> Option<u32> {
    d.strip_prefix("crc32:")?.parse().ok()
}

/// Downloads piece `number` of `task_id` (expected at `offset`, `length` bytes)
/// from the parent at `addr`. The bytes are returned only if their CRC-32
/// matches the digest the parent sent and offset and length are as expected.
pub async fn download_piece(
    addr: SocketAddr,
    task_id: &str,
    number: u32,
    offset: u64,
    length: u64,
    timeout: Duration,
) -> Result<ReceivedPiece, VortexError> {
    let mut sink = MemorySink::new(offset, length)?;
    let info = download_piece_into(
        addr, task_id, number, offset, length, timeout, None, &mut sink,
    )
    .await?;
    Ok(sink.into_piece(number, offset, info))
}

/// Like [`download_piece`], streaming the bytes into `sink` as they arrive
/// (no buffer of a whole piece); over TLS with `tls` (mutual TLS: the parent's certificate is
/// checked for its IP address).
#[allow(clippy::too_many_arguments)]
pub async fn download_piece_into<S: PieceSink>(
    addr: SocketAddr,
    task_id: &str,
    number: u32,
    offset: u64,
    length: u64,
    timeout: Duration,
    tls: Option<&tokio_rustls::TlsConnector>,
    sink: &mut S,
) -> Result<PieceInfo, VortexError> {
    check_task_id(task_id)?;
    let fetch = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // A piece connection is short: the kernel's receive-window autotuning starts at
        // 128 KiB and the piece is over before the window has grown. A receive buffer the
        // size of the piece (up to 4 MiB) lets the parent send at full rate from the first
        // round trip: on loopback 0.85-0.96 of a raw copy's rate became 0.99-1.45. Forced, so
        // net.core.rmem_max does not cap it; without CAP_NET_ADMIN autotuning stays (a capped
        // buffer would also turn autotuning off).
        let want = length.clamp(64 * 1024, RECV_BUFFER as u64) as usize;
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, want);
        let mut stream = socket.connect(addr).await?;
        let _ = stream.set_nodelay(true);
        if let Some(tls) = tls {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let mut s = tls.connect(name, stream).await?;
            s.write_all(&request(task_id, number)).await?;
            s.flush().await?;
            return receive_piece_into(&mut s, &addr.to_string(), number, offset, length, sink)
                .await;
        }
        let (mut recv, mut send) = stream.split();
        send.write_all(&request(task_id, number)).await?;
        receive_piece_into(&mut recv, &addr.to_string(), number, offset, length, sink).await
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| VortexError::Timeout)?
}

impl MemorySink {
    pub(crate) fn new(offset: u64, length: u64) -> Result<MemorySink, VortexError> {
        if length > MAX_PIECE_LENGTH {
            return Err(VortexError::Malformed(format!(
                "piece of {length} bytes is too large"
            )));
        }
        Ok(MemorySink {
            base: offset,
            content: BytesMut::zeroed(length as usize),
        })
    }

    pub(crate) fn into_piece(self, number: u32, offset: u64, info: PieceInfo) -> ReceivedPiece {
        ReceivedPiece {
            number,
            offset,
            parent_id: info.parent_id,
            digest: info.digest,
            content: self.content.freeze(),
        }
    }
}

pub(crate) fn check_task_id(task_id: &str) -> Result<(), VortexError> {
    if task_id.len() != vortex_protocol::tlv::TASK_ID_SIZE {
        return Err(VortexError::Malformed(format!(
            "task ID {task_id:?} is not {} bytes",
            vortex_protocol::tlv::TASK_ID_SIZE
        )));
    }
    Ok(())
}

/// The encoded `DownloadPiece` frame.
pub(crate) fn request(task_id: &str, number: u32) -> Bytes {
    let mut req = BytesMut::new();
    DownloadPiece::new(task_id.to_string(), number).encode_packet(&mut req);
    req.freeze()
}

/// Reads a parent's answer: the metadata frame (or an Error frame), then the
/// piece bytes, streamed into `sink` in bounded chunks, checked against the
/// expected position and, at the end, the CRC-32.
pub(crate) async fn receive_piece_into<R: AsyncRead + Unpin, S: PieceSink>(
    recv: &mut R,
    parent: &str,
    number: u32,
    offset: u64,
    length: u64,
    sink: &mut S,
) -> Result<PieceInfo, VortexError> {
    let bad = |reason: String| VortexError::BadPiece {
        number,
        parent: parent.to_string(),
        reason,
    };
    let meta = match read_frame(recv, MAX_METADATA_VALUE).await? {
        Vortex::PieceContent(_, c) => c.metadata,
        Vortex::Error(_, e) => {
            return Err(VortexError::Remote {
                code: e.code,
                message: e.message,
            })
        }
        other => {
            return Err(VortexError::Unexpected(format!(
                "{:?} instead of PieceContent",
                other.header().tag()
            )))
        }
    };
    if meta.number != number || meta.offset != offset || meta.length != length {
        return Err(bad(format!(
            "parent described piece {} at {}+{}, expected {number} at {offset}+{length}",
            meta.number, meta.offset, meta.length
        )));
    }
    if meta.length > MAX_PIECE_LENGTH {
        return Err(bad(format!("piece of {} bytes is too large", meta.length)));
    }
    let want = parse_crc32_digest(&meta.digest)
        .ok_or_else(|| bad(format!("digest {:?} is not crc32:<n>", meta.digest)))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; RECV_CHUNK.min(length as usize)];
    let mut pos = 0u64;
    while pos < length {
        let n = (length - pos).min(buf.capacity() as u64) as usize;
        buf.resize(n, 0);
        read_full(recv, &mut buf).await?;
        hasher.update(&buf);
        buf = sink.put(offset + pos, buf).await?;
        pos += n as u64;
    }
    let got = hasher.finalize();
    if got != want {
        return Err(bad(format!("CRC-32 is {got}, parent said {want}")));
    }
    Ok(PieceInfo {
        parent_id: meta.parent_id,
        digest: meta.digest,
        crc32: got,
    })
}
