//! `nydusify convert --reverse`: Nydus image → OCI image.

use super::convert::{ConvertError, Platforms};
use super::progress::Progress;
use super::registry::RemoteOptions;

/// Options of a reverse conversion.
#[derive(Debug, Clone)]
pub struct ReverseOptions {
    pub source: String,
    pub target: String,
    pub source_remote: RemoteOptions,
    pub target_remote: RemoteOptions,
    /// `gzip` or `zstd`.
    pub compressor: String,
    pub platforms: Platforms,
    pub concurrency: usize,
}

/// What a reverse conversion did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReverseReport {
    pub target_digest: String,
}

/// Converts the Nydus image `opts.source` into an OCI image at `opts.target`.
pub async fn reverse(
    _opts: &ReverseOptions,
    _progress: &Progress,
) -> Result<ReverseReport, ConvertError> {
    Err(ConvertError::Unsupported("--reverse: in progress".into()))
}
