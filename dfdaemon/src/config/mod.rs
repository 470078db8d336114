//! dfdaemon configuration: YAML with Dragonfly's key names, every key documented
//! and defaulted, unknown keys rejected, values validated after load.

mod backend;
mod download;
mod gc;
mod host;
mod metrics;
mod proxy;
mod runtime;
mod snapshotter;
mod storage;
mod upload;

pub use backend::Backend;
pub use download::{Download, DownloadServer, Protocol};
pub use gc::{Gc, GcPolicy};
pub use host::Host;
pub use metrics::Metrics;
pub use proxy::{Proxy, ProxyRule, ProxyServer, RegistryMirror};
pub use runtime::{Prefetch, RecoverPolicy, Runtime, RuntimeMode};
pub use snapshotter::Snapshotter;
pub use storage::{Storage, StorageServer};
pub use upload::{Upload, UploadServer};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Default config file location.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dragonfly/dfdaemon.yaml";

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path} is invalid:\n  {}", problems.join("\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// The scheduler section (used by the P2P issue; with no addresses dfdaemon is a
/// pure mirror and cache).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Scheduler {
    /// Static scheduler addresses (`host:port`). Empty: no scheduler, no P2P.
    pub addrs: Vec<String>,
    /// Mutual TLS to the schedulers (all three or none): their CA, and this peer's client
    /// certificate and key (PEM). Default: none.
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Scheduler {
    pub fn tls_files(&self) -> common::tls::TlsFiles {
        common::tls::TlsFiles::of(&self.ca_cert, &self.cert, &self.key)
    }
}

/// Seed peer mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SeedPeer {
    /// Announce this host as a seed peer (host type super seed, host ID ending in
    /// `-seed`): schedulers trigger it to fetch tasks from the origin for others.
    /// Default: false.
    pub enable: bool,
    /// Dragonfly's seed peer type; `super` (default) is the only one (accepted for upstream
    /// configs).
    #[serde(rename = "type")]
    pub kind: SeedPeerType,
    /// With a manager: the seed peer cluster this seed peer registers in. Default: 1.
    #[serde(rename = "clusterID")]
    pub cluster_id: u64,
    /// With a manager: one KeepAlive message this often. Default: 15s.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: std::time::Duration,
}

impl Default for SeedPeer {
    fn default() -> Self {
        SeedPeer {
            enable: false,
            kind: SeedPeerType::Super,
            cluster_id: 1,
            keepalive_interval: std::time::Duration::from_secs(15),
        }
    }
}

/// Dragonfly's host types for seed peers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeedPeerType {
    #[default]
    Super,
}

/// `dynconfig`: how often the manager is asked for schedulers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DynConfig {
    /// Default: 60s.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: std::time::Duration,
}

impl Default for DynConfig {
    fn default() -> Self {
        DynConfig {
            refresh_interval: std::time::Duration::from_secs(60),
        }
    }
}

/// The manager section (used by the manager issue).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Manager {
    /// Manager gRPC address: `http://host:port` (as Dragonfly's dfdaemon writes it) or
    /// `host:port`. Empty: run without a manager. With one, the schedulers come from the
    /// manager's `ListSchedulers` (and `scheduler.addrs` are used until it answers).
    pub addr: String,
    /// Mutual TLS to the manager (all three or none): its CA, and this peer's client
    /// certificate and key (PEM). Default: none.
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Manager {
    pub fn tls_files(&self) -> common::tls::TlsFiles {
        common::tls::TlsFiles::of(&self.ca_cert, &self.cert, &self.key)
    }
}

/// Keys of Dragonfly's `dfdaemon.yaml` (dragonfly-client) this dfdaemon accepts and ignores,
/// with why. Keys that ask for TLS or authentication are not here: ignoring them would open
/// what the config meant to close, so they are either honoured or errors.
pub const IGNORED: &[common::upstream_keys::Ignored] = &[
    ("server.pluginDir", "no backend plugins"),
    ("server.cacheDir", "everything is kept under storage.dir"),
    (
        "server.adaptiveRateLimit",
        "no adaptive rate limit; download.rateLimit and upload.rateLimit apply",
    ),
    (
        "download.server.requestRateLimit",
        "no request rate limit on the download socket",
    ),
    ("download.server.requestBufferSize", "not needed"),
    (
        "download.backToSourceBandwidthLimit",
        "origin traffic counts against download.rateLimit",
    ),
    (
        "download.collectedPieceTimeout",
        "download.pieceTimeout bounds every piece",
    ),
    (
        "upload.server.requestRateLimit",
        "no request rate limit on the upload port",
    ),
    ("upload.server.requestBufferSize", "not needed"),
    (
        "scheduler.announceInterval",
        "this host is announced every 5 s",
    ),
    (
        "scheduler.scheduleTimeout",
        "scheduling follows the scheduler's retry limits, then the origin",
    ),
    (
        "scheduler.maxScheduleCount",
        "scheduling follows the scheduler's retry limits, then the origin",
    ),
    (
        "scheduler.enableBackToSource",
        "peers always go to the origin when scheduling fails",
    ),
    ("storage.server.tcpFastopen", "not used"),
    (
        "storage.writePieceTimeout",
        "writes are local and not timed",
    ),
    (
        "storage.writeBufferSize",
        "pieces are written as they arrive",
    ),
    (
        "storage.cacheCapacity",
        "no in-memory piece cache: the kernel's page cache keeps hot pieces",
    ),
    (
        "backend.requestHeader",
        "origin requests carry the client's headers",
    ),
    (
        "backend.putConcurrentChunkCount",
        "no uploads to object storage",
    ),
    ("backend.putChunkSize", "no uploads to object storage"),
    ("backend.putTimeout", "no uploads to object storage"),
    ("backend.enableHickoryDNS", "the system resolver is used"),
    ("gc.policy.persistentTaskTTL", "no persistent tasks"),
    (
        "gc.policy.persistentCacheTaskTTL",
        "no persistent cache tasks",
    ),
    ("gc.policy.pageCacheIdleTimeout", "no page cache of its own"),
    (
        "proxy.server.requestRateLimit",
        "no request rate limit on the proxy",
    ),
    (
        "proxy.disableBackToSource",
        "the proxy goes to the origin when no peer has the task",
    ),
    (
        "proxy.prefetch",
        "a range request fetches the pieces it covers (whole tasks above 64 MiB)",
    ),
    (
        "proxy.prefetchBandwidthLimit",
        "no prefetch through the proxy",
    ),
    ("proxy.readBufferSize", "storage.readBufferSize sets it"),
    ("security", "removed upstream"),
    (
        "health",
        "the health endpoint is /healthy on metrics.server",
    ),
    ("stats", "no stats server"),
    ("tracing", "no OpenTelemetry exporter"),
    (
        "network.enableIPv6",
        "the configured addresses decide the IP family",
    ),
];

/// The whole dfdaemon configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// This host's identity.
    pub host: Host,
    /// Download API (dfget) and download behaviour.
    pub download: Download,
    /// Upload (P2P) server.
    pub upload: Upload,
    /// Piece store location and behaviour.
    pub storage: Storage,
    /// Cache eviction.
    pub gc: Gc,
    /// Registry mirror / HTTP proxy.
    pub proxy: Proxy,
    /// Origin (back-to-source) HTTP client.
    pub backend: Backend,
    /// Prometheus metrics and health endpoint.
    pub metrics: Metrics,
    /// Schedulers (P2P).
    pub scheduler: Scheduler,
    /// Seed peer mode (P2P).
    pub seed_peer: SeedPeer,
    /// Manager (control plane).
    pub manager: Manager,
    /// Refresh of what the manager says.
    pub dynconfig: DynConfig,
    /// Lazy-loading runtime (Nydus image mounts).
    pub runtime: Runtime,
    /// containerd snapshotter.
    pub snapshotter: Snapshotter,
    /// Faults to inject, for tests. Only in builds with the `fault-injection`
    /// feature (hack/test.sh); other builds reject the key.
    #[cfg(feature = "fault-injection")]
    pub fault_injection: FaultInjection,
}

/// Faults a test can make this peer commit (`fault-injection` feature only).
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultInjection {
    /// Flip a byte in every piece body this peer uploads over Vortex (the
    /// header keeps the right CRC32), so children must reject its pieces.
    pub corrupt_uploaded_pieces: bool,
    /// Every fetch of a piece from a parent fails before a byte moves (the
    /// transport's fault, as a parent that cannot be reached).
    pub fail_parent_fetches: bool,
    /// The first this many fetches from the origin fail (retryable, as a
    /// connection reset).
    pub fail_origin_fetches: u32,
    /// The snapshotter aborts the process at this point of an operation
    /// (`prepare`, `commit`, `remove`), as a `kill -9` at the worst moment.
    pub abort_snapshotter_at: Option<::snapshotter::AbortAt>,
}

impl Config {
    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates YAML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::parse_with_warnings(text, path).map(|(c, _)| c)
    }

    /// Loads and validates a config file; also a warning per upstream key ignored
    /// ([`IGNORED`]).
    pub fn load_with_warnings(path: &Path) -> Result<(Config, Vec<String>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_with_warnings(&text, path)
    }

    /// [`Config::parse`], with a warning per upstream key ignored.
    pub fn parse_with_warnings(
        text: &str,
        path: &Path,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let (config, warnings): (Config, _) =
            common::upstream_keys::parse(text, IGNORED).map_err(|message| ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok((config, warnings))
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// Every problem found, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        self.download.validate(&mut p);
        self.upload.validate(&mut p);
        self.storage.validate(&mut p);
        self.gc.validate(&mut p);
        self.proxy.validate(&mut p);
        self.backend.validate(&mut p);
        self.metrics.validate(&mut p);
        self.runtime.validate(&mut p);
        self.snapshotter.validate(&mut p);
        check_tls(&mut p, "scheduler", &self.scheduler.tls_files());
        check_tls(&mut p, "manager", &self.manager.tls_files());
        for (i, a) in self.scheduler.addrs.iter().enumerate() {
            if !is_host_port(a, true) {
                p.push(format!("scheduler.addrs[{i}]: {a:?} is not host:port"));
            }
        }
        if !self.manager.addr.is_empty() && !common::manager_client::valid_addr(&self.manager.addr)
        {
            p.push(format!(
                "manager.addr: {:?} is not http://host:port, https://host:port or host:port",
                self.manager.addr
            ));
        }
        if self.dynconfig.refresh_interval.is_zero() {
            p.push("dynconfig.refreshInterval: must be greater than 0".into());
        }
        if self.seed_peer.cluster_id == 0 {
            p.push("seedPeer.clusterID: must be at least 1".into());
        }
        if self.seed_peer.keepalive_interval.is_zero()
            || self.seed_peer.keepalive_interval >= std::time::Duration::from_secs(30)
        {
            p.push(
                "seedPeer.keepaliveInterval: must be more than 0 and under 30s (the manager counts a stream silent for 30s as gone)"
                    .into(),
            );
        }
        p
    }

    /// The documented default configuration as YAML.
    pub fn default_yaml() -> String {
        DEFAULT_CONFIG_YAML.to_string()
    }
}

/// The full default configuration with a comment on every key. A unit test
/// checks that it parses to exactly `Config::default()`.
pub const DEFAULT_CONFIG_YAML: &str = include_str!("default.yaml");

/// `host[:port]` (port required when `need_port`); IPv6 hosts in brackets.
pub(crate) fn is_host_port(s: &str, need_port: bool) -> bool {
    match url::Url::parse(&format!("http://{s}")) {
        Ok(u) => {
            u.host_str().is_some_and(|h| !h.is_empty())
                && u.path() == "/"
                && u.query().is_none()
                && u.username().is_empty()
                && (!need_port || u.port().is_some() || s.ends_with(":80"))
                && !s.contains('/')
        }
        Err(_) => false,
    }
}

/// Checks a section's mutual-TLS files (all three or none, readable, PEM, key matching).
pub(crate) fn check_tls(p: &mut Vec<String>, section: &str, files: &common::tls::TlsFiles) {
    if let Err(e) = files.load(section) {
        p.push(e);
    }
}

pub(crate) fn check_port(p: &mut Vec<String>, key: &str, port: u16) {
    if port == 0 {
        p.push(format!("{key}: port must be 1-65535"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_default_equals_builtin_default() {
        let parsed = Config::parse(DEFAULT_CONFIG_YAML, Path::new("default.yaml")).unwrap();
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            serde_json::to_value(Config::default()).unwrap()
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse(
            "proxy:\n  registryMirror:\n    adr: x\n",
            Path::new("c.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("proxy.registryMirror"), "{err}");
        assert!(err.contains("adr"), "{err}");
    }

    #[test]
    fn invalid_values_are_all_reported() {
        let err = Config::parse(
            "gc:\n  policy:\n    distHighThresholdPercent: 120\nproxy:\n  rules:\n    - regex: '('\n",
            Path::new("c.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("gc.policy.distHighThresholdPercent"), "{err}");
        assert!(err.contains("proxy.rules[0].regex"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Config::parse("proxy:\n  server:\n    port: 99999\n", Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("proxy.server.port"), "{err}");
    }

    #[test]
    fn addresses_are_checked() {
        let err = Config::parse(
            "scheduler:\n  addrs: ['sched:8002', 'nope', 'a b:1']\nmanager:\n  addr: 'x/y:1'\nproxy:\n  rules:\n    - regex: x\n      redirect: 'h/p'\n",
            Path::new("c.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("scheduler.addrs[0]"), "{err}");
        assert!(err.contains("scheduler.addrs[1]"), "{err}");
        assert!(err.contains("scheduler.addrs[2]"), "{err}");
        assert!(err.contains("manager.addr"), "{err}");
        assert!(err.contains("proxy.rules[0].redirect"), "{err}");
        assert!(is_host_port("[::1]:8002", true));
        assert!(is_host_port("mirror.local", false));
    }

    #[test]
    fn durations_and_sizes_parse() {
        let c = Config::parse(
            "gc:\n  interval: 30s\n  policy:\n    taskTTL: 2h\n    distThreshold: 10GiB\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(c.gc.interval, std::time::Duration::from_secs(30));
        assert_eq!(c.gc.policy.task_ttl, std::time::Duration::from_secs(7200));
        assert_eq!(c.gc.policy.dist_threshold.as_u64(), 10 * 1024 * 1024 * 1024);
    }
}
