//! `create`: build a layer (blob + bootstrap) from a directory or a layer tar.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read};
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use nydus::build::{self, ChunkOptions, CreateOptions, Parent, Source};
use nydus::v6::Bootstrap;
use nydus::{Compressor, Digester};
use serde_json::json;

use super::{
    chunk_dict_path, fail, load_v6, nydus_output, parse_u32, prefetch_list, read_file, write_file,
    write_json, Fail, Output, PrefetchPolicy,
};
use crate::info;

#[derive(Clone, Copy, ValueEnum)]
enum SourceType {
    /// A directory (Nydus also accepts `directory`).
    #[value(name = "dir-rafs", alias = "directory")]
    Dir,
    /// An OCI layer tar: plain, gzip or zstd (the compression is detected).
    #[value(name = "tar-rafs")]
    Tar,
    /// A gzip OCI layer tar: the same as tar-rafs here.
    #[value(name = "targz-rafs")]
    Targz,
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressorArg {
    None,
    #[value(name = "lz4_block")]
    Lz4Block,
    Zstd,
}

#[derive(Clone, Copy, ValueEnum)]
enum DigesterArg {
    Blake3,
    Sha256,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum WhiteoutSpec {
    /// `.wh.NAME` files and `.wh..wh..opq` markers (the OCI image layer rules).
    Oci,
    /// Whiteouts are plain files; nothing is interpreted while building.
    None,
    /// 0/0 character devices and `trusted.overlay.opaque` (not supported: fails).
    Overlayfs,
}

#[derive(Args)]
pub struct CreateArgs {
    /// Directory or layer tar (a file, a fifo, or `-` for a tar on stdin).
    source: PathBuf,
    /// What SOURCE is.
    #[arg(
        short = 't',
        long = "type",
        alias = "source-type",
        value_enum,
        default_value = "dir-rafs"
    )]
    source_type: SourceType,
    /// RAFS version; only 6 is built.
    #[arg(short = 'v', long, default_value = "6")]
    fs_version: String,
    #[arg(long, value_enum, default_value = "zstd")]
    compressor: CompressorArg,
    #[arg(long, value_enum, default_value = "blake3")]
    digester: DigesterArg,
    /// Chunk size, a power of two from 0x1000 to 0x1000000 (hex with 0x, or decimal).
    #[arg(long, default_value = "0x100000")]
    chunk_size: String,
    /// Size up to which small files are compressed together; only 0 (no batches) is built.
    #[arg(long, default_value = "0")]
    batch_size: String,
    /// Align chunks to 4 KiB in the uncompressed address space. RAFS v6 chunks always are
    /// (Nydus honours the flag for v5 only), so this changes nothing.
    #[arg(long)]
    aligned_chunk: bool,
    /// Data size of a stargz blob: Nydus reads it for `--type estargztoc-ref` only and ignores
    /// it for every other type, as this tool (which builds none of those) does.
    #[arg(long, value_name = "SIZE")]
    blob_data_size: Option<String>,
    /// Write the blob to this file (a fifo is written in place).
    #[arg(short = 'b', long, conflicts_with = "blob_dir")]
    blob: Option<PathBuf>,
    /// Write the blob into this directory, named by its id.
    #[arg(short = 'D', long)]
    blob_dir: Option<PathBuf>,
    /// Write the bootstrap here (not needed with --blob-inline-meta).
    #[arg(short = 'B', long)]
    bootstrap: Option<PathBuf>,
    /// Put the bootstrap inside the blob.
    #[arg(long, alias = "inline-bootstrap")]
    blob_inline_meta: bool,
    /// Extra features: `blob-toc`.
    #[arg(long, value_delimiter = ',')]
    features: Vec<String>,
    /// Deduplicate against the chunks of another image (`bootstrap=PATH`). Not supported yet:
    /// fails rather than build without it.
    #[arg(long, value_name = "bootstrap=PATH")]
    chunk_dict: Option<String>,
    /// Build on top of this image bootstrap (dedup against it; output describes the whole image).
    #[arg(long)]
    parent_bootstrap: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "none")]
    prefetch_policy: PrefetchPolicy,
    /// Store xattrs that several inodes share once, in EROFS's shared xattr area (as
    /// mkfs.erofs does). The kernel's EROFS and this tool read such images; Nydus 2.4 refuses them.
    #[arg(long)]
    shared_xattrs: bool,
    /// Whiteout convention of the source. A layer's `.wh.` files are kept in its bootstrap for
    /// `merge` to apply under both `oci` and `none`; on a --parent-bootstrap, `oci` applies
    /// them and `none` is refused.
    #[arg(long, value_enum, default_value = "oci")]
    whiteout_spec: WhiteoutSpec,
    /// Encrypt the blob. Not supported: fails (an image must not be labelled encrypted when it
    /// is not).
    #[arg(short = 'E', long)]
    encrypt: bool,
    /// Worker threads for digests and compression (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Write the result (Nydus's output JSON, plus chunk counters) to this file.
    #[arg(short = 'J', long)]
    output_json: Option<PathBuf>,
}

pub fn run(a: CreateArgs) -> Result<(), Fail> {
    let started = Instant::now();
    if a.fs_version != "6" {
        return Err(fail(format!(
            "--fs-version {}: only RAFS v6 images are built (v5 is read-only)",
            a.fs_version
        )));
    }
    if a.encrypt {
        return Err(fail(
            "--encrypt: encrypted blobs are not built by this nydus-image",
        ));
    }
    match a.whiteout_spec {
        WhiteoutSpec::Overlayfs => {
            return Err(fail(
                "--whiteout-spec overlayfs: overlayfs whiteouts (0/0 character devices, trusted.overlay.opaque) are not interpreted by this nydus-image; use oci or none",
            ))
        }
        // Nydus then keeps `.wh.` files as plain files on top of the parent; stacking here always
        // applies them.
        WhiteoutSpec::None if a.parent_bootstrap.is_some() => {
            return Err(fail(
                "--whiteout-spec none with --parent-bootstrap: stacking a layer on its parent applies OCI whiteouts here; use --whiteout-spec oci",
            ))
        }
        // Without a parent, a layer's whiteouts stay in its bootstrap under both specs, for
        // `merge` to apply (a layer tar is built the same way by Nydus).
        WhiteoutSpec::Oci | WhiteoutSpec::None => {}
    }
    if a.chunk_dict.is_some() && a.parent_bootstrap.is_some() {
        return Err(fail(
            "--chunk-dict with --parent-bootstrap: give one (the parent's chunks are deduplicated against already)",
        ));
    }
    let batch = parse_u32("--batch-size", &a.batch_size)?;
    if batch != 0 {
        return Err(fail(format!(
            "--batch-size {}: batch chunks are not built by this nydus-image; give 0",
            a.batch_size
        )));
    }
    let mut toc = false;
    for f in &a.features {
        match f.as_str() {
            "blob-toc" => toc = true,
            other => {
                return Err(fail(format!(
                    "--features {other}: unknown feature (known: blob-toc)"
                )))
            }
        }
    }
    if a.bootstrap.is_none() && !a.blob_inline_meta {
        return Err(fail(
            "--bootstrap is required unless --blob-inline-meta is given",
        ));
    }
    if a.blob.is_none() && a.blob_dir.is_none() {
        return Err(fail("one of --blob or --blob-dir is required"));
    }
    let is_tar = matches!(a.source_type, SourceType::Tar | SourceType::Targz);
    if is_tar && a.source.as_os_str() == "-" && a.prefetch_policy != PrefetchPolicy::None {
        return Err(fail(
            "--prefetch-policy reads the prefetch list from stdin, so the layer tar cannot come from stdin too",
        ));
    }
    let chunk = ChunkOptions {
        chunk_size: parse_u32("--chunk-size", &a.chunk_size)?,
        compressor: match a.compressor {
            CompressorArg::None => Compressor::None,
            CompressorArg::Lz4Block => Compressor::Lz4Block,
            CompressorArg::Zstd => Compressor::Zstd,
        },
        digester: match a.digester {
            DigesterArg::Blake3 => Digester::Blake3,
            DigesterArg::Sha256 => Digester::Sha256,
        },
        threads: a
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    let opts = CreateOptions {
        chunk,
        inline_meta: a.blob_inline_meta,
        toc,
        prefetch: prefetch_list(a.prefetch_policy)?,
        share_xattrs: a.shared_xattrs,
    };
    let parent = match (&a.parent_bootstrap, &a.chunk_dict) {
        (Some(p), _) => Some(
            Parent::from_bootstrap(&read_file(p)?)
                .map_err(|e| fail(format!("parent bootstrap {}: {e}", p.display())))?,
        ),
        // Chunks found in the dictionary point into its blobs (added to the blob table) instead
        // of being stored again; its files are not part of the new image.
        (None, Some(arg)) => {
            let path = chunk_dict_path(arg)?;
            Some(
                Parent::chunk_dict(&load_v6(&path, "--chunk-dict")?)
                    .map_err(|e| fail(format!("--chunk-dict {}: {e}", path.display())))?,
            )
        }
        (None, None) => None,
    };
    let (out, file) = match (&a.blob, &a.blob_dir) {
        (Some(b), _) => Output::create(b)?,
        (None, Some(d)) => {
            fs::create_dir_all(d).map_err(|e| fail(format!("creating {}: {e}", d.display())))?;
            Output::create_in(d)?
        }
        (None, None) => return Err(fail("one of --blob or --blob-dir is required")),
    };
    let tar_input;
    let src = if is_tar {
        tar_input = if a.source.as_os_str() == "-" {
            Box::new(io::stdin().lock()) as Box<dyn Read>
        } else {
            match File::open(&a.source) {
                Ok(f) => Box::new(f),
                Err(e) => {
                    out.discard();
                    return Err(fail(format!("opening {}: {e}", a.source.display())));
                }
            }
        };
        Source::Tar(tar_input)
    } else {
        Source::Dir(&a.source)
    };
    let created = match build::create(src, &opts, parent, BufWriter::with_capacity(1 << 20, file)) {
        Ok(c) => c,
        Err(e) => {
            out.discard();
            return Err(fail(e));
        }
    };
    drop(created.blob);
    let blob_path = match &created.blob_id {
        None => {
            out.discard();
            None
        }
        Some(id) => {
            let dest = match (&a.blob, &a.blob_dir) {
                (Some(b), _) => b.clone(),
                (_, Some(d)) => d.join(id),
                (None, None) => unreachable!("checked above"),
            };
            out.commit_as(&dest)?;
            Some(dest)
        }
    };
    if let Some(b) = &a.bootstrap {
        write_file(b, &created.bootstrap)?;
    }
    // Like Nydus: every blob of the bootstrap's table, the new one under its real id.
    let table = Bootstrap::parse(&created.bootstrap).map_err(fail)?;
    let mut blobs = Vec::with_capacity(table.blobs().len());
    for e in table.blobs() {
        blobs.push(e.blob_id().map_err(fail)?.to_string());
    }
    if let (Some(id), Some(last)) = (&created.blob_id, blobs.last_mut()) {
        if last == build::PLACEHOLDER_BLOB_ID {
            last.clone_from(id);
        }
    }
    let s = created.stats;
    if let Some(j) = &a.output_json {
        let bootstrap = a.bootstrap.as_ref().map(|p| p.display().to_string());
        let mut v = nydus_output(
            bootstrap.as_deref().unwrap_or_default(),
            &blobs,
            6,
            Some(chunk.compressor),
            json!({"total_build": started.elapsed().as_secs_f32()}),
        );
        // Ours besides (Nydus's readers ignore fields they do not know).
        v["blob_path"] = json!(blob_path.as_ref().map(|p| p.display().to_string()));
        v["bootstrap_size"] = json!(created.bootstrap.len());
        v["chunks_referenced"] = json!(s.chunks_referenced);
        v["chunks_stored"] = json!(s.chunks_stored);
        v["chunks_deduplicated"] = json!(s.chunks_deduplicated);
        v["bytes_in"] = json!(s.bytes_in);
        v["bytes_stored"] = json!(s.bytes_stored);
        write_json(j, &v)?;
    }
    info(format_args!(
        "blob {} ({} chunks stored, {} deduplicated, {} -> {} bytes), bootstrap {} bytes",
        created.blob_id.as_deref().unwrap_or("(none: no file data)"),
        s.chunks_stored,
        s.chunks_deduplicated,
        s.bytes_in,
        s.bytes_stored,
        created.bootstrap.len()
    ));
    Ok(())
}
