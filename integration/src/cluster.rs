//! P2P test clusters on loopback: the project's scheduler binary and dfdaemon
//! configs for seed peers and peers.

use crate::agent::{bin, Agent};
use crate::{free_port, wait_for, ChildProcess, Result, TestDir};
use dragonfly_api::scheduler::v2::scheduler_client::SchedulerClient;
use dragonfly_api::scheduler::v2::ListHostsRequest;
use std::process::Command;
use std::time::Duration;

/// A running `scheduler` process.
pub struct Scheduler {
    pub port: u16,
    pub process: ChildProcess,
}

impl Scheduler {
    /// Starts the scheduler on a free loopback port (retry interval 100 ms).
    pub fn start(dir: &TestDir, name: &str) -> Result<Scheduler> {
        Self::start_on(dir, name, free_port())
    }

    /// Starts the scheduler on `port` (e.g. to restart one).
    pub fn start_on(dir: &TestDir, name: &str, port: u16) -> Result<Scheduler> {
        let cfg = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "server:\n  ip: 127.0.0.1\n  port: {port}\nscheduler:\n  retryInterval: 100ms\n"
            ),
        )
        .map_err(|e| crate::Error::io("write", &cfg, e))?;
        let mut cmd = Command::new(bin("scheduler"));
        cmd.arg("--config").arg(&cfg);
        Ok(Scheduler {
            port,
            process: ChildProcess::spawn(dir, name, cmd)?,
        })
    }

    /// A gRPC client, once the scheduler answers.
    pub async fn client(&self) -> Result<SchedulerClient<tonic::transport::Channel>> {
        let url = format!("http://127.0.0.1:{}", self.port);
        wait_for(Duration::from_secs(30), "scheduler up", || async {
            SchedulerClient::connect(url.clone()).await.is_ok()
        })
        .await?;
        SchedulerClient::connect(url.clone())
            .await
            .map_err(|e| crate::Error::malformed("scheduler connect", e.to_string()))
    }

    /// Waits until exactly `n` hosts have announced themselves.
    pub async fn wait_hosts(&self, n: usize) -> Result<()> {
        let c = self.client().await?;
        wait_for(
            Duration::from_secs(30),
            &format!("{n} hosts announced"),
            || {
                let mut c = c.clone();
                async move {
                    c.list_hosts(ListHostsRequest::default())
                        .await
                        .map(|r| r.into_inner().hosts.len() == n)
                        .unwrap_or(false)
                }
            },
        )
        .await
    }
}

/// dfdaemon config of a P2P peer (or seed peer) named `name` using the
/// scheduler on `scheduler_port`.
pub fn peer_yaml(name: &str, scheduler_port: u16, seed: bool) -> String {
    format!(
        "host:\n  hostname: {name}\n  ip: 127.0.0.1\nscheduler:\n  addrs: ['127.0.0.1:{scheduler_port}']\nseedPeer:\n  enable: {seed}\ndownload:\n  pieceTimeout: 20s\n"
    )
}

/// Starts a seed peer named `seed` and `peers` peers named `peer1..` against
/// the scheduler, and waits until the scheduler knows all of them.
pub async fn start_peers(
    dir: &TestDir,
    scheduler: &Scheduler,
    peers: usize,
) -> Result<(Agent, Vec<Agent>)> {
    let seed = Agent::start(dir, "seed", &peer_yaml("seed", scheduler.port, true)).await?;
    let mut all = Vec::new();
    for i in 1..=peers {
        let name = format!("peer{i}");
        all.push(Agent::start(dir, &name, &peer_yaml(&name, scheduler.port, false)).await?);
    }
    scheduler.wait_hosts(peers + 1).await?;
    Ok((seed, all))
}
