//! scheduler: the Dragonfly v2 scheduler service (`scheduler.v2.Scheduler`).

use anyhow::Context;
use clap::Parser;
use scheduler::file_config::FileConfig as Config;
use scheduler::service::SchedulerService;
use scheduler::Scheduler;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    /// Check the config file and exit (2 and the problem if it is invalid).
    #[arg(long)]
    check_config: bool,
    /// Log filter (also RUST_LOG).
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn load(path: &Path) -> anyhow::Result<(Config, Vec<String>)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    Config::parse(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
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
    let tls = |files, section| Config::tls(files, section).map_err(|e| anyhow::anyhow!(e));
    let server_tls = tls(&cfg.server.tls, "server.tls")?;
    let manager_tls = tls(&cfg.manager.tls, "manager.tls")?;
    let seed_peer_tls = tls(&cfg.seed_peer.tls, "seedPeer.tls")?;
    let peer_tls = tls(&cfg.peer.tls, "peer.tls")?;
    let service = SchedulerService::new(Scheduler::new(cfg.scheduler.clone()))
        .with_seed_tls(seed_peer_tls.clone());
    if let Some(manager) = &cfg.manager.addr {
        let channel = common::manager_client::channel(manager, manager_tls.as_deref())
            .map_err(|e| anyhow::anyhow!("manager.addr: {e}"))?;
        let ip = cfg.server.advertise_ip.unwrap_or_else(|| {
            if cfg.server.ip.is_unspecified() {
                common::net::detect_ip()
            } else {
                cfg.server.ip
            }
        });
        let me = scheduler::announcer::Identity {
            hostname: cfg
                .server
                .host
                .clone()
                .unwrap_or_else(common::net::hostname),
            ip: ip.to_string(),
            port: if cfg.server.advertise_port == 0 {
                cfg.server.port
            } else {
                cfg.server.advertise_port
            },
            idc: cfg.host.idc.clone(),
            location: cfg.host.location.clone(),
            cluster_id: cfg.manager.scheduler_cluster_id,
        };
        tracing::info!(manager = %manager, cluster = me.cluster_id, "registering with the manager");
        tokio::spawn(scheduler::announcer::run(
            channel,
            me,
            cfg.manager.keep_alive.interval,
            cfg.dyn_config.refresh_interval,
            service.clone(),
        ));
    }
    let gc = service.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(gc_every);
        loop {
            tick.tick().await;
            gc.collect_garbage();
        }
    });
    if cfg.metrics.enable {
        let addr =
            scheduler::file_config::listen_addr(&cfg.metrics.addr).context("metrics.addr")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (metrics.addr)"))?;
        let svc = service.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let svc = svc.clone();
                async move { svc.render_metrics() }
            }),
        );
        tracing::info!(%addr, "metrics");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<dragonfly_api::scheduler::v2::scheduler_server::SchedulerServer<SchedulerService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(dragonfly_api::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("reflection service")?;
    tracing::info!(%addr, "scheduler ready");
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = &server_tls {
        builder = builder.tls_config(t.grpc_server()).context("server.tls")?;
    }
    let server = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            scheduler::jobs::JobService::new(service.clone())
                .with_tls(seed_peer_tls, peer_tls)
                .into_server(),
        )
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
        Ok((c, warnings)) => {
            for w in warnings {
                tracing::warn!("{}: {w}", args.config.display());
            }
            c
        }
        Err(e) => {
            eprintln!("scheduler: {e:#}");
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
