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
    #[arg(long)]
    source_insecure: bool,
    #[arg(long)]
    target_insecure: bool,
    #[arg(long, env = "NYDUSIFY_SOURCE_USERNAME")]
    source_username: Option<String>,
    #[arg(long, env = "NYDUSIFY_SOURCE_PASSWORD", hide_env_values = true)]
    source_password: Option<String>,
    #[arg(long, env = "NYDUSIFY_TARGET_USERNAME")]
    target_username: Option<String>,
    #[arg(long, env = "NYDUSIFY_TARGET_PASSWORD", hide_env_values = true)]
    target_password: Option<String>,
    /// Copy every platform of an index (otherwise: --platform, default this machine's).
    #[arg(long)]
    all_platforms: bool,
    #[arg(long)]
    platform: Option<String>,
    #[arg(long, default_value_t = 3)]
    push_retry_count: u32,
    #[arg(long, default_value = "5s")]
    push_retry_delay: String,
    /// Write a JSON summary to this file.
    #[arg(long)]
    output_json: Option<PathBuf>,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let retry = super::retry(a.push_retry_count, &a.push_retry_delay)?;
    let opts = CopyOptions {
        source_remote: super::remote_options(
            "source",
            a.source_insecure,
            a.source_username,
            a.source_password,
            retry,
        )?,
        target_remote: super::remote_options(
            "target",
            a.target_insecure,
            a.target_username,
            a.target_password,
            retry,
        )?,
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
