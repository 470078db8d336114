//! The project's own binaries under test: a dfdaemon process with its own
//! store, ports and socket, plus helpers to run dfget and dfinit.

use crate::{free_port, wait_for, ChildProcess, Error, Result, TestDir};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Directory holding the workspace's built binaries (`target/debug`, or
/// `$CARGO_TARGET_DIR/debug`, or `$DFRS_BIN_DIR`).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DFRS_BIN_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug")
}

/// Path of one of the project's binaries; panics with a hint when it is not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build --workspace --bins` first (hack/test.sh does)",
        p.display()
    );
    p
}

/// Runs `dfinit` to point containerd's config at `proxy` for `registry`
/// (plus `extra` flags); panics if it cannot be started.
pub fn dfinit(config: &Path, registry: &str, proxy: &str, extra: &[&str]) -> std::process::Output {
    Command::new(bin("dfinit"))
        .arg("--containerd-config")
        .arg(config)
        .args(["--registry", registry, "--proxy-addr", proxy])
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("cannot run dfinit: {e}"))
}

/// Deep-merges `extra` into `base` (objects merge, everything else replaces).
pub(crate) fn merge(base: &mut serde_json::Value, extra: serde_json::Value) {
    match (base, extra) {
        (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
            for (k, v) in e {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, e) => *b = e,
    }
}

/// A running dfdaemon.
pub struct Agent {
    pub name: String,
    pub store_dir: PathBuf,
    pub socket: PathBuf,
    pub config_path: PathBuf,
    pub proxy_port: u16,
    pub metrics_port: u16,
    pub upload_port: u16,
    /// `runtime.mountRoot`.
    pub mount_root: PathBuf,
    /// `snapshotter.socketPath`.
    pub snapshotter_socket: PathBuf,
    process: Option<ChildProcess>,
    log_path: PathBuf,
    /// Environment of every launch.
    env: Vec<(String, String)>,
    /// Descriptor holders seen after a launch: killed on drop (they live in their own process
    /// group, so stopping the daemon leaves them, and the test dir may be gone by then).
    holders: Vec<u32>,
    /// Resolves names with this file as its `/etc/hosts` (a mount namespace of its own).
    hosts_file: Option<PathBuf>,
}

impl Drop for Agent {
    /// Stops the daemon, then the process that keeps its mounts' FUSE descriptors (it outlives
    /// a `kill -9` of the daemon by design; a later daemon of the same mount root uses it).
    fn drop(&mut self) {
        drop(self.process.take());
        let holders = self.holders.iter().copied().chain(self.holder_pid());
        for pid in holders.filter(|p| is_holder(*p)) {
            if let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Whether `pid` is a live `dfdaemon --fd-holder`.
fn is_holder(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // A zombie is not running.
    let state = stat.rsplit(") ").next().and_then(|s| s.split(' ').next());
    state != Some("Z") && cmdline.split(|b| *b == 0).any(|a| a == b"--fd-holder")
}

impl Agent {
    /// Starts dfdaemon with loopback ports, a store under the test dir, and
    /// `extra_yaml` merged over that config. Waits until `/healthy` answers.
    pub async fn start(dir: &TestDir, name: &str, extra_yaml: &str) -> Result<Agent> {
        Self::start_with_env(dir, name, extra_yaml, &[]).await
    }

    /// [`Agent::start`] with `env` set for this and every later launch.
    pub async fn start_with_env(
        dir: &TestDir,
        name: &str,
        extra_yaml: &str,
        env: &[(&str, &str)],
    ) -> Result<Agent> {
        Self::start_full(dir, name, extra_yaml, env, None).await
    }

    /// [`Agent::start`] in a mount namespace of its own whose `/etc/hosts` is `hosts` (names
    /// the test makes up resolve as the test says; needs root and `unshare`).
    pub async fn start_with_hosts_file(
        dir: &TestDir,
        name: &str,
        extra_yaml: &str,
        hosts: &Path,
    ) -> Result<Agent> {
        Self::start_full(dir, name, extra_yaml, &[], Some(hosts)).await
    }

    async fn start_full(
        dir: &TestDir,
        name: &str,
        extra_yaml: &str,
        env: &[(&str, &str)],
        hosts_file: Option<&Path>,
    ) -> Result<Agent> {
        let store_dir = dir.join(format!("{name}-store"));
        let socket = dir.join(format!("{name}.sock"));
        let proxy_port = free_port();
        let metrics_port = free_port();
        let upload_port = free_port();
        let mut cfg = serde_json::json!({
            "storage": {"dir": store_dir, "server": {"ip": "127.0.0.1", "tcpPort": free_port(), "quicPort": free_port()}},
            "proxy": {"server": {"ip": "127.0.0.1", "port": proxy_port}},
            "metrics": {"server": {"ip": "127.0.0.1", "port": metrics_port}},
            "upload": {"server": {"ip": "127.0.0.1", "port": upload_port}},
            "download": {"server": {"socketPath": socket}},
            "runtime": {"mountRoot": dir.join(format!("{name}-mounts"))},
            "snapshotter": {
                "socketPath": dir.join(format!("{name}-snapshotter.sock")),
                "root": dir.join(format!("{name}-snapshotter")),
            },
        });
        if !extra_yaml.trim().is_empty() {
            let extra: serde_json::Value = serde_yaml_ng::from_str(extra_yaml).map_err(|e| {
                Error::malformed(
                    "dfdaemon harness",
                    format!("bad extra YAML for {name}: {e}"),
                )
            })?;
            merge(&mut cfg, extra);
        }
        // The extra YAML may move the store.
        let store_dir = cfg["storage"]["dir"]
            .as_str()
            .map(PathBuf::from)
            .unwrap_or(store_dir);
        let config_path = dir.join(format!("{name}.yaml"));
        let yaml = serde_yaml_ng::to_string(&cfg).map_err(|e| {
            Error::malformed("dfdaemon harness", format!("cannot render config: {e}"))
        })?;
        std::fs::write(&config_path, yaml).map_err(|e| Error::io("write", &config_path, e))?;
        let mut agent = Agent {
            name: name.to_string(),
            store_dir,
            socket,
            config_path,
            proxy_port,
            metrics_port,
            upload_port: cfg["upload"]["server"]["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(upload_port),
            mount_root: cfg["runtime"]["mountRoot"]
                .as_str()
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join(format!("{name}-mounts"))),
            snapshotter_socket: cfg["snapshotter"]["socketPath"]
                .as_str()
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join(format!("{name}-snapshotter.sock"))),
            process: None,
            log_path: dir.logs_dir().join(format!("{name}.log")),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            holders: Vec::new(),
            hosts_file: hosts_file.map(Path::to_path_buf),
        };
        agent.launch(Vec::new()).await?;
        Ok(agent)
    }

    /// Starts dfdaemon; `fds` are passed as systemd passes a service's stored descriptors:
    /// from fd 3 on, named by `LISTEN_FDNAMES`, with `LISTEN_FDS` and `LISTEN_PID` (set by a
    /// shell that then execs dfdaemon, keeping its PID).
    async fn launch(&mut self, fds: Vec<(String, std::os::fd::OwnedFd)>) -> Result<()> {
        let mut cmd = if let Some(hosts) = self.hosts_file.as_ref().filter(|_| fds.is_empty()) {
            // unshare and sh exec in turn: dfdaemon keeps the PID the harness knows.
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
                .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
                .arg(hosts)
                .arg(bin("dfdaemon"));
            c
        } else if fds.is_empty() {
            Command::new(bin("dfdaemon"))
        } else {
            let mut c = Command::new("/bin/sh");
            c.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
                .arg(bin("dfdaemon"))
                .env("LISTEN_FDS", fds.len().to_string())
                .env(
                    "LISTEN_FDNAMES",
                    fds.iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(":"),
                );
            let raw: Vec<i32> = fds
                .iter()
                .map(|(_, fd)| std::os::fd::AsRawFd::as_raw_fd(fd))
                .collect();
            // SAFETY: runs in the forked child before exec; only dup/dup2 system calls
            // (async-signal-safe) on descriptors the parent keeps open until spawn returns.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut c, move || {
                    // Out of the way of 3.. first, then into place (dup2 clears CLOEXEC).
                    let mut high = Vec::with_capacity(raw.len());
                    for &fd in &raw {
                        let h = dup_above(fd, 100)?;
                        high.push(h);
                    }
                    for (i, &h) in high.iter().enumerate() {
                        if dup_to(h, 3 + i as i32)? != 3 + i as i32 {
                            return Err(std::io::Error::other("dup2"));
                        }
                    }
                    Ok(())
                });
            }
            c
        };
        cmd.arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info,dfdaemon=debug");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let p = ChildProcess::spawn_with_log(&self.name, cmd, &self.log_path)?;
        drop(fds);
        self.process = Some(p);
        let url = format!("http://127.0.0.1:{}/healthy", self.metrics_port);
        let socket = self.socket.clone();
        let r = wait_for(
            Duration::from_secs(20),
            &format!("{} /healthy", self.name),
            || {
                let url = url.clone();
                let socket = socket.clone();
                async move {
                    socket.exists()
                        && reqwest::get(&url)
                            .await
                            .map(|r| r.status().is_success())
                            .unwrap_or(false)
                }
            },
        )
        .await;
        if let Err(e) = r {
            return Err(Error::malformed(
                "dfdaemon harness",
                format!("{e}\n--- {} log ---\n{}", self.name, self.log_tail(40)),
            ));
        }
        if let Some(pid) = self.holder_pid().filter(|p| !self.holders.contains(p)) {
            self.holders.push(pid);
        }
        Ok(())
    }

    /// Restarts the daemon with the same config and store.
    pub async fn restart(&mut self) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.stop().await;
        }
        self.launch(Vec::new()).await
    }

    /// Changes the config file (as YAML turned JSON) for the next launch ([`Agent::restart`]).
    pub fn edit_config(&self, edit: impl FnOnce(&mut serde_json::Value)) -> Result<()> {
        let text = std::fs::read_to_string(&self.config_path)
            .map_err(|e| Error::io("read", &self.config_path, e))?;
        let mut cfg: serde_json::Value = serde_yaml_ng::from_str(&text).map_err(|e| {
            Error::malformed(
                "dfdaemon harness",
                format!("{}: {e}", self.config_path.display()),
            )
        })?;
        edit(&mut cfg);
        let yaml = serde_yaml_ng::to_string(&cfg).map_err(|e| {
            Error::malformed("dfdaemon harness", format!("cannot render config: {e}"))
        })?;
        std::fs::write(&self.config_path, yaml)
            .map_err(|e| Error::io("write", &self.config_path, e))
    }

    /// Waits until the process has exited by itself (a crash, an abort); `false` if it still
    /// runs after `limit`.
    pub async fn wait_exited(&mut self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while self.is_running() {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Starts the daemon again (after [`Agent::kill9`]) with `fds` passed as systemd passes a
    /// service's stored descriptors ([`crate::systemd::FdStore`]).
    pub async fn restart_with_fds(
        &mut self,
        fds: Vec<(String, std::os::fd::OwnedFd)>,
    ) -> Result<()> {
        if let Some(mut p) = self.process.take() {
            p.stop().await;
        }
        self.launch(fds).await
    }

    /// SIGKILLs the daemon (no clean shutdown) and waits until it is gone.
    pub async fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill9();
            p.wait_exit(Duration::from_secs(10)).await;
        }
    }

    /// PID of the live process keeping this daemon's FUSE descriptors (`dfdaemon --fd-holder`,
    /// from `<mountRoot>/.fd-holder.pid`), if any.
    pub fn holder_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.mount_root.join(".fd-holder.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_holder(pid).then_some(pid)
    }

    /// PID of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid())
    }

    /// Peak resident memory of the running daemon (VmHWM), in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// `http://127.0.0.1:<proxy port>`.
    pub fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let s = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = s.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .map(|p| p.is_running())
            .unwrap_or(false)
    }

    /// The raw Prometheus text.
    pub async fn metrics_text(&self) -> Result<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let r = reqwest::get(&url)
            .await
            .map_err(|e| Error::malformed("dfdaemon harness", format!("GET {url}: {e}")))?;
        r.text()
            .await
            .map_err(|e| Error::malformed("dfdaemon harness", format!("GET {url}: {e}")))
    }

    /// Sum of the samples whose `name{labels}` starts with `series`
    /// (e.g. `dragonfly_dfdaemon_download_traffic_bytes_total{type="local_cache"}`).
    pub async fn metric(&self, series: &str) -> Result<f64> {
        let text = self.metrics_text().await?;
        Ok(sum_metric(&text, series))
    }

    /// Runs dfget against this daemon.
    pub fn dfget(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(bin("dfget"));
        cmd.arg("--endpoint")
            .arg(&self.socket)
            .arg("--no-progress")
            .args(args);
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run dfget: {e}"))
    }

    /// Starts dfget against this daemon in the background.
    pub fn dfget_spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(bin("dfget"))
            .arg("--endpoint")
            .arg(&self.socket)
            .arg("--no-progress")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run dfget: {e}"))
    }

    /// A client of the daemon's runtime service (image mounts), on its download socket.
    pub fn runtime(
        &self,
    ) -> dfdaemon::runtime::grpc::proto::runtime_client::RuntimeClient<tonic::transport::Channel>
    {
        let path = self.socket.clone();
        // The URI is required by tonic but unused: the connector always dials the socket.
        let channel = tonic::transport::Endpoint::from_static("http://[::1]:50051")
            .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(hyper_util::rt::TokioIo::new)
                }
            }));
        dfdaemon::runtime::grpc::proto::runtime_client::RuntimeClient::new(channel)
    }

    /// Waits until this daemon announces every one of `pieces` of `task_id` to children
    /// (its upload service's `SyncPieces`, as a child watches it).
    pub async fn wait_pieces(
        &self,
        task_id: &str,
        pieces: &[u32],
        timeout: Duration,
    ) -> Result<()> {
        use dragonfly_api::dfdaemon::v2::dfdaemon_upload_client::DfdaemonUploadClient;
        use dragonfly_api::dfdaemon::v2::SyncPiecesRequest;
        let fail = |m: String| Error::malformed("dfdaemon harness", m);
        let url = format!("http://127.0.0.1:{}", self.upload_port);
        let watch = async {
            let mut c = DfdaemonUploadClient::connect(url.clone())
                .await
                .map_err(|e| fail(format!("{url}: {e}")))?;
            let mut s = c
                .sync_pieces(SyncPiecesRequest {
                    host_id: String::new(),
                    task_id: task_id.to_string(),
                    interested_piece_numbers: pieces.to_vec(),
                })
                .await
                .map_err(|e| fail(format!("SyncPieces {task_id}: {e}")))?
                .into_inner();
            let mut left: std::collections::BTreeSet<u32> = pieces.iter().copied().collect();
            while !left.is_empty() {
                match s.message().await {
                    Ok(Some(m)) => {
                        left.remove(&m.number);
                    }
                    Ok(None) => break,
                    Err(e) => return Err(fail(format!("SyncPieces {task_id}: {e}"))),
                }
            }
            if left.is_empty() {
                Ok(())
            } else {
                Err(fail(format!("{task_id}: pieces {left:?} never announced")))
            }
        };
        tokio::time::timeout(timeout, watch).await.map_err(|_| {
            fail(format!(
                "{task_id}: pieces {pieces:?} not announced in {timeout:?}"
            ))
        })?
    }

    /// The content file of a task in this daemon's store.
    pub fn task_path(&self, task_id: &str) -> PathBuf {
        self.store_dir
            .join("content/tasks")
            .join(&task_id[..3.min(task_id.len())])
            .join(task_id)
    }
}

/// Sums samples of a Prometheus text exposition whose series starts with `series`.
pub fn sum_metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `fcntl(fd, F_DUPFD, min)`: a copy of `fd` numbered `min` or above.
fn dup_above(fd: i32, min: i32) -> std::io::Result<i32> {
    // SAFETY: `fd` is open in this process; the copy is only used by the caller.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let owned = rustix::io::fcntl_dupfd_cloexec(b, min)?;
    Ok(std::os::fd::IntoRawFd::into_raw_fd(owned))
}

/// `dup2(fd, to)`, leaving `to` open (and without CLOEXEC) across exec.
fn dup_to(fd: i32, to: i32) -> std::io::Result<i32> {
    // SAFETY: `fd` is open; `to` is a descriptor number this child reserves for it.
    let (b, mut target) = unsafe {
        (
            std::os::fd::BorrowedFd::borrow_raw(fd),
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(to),
        )
    };
    rustix::io::dup2(b, &mut target)?;
    Ok(std::os::fd::IntoRawFd::into_raw_fd(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_matching_series() {
        let t = "# HELP x\nfoo_total{type=\"a\"} 3\nfoo_total{type=\"b\"} 4\nfoobar 9\n";
        assert_eq!(sum_metric(t, "foo_total{type=\"a\"}"), 3.0);
        assert_eq!(sum_metric(t, "foo_total"), 7.0);
    }

    #[test]
    fn merge_is_deep() {
        let mut a = serde_json::json!({"proxy": {"server": {"port": 1}, "x": 1}});
        merge(
            &mut a,
            serde_json::json!({"proxy": {"server": {"ip": "a"}}}),
        );
        assert_eq!(
            a,
            serde_json::json!({"proxy": {"server": {"port": 1, "ip": "a"}, "x": 1}})
        );
    }
}
