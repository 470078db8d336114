//! `inspect`: print the superblock, blobs, files and chunks, or answer one `--request`.

use std::collections::BTreeMap;

use clap::Args;
use nydus::build;
use nydus::image::{self, Image};
use nydus::tree::{display, Kind};
use nydus::v6::Bootstrap;
use serde_json::json;

use super::{fail, load, BootstrapArg, Fail};

#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    bootstrap: BootstrapArg,
    /// JSON output.
    #[arg(long)]
    json: bool,
    /// Answer one request as JSON on stdout, as Nydus does; only `blobs` is known.
    #[arg(short = 'R', long)]
    request: Option<String>,
}

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Dir(_) => "dir",
        Kind::File { .. } => "file",
        Kind::Symlink(_) => "symlink",
        Kind::CharDev(_) => "char",
        Kind::BlockDev(_) => "block",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
    }
}

fn blob_json(b: &image::ImageBlob) -> serde_json::Value {
    let mut v = json!({
        "blob_id": b.id,
        "chunk_count": b.chunk_count,
        "compressor": format!("{:?}", b.compressor),
        "digester": format!("{:?}", b.digester),
        "features": format!("{:#x}", b.features.bits()),
        "compressed_size": b.compressed_size,
        "uncompressed_size": b.uncompressed_size,
    });
    if let Some(e) = &b.v6 {
        v["chunk_size"] = json!(e.chunk_size);
        v["ci_compressor"] = json!(e.ci_compressor);
        v["ci_offset"] = json!(e.ci_offset);
        v["ci_compressed_size"] = json!(e.ci_compressed_size);
        v["ci_uncompressed_size"] = json!(e.ci_uncompressed_size);
        v["blob_toc_size"] = json!(e.blob_toc_size);
    }
    v
}

fn superblock_json(img: &Image) -> Result<serde_json::Value, Fail> {
    if img.version == 5 {
        let b = nydus::v5::BootstrapV5::parse(&img.bootstrap).map_err(fail)?;
        let sb = b.superblock();
        return Ok(json!({
            "version": 5,
            "magic": format!("{:#x}", sb.magic),
            "inodes": sb.inodes_count,
            "flags": format!("{:#x}", sb.flags.bits()),
            "compressor": format!("{:?}", Some(b.compressor())),
            "digester": format!("{:?}", Some(b.digester())),
            "chunk_size": b.chunk_size(),
            "prefetch_table_entries": b.prefetch_inos().count(),
        }));
    }
    let b = Bootstrap::parse(&img.bootstrap).map_err(fail)?;
    let sb = b.superblock();
    let ext = b.ext_superblock();
    Ok(json!({
        "version": 6,
        "magic": format!("{:#x}", sb.magic),
        "block_size": b.block_size(),
        "root_nid": sb.root_nid,
        "inodes": sb.inos,
        "meta_blkaddr": sb.meta_blkaddr,
        "xattr_blkaddr": sb.xattr_blkaddr,
        "extra_devices": sb.extra_devices,
        "flags": format!("{:#x}", ext.flags.bits()),
        "compressor": format!("{:?}", ext.flags.compressor()),
        "digester": format!("{:?}", ext.flags.digester()),
        "chunk_size": ext.chunk_size,
        "chunk_table_entries": b.chunk_info_count(),
        "prefetch_table_entries": ext.prefetch_table_size / 4,
    }))
}

pub fn run(a: InspectArgs) -> Result<(), Fail> {
    let img = load(a.bootstrap.path()?)?;
    let as_json = a.json;
    if let Some(request) = &a.request {
        return inspect_request(&img, request);
    }
    let tree = &img.tree;
    let mut files = Vec::new();
    let nlinks = tree.nlinks();
    for (path, id) in tree.walk() {
        let n = tree.node(id);
        let mut f = json!({
            "path": display(&path),
            "type": kind_name(&n.kind),
            "mode": format!("{:o}", n.mode()),
            "uid": n.meta.uid,
            "gid": n.meta.gid,
            "mtime": n.meta.mtime,
            "mtime_nsec": n.meta.mtime_nsec,
            "nlink": nlinks.get(&id).copied().unwrap_or(1),
        });
        if !n.meta.xattrs.is_empty() {
            let x: BTreeMap<String, String> = n
                .meta
                .xattrs
                .iter()
                .map(|(k, v)| (display(k), display(v)))
                .collect();
            f["xattrs"] = json!(x);
        }
        match &n.kind {
            Kind::File { size, chunks } => {
                f["size"] = json!(size);
                f["chunks"] = json!(chunks
                    .iter()
                    .map(|c| json!({
                        "digest": build::blob::hex(&c.block_id),
                        "blob_index": c.blob_index,
                        "index": c.index,
                        "file_offset": c.file_offset,
                        "compressed_offset": c.compressed_offset,
                        "compressed_size": c.compressed_size,
                        "uncompressed_offset": c.uncompressed_offset,
                        "uncompressed_size": c.uncompressed_size,
                        "compressed": c.is_compressed(),
                        "crc32": c.crc32().map(|v| format!("{v:#010x}")),
                    }))
                    .collect::<Vec<_>>());
            }
            Kind::Symlink(t) => f["target"] = json!(display(t)),
            Kind::CharDev(d) | Kind::BlockDev(d) => f["rdev"] = json!(d),
            _ => {}
        }
        files.push(f);
    }
    let sbj = superblock_json(&img)?;
    let v = json!({
        "superblock": sbj,
        "blobs": img.blobs.iter().map(blob_json).collect::<Vec<_>>(),
        "files": files,
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "RAFS v{}: {} inodes, chunk size {:#x}, {}/{}, {} blobs",
            img.version,
            sbj["inodes"],
            sbj["chunk_size"].as_u64().unwrap_or_default(),
            sbj["compressor"].as_str().unwrap_or_default(),
            sbj["digester"].as_str().unwrap_or_default(),
            img.blobs.len()
        );
        for (i, e) in img.blobs.iter().enumerate() {
            println!(
                "blob {} {}: {} chunks, {} bytes ({} uncompressed)",
                i, e.id, e.chunk_count, e.compressed_size, e.uncompressed_size
            );
        }
        for f in v["files"].as_array().into_iter().flatten() {
            println!(
                "{} {} {}:{} {}",
                f["mode"].as_str().unwrap_or_default(),
                f["type"].as_str().unwrap_or_default(),
                f["uid"],
                f["gid"],
                f["path"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// One request of Nydus's `inspect --request`, answered as JSON on stdout.
fn inspect_request(img: &Image, request: &str) -> Result<(), Fail> {
    match request.trim() {
        // The fields nydusify's `tool.BlobInfo` reads; v6 blob tables hold no readahead range.
        "blobs" => {
            let v: Vec<serde_json::Value> = img
                .blobs
                .iter()
                .map(|b| {
                    json!({
                        "blob_id": b.id,
                        "readahead_offset": 0,
                        "readahead_size": 0,
                        "decompressed_size": b.uncompressed_size,
                        "compressed_size": b.compressed_size,
                    })
                })
                .collect();
            print!("{}", serde_json::Value::Array(v));
            Ok(())
        }
        other => Err(fail(format!(
            "--request {other}: unsupported request (known: blobs)"
        ))),
    }
}
