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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let config = if cli.config.exists() {
        match manager::config::ManagerConfig::load(&cli.config) {
            Ok(c) => c,
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
    tracing::info!(rest = %listener.local_addr()?, "manager ready");
    manager::serve(state, listener, async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
    })
    .await?;
    Ok(())
}
