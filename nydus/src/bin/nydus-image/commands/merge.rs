//! `merge`: merge layer bootstraps (bottom first) into one image bootstrap.

use std::path::{Path, PathBuf};

use clap::Args;
use nydus::build;
use serde_json::json;

use super::{
    chunk_dict_path, fail, load_v6, nydus_output, prefetch_list, write_file, write_json, Fail,
    PrefetchPolicy,
};
use crate::info;

#[derive(Args)]
pub struct MergeArgs {
    /// Layer bootstraps (or blobs with the bootstrap inside), lowest layer first.
    #[arg(required = true)]
    sources: Vec<PathBuf>,
    /// Output bootstrap.
    #[arg(short = 'B', long)]
    bootstrap: PathBuf,
    /// Stack the layers on this image bootstrap: its files and blobs come first.
    #[arg(long)]
    parent_bootstrap: Option<PathBuf>,
    /// The chunk dictionary the layers were built with (`bootstrap=PATH`): blobs of its blob
    /// table are shared ones, kept under their ids, not a layer's own blob.
    #[arg(long, value_name = "bootstrap=PATH")]
    chunk_dict: Option<String>,
    /// Ids (sha256 digests) of the layers' own blobs, comma-separated, one per layer.
    #[arg(long, value_name = "DIGESTS")]
    blob_digests: Option<String>,
    /// Ids for the layers' own blobs, comma-separated, one per layer (applied before
    /// --blob-digests).
    #[arg(long, value_name = "IDS")]
    original_blob_ids: Option<String>,
    /// Sizes of the layers' own blobs in bytes, comma-separated, one per layer.
    #[arg(long, value_name = "SIZES")]
    blob_sizes: Option<String>,
    /// sha256 of each layer blob's TOC (entries and tar header), comma-separated, one per layer.
    #[arg(long, value_name = "DIGESTS")]
    blob_toc_digests: Option<String>,
    /// Size of each layer blob's TOC (entries and tar header), comma-separated, one per layer.
    #[arg(long, value_name = "SIZES")]
    blob_toc_sizes: Option<String>,
    #[arg(long, value_enum, default_value = "none")]
    prefetch_policy: PrefetchPolicy,
    /// Store xattrs that several inodes share once, in EROFS's shared xattr area (as
    /// mkfs.erofs does). The kernel's EROFS and this tool read such images; Nydus 2.4 refuses them.
    #[arg(long)]
    shared_xattrs: bool,
    /// Write the result (Nydus's output JSON) to this file.
    #[arg(short = 'J', long)]
    output_json: Option<PathBuf>,
}

/// A comma-separated per-layer list of `flag`, trimmed, checked to hold one entry per layer.
fn per_layer(flag: &str, list: Option<&str>, layers: usize) -> Result<Option<Vec<String>>, Fail> {
    let Some(list) = list else {
        return Ok(None);
    };
    let items: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
    if items.len() != layers {
        return Err(fail(format!(
            "--{flag}: {} entries for {layers} layer bootstraps; give one per layer",
            items.len()
        )));
    }
    Ok(Some(items))
}

fn parse_numbers(flag: &str, items: Option<Vec<String>>) -> Result<Option<Vec<u64>>, Fail> {
    items
        .map(|items| {
            items
                .iter()
                .map(|s| {
                    s.parse::<u64>()
                        .map_err(|_| fail(format!("--{flag}: {s:?} is not a decimal size")))
                })
                .collect()
        })
        .transpose()
}

/// A sha256 digest in hex (an optional `sha256:` prefix allowed).
fn parse_digest(flag: &str, s: &str) -> Result<[u8; 32], Fail> {
    let bad = || {
        fail(format!(
            "--{flag}: {s:?} is not a sha256 digest (64 hex digits)"
        ))
    };
    let h = s.strip_prefix("sha256:").unwrap_or(s).as_bytes();
    if h.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(h.chunks(2)) {
        let digit = |c: u8| char::from(c).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => *o = (hi * 16 + lo) as u8,
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

fn parse_digests(flag: &str, items: Option<Vec<String>>) -> Result<Option<Vec<[u8; 32]>>, Fail> {
    items
        .map(|items| items.iter().map(|s| parse_digest(flag, s)).collect())
        .transpose()
}

/// The blob id Nydus takes from a bootstrap's file name (`BlobInfo::get_blob_id_from_meta_path`):
/// the name without any extension. nydus-snapshotter names the layer bootstraps it merges by
/// their layer digests.
fn blob_id_from_path(p: &Path) -> Option<String> {
    let mut name = p.file_name().unwrap_or_default();
    while let Some(stem) = Path::new(name).file_stem() {
        if stem == name {
            break;
        }
        name = stem;
    }
    name.to_str()
        .filter(|id| !id.is_empty() && id.len() <= 64)
        .map(str::to_string)
}

/// What `merge` sets on each layer's own blob, one entry per layer, from the per-layer flags.
fn layer_blobs(a: &MergeArgs) -> Result<Vec<build::LayerBlob>, Fail> {
    let n = a.sources.len();
    let toc_sizes = parse_numbers(
        "blob-toc-sizes",
        per_layer("blob-toc-sizes", a.blob_toc_sizes.as_deref(), n)?,
    )?;
    if let Some(big) = toc_sizes
        .iter()
        .flatten()
        .find(|s| **s > u64::from(u32::MAX))
    {
        return Err(fail(format!(
            "--blob-toc-sizes: {big} is larger than a TOC can be"
        )));
    }
    let original_ids = per_layer("original-blob-ids", a.original_blob_ids.as_deref(), n)?;
    let digests = parse_digests(
        "blob-digests",
        per_layer("blob-digests", a.blob_digests.as_deref(), n)?,
    )?;
    let sizes = parse_numbers(
        "blob-sizes",
        per_layer("blob-sizes", a.blob_sizes.as_deref(), n)?,
    )?;
    let toc_digests = parse_digests(
        "blob-toc-digests",
        per_layer("blob-toc-digests", a.blob_toc_digests.as_deref(), n)?,
    )?;
    let mut out = Vec::with_capacity(n);
    for (k, path) in a.sources.iter().enumerate() {
        let original_id = original_ids.as_ref().map(|v| v[k].clone());
        let digest = digests.as_ref().map(|v| v[k]);
        out.push(build::LayerBlob {
            original_id,
            digest,
            size: sizes.as_ref().map(|v| v[k]),
            toc_digest: toc_digests.as_ref().map(|v| v[k]),
            toc_size: toc_sizes.as_ref().map(|v| v[k] as u32),
            // An inline bootstrap's placeholder id becomes the file name's, as Nydus does.
            placeholder_id: blob_id_from_path(path),
        });
    }
    Ok(out)
}

/// Merges the layers as Nydus's `Merger` does ([`build::merge`]).
pub fn run(a: MergeArgs) -> Result<(), Fail> {
    let blobs = layer_blobs(&a)?;
    let dict = match &a.chunk_dict {
        Some(arg) => Some(load_v6(&chunk_dict_path(arg)?, "--chunk-dict")?),
        None => None,
    };
    let parent = match &a.parent_bootstrap {
        Some(p) => Some(load_v6(p, "--parent-bootstrap")?),
        None => None,
    };
    let mut bootstraps = Vec::with_capacity(a.sources.len());
    for path in &a.sources {
        bootstraps.push(load_v6(path, "layer")?);
    }
    let layers: Vec<build::MergeLayer<'_>> = a
        .sources
        .iter()
        .zip(&bootstraps)
        .zip(blobs)
        .map(|((path, bootstrap), blob)| build::MergeLayer {
            name: path.display().to_string(),
            bootstrap,
            blob,
        })
        .collect();
    let opts = build::MergeOptions {
        parent: parent.as_deref(),
        chunk_dict: dict.as_deref(),
        prefetch: prefetch_list(a.prefetch_policy)?,
        share_xattrs: a.shared_xattrs,
    };
    let merged = build::merge(&layers, &opts).map_err(fail)?;
    write_file(&a.bootstrap, &merged.bootstrap)?;
    if let Some(j) = &a.output_json {
        let mut v = nydus_output(
            &a.bootstrap.display().to_string(),
            &merged.blob_ids,
            6,
            merged.first_compressor,
            json!({}),
        );
        v["bootstrap_size"] = json!(merged.bootstrap.len());
        write_json(j, &v)?;
    }
    info(format_args!(
        "merged {} layers: {} blobs, bootstrap {} bytes",
        a.sources.len(),
        merged.blob_ids.len(),
        merged.bootstrap.len()
    ));
    Ok(())
}
