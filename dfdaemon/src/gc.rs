//! Cache eviction: by idle time (`gc.policy.taskTTL`) and by disk usage
//! (high/low watermarks of `distThreshold` or of the store's filesystem),
//! least recently used first, never a task that is being read or written.

use crate::config;
use crate::metrics::{Metrics, ReasonLabels};
use crate::storage::{now_millis, Store};
use std::path::Path;
use std::sync::Arc;

/// What one GC pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub ttl_evicted: Vec<String>,
    pub disk_evicted: Vec<String>,
    pub freed_bytes: u64,
}

/// Disk usage the watermarks are compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub used: u64,
    pub capacity: u64,
}

/// Filesystem usage of the filesystem holding `path`.
pub fn filesystem_usage(path: &Path) -> std::io::Result<Usage> {
    let s = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    let frsize = s.f_frsize;
    let capacity = s.f_blocks.saturating_mul(frsize);
    let avail = s.f_bavail.saturating_mul(frsize);
    let free = s.f_bfree.saturating_mul(frsize);
    // Like df: used = total - free; capacity seen by users = used + avail.
    let used = capacity.saturating_sub(free);
    Ok(Usage {
        used,
        capacity: used + avail,
    })
}

/// The garbage collector.
pub struct Gc {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    config: config::Gc,
}

impl Gc {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>, config: config::Gc) -> Gc {
        Gc {
            store,
            metrics,
            config,
        }
    }

    fn usage(&self) -> std::io::Result<Usage> {
        let threshold = self.config.policy.dist_threshold.as_u64();
        if threshold > 0 {
            Ok(Usage {
                used: self.store.disk_usage(),
                capacity: threshold,
            })
        } else {
            filesystem_usage(self.store.root())
        }
    }

    /// One pass at the current time.
    pub fn run_once(&self) -> GcReport {
        self.run_at(now_millis())
    }

    /// One pass as of `now` (Unix milliseconds).
    pub fn run_at(&self, now: u64) -> GcReport {
        self.metrics.gc_runs.inc();
        let mut report = GcReport::default();
        let ttl = self.config.policy.task_ttl.as_millis() as u64;
        for t in self.store.tasks() {
            let m = t.meta();
            if now.saturating_sub(m.accessed_at) > ttl && !t.in_use() {
                if let Some(bytes) = self.evict(&t.id, "ttl") {
                    report.freed_bytes += bytes;
                    report.ttl_evicted.push(t.id.clone());
                }
            }
        }
        let usage = match self.usage() {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "gc: cannot read disk usage");
                return report;
            }
        };
        let high =
            usage.capacity as u128 * self.config.policy.dist_high_threshold_percent as u128 / 100;
        let low =
            usage.capacity as u128 * self.config.policy.dist_low_threshold_percent as u128 / 100;
        let mut used = usage.used as u128;
        if used < high {
            return report;
        }
        tracing::info!(
            used = usage.used,
            capacity = usage.capacity,
            "gc: disk usage above high watermark"
        );
        let mut candidates: Vec<_> = self
            .store
            .tasks()
            .into_iter()
            .map(|t| (t.meta().accessed_at, t))
            .collect();
        candidates.sort_by_key(|(at, _)| *at);
        for (_, t) in candidates {
            if used <= low {
                break;
            }
            if t.in_use() {
                continue;
            }
            let on_disk = {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(t.path())
                    .map(|m| m.blocks() * 512)
                    .unwrap_or(0)
            };
            if self.evict(&t.id, "disk").is_some() {
                used = used.saturating_sub(on_disk as u128);
                report.freed_bytes += on_disk;
                report.disk_evicted.push(t.id.clone());
            }
        }
        report
    }

    fn evict(&self, id: &str, reason: &'static str) -> Option<u64> {
        match self.store.remove(id) {
            Ok(Some(bytes)) => {
                tracing::info!(task_id = id, reason, bytes, "gc: evicted task");
                self.metrics
                    .gc_evicted_tasks
                    .get_or_create(&ReasonLabels { reason })
                    .inc();
                self.metrics.gc_evicted_bytes.inc_by(bytes);
                Some(bytes)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(task_id = id, error = %e, "gc: cannot evict task");
                None
            }
        }
    }

    /// Runs forever, one pass every `gc.interval` and one whenever a write finds the disk full.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.store.disk_full() => {}
            }
            let r = self.run_once();
            if !r.ttl_evicted.is_empty() || !r.disk_evicted.is_empty() {
                tracing::info!(
                    ttl = r.ttl_evicted.len(),
                    disk = r.disk_evicted.len(),
                    freed = r.freed_bytes,
                    "gc pass"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{PieceMeta, TaskMeta, TaskStatus};
    use std::collections::BTreeMap;

    fn add(store: &Store, id: &str, len: u64, accessed_at: u64) {
        let t = store
            .create(TaskMeta {
                id: id.into(),
                url: "http://o/x".into(),
                content_length: len,
                piece_length: len.max(1),
                status: TaskStatus::Running,
                digest: None,
                content_type: None,
                pieces: BTreeMap::new(),
                created_at: accessed_at,
                accessed_at,
            })
            .unwrap();
        let data = vec![1u8; len as usize];
        t.write_at(0, &data).unwrap();
        store.commit_piece(
            &t,
            0,
            PieceMeta {
                length: len,
                crc32: crc32fast::hash(&data),
            },
        );
        store.set_accessed_at(&t, accessed_at);
    }

    fn gc(store: Arc<Store>, ttl_secs: u64, threshold: u64) -> Gc {
        let mut cfg = config::Gc::default();
        cfg.policy.task_ttl = std::time::Duration::from_secs(ttl_secs);
        cfg.policy.dist_threshold = bytesize::ByteSize(threshold);
        cfg.policy.dist_high_threshold_percent = 80;
        cfg.policy.dist_low_threshold_percent = 50;
        Gc::new(store, Arc::new(Metrics::new()), cfg)
    }

    #[test]
    fn ttl_evicts_idle_tasks_but_not_tasks_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), true).unwrap();
        let store = Arc::new(store);
        let now = 1_000_000_000;
        add(&store, "old1", 4096, now - 7_200_000);
        add(&store, "old2", 4096, now - 7_200_000);
        add(&store, "new1", 4096, now - 10_000);
        let busy = store.get("old2").unwrap().use_task();
        // A 1 TiB budget keeps the disk watermarks out of it, however full
        // the host's filesystem is.
        let r = gc(store.clone(), 3600, 1 << 40).run_at(now);
        assert_eq!(r.ttl_evicted, vec!["old1".to_string()]);
        assert!(r.disk_evicted.is_empty());
        assert!(store.get("old1").is_none());
        assert!(!store.content_path("old1").exists());
        assert!(store.get("old2").is_some());
        assert!(store.get("new1").is_some());
        drop(busy);
        let r = gc(store.clone(), 3600, 1 << 40).run_at(now);
        assert_eq!(r.ttl_evicted, vec!["old2".to_string()]);
    }

    #[test]
    fn disk_threshold_evicts_lru_down_to_low_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), true).unwrap();
        let store = Arc::new(store);
        let now = 1_000_000_000;
        for (i, id) in ["t0", "t1", "t2", "t3", "t4"].iter().enumerate() {
            add(&store, id, 8192, now - 100 + i as u64);
        }
        let in_use = store.get("t0").unwrap().use_task();
        // 5 x 8 KiB = 40 KiB on disk against a 45 KiB capacity: 88% > 80%.
        // Down to 50% (22.5 KiB) means evicting 3 tasks, oldest first, skipping t0.
        let r = gc(store.clone(), 1 << 30, 45 * 1024).run_at(now);
        assert_eq!(r.disk_evicted, vec!["t1", "t2", "t3"]);
        assert!(store.get("t0").is_some());
        assert!(store.get("t4").is_some());
        drop(in_use);
    }
}
