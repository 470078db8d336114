//! The scheduler's config file (`scheduler.yaml`) with Dragonfly's keys: `server`
//! (`listenIP`, `port`, `advertiseIP`, `advertisePort`, `host`), `scheduler` (the policy),
//! `host` (`idc`, `location`), `manager` (`addr`, `schedulerClusterID`, `keepAlive.interval`),
//! `dynConfig.refreshInterval` and `metrics`. Upstream keys this scheduler has no use for are
//! accepted with a warning each ([`IGNORED`]); any other unknown key is an error naming it.

use crate::config::SchedulerConfig;
use common::tls::TlsFiles;
use common::upstream_keys::Ignored;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::Duration;

/// Upstream `scheduler.yaml` keys that are accepted and ignored, with the reason.
pub const IGNORED: &[Ignored] = &[
    ("console", "logs always go to stderr"),
    ("verbose", "use --log-level"),
    ("pprofPort", "no pprof endpoint"),
    ("tracing", "no OpenTelemetry exporter"),
    ("server.logDir", "logs go to stderr (use --log-level)"),
    ("server.logLevel", "use --log-level"),
    ("server.logMaxSize", "logs go to stderr"),
    ("server.logMaxAge", "logs go to stderr"),
    ("server.logMaxBackups", "logs go to stderr"),
    (
        "server.pluginDir",
        "no evaluator plugins: the load-aware evaluator is built in",
    ),
    ("server.workHome", "the scheduler keeps no files"),
    ("server.cacheDir", "the scheduler keeps no files"),
    ("server.dataDir", "the scheduler keeps no files"),
    ("server.requestRateLimit", "no gRPC request rate limit"),
    (
        "scheduler.algorithm",
        "the load-aware evaluator is always used",
    ),
    (
        "database",
        "hosts, tasks and peers are kept in memory; no Redis is needed",
    ),
    (
        "job",
        "preheat runs through the manager's gRPC dispatch, not a Redis job queue",
    ),
    (
        "seedPeer.enable",
        "seed peers are always used when they announce themselves",
    ),
    (
        "seedPeer.taskDownloadTimeout",
        "seed peer downloads follow the peers' timeouts",
    ),
    ("storage", "no download records are written"),
    (
        "network.enableIPv6",
        "the listen and advertise addresses decide the IP family",
    ),
    ("resource", "removed upstream in v2.2"),
    ("security", "removed upstream in v2.2"),
];

/// The gRPC listener and how others reach it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Server {
    /// Listen address. Default: 0.0.0.0.
    #[serde(alias = "listenIP")]
    pub ip: IpAddr,
    /// gRPC port. Default: 8002.
    pub port: u16,
    /// The address given to the manager (what peers dial). Default: the listen address when it
    /// is a specific one, else this host's first non-loopback address.
    #[serde(rename = "advertiseIP")]
    pub advertise_ip: Option<IpAddr>,
    /// The port given to the manager. Default (0): `port`.
    pub advertise_port: u16,
    /// The hostname given to the manager. Default: the system hostname.
    pub host: Option<String>,
    /// Mutual TLS on the gRPC port (`caCert`, `cert`, `key`): callers must show a certificate
    /// issued by `caCert`. Default: none (plain gRPC).
    pub tls: Option<TlsFiles>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            ip: IpAddr::from([0, 0, 0, 0]),
            port: 8002,
            advertise_ip: None,
            advertise_port: 0,
            host: None,
            tls: None,
        }
    }
}

/// This scheduler's place, for the manager's searcher.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HostSection {
    /// Data centre.
    pub idc: String,
    /// Location, `country|province|city|...`.
    pub location: String,
}

/// The manager this scheduler registers with (none: it runs on its own config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ManagerSection {
    /// `host:port` of the manager's gRPC. Default: none.
    pub addr: Option<String>,
    /// The scheduler cluster this scheduler belongs to. Default: 1.
    #[serde(rename = "schedulerClusterID")]
    pub scheduler_cluster_id: u64,
    /// The KeepAlive stream.
    pub keep_alive: KeepAlive,
    /// Mutual TLS to the manager (`caCert`, `cert`, `key`). Default: none.
    pub tls: Option<TlsFiles>,
}

impl Default for ManagerSection {
    fn default() -> Self {
        ManagerSection {
            addr: None,
            scheduler_cluster_id: 1,
            keep_alive: KeepAlive::default(),
            tls: None,
        }
    }
}

/// `manager.keepAlive`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct KeepAlive {
    /// One KeepAlive message this often. Default: 5s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive {
            interval: Duration::from_secs(5),
        }
    }
}

/// `dynConfig`: how often the cluster's config is read from the manager.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DynConfig {
    /// Default: 1m.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

impl Default for DynConfig {
    fn default() -> Self {
        DynConfig {
            refresh_interval: Duration::from_secs(60),
        }
    }
}

/// `metrics`: Prometheus metrics on their own listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Metrics {
    /// Default: false.
    pub enable: bool,
    /// Default: `:8000`.
    pub addr: String,
    /// Per-host metrics (accepted; the host counts are always exported). Default: false.
    pub enable_host: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enable: false,
            addr: ":8000".into(),
            enable_host: false,
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    /// The gRPC listener.
    pub server: Server,
    /// Scheduling policy.
    pub scheduler: SchedulerConfig,
    /// This scheduler's place.
    pub host: HostSection,
    /// The manager to register with.
    pub manager: ManagerSection,
    /// Refresh of the cluster config.
    #[serde(alias = "dynconfig")]
    pub dyn_config: DynConfig,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// How the scheduler reaches seed peers' upload services (preheat, jobs).
    pub seed_peer: PeerSection,
    /// How the scheduler reaches other peers' upload services (preheat, jobs).
    pub peer: PeerSection,
}

/// `seedPeer` and `peer`: the client side of calls to peers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerSection {
    /// Mutual TLS to the peers' upload port (`caCert`, `cert`, `key`). Default: none.
    pub tls: Option<TlsFiles>,
}

fn check_tls(p: &mut Vec<String>, section: &str, files: &Option<TlsFiles>) {
    if let Some(f) = files {
        if let Err(e) = f.load(section) {
            p.push(e);
        }
    }
}

impl FileConfig {
    /// Loads a section's mutual-TLS files (checked by [`FileConfig::validate`]).
    pub fn tls(
        files: &Option<TlsFiles>,
        section: &str,
    ) -> Result<Option<std::sync::Arc<common::tls::Tls>>, String> {
        match files {
            Some(f) => f.load(section),
            None => Ok(None),
        }
    }
}

/// `:8000` or `ip:port`.
pub fn listen_addr(addr: &str) -> Option<std::net::SocketAddr> {
    if let Some(port) = addr.strip_prefix(':') {
        return Some(std::net::SocketAddr::new(
            IpAddr::from([0, 0, 0, 0]),
            port.parse().ok()?,
        ));
    }
    addr.parse().ok()
}

impl FileConfig {
    /// Parses YAML text: the config and a warning per ignored upstream key; errors name the key.
    pub fn parse(text: &str) -> Result<(FileConfig, Vec<String>), String> {
        let (cfg, warnings): (FileConfig, _) = common::upstream_keys::parse(text, IGNORED)?;
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok((cfg, warnings))
        } else {
            Err(format!("invalid:\n  {}", problems.join("\n  ")))
        }
    }

    /// Every problem, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = self.scheduler.validate("scheduler");
        check_tls(&mut p, "server.tls", &self.server.tls);
        check_tls(&mut p, "manager.tls", &self.manager.tls);
        check_tls(&mut p, "seedPeer.tls", &self.seed_peer.tls);
        check_tls(&mut p, "peer.tls", &self.peer.tls);
        if self.server.port == 0 {
            p.push("server.port: port must be 1-65535".into());
        }
        if let Some(a) = &self.manager.addr {
            if !common::manager_client::valid_addr(a) {
                p.push(format!("manager.addr: {a:?} is not host:port"));
            }
            if self.manager.scheduler_cluster_id == 0 {
                p.push("manager.schedulerClusterID: must be at least 1".into());
            }
        }
        if self.manager.keep_alive.interval.is_zero()
            || self.manager.keep_alive.interval >= std::time::Duration::from_secs(30)
        {
            p.push(
                "manager.keepAlive.interval: must be more than 0 and under 30s (the manager counts a stream silent for 30s as gone)"
                    .into(),
            );
        }
        if self.dyn_config.refresh_interval.is_zero() {
            p.push("dynConfig.refreshInterval: must be greater than 0".into());
        }
        if self.metrics.enable && listen_addr(&self.metrics.addr).is_none() {
            p.push(format!(
                "metrics.addr: {:?} is not an address like :8000",
                self.metrics.addr
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_scheduler_yaml_parses_with_a_warning_per_ignored_key() {
        let text = "server:\n  advertiseIP: 10.0.0.5\n  advertisePort: 8002\n  listenIP: 0.0.0.0\n  port: 8002\n  host: sched-0\n  logDir: /var/log/dragonfly/scheduler\n\
                    scheduler:\n  algorithm: default\n  backToSourceCount: 3\n  retryBackToSourceLimit: 2\n  retryLimit: 10\n  retryInterval: 1s\n  gc:\n    peerGCInterval: 10s\n    peerTTL: 24h\n    taskGCInterval: 30m\n    hostGCInterval: 5m\n    hostTTL: 1h\n\
                    dynconfig:\n  refreshInterval: 10s\nhost:\n  idc: idc-a\n  location: cn|zj\n\
                    manager:\n  addr: dragonfly-manager:65003\n  schedulerClusterID: 2\n  keepAlive:\n    interval: 5s\n\
                    seedPeer:\n  enable: true\ndatabase:\n  redis:\n    addrs: [redis:6379]\n    password: x\n\
                    job:\n  enable: true\n  globalWorkerNum: 500\nmetrics:\n  enable: true\n  addr: ':8000'\n  enableHost: false\n\
                    network:\n  enableIPv6: false\nconsole: true\npprofPort: -1\n";
        let (c, w) = FileConfig::parse(text).unwrap();
        assert_eq!(c.server.advertise_ip, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(c.server.host.as_deref(), Some("sched-0"));
        assert_eq!(c.manager.addr.as_deref(), Some("dragonfly-manager:65003"));
        assert_eq!(c.manager.scheduler_cluster_id, 2);
        assert_eq!(c.dyn_config.refresh_interval, Duration::from_secs(10));
        assert_eq!(c.scheduler.back_to_source_count, 3);
        assert_eq!(c.host.location, "cn|zj");
        let keys: Vec<&str> = w.iter().map(|w| w.split('`').nth(1).unwrap()).collect();
        assert_eq!(
            keys,
            [
                "console",
                "pprofPort",
                "server.logDir",
                "scheduler.algorithm",
                "database",
                "job",
                "seedPeer.enable",
                "network.enableIPv6"
            ]
        );
        let e = FileConfig::parse("server:\n  advertiseIp: 10.0.0.5\n").unwrap_err();
        assert!(e.contains("advertiseIp"), "{e}");
        let e = FileConfig::parse("manager:\n  addr: nowhere\n").unwrap_err();
        assert!(e.contains("manager.addr"), "{e}");
    }
}
