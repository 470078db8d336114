//! `unpack`: rebuild the source tree as a tar from a bootstrap and its blobs.

use std::io::BufWriter;
use std::path::PathBuf;

use clap::Args;
use nydus::tree::display;

use super::{fail, load, open_blobs, BootstrapArg, Fail, Output};
use crate::warn;

#[derive(Args)]
pub struct UnpackArgs {
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

pub fn run(a: UnpackArgs) -> Result<(), Fail> {
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
