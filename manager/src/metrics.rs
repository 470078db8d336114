//! Prometheus metrics of the manager (prefix `dragonfly_manager_`). Counts of rows (jobs by
//! state, schedulers and seed peers by state) are read from the database at each scrape, so
//! they are right across restarts and with several managers on one database.

use crate::db::{Db, DbError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sqlx::Row;

/// The build.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub git_version: &'static str,
    pub platform: &'static str,
}

/// A job's type and state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub r#type: String,
    pub state: String,
}

/// An instance kind (`scheduler`, `seed_peer`) and state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub kind: &'static str,
    pub state: String,
}

/// A result: `success` or `failure`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// All manager metrics.
pub struct Metrics {
    registry: Registry,
    /// `ListSchedulers` calls (the searcher's work).
    pub list_schedulers: Counter,
    /// `ListSchedulers` calls that found no active scheduler.
    pub list_schedulers_failures: Counter,
    /// Jobs by type and state (from the database).
    pub jobs: Family<JobLabels, Gauge>,
    /// Schedulers and seed peers by state (from the database).
    pub instances: Family<InstanceLabels, Gauge>,
    /// Preheat downloads (one URL on one host) by result.
    pub preheat_tasks: Family<ResultLabels, Counter>,
    /// Bytes of preheat downloads that succeeded, as the hosts reported them.
    pub preheat_bytes: Counter,
    /// Jobs created through the APIs.
    pub jobs_created: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("dragonfly_manager");
        let version = Family::<VersionLabels, Gauge>::default();
        version
            .get_or_create(&VersionLabels {
                git_version: env!("CARGO_PKG_VERSION"),
                platform: std::env::consts::ARCH,
            })
            .set(1);
        registry.register("version", "Version of the manager", version);
        let m = Metrics {
            list_schedulers: Counter::default(),
            list_schedulers_failures: Counter::default(),
            jobs: Family::default(),
            instances: Family::default(),
            preheat_tasks: Family::default(),
            preheat_bytes: Counter::default(),
            jobs_created: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "search_scheduler_cluster",
            "ListSchedulers calls",
            m.list_schedulers.clone(),
        );
        registry.register(
            "search_scheduler_cluster_failure",
            "ListSchedulers calls that found no active scheduler",
            m.list_schedulers_failures.clone(),
        );
        registry.register("jobs", "Jobs by type and state", m.jobs.clone());
        registry.register(
            "instances",
            "Schedulers and seed peers by state",
            m.instances.clone(),
        );
        registry.register(
            "preheat_tasks",
            "Preheat downloads (one URL on one host) by result",
            m.preheat_tasks.clone(),
        );
        registry.register(
            "preheat_bytes",
            "Bytes of preheat downloads that succeeded",
            m.preheat_bytes.clone(),
        );
        registry.register("create_job", "Jobs created", m.jobs_created.clone());
        Metrics { registry, ..m }
    }

    /// Reads the row counts and encodes everything in the text format.
    pub async fn render(&self, db: &Db) -> Result<String, DbError> {
        let rows = sqlx::query("SELECT type, state, COUNT(*) AS n FROM jobs GROUP BY type, state")
            .fetch_all(&db.pool)
            .await
            .map_err(DbError::sqlx("count jobs"))?;
        self.jobs.clear();
        for r in rows {
            let (t, s, n): (String, String, i64) = (
                r.try_get("type").unwrap_or_default(),
                r.try_get("state").unwrap_or_default(),
                r.try_get("n").unwrap_or_default(),
            );
            self.jobs
                .get_or_create(&JobLabels {
                    r#type: t,
                    state: s,
                })
                .set(n);
        }
        self.instances.clear();
        for (kind, table) in [("scheduler", "schedulers"), ("seed_peer", "seed_peers")] {
            let rows = sqlx::query(&format!(
                "SELECT state, COUNT(*) AS n FROM {table} GROUP BY state"
            ))
            .fetch_all(&db.pool)
            .await
            .map_err(DbError::sqlx(format!("count {table}")))?;
            for r in rows {
                let state: String = r.try_get("state").unwrap_or_default();
                let n: i64 = r.try_get("n").unwrap_or_default();
                self.instances
                    .get_or_create(&InstanceLabels { kind, state })
                    .set(n);
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|e| DbError::Other(format!("encoding metrics: {e}")))?;
        Ok(out)
    }
}
