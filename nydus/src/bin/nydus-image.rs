//! `nydus-image`: build, merge, check, inspect, unpack and measure RAFS v6 images, with Nydus's
//! command and flag names where they overlap.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufRead, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use nydus::blobmeta::BlobMeta;
use nydus::build::{self, ChunkOptions, CreateOptions, Parent, Source};
use nydus::image::{self, BlobFile, Image};
use nydus::tree::{display, Kind, NodeId, Tree};
use nydus::v6::{BlobEntry, Bootstrap};
use nydus::{Compressor, Digester};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "nydus-image",
    version,
    about = "Build and inspect Nydus RAFS v6 images"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum SourceType {
    /// A directory.
    DirRafs,
    /// An OCI layer tar (plain, gzip or zstd).
    TarRafs,
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
enum PrefetchPolicy {
    /// Prefetch list (one path per line) read from stdin.
    Fs,
    /// Same as fs (the blob is laid out in build order either way).
    Blob,
    /// No prefetch table.
    None,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a layer (blob + bootstrap) from a directory or a layer tar.
    Create {
        /// Directory or tar file (`-` for a tar on stdin).
        source: PathBuf,
        /// What SOURCE is.
        #[arg(short = 't', long = "type", value_enum, default_value = "dir-rafs")]
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
        /// Write the blob to this file.
        #[arg(short = 'b', long, conflicts_with = "blob_dir")]
        blob: Option<PathBuf>,
        /// Write the blob into this directory, named by its id.
        #[arg(short = 'D', long)]
        blob_dir: Option<PathBuf>,
        /// Write the bootstrap here (not needed with --blob-inline-meta).
        #[arg(short = 'B', long)]
        bootstrap: Option<PathBuf>,
        /// Put the bootstrap inside the blob.
        #[arg(long)]
        blob_inline_meta: bool,
        /// Extra features: `blob-toc`.
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
        /// Build on top of this image bootstrap (dedup against it; output describes the whole image).
        #[arg(long)]
        parent_bootstrap: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "none")]
        prefetch_policy: PrefetchPolicy,
        /// Store xattrs that several inodes share once, in EROFS's shared xattr area (as
        /// mkfs.erofs does). The kernel's EROFS and this tool read such images; Nydus 2.4 refuses them.
        #[arg(long)]
        shared_xattrs: bool,
        /// Whiteout convention of the source; only `oci` (`.wh.` files) is supported.
        #[arg(long, default_value = "oci")]
        whiteout_spec: String,
        /// Worker threads for digests and compression (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Write a JSON summary (blob id, sizes, counters) to this file.
        #[arg(short = 'J', long)]
        output_json: Option<PathBuf>,
    },
    /// Merge layer bootstraps (bottom first) into one image bootstrap.
    Merge {
        /// Layer bootstraps, lowest layer first.
        #[arg(required = true)]
        sources: Vec<PathBuf>,
        /// Output bootstrap.
        #[arg(short = 'B', long)]
        bootstrap: PathBuf,
        /// Blob ids to use for the layers' blobs (comma-separated, one per layer with a blob).
        #[arg(long, value_delimiter = ',')]
        blob_digests: Vec<String>,
        #[arg(long, value_enum, default_value = "none")]
        prefetch_policy: PrefetchPolicy,
        /// Store xattrs that several inodes share once, in EROFS's shared xattr area (as
        /// mkfs.erofs does). The kernel's EROFS and this tool read such images; Nydus 2.4 refuses them.
        #[arg(long)]
        shared_xattrs: bool,
        #[arg(short = 'J', long)]
        output_json: Option<PathBuf>,
    },
    /// Check the bootstrap structure and, with blobs, every chunk's CRC32C/digest.
    Check {
        #[arg(short = 'B', long)]
        bootstrap: PathBuf,
        /// Directory holding the blobs, named by id.
        #[arg(short = 'D', long)]
        blob_dir: Option<PathBuf>,
        /// The blob file (single-blob images).
        #[arg(short = 'b', long)]
        blob: Option<PathBuf>,
        /// Print a JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Print the superblock, blobs, files and chunks.
    Inspect {
        #[arg(short = 'B', long)]
        bootstrap: PathBuf,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the source tree as a tar from a bootstrap and its blobs.
    Unpack {
        #[arg(short = 'B', long)]
        bootstrap: PathBuf,
        #[arg(short = 'D', long)]
        blob_dir: Option<PathBuf>,
        #[arg(short = 'b', long)]
        blob: Option<PathBuf>,
        /// Output tar file.
        #[arg(long)]
        output: PathBuf,
    },
    /// Sizes, chunk counts and dedup ratio of an image.
    Stat {
        #[arg(short = 'B', long)]
        bootstrap: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// An error for the user; exit code 2 (bad input) or 1 (check found damage).
struct Fail {
    code: u8,
    msg: String,
}

fn fail(msg: impl std::fmt::Display) -> Fail {
    Fail {
        code: 2,
        msg: msg.to_string(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("nydus-image: {}", f.msg);
            ExitCode::from(f.code)
        }
    }
}

fn read_file(p: &Path) -> Result<Vec<u8>, Fail> {
    fs::read(p).map_err(|e| fail(format!("reading {}: {e}", p.display())))
}

fn write_file(p: &Path, bytes: &[u8]) -> Result<(), Fail> {
    let tmp = tmp_path(p);
    create_tmp(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|_| fs::rename(&tmp, p))
        .map_err(|e| fail(format!("writing {}: {e}", p.display())))
}

/// Creates a temporary output file afresh: a leftover (or a planted symlink) is removed first and
/// the file is created with O_EXCL, so the write never follows a link.
fn create_tmp(tmp: &Path) -> io::Result<File> {
    let _ = fs::remove_file(tmp);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
}

fn tmp_path(p: &Path) -> PathBuf {
    let mut name = p.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    p.with_file_name(name)
}

fn parse_size(s: &str) -> Result<u32, Fail> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    v.map_err(|_| fail(format!("invalid chunk size {s:?}")))
}

fn prefetch_list(policy: PrefetchPolicy) -> Result<Vec<Vec<u8>>, Fail> {
    if policy == PrefetchPolicy::None {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for line in io::stdin().lock().split(b'\n') {
        let line = line.map_err(|e| fail(format!("reading the prefetch list: {e}")))?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line).to_vec();
        if !line.is_empty() {
            out.push(line);
        }
    }
    Ok(out)
}

fn run(cmd: Cmd) -> Result<(), Fail> {
    match cmd {
        Cmd::Create {
            source,
            source_type,
            fs_version,
            compressor,
            digester,
            chunk_size,
            blob,
            blob_dir,
            bootstrap,
            blob_inline_meta,
            features,
            parent_bootstrap,
            prefetch_policy,
            shared_xattrs,
            whiteout_spec,
            threads,
            output_json,
        } => {
            if whiteout_spec != "oci" {
                return Err(fail(format!(
                    "--whiteout-spec {whiteout_spec}: only oci is supported"
                )));
            }
            if fs_version != "6" {
                return Err(fail(format!(
                    "--fs-version {fs_version}: only RAFS v6 images are built (v5 is read-only)"
                )));
            }
            let mut toc = false;
            for f in &features {
                match f.as_str() {
                    "blob-toc" => toc = true,
                    other => {
                        return Err(fail(format!("unknown feature {other:?} (known: blob-toc)")))
                    }
                }
            }
            if bootstrap.is_none() && !blob_inline_meta {
                return Err(fail(
                    "--bootstrap is required unless --blob-inline-meta is given",
                ));
            }
            if blob.is_none() && blob_dir.is_none() {
                return Err(fail("one of --blob or --blob-dir is required"));
            }
            let chunk = ChunkOptions {
                chunk_size: parse_size(&chunk_size)?,
                compressor: match compressor {
                    CompressorArg::None => Compressor::None,
                    CompressorArg::Lz4Block => Compressor::Lz4Block,
                    CompressorArg::Zstd => Compressor::Zstd,
                },
                digester: match digester {
                    DigesterArg::Blake3 => Digester::Blake3,
                    DigesterArg::Sha256 => Digester::Sha256,
                },
                threads: threads
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            };
            let opts = CreateOptions {
                chunk,
                inline_meta: blob_inline_meta,
                toc,
                prefetch: prefetch_list(prefetch_policy)?,
                share_xattrs: shared_xattrs,
            };
            let parent = match &parent_bootstrap {
                Some(p) => Some(
                    Parent::from_bootstrap(&read_file(p)?)
                        .map_err(|e| fail(format!("parent bootstrap {}: {e}", p.display())))?,
                ),
                None => None,
            };
            let blob_tmp = match (&blob, &blob_dir) {
                (Some(b), _) => tmp_path(b),
                (None, Some(d)) => {
                    fs::create_dir_all(d)
                        .map_err(|e| fail(format!("creating {}: {e}", d.display())))?;
                    d.join(format!(".blob.tmp{}", std::process::id()))
                }
                (None, None) => unreachable!(),
            };
            let out = create_tmp(&blob_tmp)
                .map_err(|e| fail(format!("creating {}: {e}", blob_tmp.display())))?;
            let out = BufWriter::with_capacity(1 << 20, out);
            let tar_input;
            let src = match source_type {
                SourceType::DirRafs => Source::Dir(&source),
                SourceType::TarRafs => {
                    tar_input = if source.as_os_str() == "-" {
                        Box::new(io::stdin().lock()) as Box<dyn Read>
                    } else {
                        Box::new(
                            File::open(&source)
                                .map_err(|e| fail(format!("opening {}: {e}", source.display())))?,
                        )
                    };
                    Source::Tar(tar_input)
                }
            };
            let created = build::create(src, &opts, parent, out);
            let created = match created {
                Ok(c) => c,
                Err(e) => {
                    let _ = fs::remove_file(&blob_tmp);
                    return Err(fail(e));
                }
            };
            drop(created.blob);
            let blob_path = match &created.blob_id {
                None => {
                    let _ = fs::remove_file(&blob_tmp);
                    None
                }
                Some(id) => {
                    let dest = match (&blob, &blob_dir) {
                        (Some(b), _) => b.clone(),
                        (None, Some(d)) => d.join(id),
                        (None, None) => unreachable!(),
                    };
                    fs::rename(&blob_tmp, &dest)
                        .map_err(|e| fail(format!("writing {}: {e}", dest.display())))?;
                    Some(dest)
                }
            };
            if let Some(b) = &bootstrap {
                write_file(b, &created.bootstrap)?;
            }
            let s = created.stats;
            let summary = json!({
                "version": "6",
                "blobs": created.blob_id.iter().collect::<Vec<_>>(),
                "blob_path": blob_path.as_ref().map(|p| p.display().to_string()),
                "bootstrap": bootstrap.as_ref().map(|p| p.display().to_string()),
                "bootstrap_size": created.bootstrap.len(),
                "chunks_referenced": s.chunks_referenced,
                "chunks_stored": s.chunks_stored,
                "chunks_deduplicated": s.chunks_deduplicated,
                "bytes_in": s.bytes_in,
                "bytes_stored": s.bytes_stored,
            });
            if let Some(j) = output_json {
                write_file(
                    &j,
                    serde_json::to_string_pretty(&summary)
                        .unwrap_or_default()
                        .as_bytes(),
                )?;
            }
            println!(
                "blob {} ({} chunks stored, {} deduplicated, {} -> {} bytes), bootstrap {} bytes",
                created.blob_id.as_deref().unwrap_or("(none: no file data)"),
                s.chunks_stored,
                s.chunks_deduplicated,
                s.bytes_in,
                s.bytes_stored,
                created.bootstrap.len()
            );
            Ok(())
        }
        Cmd::Merge {
            sources,
            bootstrap,
            blob_digests,
            prefetch_policy,
            shared_xattrs,
            output_json,
        } => {
            let mut layers: Vec<Vec<u8>> = Vec::with_capacity(sources.len());
            for p in &sources {
                let img = load(p)?;
                if img.version != 6 {
                    return Err(fail(format!(
                        "{}: only RAFS v6 layers can be merged",
                        p.display()
                    )));
                }
                layers.push(img.bootstrap);
            }
            let refs: Vec<&[u8]> = layers.iter().map(|l| l.as_slice()).collect();
            let prefetch = prefetch_list(prefetch_policy)?;
            let merged =
                build::merge(&refs, &blob_digests, &prefetch, shared_xattrs).map_err(fail)?;
            write_file(&bootstrap, &merged)?;
            let b = Bootstrap::parse(&merged).map_err(fail)?;
            let blobs: Vec<String> = b
                .blobs()
                .iter()
                .map(|e| e.blob_id().unwrap_or_default().to_string())
                .collect();
            if let Some(j) = output_json {
                let v = json!({"version": "6", "blobs": blobs, "bootstrap_size": merged.len()});
                write_file(
                    &j,
                    serde_json::to_string_pretty(&v)
                        .unwrap_or_default()
                        .as_bytes(),
                )?;
            }
            println!(
                "merged {} layers: {} blobs, bootstrap {} bytes",
                sources.len(),
                blobs.len(),
                merged.len()
            );
            Ok(())
        }
        Cmd::Check {
            bootstrap,
            blob_dir,
            blob,
            json,
        } => check(&bootstrap, blob_dir.as_deref(), blob.as_deref(), json),
        Cmd::Inspect { bootstrap, json } => inspect(&bootstrap, json),
        Cmd::Unpack {
            bootstrap,
            blob_dir,
            blob,
            output,
        } => unpack(&bootstrap, blob_dir.as_deref(), blob.as_deref(), &output),
        Cmd::Stat { bootstrap, json } => stat(&bootstrap, json),
    }
}

/// Loads the image at `path` (v6 or v5 bootstrap, or a blob with an inlined bootstrap).
fn load(path: &Path) -> Result<Image, Fail> {
    image::load(path).map_err(fail)
}

/// Opens every blob of the image: the blob the bootstrap was inlined in, or `blob` for a
/// single-blob image, else `<blob_dir>/<id>`.
fn open_blobs(
    img: &Image,
    blob_dir: Option<&Path>,
    blob: Option<&Path>,
) -> Result<Vec<BlobFile>, Fail> {
    let blobs = &img.blobs;
    let mut out = Vec::with_capacity(blobs.len());
    for (i, e) in blobs.iter().enumerate() {
        if let Some(feature) = e.unsupported_feature() {
            return Err(fail(format!(
                "blob {i} ({}) uses {feature}, which this nydus-image cannot read yet",
                e.id
            )));
        }
        let last = i + 1 == blobs.len();
        let path = match (blob, blob_dir, &img.inline_blob) {
            // A layer's own blob is the last in its table.
            (None, _, Some(b)) if last && (e.has_placeholder_id() || blob_dir.is_none()) => {
                b.clone()
            }
            (Some(b), _, _) if blobs.len() == 1 => b.to_path_buf(),
            (Some(_), _, _) => {
                return Err(fail(format!(
                    "the image has {} blobs; give --blob-dir instead of --blob",
                    blobs.len()
                )))
            }
            (None, Some(d), _) => {
                // The id comes from the image: only a plain file name may be looked up.
                if e.id.is_empty() || e.id == "." || e.id == ".." || e.id.contains(['/', '\0']) {
                    return Err(fail(format!(
                        "blob {i} has id {:?}, which is not a file name in --blob-dir",
                        e.id
                    )));
                }
                d.join(&e.id)
            }
            (None, None, _) => {
                return Err(fail("give --blob-dir (or --blob for a single-blob image)"))
            }
        };
        out.push(
            BlobFile::open_with(&e.id, e.compressor, e.digester, &path)
                .map_err(|err| fail(format!("blob {i} ({}): {err}", path.display())))?,
        );
    }
    Ok(out)
}

/// Checks blob.meta of a v6 blob against the chunk infos the bootstrap holds for it; returns
/// one message per problem.
fn check_blob_meta(blob: &BlobFile, entry: &BlobEntry, index: u32, tree: &Tree) -> Vec<String> {
    if entry.ci_compressed_size == 0 && entry.ci_uncompressed_size == 0 {
        return Vec::new();
    }
    let what = |m: String| format!("blob {} blob.meta: {m}", blob.id);
    let meta = blob
        .read_at(
            entry.ci_offset,
            entry
                .ci_compressed_size
                .saturating_add(nydus::blobmeta::BLOB_META_HEADER_SIZE as u64),
        )
        .map_err(|e| e.to_string())
        .and_then(|section| {
            let meta = BlobMeta::parse_from_section(&section).map_err(|e| e.to_string())?;
            let h = meta.header();
            if h.ci_offset != entry.ci_offset
                || h.ci_compressed_size != entry.ci_compressed_size
                || h.ci_compressor != entry.ci_compressor
            {
                return Err(format!(
                    "header says CI at {:#x} ({} bytes, compressor {}), the blob table says {:#x} ({} bytes, compressor {})",
                    h.ci_offset, h.ci_compressed_size, h.ci_compressor, entry.ci_offset, entry.ci_compressed_size, entry.ci_compressor
                ));
            }
            Ok(meta)
        });
    let meta = match meta {
        Ok(m) => m,
        Err(e) => return vec![what(e)],
    };
    let mut problems = Vec::new();
    let chunks = meta.chunks();
    if chunks.len() != entry.chunk_count as usize {
        problems.push(what(format!(
            "{} entries, the blob table says {}",
            chunks.len(),
            entry.chunk_count
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for id in tree.bfs().ids() {
        let Kind::File { chunks: fc, .. } = &tree.node(id).kind else {
            continue;
        };
        for c in fc.iter().filter(|c| c.blob_index == index) {
            if !seen.insert(c.index) {
                continue;
            }
            let Some(m) = chunks.get(c.index as usize) else {
                problems.push(what(format!("no entry for chunk {}", c.index)));
                continue;
            };
            if m.compressed_offset != c.compressed_offset
                || m.compressed_size != c.compressed_size
                || m.uncompressed_offset != c.uncompressed_offset
                || m.uncompressed_size != c.uncompressed_size
                || (m.crc32().is_some() && m.crc32() != c.crc32())
            {
                problems.push(what(format!(
                    "chunk {} is described differently than in the bootstrap ({m:?} vs {c:?})",
                    c.index
                )));
            }
        }
    }
    problems
}

fn check(
    bootstrap: &Path,
    blob_dir: Option<&Path>,
    blob: Option<&Path>,
    json: bool,
) -> Result<(), Fail> {
    let mut errors: Vec<serde_json::Value> = Vec::new();
    let mut files = 0u64;
    let mut chunks_checked = 0u64;
    match image::load(bootstrap) {
        Err(e) => errors.push(json!({"what": "bootstrap", "error": e.to_string()})),
        Ok(img) => {
            let with_blobs = blob_dir.is_some() || blob.is_some() || img.inline_blob.is_some();
            let blobs = if with_blobs {
                open_blobs(&img, blob_dir, blob)?
            } else {
                Vec::new()
            };
            for (i, (bf, b)) in blobs.iter().zip(&img.blobs).enumerate() {
                if let Some(entry) = &b.v6 {
                    for m in check_blob_meta(bf, entry, i as u32, &img.tree) {
                        errors.push(json!({"what": "blob.meta", "blob": bf.id, "error": m}));
                    }
                }
            }
            let tree = &img.tree;
            // Each file once (hardlinks share their chunks), named by its first path.
            for (path, id) in tree.bfs().iter() {
                let Kind::File { chunks, .. } = &tree.node(id).kind else {
                    continue;
                };
                files += 1;
                if !with_blobs {
                    continue;
                }
                for (k, c) in chunks.iter().enumerate() {
                    chunks_checked += 1;
                    let Some(bf) = blobs.get(c.blob_index as usize) else {
                        errors.push(
                            json!({"file": display(&path), "chunk": k, "error": "no such blob"}),
                        );
                        continue;
                    };
                    if let Err(e) = bf.read_chunk(c) {
                        errors.push(json!({
                            "file": display(&path),
                            "chunk": k,
                            "file_offset": c.file_offset,
                            "blob": bf.id,
                            "blob_chunk_index": c.index,
                            "error": e.to_string(),
                        }));
                    }
                }
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
        Ok(())
    } else {
        Err(Fail {
            code: 1,
            msg: format!("{} error(s) in {}", errors.len(), bootstrap.display()),
        })
    }
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

fn inspect(bootstrap: &Path, as_json: bool) -> Result<(), Fail> {
    let img = load(bootstrap)?;
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

fn unpack(
    bootstrap: &Path,
    blob_dir: Option<&Path>,
    blob: Option<&Path>,
    output: &Path,
) -> Result<(), Fail> {
    let img = load(bootstrap)?;
    let tree = &img.tree;
    let blobs = if img.blobs.is_empty() {
        Vec::new()
    } else {
        open_blobs(&img, blob_dir, blob)?
    };
    let tmp = tmp_path(output);
    let file = create_tmp(&tmp).map_err(|e| fail(format!("creating {}: {e}", tmp.display())))?;
    let result = write_tar(tree, &blobs, BufWriter::with_capacity(1 << 20, file));
    match result {
        Ok(()) => {
            fs::rename(&tmp, output).map_err(|e| fail(format!("writing {}: {e}", output.display())))
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Reads a file's data chunk by chunk, each checked.
struct ChunkReader<'a> {
    chunks: &'a [nydus::ChunkInfo],
    blobs: &'a [BlobFile],
    path: &'a [u8],
    /// The file's size: exactly this many bytes come out, holes between chunks as zeros.
    size: u64,
    /// File offset of `buf[pos]`.
    at: u64,
    next: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl ChunkReader<'_> {
    fn refill(&mut self) -> io::Result<()> {
        const ZEROS: u64 = 1 << 20;
        let fail = |m: String| io::Error::other(format!("{}: {m}", display(self.path)));
        self.pos = 0;
        match self.chunks.get(self.next) {
            Some(c) if c.file_offset == self.at => {
                let blob = self.blobs.get(c.blob_index as usize).ok_or_else(|| {
                    fail(format!(
                        "chunk names blob {} which is missing",
                        c.blob_index
                    ))
                })?;
                self.buf = blob
                    .read_chunk(c)
                    .map_err(|e| fail(format!("chunk {}: {e}", self.next)))?;
                self.next += 1;
            }
            Some(c) if c.file_offset < self.at => {
                return Err(fail(format!(
                    "chunk {} at file offset {} overlaps the data before it (up to {})",
                    self.next, c.file_offset, self.at
                )));
            }
            // A hole before the next chunk, or after the last one.
            Some(c) => self.buf = vec![0; (c.file_offset - self.at).min(ZEROS) as usize],
            None => self.buf = vec![0; (self.size - self.at).min(ZEROS) as usize],
        }
        Ok(())
    }
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at >= self.size || out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.buf.len() {
            self.refill()?;
        }
        let left = usize::try_from(self.size - self.at).unwrap_or(usize::MAX);
        let n = out.len().min(self.buf.len() - self.pos).min(left);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.at += n as u64;
        Ok(n)
    }
}

fn write_tar(tree: &Tree, blobs: &[BlobFile], out: impl Write) -> Result<(), Fail> {
    let mut ar = tar::Builder::new(out);
    ar.mode(tar::HeaderMode::Complete);
    let mut first_name: HashMap<NodeId, Vec<u8>> = HashMap::new();
    let err =
        |path: &[u8], e: io::Error| fail(format!("writing {} to the tar: {e}", display(path)));
    for (path, id) in tree.walk() {
        let n = tree.node(id);
        let rel: Vec<u8> = if path == b"/" {
            b"./".to_vec()
        } else {
            path[1..].to_vec()
        };
        let mut h = tar::Header::new_gnu();
        h.set_mode(n.meta.perm);
        h.set_uid(u64::from(n.meta.uid));
        h.set_gid(u64::from(n.meta.gid));
        h.set_mtime(n.meta.mtime);
        h.set_size(0);
        if !n.kind.is_dir() {
            if let Some(first) = first_name.get(&id) {
                h.set_entry_type(tar::EntryType::Link);
                ar.append_link(&mut h, bytes_path(&rel), bytes_path(first))
                    .map_err(|e| err(&path, e))?;
                continue;
            }
            first_name.insert(id, rel.clone());
        }
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if n.meta.mtime_nsec != 0 {
            pax.push((
                "mtime".into(),
                format!("{}.{:09}", n.meta.mtime, n.meta.mtime_nsec).into_bytes(),
            ));
        }
        for (k, v) in &n.meta.xattrs {
            pax.push((format!("SCHILY.xattr.{}", display(k)), v.clone()));
        }
        if !pax.is_empty() {
            ar.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(|e| err(&path, e))?;
        }
        match &n.kind {
            Kind::Dir(_) => {
                h.set_entry_type(tar::EntryType::Directory);
                ar.append_data(&mut h, bytes_path(&rel), io::empty())
                    .map_err(|e| err(&path, e))?;
            }
            Kind::File { size, chunks } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*size);
                let r = ChunkReader {
                    chunks,
                    blobs,
                    path: &path,
                    size: *size,
                    at: 0,
                    next: 0,
                    buf: Vec::new(),
                    pos: 0,
                };
                ar.append_data(&mut h, bytes_path(&rel), r)
                    .map_err(|e| err(&path, e))?;
            }
            Kind::Symlink(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                ar.append_link(&mut h, bytes_path(&rel), bytes_path(t))
                    .map_err(|e| err(&path, e))?;
            }
            Kind::CharDev(d) | Kind::BlockDev(d) => {
                h.set_entry_type(if matches!(n.kind, Kind::CharDev(_)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                let (major, minor) = build::source::decode_dev(*d);
                h.set_device_major(major).map_err(|e| err(&path, e))?;
                h.set_device_minor(minor).map_err(|e| err(&path, e))?;
                ar.append_data(&mut h, bytes_path(&rel), io::empty())
                    .map_err(|e| err(&path, e))?;
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                ar.append_data(&mut h, bytes_path(&rel), io::empty())
                    .map_err(|e| err(&path, e))?;
            }
            Kind::Socket => {
                // Tar cannot hold sockets (GNU tar skips them too); say so instead of dropping it.
                eprintln!(
                    "nydus-image: {}: sockets cannot be stored in a tar, skipped",
                    display(&path)
                );
            }
        }
    }
    ar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| fail(format!("writing the tar: {e}")))
}

fn bytes_path(b: &[u8]) -> &Path {
    use std::os::unix::ffi::OsStrExt;
    Path::new(std::ffi::OsStr::from_bytes(b))
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
