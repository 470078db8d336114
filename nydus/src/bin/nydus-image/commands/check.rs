//! `check`: the bootstrap structure and, with blobs, blob.meta and every chunk's CRC32C/digest.

use std::path::PathBuf;

use clap::Args;
use nydus::image::{self, ChunkFault};
use nydus::tree::display;
use nydus::Compressor;
use serde_json::json;

use super::{fail, nydus_output, open_blobs, write_json, BootstrapArg, Fail};

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    bootstrap: BootstrapArg,
    /// Directory holding the blobs, named by id.
    #[arg(short = 'D', long)]
    blob_dir: Option<PathBuf>,
    /// The blob file (single-blob images).
    #[arg(short = 'b', long)]
    blob: Option<PathBuf>,
    /// Print a JSON report.
    #[arg(long)]
    json: bool,
    /// Write Nydus's check result (the blob ids of the blob table and more) to this file.
    #[arg(short = 'J', long)]
    output_json: Option<PathBuf>,
}

pub fn run(a: CheckArgs) -> Result<(), Fail> {
    let bootstrap = a.bootstrap.path()?;
    let (blob_dir, blob, json) = (a.blob_dir.as_deref(), a.blob.as_deref(), a.json);
    // For -J: the blob ids and compressor of the image read.
    let mut summary: Option<(Vec<String>, u32, Option<Compressor>)> = None;
    let mut errors: Vec<serde_json::Value> = Vec::new();
    let mut files = 0u64;
    let mut chunks_checked = 0u64;
    match image::load(bootstrap) {
        Err(e) => errors.push(json!({"what": "bootstrap", "error": e.to_string()})),
        Ok(img) => {
            summary = Some((
                img.blobs.iter().map(|b| b.id.clone()).collect(),
                img.version,
                img.compressor().map_err(fail)?,
            ));
            let with_blobs = blob_dir.is_some() || blob.is_some() || img.inline_blob.is_some();
            let blobs = if with_blobs {
                open_blobs(&img, blob_dir, blob)?
            } else {
                Vec::new()
            };
            for (i, (bf, b)) in blobs.iter().zip(&img.blobs).enumerate() {
                if let Some(entry) = &b.v6 {
                    for m in image::check_blob_meta(bf, entry, i as u32, &img.tree) {
                        errors.push(json!({"what": "blob.meta", "blob": bf.id, "error": m}));
                    }
                }
            }
            // Each file once (hardlinks share their chunks), named by its first path.
            let checked = image::check_chunks(&img.tree, with_blobs.then_some(&blobs[..]));
            files = checked.files;
            chunks_checked = checked.chunks_checked;
            for p in checked.problems {
                let (path, k, c) = (display(&p.path), p.chunk, p.info);
                errors.push(match p.fault {
                    ChunkFault::NoSuchBlob => {
                        json!({"file": path, "chunk": k, "error": "no such blob"})
                    }
                    ChunkFault::Read { blob: id, error } => json!({
                        "file": path,
                        "chunk": k,
                        "file_offset": c.file_offset,
                        "blob": id,
                        "blob_chunk_index": c.index,
                        "error": error.to_string(),
                    }),
                });
            }
        }
    }
    if json {
        let report = json!({
            "bootstrap": bootstrap.display().to_string(),
            "files": files,
            "chunks_checked": chunks_checked,
            "ok": errors.is_empty(),
            "errors": errors,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        for e in &errors {
            match e.get("file") {
                Some(f) => eprintln!(
                    "{}: chunk {}: {}",
                    f.as_str().unwrap_or_default(),
                    e["chunk"],
                    e["error"].as_str().unwrap_or_default()
                ),
                None => eprintln!(
                    "{}: {}",
                    e["what"].as_str().unwrap_or_default(),
                    e["error"].as_str().unwrap_or_default()
                ),
            }
        }
        if errors.is_empty() {
            println!("ok: {files} files, {chunks_checked} chunks checked");
        }
    }
    if errors.is_empty() {
        if let (Some(j), Some((blobs, version, compressor))) = (&a.output_json, summary) {
            let v = nydus_output(
                &bootstrap.display().to_string(),
                &blobs,
                version,
                compressor,
                json!({}),
            );
            write_json(j, &v)?;
        }
        Ok(())
    } else {
        Err(Fail {
            code: 1,
            msg: format!("{} error(s) in {}", errors.len(), bootstrap.display()),
        })
    }
}
