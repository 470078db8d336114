//! `stat`: sizes, chunk counts and dedup ratio of an image.

use std::collections::HashMap;
use std::path::Path;

use clap::Args;
use nydus::tree::Kind;
use serde_json::json;

use super::{load, BootstrapArg, Fail};

#[derive(Args)]
pub struct StatArgs {
    #[command(flatten)]
    bootstrap: BootstrapArg,
    #[arg(long)]
    json: bool,
}

pub fn run(a: StatArgs) -> Result<(), Fail> {
    stat(a.bootstrap.path()?, a.json)
}

fn stat(bootstrap: &Path, as_json: bool) -> Result<(), Fail> {
    let img = load(bootstrap)?;
    let tree = &img.tree;
    let bytes = &img.bootstrap;
    let (mut files, mut dirs, mut others, mut file_bytes, mut refs) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut unique: HashMap<(u32, u32), u64> = HashMap::new();
    for id in tree.bfs().ids() {
        match &tree.node(id).kind {
            Kind::File { size, chunks } => {
                files += 1;
                file_bytes = file_bytes.saturating_add(*size);
                for c in chunks {
                    refs += 1;
                    unique.insert((c.blob_index, c.index), u64::from(c.uncompressed_size));
                }
            }
            Kind::Dir(_) => dirs += 1,
            _ => others += 1,
        }
    }
    let unique_bytes: u64 = unique.values().fold(0, |a, b| a.saturating_add(*b));
    let stored: u64 = img
        .blobs
        .iter()
        .fold(0, |a, e| a.saturating_add(e.compressed_size));
    let dedup_ratio = if unique_bytes == 0 {
        1.0
    } else {
        file_bytes as f64 / unique_bytes as f64
    };
    let v = json!({
        "bootstrap_size": bytes.len(),
        "version": img.version,
        "files": files,
        "directories": dirs,
        "other": others,
        "file_bytes": file_bytes,
        "chunks_referenced": refs,
        "chunks_unique": unique.len(),
        "unique_bytes": unique_bytes,
        "dedup_ratio": dedup_ratio,
        "blobs": img.blobs.len(),
        "blob_bytes": stored,
        "bootstrap_bytes_per_file": if files + dirs + others == 0 { 0.0 } else { bytes.len() as f64 / (files + dirs + others) as f64 },
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "{} files, {} directories, {} other; {} file bytes in {} chunks ({} unique, {} bytes); dedup ratio {:.3}; {} blobs, {} blob bytes; bootstrap {} bytes",
            files, dirs, others, file_bytes, refs, unique.len(), unique_bytes, dedup_ratio, img.blobs.len(), stored, bytes.len()
        );
    }
    Ok(())
}
