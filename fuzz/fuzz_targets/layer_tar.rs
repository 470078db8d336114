//! An OCI layer tar (plain, gzip or zstd) from untrusted bytes, built into a tree and a blob
//! held in memory: errors are fine, panics, hangs and unbounded allocations are not.
#![no_main]
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use nydus::build::source::from_tar;
use nydus::build::{BlobWriter, ChunkOptions};
use nydus::tree::Tree;
use nydus::{Compressor, Digester};

fuzz_target!(|bytes: &[u8]| {
    let opts = ChunkOptions {
        chunk_size: 0x1000,
        compressor: Compressor::Lz4Block,
        digester: Digester::Blake3,
        threads: 1,
    };
    let mut tree = Tree::default();
    let mut blob = BlobWriter::new(Vec::new(), 0, opts, HashMap::new());
    if from_tar(bytes, &mut tree, &mut blob).is_ok() {
        let _ = blob.finish_data(&mut tree);
        let _ = nydus::build::bootstrap_for(&tree, &[], &opts, &[], true);
    }
});
