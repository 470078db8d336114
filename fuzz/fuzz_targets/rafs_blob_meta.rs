//! blob.meta from untrusted bytes (a blob or a local `<blob_id>.blob.meta` cache file): the
//! header, single CI entries, the cache-file form, a blob section (stored CI array + header,
//! decompressed with the header's compressor) and a header over arbitrary CI data, each
//! validated and checked against blob sizes. None may panic or allocate beyond the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nydus::blobmeta::{BlobMeta, BlobMetaHeader, ChunkInfoV1, ChunkInfoV2};
use nydus::Compressor;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(h) = BlobMetaHeader::decode(bytes) {
        let _ = h.validate();
    }
    if let Ok(e) = ChunkInfoV1::decode(bytes) {
        let _ = e.chunk();
    }
    if let Ok(e) = ChunkInfoV2::decode(bytes) {
        let _ = e.validate();
        let _ = e.chunk();
    }
    let check = |m: &BlobMeta| {
        let _ = m.validate_against(bytes.len() as u64, 1 << 30);
        for i in 0..4 {
            let _ = m.batch_context(i);
        }
    };
    if let Ok(m) = BlobMeta::parse_cache_file(bytes) {
        check(&m);
    }
    if let Ok(m) = BlobMeta::parse_from_section(bytes) {
        check(&m);
    }
    let _ = BlobMeta::parse_from_blob(
        bytes,
        0,
        bytes.len().saturating_sub(4096) as u64,
        Compressor::Zstd,
    );
    // The first 4096 bytes as a header over the rest as uncompressed CI data.
    if bytes.len() >= 4096 {
        let (header, ci) = bytes.split_at(4096);
        if let Ok(m) = BlobMeta::parse(header, ci) {
            check(&m);
        }
    }
});
