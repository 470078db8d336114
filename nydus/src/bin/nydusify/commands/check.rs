//! `nydusify check`.

use std::path::PathBuf;
use std::process::ExitCode;

use nydus::nydusify::check::{self, CheckOptions};
use nydus::nydusify::manifest::host_platform;
use nydus::nydusify::registry::Retry;

#[derive(clap::Args)]
pub struct Args {
    /// The Nydus image to check.
    #[arg(long)]
    target: String,
    /// The OCI image it was converted from: compare the files.
    #[arg(long)]
    source: Option<String>,
    #[command(flatten)]
    registry: super::RegistryArgs,
    /// Platform to check in an index (os/arch); default: this machine's.
    #[arg(long)]
    platform: Option<String>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    output_json: Option<PathBuf>,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let (source_remote, target_remote) = a.registry.sides(Retry::default())?;
    let opts = CheckOptions {
        source_remote,
        target_remote,
        target: a.target,
        source: a.source,
        platform: a.platform.unwrap_or_else(host_platform),
    };
    let report = check::check(&opts).await?;
    if let Some(p) = &a.output_json {
        super::write_json(p, &report)?;
    }
    if report.problems.is_empty() {
        println!(
            "{} ({}): ok; {} entries compared, {} bytes of file data checked",
            opts.target, report.target_manifest, report.entries_compared, report.bytes_checked
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "{} ({}): {} problem(s){}:",
        opts.target,
        report.target_manifest,
        report.problems.len(),
        if report.problems.len() >= check::MAX_PROBLEMS {
            " (the first ones)"
        } else {
            ""
        }
    );
    for p in &report.problems {
        eprintln!("  {p}");
    }
    Ok(ExitCode::from(1))
}
