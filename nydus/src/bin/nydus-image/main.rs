//! `nydus-image`: build, merge, check, inspect, unpack and measure RAFS v6 images.
//!
//! Commands, flags and the `-J/--output-json` files follow Nydus's own `nydus-image` (2.4) where
//! they overlap, so the tools that run it — nydusify, and nydus-snapshotter's converter that
//! buildkit and Harbor's acceleration service use — can run this one with the same command lines.
//! docs/nydus.md lists the flags and where this tool differs.

mod commands;

use std::fmt::Display;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};

use clap::{Parser, Subcommand, ValueEnum};

use commands::{
    check::CheckArgs, create::CreateArgs, inspect::InspectArgs, merge::MergeArgs, stat::StatArgs,
    unpack::UnpackArgs, Fail,
};

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
        Cmd::Create(a) => commands::create::run(a),
        Cmd::Merge(a) => commands::merge::run(a),
        Cmd::Check(a) => commands::check::run(a),
        Cmd::Inspect(a) => commands::inspect::run(a),
        Cmd::Unpack(a) => commands::unpack::run(a),
        Cmd::Stat(a) => commands::stat::run(a),
    }
}
