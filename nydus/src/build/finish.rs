//! Finishing a blob after its chunk data: blob.meta, and with inline meta or a TOC, the tar
//! headers, the chunk digest table, the bootstrap and the TOC.

use std::io::Write;

use super::{
    blob_entry, blob_features, bootstrap_for, BlobData, BlobWriter, BuildError, CreateOptions,
};
use crate::tree::Tree;
use crate::v6::BlobEntry;

/// Appends what follows the chunk data, writes the bootstrap (the new blob's entry appended to
/// `blobs`), and returns the bootstrap, the blob id and the blob output.
pub(super) fn finish_blob<W: Write>(
    writer: BlobWriter<W>,
    data: &BlobData,
    opts: &CreateOptions,
    tree: Tree,
    blobs: &mut Vec<BlobEntry>,
) -> Result<(Vec<u8>, String, W), BuildError> {
    let io = |source| BuildError::Io {
        what: "writing the blob".into(),
        source,
    };
    let (blob_id, out) = writer.finish().map_err(io)?;
    let features = blob_features(opts.inline_meta, opts.toc);
    blobs.push(blob_entry(&blob_id, data, &opts.chunk, features)?);
    let bootstrap = bootstrap_for(&tree, blobs, &opts.chunk, &opts.prefetch)?;
    Ok((bootstrap, blob_id, out))
}
