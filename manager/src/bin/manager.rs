//! `manager`: users, tokens and (to come) clusters and preheat jobs, over REST.

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "Dragonfly manager: users, tokens, clusters, preheat")]
struct Cli {
    /// The config file (missing: the defaults).
    #[arg(long, short = 'c', default_value = "/etc/dragonfly/manager.yaml")]
    config: PathBuf,
    /// Check the config and exit.
    #[arg(long)]
    check_config: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let config = if cli.config.exists() {
        match manager::config::ManagerConfig::load_with_warnings(&cli.config) {
            Ok((c, warnings)) => {
                for w in warnings {
                    tracing::warn!("{}: {w}", cli.config.display());
                }
                c
            }
            Err(e) => {
                eprintln!("manager: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    } else {
        manager::config::ManagerConfig::default()
    };
    if cli.check_config {
        println!("{}: ok", cli.config.display());
        return std::process::ExitCode::SUCCESS;
    }
    match run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("manager: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: manager::config::ManagerConfig) -> anyhow::Result<()> {
    let state = manager::prepare(&config).await?;
    let addr = manager::config::rest_addr(&config.server.rest.addr).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("server.rest.addr {addr}: {e}"))?;
    let grpc = manager::bind_grpc(&config).await?;
    let metrics = if config.metrics.enable {
        let a = manager::config::rest_addr(&config.metrics.addr).map_err(anyhow::Error::msg)?;
        Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| anyhow::anyhow!("metrics.addr {a}: {e}"))?,
        )
    } else {
        None
    };
    tracing::info!(rest = %listener.local_addr()?, grpc = %grpc.local_addr()?, "manager ready");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let grpc_task = tokio::spawn(manager::serve_grpc(state.clone(), grpc, stopped()));
    if let Some(l) = metrics {
        tokio::spawn(manager::serve_metrics(state.clone(), l, stopped()));
    }
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    manager::serve(state, listener, stopped()).await?;
    grpc_task.await??;
    Ok(())
}
