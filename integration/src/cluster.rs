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
    /// The loopback address it listens on.
    pub ip: String,
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
        Self::start_with(dir, name, port, "")
    }

    /// Starts the scheduler on `port` with `extra_yaml` merged into its config (deeply: a
    /// `server:` mapping there adds keys to the server section).
    pub fn start_with(dir: &TestDir, name: &str, port: u16, extra_yaml: &str) -> Result<Scheduler> {
        let cfg = dir.join(format!("{name}.yaml"));
        let mut value = serde_json::json!({
            "server": {"ip": "127.0.0.1", "port": port},
            "scheduler": {"retryInterval": "100ms"},
        });
        if !extra_yaml.trim().is_empty() {
            let extra: serde_json::Value = serde_yaml_ng::from_str(extra_yaml).map_err(|e| {
                crate::Error::malformed("scheduler harness", format!("bad extra YAML: {e}"))
            })?;
            crate::agent::merge(&mut value, extra);
        }
        let text = serde_yaml_ng::to_string(&value).map_err(|e| {
            crate::Error::malformed("scheduler harness", format!("cannot render config: {e}"))
        })?;
        std::fs::write(&cfg, text).map_err(|e| crate::Error::io("write", &cfg, e))?;
        let ip = value["server"]["ip"]
            .as_str()
            .unwrap_or("127.0.0.1")
            .to_string();
        let mut cmd = Command::new(bin("scheduler"));
        cmd.arg("--config").arg(&cfg);
        Ok(Scheduler {
            ip,
            port,
            process: ChildProcess::spawn(dir, name, cmd)?,
        })
    }

    /// A gRPC client, once the scheduler answers.
    pub async fn client(&self) -> Result<SchedulerClient<tonic::transport::Channel>> {
        let url = format!("http://{}:{}", self.ip, self.port);
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
        wait_for_hosts(self.client().await?, n).await
    }
}

/// Waits until the scheduler behind `c` knows exactly `n` hosts.
pub async fn wait_for_hosts(c: SchedulerClient<tonic::transport::Channel>, n: usize) -> Result<()> {
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

/// The task ID a peer gives a file URL downloaded with no tag, application or piece length
/// (Dragonfly's URL-based ID).
pub fn file_task_id(url: &str) -> String {
    common::id::url_task_id(&common::id::UrlTaskId {
        url,
        tag: None,
        application: None,
        piece_length: None,
        filtered_query_params: &common::id::default_filtered_query_params(),
    })
    .unwrap_or_else(|e| panic!("{url}: {e}"))
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

/// A running `manager` process on loopback: REST, gRPC and its SQLite database under the test
/// dir, root's password known to the test.
pub struct Manager {
    pub rest_port: u16,
    pub grpc_port: u16,
    pub work: std::path::PathBuf,
    pub process: ChildProcess,
}

/// Root's password in test managers.
pub const MANAGER_ROOT_PASSWORD: &str = "test-root-password-0123456789";

impl Manager {
    /// Starts a manager named `name` with `extra_yaml` appended to its config, and waits until
    /// `/healthy` answers.
    pub async fn start(dir: &TestDir, name: &str, extra_yaml: &str) -> Result<Manager> {
        Self::start_on(dir, name, free_port(), free_port(), extra_yaml).await
    }

    /// [`Manager::start`] on given ports (e.g. to restart one on its old ports).
    pub async fn start_on(
        dir: &TestDir,
        name: &str,
        rest_port: u16,
        grpc_port: u16,
        extra_yaml: &str,
    ) -> Result<Manager> {
        let work = dir.join(format!("{name}-work"));
        let cfg = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "server:\n  workHome: {}\n  rest:\n    addr: 127.0.0.1:{rest_port}\n  grpc:\n    listenIP: 127.0.0.1\n    port:\n      start: {grpc_port}\n      end: {grpc_port}\n{extra_yaml}",
                work.display()
            ),
        )
        .map_err(|e| crate::Error::io("write", &cfg, e))?;
        let mut cmd = Command::new(bin("manager"));
        cmd.arg("--config")
            .arg(&cfg)
            .env("DRAGONFLY_INITIAL_ROOT_PASSWORD", MANAGER_ROOT_PASSWORD);
        let m = Manager {
            rest_port,
            grpc_port,
            work,
            process: ChildProcess::spawn(dir, name, cmd)?,
        };
        let url = m.url("/healthy");
        let client = crate::http_client();
        wait_for(Duration::from_secs(30), "manager /healthy", || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await?;
        Ok(m)
    }

    /// `http://127.0.0.1:<rest>{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.rest_port)
    }

    /// The gRPC address as a dfdaemon config writes it.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// A console session of root (a JWT).
    pub async fn root_session(&self) -> Result<String> {
        let r = crate::http_client()
            .post(self.url("/api/v1/users/signin"))
            .json(&serde_json::json!({"name": "root", "password": MANAGER_ROOT_PASSWORD}))
            .send()
            .await
            .map_err(|e| crate::Error::malformed("manager signin", e.to_string()))?;
        let body: serde_json::Value = r
            .json()
            .await
            .map_err(|e| crate::Error::malformed("manager signin", e.to_string()))?;
        body["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| crate::Error::malformed("manager signin", body.to_string()))
    }

    /// GET `path` with `session`, as JSON.
    pub async fn get_json(&self, session: &str, path: &str) -> Result<serde_json::Value> {
        let r = crate::http_client()
            .get(self.url(path))
            .bearer_auth(session)
            .send()
            .await
            .map_err(|e| crate::Error::malformed(path, e.to_string()))?;
        r.json()
            .await
            .map_err(|e| crate::Error::malformed(path, e.to_string()))
    }

    /// Waits until the instance named `hostname` in the REST list `path` (`/api/v1/schedulers`,
    /// `/api/v1/seed-peers`) has `state`.
    pub async fn wait_state(
        &self,
        session: &str,
        path: &str,
        hostname: &str,
        state: &str,
    ) -> Result<()> {
        wait_for(
            Duration::from_secs(30),
            &format!("{hostname} {state} in {path}"),
            || async move {
                self.get_json(session, path).await.is_ok_and(|l| {
                    l.as_array().is_some_and(|a| {
                        a.iter()
                            .any(|s| s["hostname"] == hostname && s["state"] == state)
                    })
                })
            },
        )
        .await
    }
}

impl Scheduler {
    /// Starts the scheduler named `name` on a free port, registered with `manager` in
    /// scheduler cluster 1 (KeepAlive every second, cluster config read every second).
    pub fn start_with_manager(dir: &TestDir, name: &str, manager: &Manager) -> Result<Scheduler> {
        let port = free_port();
        let cfg = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "server:\n  listenIP: 127.0.0.1\n  port: {port}\n  host: {name}\nscheduler:\n  retryInterval: 100ms\n\
                 manager:\n  addr: 127.0.0.1:{}\n  schedulerClusterID: 1\n  keepAlive:\n    interval: 1s\n\
                 dynConfig:\n  refreshInterval: 1s\n",
                manager.grpc_port
            ),
        )
        .map_err(|e| crate::Error::io("write", &cfg, e))?;
        let mut cmd = Command::new(bin("scheduler"));
        cmd.arg("--config").arg(&cfg);
        Ok(Scheduler {
            ip: "127.0.0.1".into(),
            port,
            process: ChildProcess::spawn(dir, name, cmd)?,
        })
    }
}

/// dfdaemon config of a peer (or seed peer) named `name` that finds its schedulers through the
/// manager (refreshing every second).
pub fn managed_peer_yaml(name: &str, manager: &Manager, seed: bool) -> String {
    format!(
        "host:\n  hostname: {name}\n  ip: 127.0.0.1\nmanager:\n  addr: {}\ndynconfig:\n  refreshInterval: 1s\nseedPeer:\n  enable: {seed}\n  keepaliveInterval: 1s\ndownload:\n  pieceTimeout: 20s\n",
        manager.grpc_url()
    )
}

impl Manager {
    /// A personal access token of root named `name` with `scopes`, valid for a day.
    pub async fn create_token(&self, session: &str, name: &str, scopes: &[&str]) -> Result<String> {
        let expires = chrono::Utc::now() + chrono::Duration::days(1);
        let r = crate::http_client()
            .post(self.url("/api/v1/personal-access-tokens"))
            .bearer_auth(session)
            .json(&serde_json::json!({
                "name": name,
                "scopes": scopes,
                "expired_at": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "user_id": 1,
            }))
            .send()
            .await
            .map_err(|e| crate::Error::malformed("create a token", e.to_string()))?;
        let body: serde_json::Value = r
            .json()
            .await
            .map_err(|e| crate::Error::malformed("create a token", e.to_string()))?;
        body["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| crate::Error::malformed("create a token", body.to_string()))
    }
}
