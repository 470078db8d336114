//! `nydus-image`: build, merge, check, inspect, unpack and measure RAFS v6 images.
//!
//! Commands, flags and the `-J/--output-json` files follow Nydus's own `nydus-image` (2.4) where
//! they overlap, so the tools that run it — nydusify, and nydus-snapshotter's converter that
//! buildkit and Harbor's acceleration service use — can run this one with the same command lines.
//! docs/nydus.md lists the flags and where this tool differs.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::fs::{self, File};
use std::io::{self, BufRead, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nydus::blobmeta::BlobMeta;
use nydus::build::{self, ChunkOptions, CreateOptions, Parent, Source};
use nydus::image::{self, BlobFile, Image};
use nydus::tree::{display, Kind, Tree};
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
    /// How much to print: the summary lines of create and merge are `info`, notices `warn`.
    #[arg(short = 'l', long, global = true, value_enum, default_value = "info")]
    log_level: LogLevel,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// The `--log-level` given, as `LogLevel as u8`.
static LOG_LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

fn enabled(level: LogLevel) -> bool {
    level as u8 >= LOG_LEVEL.load(Ordering::Relaxed)
}

/// A summary line for the user (stdout), shown at `info` and below.
fn info(msg: impl Display) {
    if enabled(LogLevel::Info) {
        println!("{msg}");
    }
}

/// A notice (stderr), shown at `warn` and below.
fn warn(msg: impl Display) {
    if enabled(LogLevel::Warn) {
        eprintln!("nydus-image: {msg}");
    }
}

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
enum PrefetchPolicy {
    /// Prefetch list (one absolute path per line) read from stdin.
    Fs,
    /// Same as fs (the blob is laid out in build order either way).
    Blob,
    /// No prefetch table.
    None,
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

#[derive(Subcommand)]
enum Cmd {
    /// Build a layer (blob + bootstrap) from a directory or a layer tar.
    Create(CreateArgs),
    /// Merge layer bootstraps (bottom first) into one image bootstrap.
    Merge(MergeArgs),
    /// Check the bootstrap structure and, with blobs, every chunk's CRC32C/digest.
    Check(CheckArgs),
    /// Print the superblock, blobs, files and chunks.
    Inspect(InspectArgs),
    /// Rebuild the source tree as a tar from a bootstrap and its blobs.
    Unpack(UnpackArgs),
    /// Sizes, chunk counts and dedup ratio of an image.
    Stat(StatArgs),
}

#[derive(Args)]
struct CreateArgs {
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

#[derive(Args)]
struct MergeArgs {
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

/// The bootstrap a command reads: positional, or with `-B` as older Nydus spells it.
#[derive(Args)]
struct BootstrapArg {
    /// A RAFS bootstrap, or a blob with the bootstrap inside.
    #[arg(value_name = "BOOTSTRAP", required_unless_present = "bootstrap")]
    path: Option<PathBuf>,
    /// Same as BOOTSTRAP.
    #[arg(short = 'B', long, conflicts_with = "path")]
    bootstrap: Option<PathBuf>,
}

impl BootstrapArg {
    fn path(&self) -> Result<&Path, Fail> {
        self.bootstrap
            .as_deref()
            .or(self.path.as_deref())
            .ok_or_else(|| fail("give the bootstrap (BOOTSTRAP or --bootstrap)"))
    }
}

#[derive(Args)]
struct CheckArgs {
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

#[derive(Args)]
struct InspectArgs {
    #[command(flatten)]
    bootstrap: BootstrapArg,
    /// JSON output.
    #[arg(long)]
    json: bool,
    /// Answer one request as JSON on stdout, as Nydus does; only `blobs` is known.
    #[arg(short = 'R', long)]
    request: Option<String>,
}

#[derive(Args)]
struct UnpackArgs {
    #[command(flatten)]
    bootstrap: BootstrapArg,
    #[arg(short = 'D', long)]
    blob_dir: Option<PathBuf>,
    /// The blob (or its chunk data section alone) of a single-blob image.
    #[arg(short = 'b', long)]
    blob: Option<PathBuf>,
    /// Output tar file (a fifo is written in place).
    #[arg(long)]
    output: PathBuf,
    /// A remote storage backend. Not supported: unpack reads local blobs only.
    #[arg(long)]
    backend_type: Option<String>,
    /// Config of --backend-type. Not supported.
    #[arg(long)]
    backend_config: Option<String>,
    /// Config file of --backend-type. Not supported.
    #[arg(long)]
    backend_config_file: Option<PathBuf>,
}

#[derive(Args)]
struct StatArgs {
    #[command(flatten)]
    bootstrap: BootstrapArg,
    #[arg(long)]
    json: bool,
}

/// An error for the user; exit code 2 (bad input) or 1 (check found damage).
struct Fail {
    code: u8,
    msg: String,
}

fn fail(msg: impl Display) -> Fail {
    Fail {
        code: 2,
        msg: msg.to_string(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    LOG_LEVEL.store(cli.log_level as u8, Ordering::Relaxed);
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("nydus-image: {}", f.msg);
            ExitCode::from(f.code)
        }
    }
}

fn run(cmd: Cmd) -> Result<(), Fail> {
    match cmd {
        Cmd::Create(a) => create(a),
        Cmd::Merge(a) => merge(a),
        Cmd::Check(a) => check(a),
        Cmd::Inspect(a) => inspect(a),
        Cmd::Unpack(a) => unpack(a),
        Cmd::Stat(a) => stat(a.bootstrap.path()?, a.json),
    }
}

fn read_file(p: &Path) -> Result<Vec<u8>, Fail> {
    fs::read(p).map_err(|e| fail(format!("reading {}: {e}", p.display())))
}

fn write_file(p: &Path, bytes: &[u8]) -> Result<(), Fail> {
    let (out, mut f) = Output::create(p)?;
    f.write_all(bytes)
        .map_err(|e| fail(format!("writing {}: {e}", p.display())))?;
    drop(f);
    out.commit_as(p)
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

/// An output being written. A regular file is written under a temporary name and renamed into
/// place once complete, so a failed run leaves no half-written file. A path that already exists
/// and is not a regular file or directory — the fifo nydus-snapshotter gives as `--blob` and as
/// unpack's `--output`, or `/dev/stdout` — is written in place: renaming over it would leave its
/// reader waiting forever.
struct Output {
    tmp: Option<PathBuf>,
}

impl Output {
    fn create(dest: &Path) -> Result<(Self, File), Fail> {
        let special = fs::metadata(dest).is_ok_and(|m| !m.is_file() && !m.is_dir());
        if special {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(dest)
                .map_err(|e| fail(format!("opening {}: {e}", dest.display())))?;
            return Ok((Output { tmp: None }, f));
        }
        Self::create_tmp(tmp_path(dest))
    }

    /// A temporary file in `dir`, for an output whose name is known only at the end.
    fn create_in(dir: &Path) -> Result<(Self, File), Fail> {
        Self::create_tmp(dir.join(format!(".blob.tmp{}", std::process::id())))
    }

    fn create_tmp(tmp: PathBuf) -> Result<(Self, File), Fail> {
        let f = create_tmp(&tmp).map_err(|e| fail(format!("creating {}: {e}", tmp.display())))?;
        Ok((Output { tmp: Some(tmp) }, f))
    }

    /// Puts the finished output at `dest` (nothing to do when written in place).
    fn commit_as(self, dest: &Path) -> Result<(), Fail> {
        match &self.tmp {
            Some(tmp) => fs::rename(tmp, dest).map_err(|e| {
                let _ = fs::remove_file(tmp);
                fail(format!("writing {}: {e}", dest.display()))
            }),
            None => Ok(()),
        }
    }

    /// Drops an unfinished or unwanted output.
    fn discard(self) {
        if let Some(tmp) = &self.tmp {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// A size or count as Nydus parses it: hex with `0x`, else decimal.
fn parse_u32(flag: &str, s: &str) -> Result<u32, Fail> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    v.map_err(|_| {
        fail(format!(
            "{flag} {s:?}: not a number (hex with 0x, or decimal)"
        ))
    })
}

/// Reads the prefetch list from stdin as Nydus does: one path per line, trimmed; relative paths
/// are skipped with a notice, and so is a path under one listed before it (the table names a
/// directory for everything below it).
fn prefetch_list(policy: PrefetchPolicy) -> Result<Vec<Vec<u8>>, Fail> {
    if policy == PrefetchPolicy::None {
        return Ok(Vec::new());
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for line in io::stdin().lock().split(b'\n') {
        let line = line.map_err(|e| fail(format!("reading the prefetch list: {e}")))?;
        let path = line.trim_ascii();
        if path.is_empty() {
            continue;
        }
        if !path.starts_with(b"/") {
            warn(format!(
                "prefetch path {:?} is not absolute, skipped",
                display(path)
            ));
            continue;
        }
        let mut path = path.to_vec();
        while path.len() > 1 && path.ends_with(b"/") {
            path.pop();
        }
        if out.iter().any(|p| covers(p, &path)) {
            warn(format!(
                "prefetch path {:?} is covered by one listed before it, skipped",
                display(&path)
            ));
            continue;
        }
        out.push(path);
    }
    Ok(out)
}

/// Whether prefetching `dir` (absolute, no trailing slash) includes `path`.
fn covers(dir: &[u8], path: &[u8]) -> bool {
    dir == b"/" || path == dir || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
}

/// The bootstrap path of `--chunk-dict`: `bootstrap=PATH`, or a bare PATH, as Nydus accepts.
fn chunk_dict_path(arg: &str) -> Result<PathBuf, Fail> {
    match arg.split_once('=') {
        None => Ok(PathBuf::from(arg)),
        Some(("bootstrap", p)) if !p.is_empty() => Ok(PathBuf::from(p)),
        Some((kind, _)) => Err(fail(format!(
            "--chunk-dict {arg}: unknown dictionary type {kind:?} (only bootstrap=PATH)"
        ))),
    }
}

fn compressor_name(c: Compressor) -> &'static str {
    match c {
        Compressor::None => "none",
        Compressor::Lz4Block => "lz4_block",
        Compressor::GZip => "gzip",
        Compressor::Zstd => "zstd",
    }
}

/// The `-J/--output-json` object in the shape of Nydus's `OutputSerializer` (nydus-image 2.4):
/// nydus-snapshotter's `Merge` and nydusify's `check` and `build` read `blobs` from it (and
/// nydusify `version`); every field is written as Nydus does, with the same types.
fn nydus_output(
    bootstrap: &str,
    blobs: &[String],
    fs_version: u32,
    compressor: Option<Compressor>,
    consumed_time: serde_json::Value,
) -> serde_json::Value {
    json!({
        "version": concat!("v", env!("CARGO_PKG_VERSION")),
        "bootstrap": bootstrap,
        "blobs": blobs,
        "external_bootstrap": "",
        "external_blobs": [],
        "trace": {"consumed_time": consumed_time, "registered_events": {}},
        "fs_version": fs_version.to_string(),
        "compressor": compressor.map_or("none", compressor_name),
    })
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), Fail> {
    let text = serde_json::to_string_pretty(v).map_err(fail)?;
    write_file(path, text.as_bytes())
}

fn create(a: CreateArgs) -> Result<(), Fail> {
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

/// Reads a RAFS v6 bootstrap (or a blob holding one) for merge.
fn load_v6(path: &Path, what: &str) -> Result<Vec<u8>, Fail> {
    let img = load(path)?;
    if img.version != 6 {
        return Err(fail(format!(
            "{what} {}: only RAFS v6 bootstraps can be merged",
            path.display()
        )));
    }
    Ok(img.bootstrap)
}

/// Merges the layers as Nydus's `Merger` does ([`build::merge`]).
fn merge(a: MergeArgs) -> Result<(), Fail> {
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

/// The chunk compressor the superblock names.
fn image_compressor(img: &Image) -> Result<Option<Compressor>, Fail> {
    if img.version == 5 {
        let b = nydus::v5::BootstrapV5::parse(&img.bootstrap).map_err(fail)?;
        return Ok(Some(b.compressor()));
    }
    let b = Bootstrap::parse(&img.bootstrap).map_err(fail)?;
    Ok(b.ext_superblock().flags.compressor())
}

fn check(a: CheckArgs) -> Result<(), Fail> {
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
                image_compressor(&img)?,
            ));
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

fn inspect(a: InspectArgs) -> Result<(), Fail> {
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

fn unpack(a: UnpackArgs) -> Result<(), Fail> {
    if let Some(t) = &a.backend_type {
        return Err(fail(format!(
            "--backend-type {t}: unpack reads local blobs only; give --blob or --blob-dir"
        )));
    }
    if a.backend_config.is_some() || a.backend_config_file.is_some() {
        return Err(fail(
            "--backend-config: unpack reads local blobs only; give --blob or --blob-dir",
        ));
    }
    let (blob_dir, blob, output) = (a.blob_dir.as_deref(), a.blob.as_deref(), &a.output);
    let img = load(a.bootstrap.path()?)?;
    let tree = &img.tree;
    let blobs = if img.blobs.is_empty() {
        Vec::new()
    } else {
        open_blobs(&img, blob_dir, blob)?
    };
    let (out, file) = Output::create(output)?;
    match nydus::unpack::write_tar(tree, &blobs[..], BufWriter::with_capacity(1 << 20, file)) {
        Ok(summary) => {
            for p in &summary.skipped_sockets {
                warn(format!(
                    "{}: sockets cannot be stored in a tar, skipped",
                    display(p)
                ));
            }
            out.commit_as(output)
        }
        Err(e) => {
            out.discard();
            Err(fail(e))
        }
    }
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
