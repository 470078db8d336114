//! `dfinit`: points containerd's CRI image pulls at the dfdaemon registry mirror.
//!
//! See `docs/containerd.md`. The work is done by `dfdaemon::dfinit`; this file only parses the
//! command line and prints the report.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Parser;
use dfdaemon::dfinit::{self, Options, ProxyAddr, Registry};

/// Wire containerd to the dfdaemon registry mirror: set the CRI `registry.config_path` in
/// containerd's config.toml if missing, and write a hosts.toml per registry that sends pulls
/// through the mirror. Does not restart containerd.
#[derive(Debug, Parser)]
#[command(name = "dfinit", version)]
struct Cli {
    /// containerd's config file.
    #[arg(long, value_name = "FILE", default_value = dfinit::DEFAULT_CONTAINERD_CONFIG)]
    containerd_config: PathBuf,

    /// Registry to pull through the mirror, as http(s)://host[:port] (repeatable).
    /// https://docker.io means Docker Hub.
    #[arg(long = "registry", value_name = "URL", value_parser = parse_registry)]
    registries: Vec<Registry>,

    /// Also send every other registry through the mirror (writes _default/hosts.toml).
    #[arg(long)]
    all_registries: bool,

    /// Address of the dfdaemon registry mirror.
    #[arg(long, value_name = "URL", default_value = dfinit::DEFAULT_PROXY_ADDR, value_parser = parse_proxy)]
    proxy_addr: ProxyAddr,

    /// Directory for hosts.toml files, used only if config.toml sets no config_path
    /// [default: /etc/containerd/certs.d].
    #[arg(long, value_name = "DIR")]
    config_path: Option<PathBuf>,

    /// Print what would change without writing anything.
    #[arg(long)]
    dry_run: bool,

    /// Also make CRI unpack images with dfdaemon's snapshotter: adds
    /// [proxy_plugins.<name>] and sets CRI's snapshotter (with
    /// disable_snapshot_annotations = false, so Nydus layers are recognised).
    #[arg(long)]
    snapshotter: bool,

    /// The snapshotter's name in containerd (with --snapshotter).
    #[arg(long, value_name = "NAME", default_value = dfinit::DEFAULT_SNAPSHOTTER_NAME)]
    snapshotter_name: String,

    /// dfdaemon's snapshotter socket (its snapshotter.socketPath; with --snapshotter).
    #[arg(long, value_name = "FILE", default_value = dfinit::DEFAULT_SNAPSHOTTER_SOCKET)]
    snapshotter_socket: PathBuf,
}

fn parse_registry(s: &str) -> Result<Registry, dfinit::UrlError> {
    s.parse()
}

fn parse_proxy(s: &str) -> Result<ProxyAddr, dfinit::UrlError> {
    s.parse()
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The chain without a backtrace: operators need the file, key and reason, not frames.
            eprintln!("dfinit: error: {err}");
            for cause in err.chain().skip(1) {
                let cause = cause.to_string();
                eprintln!("  caused by: {}", cause.trim_end().replace('\n', "\n    "));
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    let options = Options {
        containerd_config: cli.containerd_config,
        registries: cli.registries,
        all_registries: cli.all_registries,
        proxy: cli.proxy_addr,
        config_path: cli.config_path,
        dry_run: cli.dry_run,
        snapshotter: cli.snapshotter.then_some(dfinit::SnapshotterWiring {
            name: cli.snapshotter_name,
            socket: cli.snapshotter_socket,
        }),
    };
    let report = dfinit::run(&options).with_context(|| {
        format!(
            "wiring containerd ({}) to the registry mirror at {}",
            options.containerd_config.display(),
            options.proxy
        )
    })?;
    print!("{report}");
    Ok(())
}
