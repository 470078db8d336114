//! Scheduling policy: the `scheduler:` section of the scheduler's YAML config, with Dragonfly's
//! key names (`backToSourceCount`, `retryLimit`, `gc.peerTTL`, ...) and defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Pieces a peer fetches at once when it does not say (Dragonfly's fallback).
pub const DEFAULT_CONCURRENT_PIECE_COUNT: u32 = 8;

/// Scheduling policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SchedulerConfig {
    /// Most peers of one task that may hold an origin slot at once: told to go to the origin,
    /// doing so, or done from it (a triggered seed peer counts). A slot is given back when its
    /// peer fails or leaves. Default: 200.
    pub back_to_source_count: u32,
    /// Scheduling rounds without a parent after which a peer is sent to the origin, when the
    /// task still has an origin slot. Default: 4.
    pub retry_back_to_source_limit: u32,
    /// Scheduling rounds without a parent after which scheduling fails. Default: 5.
    pub retry_limit: u32,
    /// Wait between two scheduling rounds (jittered by +-25%). Default: 500ms.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// Parents returned to a peer at most (Dragonfly's cluster `candidate_parent_limit`,
    /// 1-20). Default: 4.
    pub candidate_parent_limit: u32,
    /// Peers of the task sampled at random as parent candidates (Dragonfly's cluster
    /// `filter_parent_limit`, 1-1000). Default: 15.
    pub filter_parent_limit: u32,
    /// Children a normal host serves at once unless it announces its own limit. Default: 200.
    pub peer_concurrent_upload_limit: u32,
    /// Children a seed peer host serves at once unless it announces its own limit.
    /// Default: 2000.
    pub seed_peer_concurrent_upload_limit: u32,
    /// Piece download costs kept per peer for bad-parent detection; once this many are kept
    /// the three-sigma rule replaces the 20x-mean rule. Default: 2000.
    pub piece_costs_window: u32,
    /// After a seed peer of a task fails, no seed peer is triggered for that task for this
    /// long (peers go to the origin themselves). Default: 30m.
    #[serde(with = "humantime_serde")]
    pub seed_peer_failed_timeout: Duration,
    /// Delay before handling a registration, against thundering herds.
    pub register_delay: RegisterDelayConfig,
    /// Garbage collection.
    pub gc: GcConfig,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            back_to_source_count: 200,
            retry_back_to_source_limit: 4,
            retry_limit: 5,
            retry_interval: Duration::from_millis(500),
            candidate_parent_limit: 4,
            filter_parent_limit: 15,
            peer_concurrent_upload_limit: 200,
            seed_peer_concurrent_upload_limit: 2000,
            piece_costs_window: 2000,
            seed_peer_failed_timeout: Duration::from_secs(30 * 60),
            register_delay: RegisterDelayConfig::default(),
            gc: GcConfig::default(),
        }
    }
}

/// A scheduler cluster's settings from the manager (Dragonfly's cluster `config`,
/// `client_config` and seed peer cluster `config`); `None`: keep the file's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `config.candidate_parent_limit` (1-20).
    pub candidate_parent_limit: Option<u32>,
    /// `config.filter_parent_limit` (at least the candidate limit, at most 1000).
    pub filter_parent_limit: Option<u32>,
    /// `client_config.load_limit`: children a peer serves at once.
    pub peer_upload_limit: Option<u32>,
    /// The seed peer cluster's `config.load_limit`: children a seed peer serves at once.
    pub seed_peer_upload_limit: Option<u32>,
}

impl SchedulerConfig {
    /// This config with `c` applied where its values are valid; the keys that changed.
    pub fn apply(&mut self, c: &ClusterConfig) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut set = |field: &mut u32, v: Option<u32>, ok: bool, name: &'static str| {
            if let Some(v) = v.filter(|_| ok) {
                if *field != v {
                    *field = v;
                    changed.push(name);
                }
            }
        };
        let candidate = c
            .candidate_parent_limit
            .unwrap_or(self.candidate_parent_limit);
        let filter = c.filter_parent_limit.unwrap_or(self.filter_parent_limit);
        let limits_ok = (1..=20).contains(&candidate) && (candidate..=1000).contains(&filter);
        set(
            &mut self.candidate_parent_limit,
            c.candidate_parent_limit,
            limits_ok,
            "candidate_parent_limit",
        );
        set(
            &mut self.filter_parent_limit,
            c.filter_parent_limit,
            limits_ok,
            "filter_parent_limit",
        );
        set(
            &mut self.peer_concurrent_upload_limit,
            c.peer_upload_limit,
            c.peer_upload_limit.is_some_and(|v| v > 0),
            "peer load_limit",
        );
        set(
            &mut self.seed_peer_concurrent_upload_limit,
            c.seed_peer_upload_limit,
            c.seed_peer_upload_limit.is_some_and(|v| v > 0),
            "seed peer load_limit",
        );
        changed
    }
}

/// Exponential registration delay with jitter; seed peers are never delayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RegisterDelayConfig {
    /// Nominal delay of a host's only registration in flight; it doubles with each further
    /// concurrent registration of the same host. 0 disables the delay. Default: 30ms.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// Cap of the nominal delay. Default: 1s.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for RegisterDelayConfig {
    fn default() -> Self {
        RegisterDelayConfig {
            base: Duration::from_millis(30),
            max: Duration::from_millis(1000),
        }
    }
}

/// Garbage collection of hosts, tasks and peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct GcConfig {
    /// A running peer with no finished piece for this long is reclaimed. Default: 30m.
    #[serde(with = "humantime_serde")]
    pub piece_download_timeout: Duration,
    /// How often the shell collects peers. Default: 10s.
    #[serde(rename = "peerGCInterval", with = "humantime_serde")]
    pub peer_gc_interval: Duration,
    /// A peer with no activity for this long is reclaimed. Default: 24h.
    #[serde(rename = "peerTTL", with = "humantime_serde")]
    pub peer_ttl: Duration,
    /// A task with no peer for this long is reclaimed (also how often the shell collects
    /// tasks). Default: 30m.
    #[serde(rename = "taskGCInterval", with = "humantime_serde")]
    pub task_gc_interval: Duration,
    /// How often the shell collects hosts. Default: 5m.
    #[serde(rename = "hostGCInterval", with = "humantime_serde")]
    pub host_gc_interval: Duration,
    /// A host not announced for this long is reclaimed with its peers. Default: 1h.
    #[serde(rename = "hostTTL", with = "humantime_serde")]
    pub host_ttl: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            piece_download_timeout: Duration::from_secs(30 * 60),
            peer_gc_interval: Duration::from_secs(10),
            peer_ttl: Duration::from_secs(24 * 3600),
            task_gc_interval: Duration::from_secs(30 * 60),
            host_gc_interval: Duration::from_secs(5 * 60),
            host_ttl: Duration::from_secs(3600),
        }
    }
}

impl SchedulerConfig {
    /// Every problem in the section, each naming its key under `prefix` (e.g. `scheduler`).
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        let key = |k: &str| format!("{prefix}.{k}");
        if self.retry_limit == 0 {
            p.push(format!("{}: must be at least 1", key("retryLimit")));
        }
        if self.retry_interval.is_zero() {
            p.push(format!("{}: must be greater than 0", key("retryInterval")));
        }
        if !(1..=20).contains(&self.candidate_parent_limit) {
            p.push(format!("{}: must be 1-20", key("candidateParentLimit")));
        }
        if !(1..=1000).contains(&self.filter_parent_limit) {
            p.push(format!("{}: must be 1-1000", key("filterParentLimit")));
        }
        if self.candidate_parent_limit > self.filter_parent_limit {
            p.push(format!(
                "{}: must not exceed filterParentLimit",
                key("candidateParentLimit")
            ));
        }
        if self.peer_concurrent_upload_limit == 0 {
            p.push(format!(
                "{}: must be at least 1",
                key("peerConcurrentUploadLimit")
            ));
        }
        if self.seed_peer_concurrent_upload_limit == 0 {
            p.push(format!(
                "{}: must be at least 1",
                key("seedPeerConcurrentUploadLimit")
            ));
        }
        if self.piece_costs_window < 2 {
            p.push(format!("{}: must be at least 2", key("pieceCostsWindow")));
        }
        if self.register_delay.base > self.register_delay.max {
            p.push(format!(
                "{}: must not exceed registerDelay.max",
                key("registerDelay.base")
            ));
        }
        let gc = &self.gc;
        for (name, d) in [
            ("gc.pieceDownloadTimeout", gc.piece_download_timeout),
            ("gc.peerGCInterval", gc.peer_gc_interval),
            ("gc.peerTTL", gc.peer_ttl),
            ("gc.taskGCInterval", gc.task_gc_interval),
            ("gc.hostGCInterval", gc.host_gc_interval),
            ("gc.hostTTL", gc.host_ttl),
        ] {
            if d.is_zero() {
                p.push(format!("{}: must be greater than 0", key(name)));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_dragonflys() {
        let c = SchedulerConfig::default();
        assert_eq!(c.back_to_source_count, 200);
        assert_eq!(c.retry_back_to_source_limit, 4);
        assert_eq!(c.retry_limit, 5);
        assert_eq!(c.retry_interval, Duration::from_millis(500));
        assert_eq!(c.candidate_parent_limit, 4);
        assert_eq!(c.filter_parent_limit, 15);
        assert_eq!(c.gc.peer_ttl, Duration::from_secs(86400));
        assert_eq!(c.gc.host_ttl, Duration::from_secs(3600));
        assert_eq!(c.gc.piece_download_timeout, Duration::from_secs(1800));
        assert_eq!(c.gc.task_gc_interval, Duration::from_secs(1800));
        assert!(c.validate("scheduler").is_empty());
    }

    #[test]
    fn yaml_uses_dragonfly_keys() {
        let c: SchedulerConfig = serde_yaml_ng::from_str(
            "backToSourceCount: 3\nretryInterval: 1s\nretryLimit: 15\n\
             gc:\n  peerTTL: 2h\n  hostTTL: 10m\n  taskGCInterval: 1m\n",
        )
        .unwrap();
        assert_eq!(c.back_to_source_count, 3);
        assert_eq!(c.retry_interval, Duration::from_secs(1));
        assert_eq!(c.retry_limit, 15);
        assert_eq!(c.gc.peer_ttl, Duration::from_secs(7200));
        assert_eq!(c.gc.host_ttl, Duration::from_secs(600));
        assert_eq!(c.gc.task_gc_interval, Duration::from_secs(60));
        assert_eq!(c.gc.piece_download_timeout, Duration::from_secs(1800));
    }

    #[test]
    fn a_clusters_config_applies_where_valid() {
        let mut c = SchedulerConfig::default();
        let changed = c.apply(&ClusterConfig {
            candidate_parent_limit: Some(3),
            filter_parent_limit: Some(40),
            peer_upload_limit: Some(50),
            seed_peer_upload_limit: None,
        });
        assert_eq!(
            changed,
            [
                "candidate_parent_limit",
                "filter_parent_limit",
                "peer load_limit"
            ]
        );
        assert_eq!((c.candidate_parent_limit, c.filter_parent_limit), (3, 40));
        assert_eq!(c.peer_concurrent_upload_limit, 50);
        assert_eq!(c.seed_peer_concurrent_upload_limit, 2000);
        // Out of range (candidate above filter): nothing changes.
        let before = c.clone();
        assert!(c
            .apply(&ClusterConfig {
                candidate_parent_limit: Some(20),
                filter_parent_limit: Some(10),
                ..Default::default()
            })
            .is_empty());
        assert_eq!(c, before);
        assert!(c.validate("scheduler").is_empty());
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = serde_yaml_ng::from_str::<SchedulerConfig>("retryLimitt: 3\n").unwrap_err();
        assert!(err.to_string().contains("retryLimitt"), "{err}");
    }

    #[test]
    fn validate_reports_every_problem_with_its_key() {
        let c = SchedulerConfig {
            retry_limit: 0,
            candidate_parent_limit: 30,
            filter_parent_limit: 0,
            gc: GcConfig {
                host_ttl: Duration::ZERO,
                ..GcConfig::default()
            },
            ..SchedulerConfig::default()
        };
        let p = c.validate("scheduler");
        assert!(p.contains(&"scheduler.retryLimit: must be at least 1".to_string()));
        assert!(p.contains(&"scheduler.candidateParentLimit: must be 1-20".to_string()));
        assert!(p.contains(&"scheduler.filterParentLimit: must be 1-1000".to_string()));
        assert!(p.contains(&"scheduler.gc.hostTTL: must be greater than 0".to_string()));
        assert_eq!(p.len(), 5, "{p:?}");
    }
}
