//! containerd 1.6 with its own root, state and sockets under the test dir (never the system's),
//! CRI pulls reading hosts.toml from a test-owned `config_path`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::cri::{CriClient, CriImage};
use crate::mounts::unmount_all_under;
use crate::process::{ChildProcess, Signal};
use crate::registry::PROXY_VARS;
use crate::{Error, Result, TestDir};

/// How long containerd may take to answer `ctr version` and CRI calls after start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The namespace CRI uses, and the default for [`ContainerdClient::ctr`].
pub const CRI_NAMESPACE: &str = "k8s.io";

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// One `[host."<url>"]` entry of a hosts.toml: a mirror tried before `server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorHost {
    /// e.g. `http://127.0.0.1:4001`.
    pub url: String,
    /// Default `["pull", "resolve"]`.
    pub capabilities: Vec<String>,
    /// Extra request headers containerd sends to this host.
    pub headers: Vec<(String, String)>,
}

impl MirrorHost {
    /// A mirror used for pull and resolve.
    pub fn new(url: impl Into<String>) -> MirrorHost {
        MirrorHost {
            url: url.into(),
            capabilities: vec!["pull".into(), "resolve".into()],
            headers: Vec::new(),
        }
    }

    /// Adds a header sent with every request to this mirror.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A registry's `hosts.toml` for containerd's `config_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsToml {
    /// The fallback (`server = ...`). Always a loopback URL in tests: otherwise the fallback
    /// of e.g. docker.io is the internet.
    pub server: String,
    /// Mirrors, tried in order before `server`.
    pub mirrors: Vec<MirrorHost>,
}

impl HostsToml {
    /// Pull straight from `server` (e.g. `http://127.0.0.1:5000`).
    pub fn direct(server: impl Into<String>) -> HostsToml {
        HostsToml {
            server: server.into(),
            mirrors: Vec::new(),
        }
    }

    /// Pull through `mirror`, falling back to `server`.
    pub fn with_mirror(server: impl Into<String>, mirror: MirrorHost) -> HostsToml {
        HostsToml {
            server: server.into(),
            mirrors: vec![mirror],
        }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut s = format!("server = {}\n", toml_str(&self.server));
        for m in &self.mirrors {
            let caps: Vec<String> = m.capabilities.iter().map(|c| toml_str(c)).collect();
            s.push_str(&format!(
                "\n[host.{}]\n  capabilities = [{}]\n",
                toml_str(&m.url),
                caps.join(", ")
            ));
            if !m.headers.is_empty() {
                s.push_str(&format!("  [host.{}.header]\n", toml_str(&m.url)));
                for (k, v) in &m.headers {
                    s.push_str(&format!("    {} = [{}]\n", toml_str(k), toml_str(v)));
                }
            }
        }
        s
    }

    /// Writes `<hosts_dir>/<registry_host>/hosts.toml` (`registry_host` as in image
    /// references, e.g. `127.0.0.1:5000`, or `_default`). Returns the file's path.
    pub fn write(&self, hosts_dir: &Path, registry_host: &str) -> Result<PathBuf> {
        let dir = hosts_dir.join(registry_host);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create dir", &dir, e))?;
        let path = dir.join("hosts.toml");
        std::fs::write(&path, self.render()).map_err(|e| Error::io("write", &path, e))?;
        Ok(path)
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What goes into a generated containerd config.toml (version 2).
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    /// CRI `registry.config_path`: one `<host>/hosts.toml` per registry.
    pub hosts_dir: PathBuf,
    /// CRI `containerd.snapshotter` (default: containerd's own, overlayfs).
    pub snapshotter: Option<String>,
    /// `[proxy_plugins]` snapshotters: (name, unix socket).
    pub proxy_snapshotters: Vec<(String, PathBuf)>,
    /// `[debug] level` (default "debug": the log shows every URL containerd fetches).
    pub log_level: String,
    /// CRI `sandbox_image`: the image of every pod's sandbox container (default: an address
    /// nothing answers on, for tests that never start a pod).
    pub sandbox_image: String,
    /// Raw TOML appended at the end (new tables only; keys of tables above cannot be repeated).
    pub extra: String,
}

impl ContainerdConfig {
    /// Defaults with `hosts_dir`.
    pub fn new(hosts_dir: impl Into<PathBuf>) -> ContainerdConfig {
        ContainerdConfig {
            hosts_dir: hosts_dir.into(),
            snapshotter: None,
            proxy_snapshotters: Vec::new(),
            log_level: "debug".into(),
            sandbox_image: "127.0.0.1:1/pause:none".into(),
            extra: String::new(),
        }
    }
}

/// A running containerd owned by the test. Derefs to its [`ContainerdClient`].
///
/// Drop: kills its tasks and deletes its containers, stops containerd by PID (SIGTERM, then
/// SIGKILL), kills shims that still serve its socket, unmounts everything under its root and
/// state, and removes the empty `default`/`k8s.io` cgroups runc leaves behind.
#[derive(Debug)]
pub struct Containerd {
    client: ContainerdClient,
    process: Option<ChildProcess>,
    config_path: PathBuf,
    root: PathBuf,
    state: PathBuf,
}

impl std::ops::Deref for Containerd {
    type Target = ContainerdClient;

    fn deref(&self) -> &ContainerdClient {
        &self.client
    }
}

impl Containerd {
    /// Writes `<dir>/containerd-N/config.toml` from `cfg` (creating root, state, opt and cni
    /// dirs next to it; socket `<dir>/containerd-N/containerd.sock`). Returns the config path.
    pub fn write_config(dir: &TestDir, cfg: &ContainerdConfig) -> Result<PathBuf> {
        let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let base = dir.subdir(format!("containerd-{n}"))?;
        for sub in ["root", "state", "opt", "cni"] {
            dir.subdir(format!("containerd-{n}/{sub}"))?;
        }
        std::fs::create_dir_all(&cfg.hosts_dir)
            .map_err(|e| Error::io("create dir", &cfg.hosts_dir, e))?;
        let p = |sub: &str| toml_str(&base.join(sub).to_string_lossy());
        let mut text = format!(
            r#"version = 2
root = {root}
state = {state}

[grpc]
  address = {sock}
[ttrpc]
  address = {ttrpc}
[debug]
  address = {debug}
  level = {level}
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox}
  # Pods ask for oom_score_adj -998 (sandboxes); this machine's root may not lower it below
  # its own, so CRI keeps to containerd's (as on nested and rootless hosts).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = {hosts}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = {cni}
"#,
            root = p("root"),
            state = p("state"),
            sock = p("containerd.sock"),
            ttrpc = p("containerd.sock.ttrpc"),
            debug = p("debug.sock"),
            level = toml_str(&cfg.log_level),
            opt = p("opt"),
            hosts = toml_str(&cfg.hosts_dir.to_string_lossy()),
            cni = p("cni"),
            sandbox = toml_str(&cfg.sandbox_image),
        );
        if let Some(s) = &cfg.snapshotter {
            text.push_str(&format!(
                "  [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    snapshotter = {}\n    disable_snapshot_annotations = false\n",
                toml_str(s)
            ));
        }
        if !cfg.proxy_snapshotters.is_empty() {
            text.push_str("\n[proxy_plugins]\n");
            for (name, sock) in &cfg.proxy_snapshotters {
                text.push_str(&format!(
                    "  [proxy_plugins.{}]\n    type = \"snapshot\"\n    address = {}\n",
                    toml_str(name),
                    toml_str(&sock.to_string_lossy())
                ));
            }
        }
        if !cfg.extra.is_empty() {
            text.push('\n');
            text.push_str(&cfg.extra);
            text.push('\n');
        }
        let path = base.join("config.toml");
        std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
        Ok(path)
    }

    /// [`write_config`](Self::write_config) with [`ContainerdConfig::new`]`(hosts_dir)`.
    pub fn write_default_config(dir: &TestDir, hosts_dir: &Path) -> Result<PathBuf> {
        Self::write_config(dir, &ContainerdConfig::new(hosts_dir))
    }

    /// Writes the default config and starts containerd with it.
    pub async fn start(dir: &TestDir, hosts_dir: &Path) -> Result<Containerd> {
        let config = Self::write_default_config(dir, hosts_dir)?;
        Self::start_with_config(dir, &config).await
    }

    /// Starts containerd with an existing config.toml (e.g. one a tool under test edited).
    /// The config must set `root`, `state` and `[grpc] address` away from the system defaults.
    /// Waits until `ctr version` and a CRI call both work.
    pub async fn start_with_config(dir: &TestDir, config_path: &Path) -> Result<Containerd> {
        let text =
            std::fs::read_to_string(config_path).map_err(|e| Error::io("read", config_path, e))?;
        let paths = ConfigPaths::parse(&text)
            .map_err(|detail| Error::malformed(format!("{}", config_path.display()), detail))?;
        let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(config_path);
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        cmd.env_remove("CONTAINERD_ADDRESS");
        let mut process = ChildProcess::spawn(dir, &format!("containerd-{n}"), cmd)?;
        let client = ContainerdClient::connect(&paths.socket, &paths.snapshotter)?;
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        loop {
            if let Some(e) = process.exited_error("during start-up") {
                return Err(e);
            }
            let ready = match client.ctr(&["version"]).await {
                Ok(out) if out.status.success() => match client.cri.list_images().await {
                    Ok(_) => true,
                    Err(e) => {
                        last = e.to_string();
                        false
                    }
                },
                Ok(out) => {
                    last = String::from_utf8_lossy(&out.stderr).into_owned();
                    false
                }
                Err(e) => {
                    last = e.to_string();
                    false
                }
            };
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "containerd on {} (last error: {last}; log {})",
                        paths.socket.display(),
                        process.log_path().display()
                    ),
                    timeout: START_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Containerd {
            client,
            process: Some(process),
            config_path: config_path.to_path_buf(),
            root: paths.root,
            state: paths.state,
        })
    }

    /// The config file it runs with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The client (also reachable through `Deref`).
    pub fn client(&self) -> &ContainerdClient {
        &self.client
    }

    /// The containerd process (to stop, kill or read its log). `None` only during drop.
    pub fn process(&mut self) -> Option<&mut ChildProcess> {
        self.process.as_mut()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(ChildProcess::log)
            .unwrap_or_default()
    }

    /// Kills every task and deletes every container in every namespace (what drop does first).
    fn remove_workloads_blocking(&self) {
        let sock = self.client.socket.to_string_lossy().into_owned();
        let ctr = |args: &[&str]| -> Option<String> {
            let mut full = vec!["-a", sock.as_str()];
            full.extend_from_slice(args);
            run_blocking("ctr", &full, Duration::from_secs(15))
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        };
        let Some(namespaces) = ctr(&["namespaces", "ls", "-q"]) else {
            return;
        };
        for ns in namespaces.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let tasks = ctr(&["-n", ns, "tasks", "ls", "-q"]).unwrap_or_default();
            for t in tasks.lines().map(str::trim).filter(|l| !l.is_empty()) {
                ctr(&["-n", ns, "tasks", "kill", "-s", "SIGKILL", t]);
                std::thread::sleep(Duration::from_millis(200));
                ctr(&["-n", ns, "tasks", "delete", "-f", t]);
            }
            let containers = ctr(&["-n", ns, "containers", "ls", "-q"]).unwrap_or_default();
            for c in containers.lines().map(str::trim).filter(|l| !l.is_empty()) {
                ctr(&["-n", ns, "containers", "delete", c]);
            }
        }
    }

    /// SIGKILLs shim processes whose `-address` is this containerd's socket (by PID).
    fn kill_own_shims(&self) {
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        let sock = self.client.socket.to_string_lossy().into_owned();
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_shim = args
                .first()
                .is_some_and(|a| String::from_utf8_lossy(a).contains("containerd-shim"));
            let ours = args
                .windows(2)
                .any(|w| w[0] == b"-address" && w[1] == sock.as_bytes());
            if is_shim && ours {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let running = self.process.as_mut().is_some_and(ChildProcess::is_running);
        if running {
            self.remove_workloads_blocking();
        }
        // Stop containerd itself (SIGTERM, then SIGKILL), printing its log if panicking.
        drop(self.process.take());
        self.kill_own_shims();
        for dir in [&self.state, &self.root] {
            let stuck = unmount_all_under(dir);
            if !stuck.is_empty() {
                eprintln!("containerd teardown: cannot unmount {stuck:?}");
            }
        }
        // runc's per-namespace parent cgroups; rmdir only succeeds when they are empty.
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                for ns in ["default", CRI_NAMESPACE] {
                    let _ = std::fs::remove_dir(c.path().join(ns));
                }
            }
        }
    }
}

/// Runs a program synchronously with a time limit (for use in drop). `None` on failure to run or
/// timeout.
fn run_blocking(program: &str, args: &[&str], timeout: Duration) -> Option<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    rx.recv_timeout(timeout).ok()?.ok()
}

/// What the harness needs to know from a containerd config.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConfigPaths {
    socket: PathBuf,
    root: PathBuf,
    state: PathBuf,
    snapshotter: String,
}

impl ConfigPaths {
    fn parse(text: &str) -> std::result::Result<ConfigPaths, String> {
        let doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("not TOML: {e}"))?;
        let get = |path: &[&str]| -> Option<String> {
            let mut item = doc.as_item();
            for key in path {
                item = item.get(key)?;
            }
            item.as_str().map(str::to_string)
        };
        let socket = get(&["grpc", "address"]).ok_or("no [grpc] address")?;
        let root = get(&["root"]).ok_or("no root")?;
        let state = get(&["state"]).ok_or("no state")?;
        for (what, value, system) in [
            ("[grpc] address", &socket, "/run/containerd/containerd.sock"),
            ("root", &root, "/var/lib/containerd"),
            ("state", &state, "/run/containerd"),
        ] {
            if Path::new(value) == Path::new(system) {
                return Err(format!("{what} is the system default {system}"));
            }
        }
        let snapshotter = get(&[
            "plugins",
            "io.containerd.grpc.v1.cri",
            "containerd",
            "snapshotter",
        ])
        .unwrap_or_else(|| "overlayfs".into());
        Ok(ConfigPaths {
            socket: socket.into(),
            root: root.into(),
            state: state.into(),
            snapshotter,
        })
    }
}

/// Talks to a containerd (running or not owned by the test): `ctr` and CRI.
#[derive(Debug, Clone)]
pub struct ContainerdClient {
    socket: PathBuf,
    namespace: String,
    snapshotter: String,
    cri: CriClient,
}

impl ContainerdClient {
    /// A client for the containerd on `socket`, whose CRI plugin unpacks with `snapshotter`.
    /// Connects lazily.
    pub fn connect(socket: &Path, snapshotter: &str) -> Result<ContainerdClient> {
        Ok(ContainerdClient {
            socket: socket.to_path_buf(),
            namespace: CRI_NAMESPACE.into(),
            snapshotter: snapshotter.into(),
            cri: CriClient::connect(socket)?,
        })
    }

    /// The gRPC socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The snapshotter CRI unpacks with.
    pub fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// The CRI client.
    pub fn cri(&self) -> &CriClient {
        &self.cri
    }

    /// `ctr -a <socket> -n k8s.io <args>`; the output whatever the exit status.
    pub async fn ctr(&self, args: &[&str]) -> Result<Output> {
        self.ctr_in(&self.namespace, args).await
    }

    /// `ctr -a <socket> -n <namespace> <args>`.
    pub async fn ctr_in(&self, namespace: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = tokio::process::Command::new("ctr");
        cmd.arg("-a")
            .arg(&self.socket)
            .args(["-n", namespace])
            .args(args)
            .kill_on_drop(true);
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        cmd.output().await.map_err(|source| Error::Spawn {
            program: "ctr".into(),
            source,
        })
    }

    /// [`ctr`](Self::ctr), failing on a non-zero exit; returns stdout.
    pub async fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args).await?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("ctr -n {} {}", self.namespace, args.join(" ")),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `args` in a fresh container of `image` (`ctr run --rm`, snapshotter as CRI's);
    /// returns its stdout. The image must have been pulled (and unpacked) already.
    pub async fn ctr_run(&self, image: &str, args: &[&str]) -> Result<String> {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "dfit-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let mut full = vec![
            "run",
            "--rm",
            "--snapshotter",
            &self.snapshotter,
            image,
            &id,
        ];
        full.extend_from_slice(args);
        self.ctr_ok(&full).await
    }

    /// Runs a container of `image` that hashes its file `/data/random-<seed>.bin` (with the
    /// image's busybox); fails unless the digest is that of `LayerSpec::random`'s `len` bytes
    /// of `seed`.
    pub async fn ctr_check_random_file(&self, image: &str, seed: u64, len: u64) -> Result<()> {
        let path = format!("/data/random-{seed}.bin");
        let out = self
            .ctr_run(image, &["/bin/busybox", "sha256sum", &path])
            .await?;
        let want = crate::image::sha256_digest(&crate::random_bytes(seed, len as usize));
        if out.contains(want.trim_start_matches("sha256:")) {
            Ok(())
        } else {
            Err(Error::malformed(
                format!("{path} in a container of {image}"),
                format!("the container saw {out:?}, the file's digest is {want}"),
            ))
        }
    }

    /// CRI PullImage; returns the image ref (`sha256:<config digest>`).
    pub async fn cri_pull(&self, image: &str) -> Result<String> {
        self.cri.pull(image, None).await
    }

    /// CRI PullImage with registry credentials (as the kubelet passes them).
    pub async fn cri_pull_with_auth(
        &self,
        image: &str,
        user: &str,
        password: &str,
    ) -> Result<String> {
        self.cri.pull(image, Some((user, password))).await
    }

    /// CRI RemoveImage.
    pub async fn cri_remove(&self, image: &str) -> Result<()> {
        self.cri.remove(image).await
    }

    /// CRI ImageStatus: `None` if the image is not there.
    pub async fn cri_image_status(&self, image: &str) -> Result<Option<CriImage>> {
        self.cri.image_status(image).await
    }

    /// Digests of every blob in the content store (namespace k8s.io).
    pub async fn content_digests(&self) -> Result<Vec<String>> {
        let out = self.ctr_ok(&["content", "ls", "-q"]).await?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("sha256:"))
            .map(str::to_string)
            .collect())
    }

    /// Keys of every snapshot of the CRI snapshotter (namespace k8s.io).
    pub async fn snapshot_keys(&self) -> Result<Vec<String>> {
        Ok(self.snapshots().await?.into_keys().collect())
    }

    /// Every snapshot of the CRI snapshotter (namespace k8s.io): key -> parent key.
    pub async fn snapshots(&self) -> Result<BTreeMap<String, Option<String>>> {
        let out = self
            .ctr_ok(&["snapshots", "--snapshotter", &self.snapshotter, "ls"])
            .await?;
        Ok(parse_snapshot_list(&out))
    }

    /// Removes `image` so that pulling it again fetches every blob again: CRI RemoveImage (all
    /// its references, synchronous GC), then force-removes any of its blobs still in the content
    /// store and its layer snapshots together with every snapshot built on them. That matters
    /// when another image shares layers with it: that image is left incomplete (a CRI pull of it
    /// fetches what is missing). Verifies that none of the image's blobs and snapshots remain.
    /// An image containerd does not have is a no-op.
    pub async fn remove_image_sync(&self, image: &str) -> Result<()> {
        let Some(status) = self.cri_image_status(image).await? else {
            return Ok(());
        };
        let present: BTreeSet<String> = self.content_digests().await?.into_iter().collect();
        let (blobs, diff_ids) = self.image_blobs(&status, &present).await?;
        let chain = chain_ids(&diff_ids);

        self.cri_remove(image).await?;

        let present: BTreeSet<String> = self.content_digests().await?.into_iter().collect();
        for d in blobs.intersection(&present) {
            // Errors show up in the verification below.
            let _ = self.ctr(&["content", "rm", d]).await;
        }
        let snaps = self.snapshots().await?;
        for key in removal_order(&snaps, &chain) {
            // Errors show up in the verification below.
            let _ = self
                .ctr(&["snapshots", "--snapshotter", &self.snapshotter, "rm", &key])
                .await;
        }

        let present: BTreeSet<String> = self.content_digests().await?.into_iter().collect();
        let left: Vec<String> = blobs.intersection(&present).cloned().collect();
        if !left.is_empty() {
            return Err(Error::Leftover {
                image: image.into(),
                what: "content",
                leftover: left,
            });
        }
        let snaps: BTreeSet<String> = self.snapshot_keys().await?.into_iter().collect();
        let left: Vec<String> = chain.into_iter().filter(|c| snaps.contains(c)).collect();
        if !left.is_empty() {
            return Err(Error::Leftover {
                image: image.into(),
                what: "snapshots",
                leftover: left,
            });
        }
        Ok(())
    }

    /// The blobs of an image that are in the content store (index, manifests, configs, layers)
    /// and the diff IDs of the (first) config found.
    async fn image_blobs(
        &self,
        status: &CriImage,
        present: &BTreeSet<String>,
    ) -> Result<(BTreeSet<String>, Vec<String>)> {
        let mut todo: Vec<String> = status
            .repo_digests
            .iter()
            .filter_map(|r| r.rsplit_once('@').map(|(_, d)| d.to_string()))
            .collect();
        let mut blobs = BTreeSet::new();
        let mut diff_ids = Vec::new();
        // The image ID is the config digest.
        if status.id.starts_with("sha256:") {
            blobs.insert(status.id.clone());
        }
        while let Some(d) = todo.pop() {
            if !present.contains(&d) || !blobs.insert(d.clone()) {
                continue;
            }
            let doc = self.content_json(&d).await?;
            if let Some(ms) = doc.get("manifests").and_then(|m| m.as_array()) {
                todo.extend(ms.iter().filter_map(descriptor_digest));
            }
            if let Some(cfg) = doc.get("config").and_then(descriptor_digest) {
                if present.contains(&cfg) {
                    if diff_ids.is_empty() {
                        diff_ids = self
                            .content_json(&cfg)
                            .await?
                            .pointer("/rootfs/diff_ids")
                            .and_then(|v| v.as_array())
                            .map(|a| {
                                a.iter()
                                    .filter_map(|v| v.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default();
                    }
                    blobs.insert(cfg);
                }
            }
            if let Some(ls) = doc.get("layers").and_then(|l| l.as_array()) {
                blobs.extend(ls.iter().filter_map(descriptor_digest));
            }
        }
        Ok((blobs, diff_ids))
    }

    async fn content_json(&self, digest: &str) -> Result<serde_json::Value> {
        let out = self.ctr(&["content", "get", digest]).await?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("ctr content get {digest}"),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        serde_json::from_slice(&out.stdout).map_err(|source| Error::Json {
            what: format!("content {digest}"),
            source,
        })
    }
}

/// `ctr snapshots ls` output (`KEY PARENT KIND`, PARENT empty for a bottom layer) as
/// key -> parent.
fn parse_snapshot_list(out: &str) -> BTreeMap<String, Option<String>> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [key, parent, _kind] => Some((key.to_string(), Some(parent.to_string()))),
                [key, _kind] => Some((key.to_string(), None)),
                _ => None,
            }
        })
        .collect()
}

/// The snapshots in `roots` and every snapshot descending from them, children before parents.
fn removal_order(snaps: &BTreeMap<String, Option<String>>, roots: &[String]) -> Vec<String> {
    let mut doomed: BTreeSet<String> = roots
        .iter()
        .filter(|r| snaps.contains_key(*r))
        .cloned()
        .collect();
    loop {
        let more: Vec<String> = snaps
            .iter()
            .filter(|(k, p)| !doomed.contains(*k) && p.as_ref().is_some_and(|p| doomed.contains(p)))
            .map(|(k, _)| k.clone())
            .collect();
        if more.is_empty() {
            break;
        }
        doomed.extend(more);
    }
    // Depth = number of ancestors (bounded: a parent cycle cannot make it loop forever).
    let depth = |k: &str| {
        let mut d = 0;
        let mut cur = snaps.get(k).cloned().flatten();
        while let Some(p) = cur {
            d += 1;
            if d > snaps.len() {
                break;
            }
            cur = snaps.get(&p).cloned().flatten();
        }
        d
    };
    let mut order: Vec<String> = doomed.into_iter().collect();
    order.sort_by_key(|k| std::cmp::Reverse(depth(k)));
    order
}

fn descriptor_digest(v: &serde_json::Value) -> Option<String> {
    v.get("digest").and_then(|d| d.as_str()).map(str::to_string)
}

/// OCI chain IDs of a layer stack: `chain[0] = diff[0]`,
/// `chain[i] = sha256(chain[i-1] + " " + diff[i])`. containerd names committed snapshots by them.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_toml_renders_mirrors_and_headers() {
        let h = HostsToml::with_mirror(
            "http://127.0.0.1:5000",
            MirrorHost::new("http://127.0.0.1:4001")
                .header("X-Dragonfly-Registry", "http://127.0.0.1:5000"),
        );
        assert_eq!(
            h.render(),
            "server = \"http://127.0.0.1:5000\"\n\n\
             [host.\"http://127.0.0.1:4001\"]\n  capabilities = [\"pull\", \"resolve\"]\n\
             \x20 [host.\"http://127.0.0.1:4001\".header]\n    \"X-Dragonfly-Registry\" = [\"http://127.0.0.1:5000\"]\n"
        );
        let parsed: toml_edit::DocumentMut = h.render().parse().expect("valid TOML");
        assert_eq!(parsed["server"].as_str(), Some("http://127.0.0.1:5000"));
        assert_eq!(
            HostsToml::direct("http://x").render(),
            "server = \"http://x\"\n"
        );
    }

    #[test]
    fn generated_config_parses_and_points_into_the_test_dir() {
        let dir = TestDir::new("unit-ctrd-config").expect("test dir");
        let mut cfg = ContainerdConfig::new(dir.join("certs.d"));
        cfg.snapshotter = Some("dfsnap".into());
        cfg.proxy_snapshotters = vec![("dfsnap".into(), dir.join("snap.sock"))];
        let path = Containerd::write_config(&dir, &cfg).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        let paths = ConfigPaths::parse(&text).expect("parse");
        assert!(paths.socket.starts_with(dir.path()));
        assert!(paths.root.starts_with(dir.path()));
        assert!(paths.state.starts_with(dir.path()));
        assert_eq!(paths.snapshotter, "dfsnap");
        assert!(
            paths.socket.as_os_str().len() < 100,
            "unix socket path too long"
        );
        let doc: toml_edit::DocumentMut = text.parse().expect("toml");
        assert_eq!(doc["version"].as_integer(), Some(2));
        assert_eq!(
            doc["plugins"]["io.containerd.grpc.v1.cri"]["registry"]["config_path"].as_str(),
            Some(&*dir.join("certs.d").to_string_lossy())
        );
        assert_eq!(
            doc["proxy_plugins"]["dfsnap"]["type"].as_str(),
            Some("snapshot")
        );

        let default = ConfigPaths::parse("version = 2\nroot = \"/tmp/r\"\nstate = \"/tmp/s\"\n[grpc]\naddress = \"/tmp/s.sock\"\n")
            .expect("parse");
        assert_eq!(default.snapshotter, "overlayfs");
        assert!(ConfigPaths::parse(
            "root = \"/var/lib/containerd\"\nstate = \"/tmp/s\"\n[grpc]\naddress = \"/tmp/x\"\n"
        )
        .is_err());
        assert!(ConfigPaths::parse("root = \"/tmp/r\"\nstate = \"/tmp/s\"\n").is_err());
    }

    #[test]
    fn snapshot_removal_takes_descendants_children_first() {
        let ls = "KEY        PARENT     KIND\n\
                  sha256:a              Committed\n\
                  sha256:b   sha256:a   Committed\n\
                  sha256:c   sha256:a   Committed\n\
                  sha256:d   sha256:c   Committed\n\
                  sha256:x              Committed\n";
        let snaps = parse_snapshot_list(ls);
        assert_eq!(snaps.len(), 5);
        assert_eq!(snaps["sha256:d"].as_deref(), Some("sha256:c"));
        assert_eq!(snaps["sha256:a"], None);
        let order = removal_order(&snaps, &["sha256:a".into(), "sha256:b".into()]);
        assert_eq!(order.len(), 4, "{order:?}");
        assert_eq!(order[0], "sha256:d");
        assert_eq!(order.last().map(String::as_str), Some("sha256:a"));
        let pos = |k: &str| order.iter().position(|o| o == k).expect("present");
        assert!(pos("sha256:c") < pos("sha256:a") && pos("sha256:b") < pos("sha256:a"));
        assert!(removal_order(&snaps, &["sha256:nope".into()]).is_empty());
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let d1 = format!("sha256:{}", "a".repeat(64));
        let d2 = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[d1.clone(), d2.clone()]);
        assert_eq!(c[0], d1);
        let expect = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{d1} {d2}").as_bytes()))
        );
        assert_eq!(c[1], expect);
        assert!(chain_ids(&[]).is_empty());
    }
}
