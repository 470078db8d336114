//! Vortex client: fetches one piece from a parent and checks it.

use super::{read_frame, read_full, VortexError, MAX_METADATA_VALUE, MAX_PIECE_LENGTH};
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;
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
    tokio::time::timeout(timeout, fetch(addr, task_id, number, offset, length))
        .await
        .map_err(|_| VortexError::Timeout)?
}

async fn fetch(
    addr: SocketAddr,
    task_id: &str,
    number: u32,
    offset: u64,
    length: u64,
) -> Result<ReceivedPiece, VortexError> {
    check_task_id(task_id)?;
    let mut stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (mut recv, mut send) = stream.split();
    send.write_all(&request(task_id, number)).await?;
    receive_piece(&mut recv, &addr.to_string(), number, offset, length).await
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
/// piece bytes, checked against the expected position and the CRC-32.
pub(crate) async fn receive_piece<R: AsyncRead + Unpin>(
    recv: &mut R,
    parent: &str,
    number: u32,
    offset: u64,
    length: u64,
) -> Result<ReceivedPiece, VortexError> {
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
    let mut content = BytesMut::zeroed(length as usize);
    read_full(recv, &mut content).await?;
    let got = crc32fast::hash(&content);
    if got != want {
        return Err(bad(format!("CRC-32 is {got}, parent said {want}")));
    }
    Ok(ReceivedPiece {
        number,
        offset,
        parent_id: meta.parent_id,
        digest: meta.digest,
        content: content.freeze(),
    })
}
