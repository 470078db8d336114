//! `nydusify copy`.

use std::path::PathBuf;
use std::process::ExitCode;

use nydus::nydusify::copy::{self, CopyOptions};
use nydus::nydusify::manifest::host_platform;

#[derive(clap::Args)]
pub struct Args {
    /// Source image reference.
    #[arg(long)]
    source: String,
    /// Target image reference.
    #[arg(long)]
    target: String,
    #[command(flatten)]
    registry: super::RegistryArgs,
    /// Copy every platform of an index (otherwise: --platform, default this machine's).
    #[arg(long)]
    all_platforms: bool,
    #[arg(long)]
    platform: Option<String>,
    #[command(flatten)]
    retry: super::RetryArgs,
    /// Write a JSON summary to this file.
    #[arg(long)]
    output_json: Option<PathBuf>,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let (source_remote, target_remote) = a.registry.sides(a.retry.retry()?)?;
    let opts = CopyOptions {
        source_remote,
        target_remote,
        source: a.source,
        target: a.target,
        all_platforms: a.all_platforms,
        platform: a.platform.unwrap_or_else(host_platform),
    };
    let report = copy::copy(&opts).await?;
    if let Some(p) = &a.output_json {
        super::write_json(p, &report)?;
    }
    println!(
        "copied {} to {} ({}, {} manifest(s))",
        opts.source, opts.target, report.target_digest, report.manifests
    );
    Ok(ExitCode::SUCCESS)
}
