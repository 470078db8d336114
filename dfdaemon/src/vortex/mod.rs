//! Vortex piece transfer between peers: TLV frames (the `vortex-protocol`
//! crate) over TCP, one request per connection. The server sends stored pieces
//! (metadata frame, then the raw bytes with sendfile); the client fetches one
//! piece from a parent and checks its CRC-32 before anything is stored.

pub mod client;
pub mod quic;
pub mod server;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use vortex_protocol::{Vortex, HEADER_SIZE};

/// Largest request value accepted (a DownloadPiece is 68 bytes); anything
/// bigger is refused before any allocation.
pub const MAX_REQUEST_VALUE: u32 = 1024;
/// Largest piece metadata value accepted from a parent.
pub const MAX_METADATA_VALUE: u32 = 64 * 1024;
/// Largest piece a client accepts (Vortex carries pieces up to 1 GiB).
pub const MAX_PIECE_LENGTH: u64 = 1 << 30;

/// Errors of the Vortex transport.
#[derive(Debug, thiserror::Error)]
pub enum VortexError {
    #[error("vortex I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame value of {length} bytes exceeds the limit of {limit}")]
    TooLarge { length: u32, limit: u32 },
    #[error("connection closed after {got} of {want} bytes of a frame")]
    Truncated { got: usize, want: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("unexpected frame {0}")]
    Unexpected(String),
    #[error("parent answered {code:?}: {message}")]
    Remote {
        code: vortex_protocol::tlv::error::Code,
        message: String,
    },
    #[error("piece {number} from {parent}: {reason}")]
    BadPiece {
        number: u32,
        parent: String,
        reason: String,
    },
    #[error("timed out")]
    Timeout,
}

/// Reads exactly `buf.len()` bytes, reporting truncation precisely.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), VortexError> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..]).await?;
        if n == 0 {
            return Err(VortexError::Truncated {
                got,
                want: buf.len(),
            });
        }
        got += n;
    }
    Ok(())
}

/// Reads one frame (header and value) whose value is at most `limit` bytes,
/// and decodes it. The length is checked before the value is allocated.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: u32,
) -> Result<Vortex, VortexError> {
    let mut header = [0u8; HEADER_SIZE];
    read_full(r, &mut header).await?;
    let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
    if length > limit {
        return Err(VortexError::TooLarge { length, limit });
    }
    let mut frame = BytesMut::zeroed(HEADER_SIZE + length as usize);
    frame[..HEADER_SIZE].copy_from_slice(&header);
    read_full(r, &mut frame[HEADER_SIZE..]).await?;
    decode_frame(&frame.freeze())
}

/// Decodes a complete frame (header + value) from bytes.
pub fn decode_frame(frame: &Bytes) -> Result<Vortex, VortexError> {
    Vortex::decode(frame).map_err(|e| VortexError::Malformed(e.to_string()))
}

/// Encodes an Error frame.
pub fn error_frame(code: vortex_protocol::tlv::error::Code, message: &str) -> Bytes {
    use vortex_protocol::Message;
    let mut b = BytesMut::new();
    vortex_protocol::tlv::error::Error::new(code, message.to_string()).encode_packet(&mut b);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vortex_protocol::tlv::download_piece::DownloadPiece;
    use vortex_protocol::Message;

    #[tokio::test]
    async fn frames_are_bounded_and_truncation_is_reported() {
        let mut ok = BytesMut::new();
        DownloadPiece::new("a".repeat(64), 7).encode_packet(&mut ok);
        match read_frame(&mut &ok[..], MAX_REQUEST_VALUE).await.unwrap() {
            Vortex::DownloadPiece(_, d) => assert_eq!(d.piece_number, 7),
            other => panic!("{other:?}"),
        }
        let truncated = &ok[..ok.len() - 3];
        assert!(matches!(
            read_frame(&mut &truncated[..], MAX_REQUEST_VALUE).await,
            Err(VortexError::Truncated { got: 65, want: 68 })
        ));
        // A header claiming 4 GiB is refused without allocating.
        let huge = [1u8, 0, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut &huge[..], MAX_REQUEST_VALUE).await,
            Err(VortexError::TooLarge { .. })
        ));
        // A DownloadPiece with a wrong length is malformed.
        let bad = [1u8, 0, 0, 0, 0, 2, 1, 2];
        assert!(matches!(
            read_frame(&mut &bad[..], MAX_REQUEST_VALUE).await,
            Err(VortexError::Malformed(_))
        ));
    }
}
