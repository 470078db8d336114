//! scheduler: the Dragonfly v2 scheduler service (`scheduler.v2.Scheduler`).

use anyhow::Context;
use clap::Parser;
use scheduler::service::SchedulerService;
use scheduler::{Scheduler, SchedulerConfig};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Listener of the scheduler.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Server {
    /// Listen address. Default: 0.0.0.0.
    ip: IpAddr,
    /// gRPC port. Default: 8002.
    port: u16,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            ip: IpAddr::from([0, 0, 0, 0]),
            port: 8002,
        }
    }
}

/// The scheduler's config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    server: Server,
    scheduler: SchedulerConfig,
}

#[derive(Parser)]
#[command(
    name = "scheduler",
    version,
    about = "Dragonfly v2 scheduler: decides which peers download from which"
)]
struct Args {
    /// Config file (YAML).
    #[arg(long, short = 'c', default_value = "/etc/dragonfly/scheduler.yaml")]
    config: PathBuf,
    /// Print the default config and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Log filter (also RUST_LOG).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let cfg: Config = if text.trim().is_empty() {
        Config::default()
    } else {
        serde_yaml_ng::from_str(&text)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?
    };
    let mut problems = cfg.scheduler.validate("scheduler");
    if cfg.server.port == 0 {
        problems.push("server.port: port must be 1-65535".into());
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "config file {} is invalid:\n  {}",
            path.display(),
            problems.join("\n  ")
        );
    }
    Ok(cfg)
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let addr = SocketAddr::new(cfg.server.ip, cfg.server.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (server)"))?;
    let gc_every = cfg
        .scheduler
        .gc
        .peer_gc_interval
        .min(cfg.scheduler.gc.task_gc_interval)
        .min(cfg.scheduler.gc.host_gc_interval)
        .max(std::time::Duration::from_secs(1));
    let service = SchedulerService::new(Scheduler::new(cfg.scheduler));
    let gc = service.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(gc_every);
        loop {
            tick.tick().await;
            gc.collect_garbage();
        }
    });
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<dragonfly_api::scheduler::v2::scheduler_server::SchedulerServer<SchedulerService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(dragonfly_api::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("reflection service")?;
    tracing::info!(%addr, "scheduler ready");
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(t) => t,
                        Err(_) => return std::future::pending().await,
                    };
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            },
        );
    server.await.context("scheduler server")?;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        match serde_yaml_ng::to_string(&Config::default()) {
            Ok(s) => print!("{s}"),
            Err(e) => {
                eprintln!("scheduler: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("scheduler: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scheduler: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scheduler: {e:#}");
            ExitCode::FAILURE
        }
    }
}
