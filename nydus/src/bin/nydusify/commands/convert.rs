//! `nydusify convert`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use nydus::build::ChunkOptions;
use nydus::nydusify::convert::{self, ConvertOptions, Platforms};
use nydus::nydusify::manifest::{host_platform, LayerCompression};
use nydus::nydusify::progress::Progress;
use nydus::nydusify::reverse::ReverseOptions;
use nydus::{Compressor, Digester};

#[derive(clap::Args)]
#[command(
    after_help = "--oci-ref (zran images that keep the OCI layers as data) is not supported: \
    every layer is converted into a Nydus blob."
)]
pub struct Args {
    /// Source image reference.
    #[arg(long)]
    source: String,
    /// Target image reference.
    #[arg(long)]
    target: String,
    #[command(flatten)]
    registry: super::RegistryArgs,
    /// RAFS version of the Nydus image (only 6 is built).
    #[arg(long, default_value = "6")]
    fs_version: String,
    /// Compressor of Nydus blobs: zstd (default), lz4_block or none. With --reverse, of the OCI
    /// layers: gzip (default), zstd or none.
    #[arg(long)]
    compressor: Option<String>,
    /// Chunk size, a power of two from 0x1000 to 0x1000000.
    #[arg(long, alias = "fs-chunk-size", default_value = "0x100000")]
    chunk_size: String,
    /// Read prefetch paths, one per line, from stdin.
    #[arg(long)]
    prefetch_patterns: bool,
    /// Platform to convert from an index (os/arch[/variant]); default: this machine's.
    #[arg(long)]
    platform: Option<String>,
    /// Convert every platform of an index.
    #[arg(long, conflicts_with = "platform")]
    all_platforms: bool,
    /// Add the Nydus manifests to the source's index (platform os.features
    /// nydus.remoteimage.v1) instead of writing a Nydus-only image.
    #[arg(long)]
    merge_platform: bool,
    /// Deduplicate against another Nydus image's chunks: `bootstrap:registry:REF` or `REF`.
    #[arg(long)]
    chunk_dict: Option<String>,
    /// Layers converted at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Directory for work files (the merged bootstraps are kept there).
    #[arg(long, default_value = "./tmp")]
    work_dir: PathBuf,
    /// Write OCI media types even for a Docker source.
    #[arg(long)]
    oci: bool,
    /// Nydus → OCI: write each Nydus blob layer back as an OCI tar layer (the bootstrap layer
    /// is dropped).
    #[arg(long)]
    reverse: bool,
    /// Not supported (zran images).
    #[arg(long, hide = true)]
    oci_ref: bool,
    #[command(flatten)]
    retry: super::RetryArgs,
    /// Do not show progress bars.
    #[arg(long)]
    no_progress: bool,
    /// Write a JSON summary (per-layer sizes and times) to this file.
    #[arg(long)]
    output_json: Option<PathBuf>,
    /// Worker threads per layer for compression and digests (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

async fn reverse(
    a: Args,
    source_remote: nydus::nydusify::registry::RemoteOptions,
    target_remote: nydus::nydusify::registry::RemoteOptions,
    platforms: Platforms,
) -> anyhow::Result<ExitCode> {
    for (set, flag) in [
        (a.merge_platform, "--merge-platform"),
        (a.chunk_dict.is_some(), "--chunk-dict"),
        (a.prefetch_patterns, "--prefetch-patterns"),
        (a.oci, "--oci"),
    ] {
        if set {
            bail!("{flag} applies to OCI → Nydus conversion, not to --reverse");
        }
    }
    let compression = match a.compressor.as_deref().unwrap_or("gzip") {
        "gzip" => LayerCompression::Gzip,
        "zstd" => LayerCompression::Zstd,
        "none" => LayerCompression::None,
        other => bail!("--compressor {other}: with --reverse, expected gzip, zstd or none"),
    };
    let opts = ReverseOptions {
        source: a.source,
        target: a.target,
        source_remote,
        target_remote,
        compression,
        platforms,
        concurrency: a.concurrency,
        work_dir: a.work_dir,
    };
    let progress = Progress::new(!a.no_progress);
    let report = nydus::nydusify::reverse::reverse(&opts, &progress).await?;
    if let Some(p) = &a.output_json {
        super::write_json(p, &report)?;
    }
    let layers: usize = report.manifests.iter().map(|m| m.layers.len()).sum();
    println!(
        "reversed {} to {} ({}): {} manifest(s), {layers} OCI layers, read {} B, wrote {} B in {:.1}s",
        report.source,
        report.target,
        report.target_digest,
        report.manifests.len(),
        report.bytes_read,
        report.bytes_written,
        report.seconds
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    if a.oci_ref {
        bail!("--oci-ref is not supported: this nydusify converts every layer into a Nydus blob");
    }
    let (source_remote, target_remote) = a.registry.clone().sides(a.retry.retry()?)?;
    let platforms = if a.all_platforms {
        Platforms::All
    } else {
        Platforms::One(a.platform.clone().unwrap_or_else(host_platform))
    };
    if a.reverse {
        return reverse(a, source_remote, target_remote, platforms).await;
    }
    let compressor = match a.compressor.as_deref().unwrap_or("zstd") {
        "zstd" => Compressor::Zstd,
        "lz4_block" => Compressor::Lz4Block,
        "none" => Compressor::None,
        other => bail!("--compressor {other}: expected zstd, lz4_block or none"),
    };
    let chunk_dict = a.chunk_dict.map(|d| {
        d.strip_prefix("bootstrap:registry:")
            .map(str::to_string)
            .unwrap_or(d)
    });
    let opts = ConvertOptions {
        source: a.source,
        target: a.target,
        source_remote,
        target_remote,
        chunk: ChunkOptions {
            chunk_size: super::parse_size(&a.chunk_size)?,
            compressor,
            digester: Digester::Blake3,
            threads: a
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        },
        fs_version: a.fs_version,
        prefetch: if a.prefetch_patterns {
            super::read_patterns()?
        } else {
            Vec::new()
        },
        platforms,
        merge_platform: a.merge_platform,
        chunk_dict,
        concurrency: a.concurrency,
        work_dir: Some(a.work_dir),
        oci: a.oci,
    };
    let progress = Progress::new(!a.no_progress);
    let report = convert::convert(&opts, &progress).await?;
    if let Some(p) = &a.output_json {
        super::write_json(p, &report)?;
    }
    let layers: usize = report.manifests.iter().map(|m| m.layers.len()).sum();
    println!(
        "converted {} to {} ({}): {} manifest(s), {layers} layers ({} built, {} reused), read {} B, wrote {} B in {:.1}s",
        report.source,
        report.target,
        report.target_digest,
        report.manifests.len(),
        report.layers_built,
        layers - report.layers_built,
        report.bytes_read,
        report.bytes_written,
        report.seconds
    );
    Ok(ExitCode::SUCCESS)
}
