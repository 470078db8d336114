//! One module per subcommand, and the helpers they share: the error type, outputs written in
//! place or renamed into place, flag parsing and Nydus's output JSON.

pub mod check;
pub mod create;
pub mod inspect;
pub mod merge;
pub mod stat;
pub mod unpack;

use std::fmt::Display;
use std::fs::{self, File};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use nydus::image::{self, BlobFile, Image, OpenBlobsError};
use nydus::tree::display;
use nydus::Compressor;
use serde_json::json;

use crate::warn;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum PrefetchPolicy {
    /// Prefetch list (one absolute path per line) read from stdin.
    Fs,
    /// Same as fs (the blob is laid out in build order either way).
    Blob,
    /// No prefetch table.
    None,
}

/// The bootstrap a command reads: positional, or with `-B` as older Nydus spells it.
#[derive(Args)]
pub struct BootstrapArg {
    /// A RAFS bootstrap, or a blob with the bootstrap inside.
    #[arg(value_name = "BOOTSTRAP", required_unless_present = "bootstrap")]
    path: Option<PathBuf>,
    /// Same as BOOTSTRAP.
    #[arg(short = 'B', long, conflicts_with = "path")]
    bootstrap: Option<PathBuf>,
}

impl BootstrapArg {
    pub fn path(&self) -> Result<&Path, Fail> {
        self.bootstrap
            .as_deref()
            .or(self.path.as_deref())
            .ok_or_else(|| fail("give the bootstrap (BOOTSTRAP or --bootstrap)"))
    }
}

/// An error for the user; exit code 2 (bad input) or 1 (check found damage).
pub struct Fail {
    pub code: u8,
    pub msg: String,
}

pub fn fail(msg: impl Display) -> Fail {
    Fail {
        code: 2,
        msg: msg.to_string(),
    }
}

pub fn read_file(p: &Path) -> Result<Vec<u8>, Fail> {
    fs::read(p).map_err(|e| fail(format!("reading {}: {e}", p.display())))
}

pub fn write_file(p: &Path, bytes: &[u8]) -> Result<(), Fail> {
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
pub struct Output {
    tmp: Option<PathBuf>,
}

impl Output {
    pub fn create(dest: &Path) -> Result<(Self, File), Fail> {
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
    pub fn create_in(dir: &Path) -> Result<(Self, File), Fail> {
        Self::create_tmp(dir.join(format!(".blob.tmp{}", std::process::id())))
    }

    fn create_tmp(tmp: PathBuf) -> Result<(Self, File), Fail> {
        let f = create_tmp(&tmp).map_err(|e| fail(format!("creating {}: {e}", tmp.display())))?;
        Ok((Output { tmp: Some(tmp) }, f))
    }

    /// Puts the finished output at `dest` (nothing to do when written in place).
    pub fn commit_as(self, dest: &Path) -> Result<(), Fail> {
        match &self.tmp {
            Some(tmp) => fs::rename(tmp, dest).map_err(|e| {
                let _ = fs::remove_file(tmp);
                fail(format!("writing {}: {e}", dest.display()))
            }),
            None => Ok(()),
        }
    }

    /// Drops an unfinished or unwanted output.
    pub fn discard(self) {
        if let Some(tmp) = &self.tmp {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// A size or count as Nydus parses it: hex with `0x`, else decimal.
pub fn parse_u32(flag: &str, s: &str) -> Result<u32, Fail> {
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
pub fn prefetch_list(policy: PrefetchPolicy) -> Result<Vec<Vec<u8>>, Fail> {
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
pub fn chunk_dict_path(arg: &str) -> Result<PathBuf, Fail> {
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
pub fn nydus_output(
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

pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), Fail> {
    let text = serde_json::to_string_pretty(v).map_err(fail)?;
    write_file(path, text.as_bytes())
}

/// Loads the image at `path` (v6 or v5 bootstrap, or a blob with an inlined bootstrap).
pub fn load(path: &Path) -> Result<Image, Fail> {
    image::load(path).map_err(fail)
}

/// Reads a RAFS v6 bootstrap (or a blob holding one) for merge.
pub fn load_v6(path: &Path, what: &str) -> Result<Vec<u8>, Fail> {
    let img = load(path)?;
    if img.version != 6 {
        return Err(fail(format!(
            "{what} {}: only RAFS v6 bootstraps can be merged",
            path.display()
        )));
    }
    Ok(img.bootstrap)
}

/// Opens every blob of the image ([`image::open_blobs`]): the blob the bootstrap was inlined in,
/// or `blob` (`--blob`) for a single-blob image, else `<blob_dir>/<id>` (`--blob-dir`).
pub fn open_blobs(
    img: &Image,
    blob_dir: Option<&Path>,
    blob: Option<&Path>,
) -> Result<Vec<BlobFile>, Fail> {
    image::open_blobs(img, blob_dir, blob).map_err(|e| match e {
        OpenBlobsError::Unsupported { index, id, feature } => fail(format!(
            "blob {index} ({id}) uses {feature}, which this nydus-image cannot read yet"
        )),
        OpenBlobsError::NotSingleBlob { blobs } => fail(format!(
            "the image has {blobs} blobs; give --blob-dir instead of --blob"
        )),
        OpenBlobsError::BadId { index, id } => fail(format!(
            "blob {index} has id {id:?}, which is not a file name in --blob-dir"
        )),
        OpenBlobsError::NoBlobs => fail("give --blob-dir (or --blob for a single-blob image)"),
        OpenBlobsError::Open {
            index,
            path,
            source,
        } => fail(format!("blob {index} ({}): {source}", path.display())),
    })
}
