//! `nydusify`: convert registry images to Nydus and back, check them, copy them, with upstream
//! nydusify's command and flag names.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nydusify",
    version,
    about = "Convert OCI images to Nydus images and back, check and copy them (registry to registry)"
)]
struct Cli {
    /// Log level: trace, debug, info, warn, error.
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert an OCI image to a Nydus image (or back, with --reverse).
    Convert(commands::convert::Args),
    /// Check a Nydus image: manifest, bootstrap, and its files against the source image.
    Check(commands::check::Args),
    /// Copy a Nydus image (manifests, bootstrap, blobs) between registries.
    Copy(commands::copy::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nydusify: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        match cli.cmd {
            Cmd::Convert(a) => commands::convert::run(a).await,
            Cmd::Check(a) => commands::check::run(a).await,
            Cmd::Copy(a) => commands::copy::run(a).await,
        }
    });
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nydusify: {e:#}");
            ExitCode::FAILURE
        }
    }
}
