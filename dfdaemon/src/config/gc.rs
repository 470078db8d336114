use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Eviction policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct GcPolicy {
    /// Tasks not accessed for this long are removed. Default: 720h (30 days).
    #[serde(rename = "taskTTL", with = "humantime_serde")]
    pub task_ttl: Duration,
    /// When usage reaches this percentage, evict least recently used tasks.
    /// Usage is of `distThreshold` when set, else of the store's filesystem. Default: 80.
    #[serde(alias = "diskHighThresholdPercent")]
    pub dist_high_threshold_percent: u8,
    /// Eviction stops at this percentage. Default: 60.
    #[serde(alias = "diskLowThresholdPercent")]
    pub dist_low_threshold_percent: u8,
    /// Logical capacity of the store (e.g. `10GiB`). When set, the thresholds are
    /// percentages of it and only the store's own files count. Default: 0 (use the
    /// filesystem's size and usage).
    #[serde(alias = "diskThreshold")]
    pub dist_threshold: bytesize::ByteSize,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            task_ttl: Duration::from_secs(720 * 3600),
            dist_high_threshold_percent: 80,
            dist_low_threshold_percent: 60,
            dist_threshold: bytesize::ByteSize(0),
        }
    }
}

/// Garbage collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Gc {
    /// How often GC runs. Default: 900s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Eviction policy.
    pub policy: GcPolicy,
}

impl Default for Gc {
    fn default() -> Self {
        Gc {
            interval: Duration::from_secs(900),
            policy: GcPolicy::default(),
        }
    }
}

impl Gc {
    pub(crate) fn validate(&self, p: &mut Vec<String>) {
        if self.interval.is_zero() {
            p.push("gc.interval: must be greater than 0".into());
        }
        let hi = self.policy.dist_high_threshold_percent;
        let lo = self.policy.dist_low_threshold_percent;
        if !(1..=100).contains(&hi) {
            p.push("gc.policy.distHighThresholdPercent: must be 1-100".into());
        }
        if lo > 100 {
            p.push("gc.policy.distLowThresholdPercent: must be 0-100".into());
        }
        if lo >= hi {
            p.push(
                "gc.policy.distLowThresholdPercent: must be lower than distHighThresholdPercent"
                    .into(),
            );
        }
        if self.policy.task_ttl.is_zero() {
            p.push("gc.policy.taskTTL: must be greater than 0".into());
        }
    }
}
