//! dfdaemon: the node agent (registry mirror, piece store, download API).

use clap::Parser;
use dfdaemon::config::{Config, DEFAULT_CONFIG_PATH};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dfdaemon",
    version,
    about = "Dragonfly node agent: registry mirror, piece cache and download API"
)]
struct Args {
    /// Config file (YAML, Dragonfly key names).
    #[arg(long, short = 'c', default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Print the full documented default config and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Check the config file and exit.
    #[arg(long)]
    check_config: bool,
    /// Log filter (also RUST_LOG), e.g. info or dfdaemon=debug.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Internal: keep image mounts' FUSE descriptors for the next dfdaemon (started by
    /// dfdaemon itself, its listening socket as stdin).
    #[arg(long, hide = true)]
    fd_holder: bool,
}

fn main() -> ExitCode {
    dfdaemon::fix_mmap_threshold();
    let args = Args::parse();
    if args.fd_holder {
        return match dfdaemon::runtime::holder::serve_holder() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dfdaemon --fd-holder: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.print_default_config {
        print!("{}", Config::default_yaml());
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cfg = match Config::load_with_warnings(&args.config) {
        Ok((c, warnings)) => {
            for w in warnings {
                tracing::warn!("{}: {w}", args.config.display());
            }
            c
        }
        Err(e) => {
            eprintln!("dfdaemon: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dfdaemon: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dfdaemon::daemon::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfdaemon: {e:#}");
            ExitCode::FAILURE
        }
    }
}
