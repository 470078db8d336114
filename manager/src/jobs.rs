//! Jobs: `preheat`, `get_task` and `delete_task`, as Dragonfly's Open API takes them. A job is
//! checked and (for an image) resolved while the POST waits, stored `PENDING`, then run by the
//! schedulers of its clusters over their job service (`dragonfly_rs.jobs.v1.Jobs`); per-host
//! results are written to the job as they arrive. A restarted manager runs its `PENDING` jobs
//! again (what already finished on a host is a local hit there), so no job stays `PENDING`.

use crate::clusters;
use crate::db::{now, Db, DbError};
use crate::instances;
use crate::resolve::{self, Blob};
use common::jobs_api::jobs_client::JobsClient;
use common::jobs_api::{preheat_event, PreheatEvent, PreheatRequest, PreheatTask};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Dragonfly's default for `concurrent_task_count`.
pub const DEFAULT_CONCURRENT_TASKS: i64 = 8;
/// Dragonfly's default for `concurrent_peer_count`.
pub const DEFAULT_CONCURRENT_PEERS: i64 = 500;
/// Dragonfly's default job timeout (60 min, in nanoseconds as its API carries it).
pub const DEFAULT_TIMEOUT_NS: i64 = 3_600_000_000_000;
/// Most URLs of a file preheat.
pub const MAX_URLS: usize = 1000;
/// How long a job waits for an active scheduler in its cluster before that cluster fails.
const SCHEDULER_WAIT: Duration = Duration::from_secs(30);
/// Result writes of one job are at most this frequent (and always at the end).
const WRITE_EVERY: Duration = Duration::from_millis(250);

/// What a job request was refused for: the HTTP status and message (Dragonfly's).
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn bad(m: impl Into<String>) -> Refusal {
        Refusal {
            status: 422,
            message: m.into(),
        }
    }
    fn internal(m: impl Into<String>) -> Refusal {
        Refusal {
            status: 500,
            message: m.into(),
        }
    }
}

impl From<DbError> for Refusal {
    fn from(e: DbError) -> Refusal {
        Refusal::internal(e.to_string())
    }
}

/// `POST /oapi/v1/jobs`: Dragonfly's `CreateJobRequest` (unknown fields ignored, as Harbor
/// sends some that no longer mean anything).
#[derive(Debug, Deserialize)]
pub struct CreateJob {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub bio: String,
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(default)]
    pub user_id: Option<i64>,
    #[serde(default)]
    pub scheduler_cluster_ids: Option<Vec<i64>>,
}

/// Dragonfly's `PreheatArgs`.
#[derive(Debug, Default, Deserialize)]
struct PreheatArgs {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    urls: Option<Vec<String>>,
    #[serde(default)]
    piece_length: Option<u64>,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    application: String,
    #[serde(default)]
    filtered_query_params: String,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    platform: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    ips: Option<Vec<String>>,
    #[serde(default)]
    percentage: Option<u32>,
    #[serde(default)]
    count: Option<u32>,
    #[serde(default)]
    concurrent_task_count: i64,
    #[serde(default)]
    concurrent_peer_count: i64,
    #[serde(default)]
    timeout: i64,
    #[serde(default)]
    object_storage: Option<Value>,
    #[serde(default)]
    hdfs: Option<Value>,
}

/// Dragonfly's `GetTaskArgs` / `DeleteTaskArgs`.
#[derive(Debug, Default, Deserialize)]
struct TaskArgs {
    #[serde(default)]
    task_id: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    application: String,
    #[serde(default)]
    filtered_query_params: String,
}

/// What a job does, once checked (and resolved): kept in the job's `plan` so a restarted
/// manager runs it again as it was.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub kind: String,
    #[serde(default)]
    pub tasks: Vec<Blob>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub percentage: Option<u32>,
    #[serde(default)]
    pub concurrent_task_count: u32,
    #[serde(default)]
    pub concurrent_peer_count: u32,
    #[serde(default)]
    pub timeout_seconds: u64,
    #[serde(default)]
    pub piece_length: u64,
    #[serde(default)]
    pub tag: String,
    #[serde(default)]
    pub application: String,
    #[serde(default)]
    pub filtered_query_params: Vec<String>,
    #[serde(default)]
    pub task_id: String,
    /// The scheduler clusters that run it.
    pub clusters: Vec<i64>,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: i64,
    pub created_at: String,
    pub updated_at: String,
    pub is_del: u8,
    pub task_id: String,
    pub bio: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub state: String,
    pub args: Value,
    pub result: Value,
    pub user_id: i64,
    pub seed_peer_clusters: Vec<Value>,
    pub scheduler_clusters: Vec<Value>,
}

fn uuid() -> String {
    common::id::uuid_v4(rand::random())
}

fn split_params(s: &str) -> Vec<String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// Dragonfly's default filtered query params, `&`-joined (as its API echoes them).
fn default_filtered() -> String {
    common::id::default_filtered_query_params().join("&")
}

/// `headers` with every value hidden (jobs are listed to every holder of a `job` token, and
/// headers carry credentials under many names: `Authorization`, `Cookie`, API keys); the values
/// stay in the plan only.
fn redacted(headers: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    headers
        .keys()
        .map(|k| (k.clone(), "<redacted>".to_string()))
        .collect()
}

/// Checks the ranges of Dragonfly's `PreheatArgs`; the first problem names the field.
fn check_preheat(a: &PreheatArgs) -> Result<(), Refusal> {
    if a.kind != "image" && a.kind != "file" {
        return Err(Refusal::bad(format!(
            "args.type: {:?} is neither image nor file",
            a.kind
        )));
    }
    if let Some(p) = a.piece_length {
        if !(4_194_304..=67_108_864).contains(&p) {
            return Err(Refusal::bad(format!(
                "args.piece_length: {p} is not within 4194304..=67108864"
            )));
        }
    }
    if let Some(ips) = &a.ips {
        if ips.is_empty() || ips.len() > 100 {
            return Err(Refusal::bad("args.ips: 1 to 100 addresses"));
        }
        if let Some(bad) = ips
            .iter()
            .find(|ip| ip.parse::<std::net::IpAddr>().is_err())
        {
            return Err(Refusal::bad(format!(
                "args.ips: {bad:?} is not an IP address"
            )));
        }
    }
    if let Some(p) = a.percentage {
        if !(1..=100).contains(&p) {
            return Err(Refusal::bad(format!(
                "args.percentage: {p} is not within 1..=100"
            )));
        }
    }
    if let Some(c) = a.count {
        if !(1..=200).contains(&c) {
            return Err(Refusal::bad(format!(
                "args.count: {c} is not within 1..=200"
            )));
        }
    }
    if a.concurrent_task_count != 0 && !(1..=100).contains(&a.concurrent_task_count) {
        return Err(Refusal::bad(format!(
            "args.concurrent_task_count: {} is not within 1..=100",
            a.concurrent_task_count
        )));
    }
    if a.concurrent_peer_count != 0 && !(1..=1000).contains(&a.concurrent_peer_count) {
        return Err(Refusal::bad(format!(
            "args.concurrent_peer_count: {} is not within 1..=1000",
            a.concurrent_peer_count
        )));
    }
    if a.timeout < 0 {
        return Err(Refusal::bad("args.timeout: must not be negative"));
    }
    match a.scope.as_str() {
        "" | "single_seed_peer" | "all_seed_peers" | "all_peers" | "single_peer" => {}
        other => {
            return Err(Refusal::bad(format!(
                "args.scope: {other:?} is not single_seed_peer, all_seed_peers or all_peers"
            )))
        }
    }
    if a.object_storage.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(Refusal::bad(
            "args.object_storage: object storage sources are not supported",
        ));
    }
    if a.hdfs.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(Refusal::bad("args.hdfs: HDFS sources are not supported"));
    }
    for (k, v) in a.headers.iter().flatten() {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err()
            || http::HeaderValue::from_str(v).is_err()
        {
            return Err(Refusal::bad(format!(
                "args.headers: {k:?} is not a valid header"
            )));
        }
    }
    if a.tag.len() > 1024 || a.application.len() > 1024 || a.filtered_query_params.len() > 4096 {
        return Err(Refusal::bad(
            "args: tag and application are at most 1024 characters, filtered_query_params 4096",
        ));
    }
    Ok(())
}

/// Per-cluster job rate limiting (`job_rate_limit` jobs per second, Dragonfly's default 10),
/// for clusters named in the request.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<i64, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes one job from cluster `id`'s bucket of `rate` per second; whether there was one.
    pub fn take(&self, id: i64, rate: u32) -> bool {
        let rate = f64::from(rate.max(1));
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, at) = b.entry(id).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Redirects are followed (at most 5) only to allowlisted hosts, so an allowlisted registry
/// cannot send the manager elsewhere.
fn redirect_policy(allowed: Vec<String>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error("more than 5 redirects");
        }
        let host = match (attempt.url().host_str(), attempt.url().port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => return attempt.stop(),
        };
        if resolve::allowed(&host, &allowed) {
            attempt.follow()
        } else {
            attempt.error(format!(
                "a redirect to {host}, which is not in job.preheat.allowedHosts"
            ))
        }
    })
}

/// Runs jobs.
pub struct Runner {
    db: Db,
    metrics: Arc<crate::metrics::Metrics>,
    client: reqwest::Client,
    preheat: crate::config::PreheatConfig,
    running: Mutex<HashMap<i64, tokio::task::AbortHandle>>,
    pub rate: RateLimiter,
    /// Mutual TLS to the schedulers (`server.grpc.tls`).
    tls: Option<Arc<common::tls::Tls>>,
}

/// The cluster ids a job runs on: those asked for (each must exist), or every cluster.
async fn target_clusters(db: &Db, asked: Option<&[i64]>) -> Result<Vec<i64>, Refusal> {
    match asked.filter(|a| !a.is_empty()) {
        Some(ids) => {
            let mut out = Vec::new();
            for &id in ids {
                if clusters::scheduler_cluster(db, id).await?.is_none() {
                    return Err(Refusal {
                        status: 404,
                        message: format!("scheduler cluster id {id}: record not found"),
                    });
                }
                if !out.contains(&id) {
                    out.push(id);
                }
            }
            Ok(out)
        }
        None => Ok(
            clusters::list_ids(db, clusters::Table::SchedulerClusters, None, i64::MAX, 0)
                .await?
                .0,
        ),
    }
}

/// The first active scheduler of cluster `id` with feature `preheat`.
async fn preheat_scheduler(db: &Db, id: i64) -> Result<Option<instances::Scheduler>, DbError> {
    Ok(instances::list_schedulers(
        db,
        &instances::Filter {
            state: Some("active".into()),
            cluster_id: Some(id),
            ..Default::default()
        },
        i64::MAX,
        0,
    )
    .await?
    .0
    .into_iter()
    .find(|s| s.features.iter().any(|f| f == "preheat")))
}

/// One cluster's state in a job's result.
fn pending_state(kind: &str, cluster: i64) -> Value {
    json!({
        "created_at": now(),
        "updated_at": now(),
        "error": "",
        "results": [],
        "state": "PENDING",
        "task_name": kind,
        "task_uuid": format!("task_{}", uuid()),
        "ttl": 0,
        "scheduler_cluster_id": cluster,
    })
}

impl Runner {
    pub fn new(
        db: Db,
        metrics: Arc<crate::metrics::Metrics>,
        preheat: crate::config::PreheatConfig,
        tls: Option<Arc<common::tls::Tls>>,
    ) -> anyhow::Result<Runner> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(redirect_policy(preheat.allowed_hosts.clone()));
        if let Some(ca) = &preheat.tls.ca_cert {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("job.preheat.tls.caCert {}: {e}", ca.display()))?;
            for c in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| anyhow::anyhow!("job.preheat.tls.caCert {}: {e}", ca.display()))?
            {
                b = b.add_root_certificate(c);
            }
        }
        if preheat.tls.insecure_skip_verify {
            b = b.danger_accept_invalid_certs(true);
        }
        Ok(Runner {
            db,
            metrics,
            client: b.build()?,
            preheat,
            running: Mutex::new(HashMap::new()),
            rate: RateLimiter::default(),
            tls,
        })
    }

    fn check_host(&self, url: &str, field: &str) -> Result<(), Refusal> {
        let host = resolve::url_host(url).map_err(|e| Refusal::bad(format!("{field}: {e}")))?;
        if self.preheat.allowed_hosts.is_empty() {
            return Err(Refusal {
                status: 403,
                message: format!(
                    "{field}: preheating is off: job.preheat.allowedHosts in the manager's config names no host (add {host:?} to allow it)"
                ),
            });
        }
        if !resolve::allowed(&host, &self.preheat.allowed_hosts) {
            return Err(Refusal {
                status: 403,
                message: format!("{field}: host {host:?} is not in job.preheat.allowedHosts"),
            });
        }
        Ok(())
    }

    /// Checks, resolves and stores a job (`PENDING`), and starts it; the stored job.
    pub async fn create(self: &Arc<Self>, req: CreateJob, user_id: i64) -> Result<Job, Refusal> {
        if req.bio.len() > 1024 {
            return Err(Refusal::bad("bio: at most 1024 characters"));
        }
        let args = req
            .args
            .clone()
            .unwrap_or(Value::Object(Default::default()));
        let (plan, shown) = match req.kind.as_str() {
            "preheat" => self.plan_preheat(&args).await?,
            "get_task" | "delete_task" => plan_task(&req.kind, &args)?,
            _ => {
                return Err(Refusal::bad(
                    "type: Unknow type (preheat, get_task or delete_task)",
                ))
            }
        };
        let clusters = target_clusters(&self.db, req.scheduler_cluster_ids.as_deref()).await?;
        // Rate limit of the clusters asked for by name (Dragonfly's job_rate_limit).
        if req
            .scheduler_cluster_ids
            .as_ref()
            .is_some_and(|v| !v.is_empty())
        {
            for &id in &clusters {
                let rate = clusters::scheduler_cluster(&self.db, id)
                    .await?
                    .and_then(|c| c.config.job_rate_limit)
                    .unwrap_or(10);
                if !self.rate.take(id, rate) {
                    return Err(Refusal {
                        status: 429,
                        message: "rate limit exceeded".into(),
                    });
                }
            }
        }
        let mut runnable = Vec::new();
        for &id in &clusters {
            if preheat_scheduler(&self.db, id).await?.is_some() {
                runnable.push(id);
            }
        }
        if runnable.is_empty() {
            return Err(Refusal::internal("candidate schedulers not found"));
        }
        let plan = Plan {
            clusters: runnable.clone(),
            ..plan
        };
        let group = format!("group_{}", uuid());
        let result = json!({
            "created_at": now(),
            "updated_at": now(),
            "group_uuid": group,
            "state": "PENDING",
            "job_states": runnable.iter().map(|&c| pending_state(&req.kind, c)).collect::<Vec<_>>(),
        });
        let t = now();
        let id: i64 = sqlx::query(
            "INSERT INTO jobs (task_id, bio, type, state, args, result, plan, user_id, scheduler_cluster_ids, created_at, updated_at) \
             VALUES ($1, $2, $3, 'PENDING', $4, $5, $6, $7, $8, $9, $9) RETURNING id",
        )
        .bind(&group)
        .bind(&req.bio)
        .bind(&req.kind)
        .bind(shown.to_string())
        .bind(result.to_string())
        .bind(serde_json::to_string(&plan).unwrap_or_default())
        .bind(req.user_id.unwrap_or(user_id))
        .bind(serde_json::to_string(&runnable).unwrap_or_default())
        .bind(&t)
        .fetch_one(&self.db.pool)
        .await
        .and_then(|r| r.try_get("id"))
        .map_err(DbError::sqlx("create a job"))?;
        self.metrics.jobs_created.inc();
        tracing::info!(job = id, kind = %req.kind, clusters = ?runnable, "job created");
        // The job as stored is the answer: read before it runs, whose first result (a
        // scheduler refusing at once) may land before a later read.
        let stored = job(&self.db, id)
            .await?
            .ok_or_else(|| Refusal::internal("the job vanished"))?;
        self.start(id);
        Ok(stored)
    }

    /// The plan of a preheat and its arguments as shown (defaulted, secrets hidden).
    async fn plan_preheat(&self, args: &Value) -> Result<(Plan, Value), Refusal> {
        let a: PreheatArgs = parse_args(args)?;
        check_preheat(&a)?;
        let headers = a.headers.clone().unwrap_or_default();
        let filtered = if a.filtered_query_params.is_empty() {
            default_filtered()
        } else {
            a.filtered_query_params.clone()
        };
        let mut plan = Plan {
            kind: "preheat".into(),
            tasks: Vec::new(),
            headers: headers.clone(),
            scope: match a.scope.as_str() {
                "" => "single_seed_peer".into(),
                s => s.into(),
            },
            ips: a.ips.clone().unwrap_or_default(),
            count: a.count,
            percentage: a.percentage,
            concurrent_task_count: if a.concurrent_task_count == 0 {
                DEFAULT_CONCURRENT_TASKS as u32
            } else {
                a.concurrent_task_count as u32
            },
            concurrent_peer_count: if a.concurrent_peer_count == 0 {
                DEFAULT_CONCURRENT_PEERS as u32
            } else {
                a.concurrent_peer_count as u32
            },
            timeout_seconds: (if a.timeout == 0 {
                DEFAULT_TIMEOUT_NS
            } else {
                a.timeout
            } / 1_000_000_000)
                .max(1) as u64,
            piece_length: a.piece_length.unwrap_or(0),
            tag: a.tag.clone(),
            application: a.application.clone(),
            filtered_query_params: split_params(&filtered),
            task_id: String::new(),
            clusters: Vec::new(),
        };
        let platform = if a.platform.is_empty() {
            self.preheat
                .platform
                .clone()
                .unwrap_or_else(resolve::default_platform)
        } else {
            resolve::parse_platform(&a.platform).map_err(|e| Refusal::bad(format!("args.{e}")))?;
            a.platform.clone()
        };
        match a.kind.as_str() {
            "image" => {
                if a.url.is_empty() {
                    return Err(Refusal::bad(
                        "args.url: an image's manifest URL is required",
                    ));
                }
                let url = resolve::ManifestUrl::parse(&a.url)
                    .map_err(|e| Refusal::bad(format!("args.{e}")))?;
                self.check_host(&a.url, "args.url")?;
                let auth = resolve::Auth {
                    authorization: headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                        .map(|(_, v)| v.clone()),
                    username: a.username.clone(),
                    password: a.password.clone(),
                };
                let resolved = resolve::resolve(
                    &self.client,
                    &url,
                    &auth,
                    &headers,
                    &platform,
                    &self.preheat.allowed_hosts,
                )
                .await
                .map_err(Refusal::internal)?;
                plan.headers
                    .retain(|k, _| !k.eq_ignore_ascii_case("authorization"));
                if let Some(a) = resolved.authorization {
                    plan.headers.insert("Authorization".into(), a);
                }
                plan.tasks = resolved.blobs;
            }
            _ => {
                let mut urls: Vec<String> = a.urls.clone().unwrap_or_default();
                if !a.url.is_empty() && !urls.contains(&a.url) {
                    urls.insert(0, a.url.clone());
                }
                if urls.is_empty() {
                    return Err(Refusal::bad("args.urls: a file preheat needs url or urls"));
                }
                if urls.len() > MAX_URLS {
                    return Err(Refusal::bad(format!("args.urls: at most {MAX_URLS}")));
                }
                for u in &urls {
                    self.check_host(u, "args.urls")?;
                }
                plan.tasks = urls
                    .into_iter()
                    .map(|url| Blob {
                        url,
                        digest: String::new(),
                    })
                    .collect();
            }
        }
        let shown = json!({
            "application": a.application,
            "concurrent_peer_count": plan.concurrent_peer_count,
            "concurrent_task_count": plan.concurrent_task_count,
            "count": a.count,
            "filtered_query_params": filtered,
            "hdfs": Value::Null,
            "headers": redacted(&headers),
            "ips": a.ips,
            "object_storage": Value::Null,
            "password": if a.password.is_empty() { "" } else { "<redacted>" },
            "percentage": a.percentage,
            "piece_length": a.piece_length,
            "platform": platform,
            "scope": plan.scope,
            "tag": a.tag,
            "timeout": if a.timeout == 0 { DEFAULT_TIMEOUT_NS } else { a.timeout },
            "type": a.kind,
            "url": a.url,
            "urls": a.urls,
            "username": a.username,
        });
        Ok((plan, shown))
    }

    /// Starts running job `id` (if it is not running already).
    pub fn start(self: &Arc<Self>, id: i64) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.contains_key(&id) {
            return;
        }
        let this = self.clone();
        let handle = tokio::spawn(async move {
            if let Err(e) = this.run(id).await {
                tracing::error!(job = id, error = %e, "job failed to run");
                let _ = this.finish_failed(id, &e.to_string()).await;
            }
            this.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
        running.insert(id, handle.abort_handle());
    }

    /// Runs every `PENDING` job that is not running (at start: their runs died with the last
    /// process; later: a run whose last write failed). How many were started.
    pub async fn resume(self: &Arc<Self>) -> Result<usize, DbError> {
        let ids: Vec<i64> = sqlx::query("SELECT id FROM jobs WHERE state = 'PENDING' ORDER BY id")
            .fetch_all(&self.db.pool)
            .await
            .map_err(DbError::sqlx("list pending jobs"))?
            .iter()
            .filter_map(|r| r.try_get("id").ok())
            .collect();
        let mut started = 0;
        for &id in &ids {
            let running = self
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&id);
            if !running {
                tracing::info!(job = id, "resuming a job left pending by the last run");
                self.start(id);
                started += 1;
            }
        }
        Ok(started)
    }

    /// Stops job `id` if it runs.
    pub fn stop(&self, id: i64) {
        if let Some(h) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
        {
            h.abort();
        }
    }

    async fn finish_failed(&self, id: i64, error: &str) -> Result<(), DbError> {
        let Some((_, mut result)) = load(&self.db, id).await? else {
            return Ok(());
        };
        if let Some(states) = result["job_states"].as_array_mut() {
            for s in states {
                if s["state"] == "PENDING" {
                    s["state"] = json!("FAILURE");
                    s["error"] = json!(error);
                }
            }
        }
        result["state"] = json!("FAILURE");
        store(&self.db, id, &result, Some("FAILURE")).await
    }

    async fn run(self: &Arc<Self>, id: i64) -> Result<(), DbError> {
        let Some((plan, result)) = load(&self.db, id).await? else {
            return Ok(());
        };
        let progress = Arc::new(Progress {
            id,
            db: self.db.clone(),
            result: Mutex::new(result),
            last_write: Mutex::new(Instant::now() - WRITE_EVERY),
        });
        let deadline = Duration::from_secs(plan.timeout_seconds.max(1)) + Duration::from_secs(30);
        let mut set = tokio::task::JoinSet::new();
        for (i, &cluster) in plan.clusters.iter().enumerate() {
            if progress.cluster_state(i) != "PENDING" {
                continue;
            }
            let (this, plan, progress) = (self.clone(), plan.clone(), progress.clone());
            set.spawn(async move {
                let outcome =
                    tokio::time::timeout(deadline, this.run_cluster(&plan, i, cluster, &progress))
                        .await
                        .unwrap_or_else(|_| {
                            Err(format!(
                                "the job did not finish within {}s",
                                deadline.as_secs()
                            ))
                        });
                progress.close_cluster(i, &plan, outcome);
                progress.write(true).await;
            });
        }
        while set.join_next().await.is_some() {}
        let state = progress.overall();
        progress.set_overall(&state);
        progress.write(true).await;
        tracing::info!(job = id, state = %state, "job finished");
        Ok(())
    }

    /// Runs `plan` on cluster `cluster` (job state `i`); `Err` when it could not run at all.
    async fn run_cluster(
        &self,
        plan: &Plan,
        i: usize,
        cluster: i64,
        progress: &Progress,
    ) -> Result<(), String> {
        // A scheduler may be between two KeepAlive streams (a manager that just started, a
        // scheduler restarting): wait a little for one before giving up.
        let give_up = Instant::now() + SCHEDULER_WAIT;
        let sched = loop {
            match preheat_scheduler(&self.db, cluster)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(s) => break s,
                None if Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                None => {
                    return Err(format!(
                    "scheduler cluster {cluster} has no active scheduler with the preheat feature"
                ))
                }
            }
        };
        let who = format!("scheduler {}:{}", sched.ip, sched.port);
        progress.set_scheduler(i, &who);
        let port = u16::try_from(sched.port)
            .map_err(|_| format!("{who}: port {} is out of range", sched.port))?;
        let addr = match sched.ip.parse::<std::net::IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
            Err(_) => format!("{}:{port}", sched.ip),
        };
        let channel = common::tls::endpoint(&addr, self.tls.as_deref(), "server.grpc.tls")
            .map_err(|e| format!("{who}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| format!("{who}: {e}"))?;
        let mut client = JobsClient::new(channel);
        match plan.kind.as_str() {
            "preheat" => {
                let req = PreheatRequest {
                    tasks: plan
                        .tasks
                        .iter()
                        .map(|t| PreheatTask {
                            url: t.url.clone(),
                            digest: t.digest.clone(),
                        })
                        .collect(),
                    headers: plan.headers.clone().into_iter().collect(),
                    scope: plan.scope.clone(),
                    ips: plan.ips.clone(),
                    count: plan.count,
                    percentage: plan.percentage,
                    concurrent_task_count: plan.concurrent_task_count,
                    concurrent_peer_count: plan.concurrent_peer_count,
                    timeout_seconds: plan.timeout_seconds,
                    piece_length: plan.piece_length,
                    tag: plan.tag.clone(),
                    application: plan.application.clone(),
                    filtered_query_params: plan.filtered_query_params.clone(),
                };
                let mut stream = client
                    .preheat(req)
                    .await
                    .map_err(|e| format!("{who}: {}", e.message()))?
                    .into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(PreheatEvent { event: Some(e) })) => match e {
                            preheat_event::Event::Hosts(h) => progress.hosts(i, plan, h),
                            preheat_event::Event::Result(r) => {
                                if r.success {
                                    self.metrics
                                        .preheat_tasks
                                        .get_or_create(&crate::metrics::ResultLabels {
                                            result: "success",
                                        })
                                        .inc();
                                    self.metrics.preheat_bytes.inc_by(r.content_length);
                                } else {
                                    self.metrics
                                        .preheat_tasks
                                        .get_or_create(&crate::metrics::ResultLabels {
                                            result: "failure",
                                        })
                                        .inc();
                                }
                                progress.result(i, r);
                                progress.write(false).await;
                            }
                        },
                        Ok(Some(_)) => {}
                        Ok(None) => return Ok(()),
                        Err(e) => {
                            // The rest did not finish: say so per host.
                            progress.unfinished(i, plan, &format!("{who}: {}", e.message()));
                            return Ok(());
                        }
                    }
                }
            }
            "get_task" => {
                let r = client
                    .get_task(common::jobs_api::GetTaskRequest {
                        task_id: plan.task_id.clone(),
                    })
                    .await
                    .map_err(|e| format!("{who}: {}", e.message()))?
                    .into_inner();
                progress.peers(i, cluster, r);
                Ok(())
            }
            _ => {
                let mut stream = client
                    .delete_task(common::jobs_api::DeleteTaskRequest {
                        task_id: plan.task_id.clone(),
                    })
                    .await
                    .map_err(|e| format!("{who}: {}", e.message()))?
                    .into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(r)) => {
                            progress.result(i, r);
                            progress.write(false).await;
                        }
                        Ok(None) => return Ok(()),
                        Err(e) => return Err(format!("{who}: {}", e.message())),
                    }
                }
            }
        }
    }
}

/// Checks a job request body as `POST /oapi/v1/jobs` does before it touches the network or the
/// database: JSON, type, and every argument's range and form. The job type.
pub fn check_request(body: &[u8]) -> Result<String, Refusal> {
    let req: CreateJob =
        serde_json::from_slice(body).map_err(|e| Refusal::bad(format!("body: {e}")))?;
    let args = req
        .args
        .clone()
        .unwrap_or(Value::Object(Default::default()));
    match req.kind.as_str() {
        "preheat" => {
            let a: PreheatArgs = parse_args(&args)?;
            check_preheat(&a)?;
            if a.kind == "image" {
                resolve::ManifestUrl::parse(&a.url)
                    .map_err(|e| Refusal::bad(format!("args.{e}")))?;
            }
            if !a.platform.is_empty() {
                resolve::parse_platform(&a.platform)
                    .map_err(|e| Refusal::bad(format!("args.{e}")))?;
            }
        }
        "get_task" | "delete_task" => {
            plan_task(&req.kind, &args)?;
        }
        _ => {
            return Err(Refusal::bad(
                "type: Unknow type (preheat, get_task or delete_task)",
            ))
        }
    }
    Ok(req.kind)
}

/// `args` as `T`; an error names the field (`args.count: invalid type ...`).
fn parse_args<T: serde::de::DeserializeOwned>(args: &Value) -> Result<T, Refusal> {
    let text = args.to_string();
    let mut de = serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            Refusal::bad(format!("args: {}", e.inner()))
        } else {
            Refusal::bad(format!("args.{path}: {}", e.inner()))
        }
    })
}

/// The plan and shown arguments of a `get_task` / `delete_task`.
fn plan_task(kind: &str, args: &Value) -> Result<(Plan, Value), Refusal> {
    let a: TaskArgs = parse_args(args)?;
    let task_id = if !a.task_id.is_empty() {
        a.task_id.clone()
    } else if !a.url.is_empty() {
        let filtered = if a.filtered_query_params.is_empty() {
            common::id::default_filtered_query_params()
        } else {
            split_params(&a.filtered_query_params)
        };
        common::id::url_task_id(&common::id::UrlTaskId {
            url: &a.url,
            tag: Some(a.tag.as_str()).filter(|s| !s.is_empty()),
            application: Some(a.application.as_str()).filter(|s| !s.is_empty()),
            piece_length: None,
            filtered_query_params: &filtered,
        })
        .map_err(|e| Refusal::bad(format!("args.url: {e}")))?
    } else {
        return Err(Refusal::bad("args.task_id: a task ID or a url is required"));
    };
    if task_id.len() != 64 || !task_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refusal::bad(format!(
            "args.task_id: {task_id:?} is not a task ID (64 hex digits)"
        )));
    }
    let plan = Plan {
        kind: kind.into(),
        tasks: Vec::new(),
        headers: BTreeMap::new(),
        scope: String::new(),
        ips: Vec::new(),
        count: None,
        percentage: None,
        concurrent_task_count: 0,
        concurrent_peer_count: 0,
        timeout_seconds: 600,
        piece_length: 0,
        tag: String::new(),
        application: String::new(),
        filtered_query_params: Vec::new(),
        task_id: task_id.clone(),
        clusters: Vec::new(),
    };
    let shown = json!({
        "task_id": task_id,
        "url": a.url,
        "tag": a.tag,
        "application": a.application,
        "filtered_query_params": a.filtered_query_params,
    });
    Ok((plan, shown))
}

/// A running job's result, written to the database as it changes.
struct Progress {
    id: i64,
    db: Db,
    result: Mutex<Value>,
    last_write: Mutex<Instant>,
}

fn host_entry(h: Option<&common::jobs_api::Host>) -> (String, String) {
    h.map(|h| (h.hostname.clone(), h.ip.clone()))
        .unwrap_or_default()
}

impl Progress {
    fn with<T>(&self, f: impl FnOnce(&mut Value) -> T) -> T {
        let mut r = self.result.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut r)
    }

    fn cluster_state(&self, i: usize) -> String {
        self.with(|r| {
            r["job_states"][i]["state"]
                .as_str()
                .unwrap_or("PENDING")
                .to_string()
        })
    }

    fn set_scheduler(&self, i: usize, who: &str) {
        self.with(|r| r["job_states"][i]["scheduler"] = json!(who));
    }

    /// The (single) results entry of job state `i`.
    fn entry(r: &mut Value, i: usize) -> &mut Value {
        let cluster = r["job_states"][i]["scheduler_cluster_id"].clone();
        let results = &mut r["job_states"][i]["results"];
        if !results.is_array() || results.as_array().is_some_and(|a| a.is_empty()) {
            *results = json!([{
                "scheduler_cluster_id": cluster,
                "success_tasks": [],
                "failure_tasks": [],
            }]);
        }
        &mut results[0]
    }

    /// Records the hosts chosen (and a failure per asked IP no host has).
    fn hosts(&self, i: usize, plan: &Plan, h: common::jobs_api::Hosts) {
        self.with(|r| {
            r["job_states"][i]["hosts"] = json!(h
                .hosts
                .iter()
                .map(|h| json!({"hostname": h.hostname, "ip": h.ip}))
                .collect::<Vec<_>>());
            let e = Self::entry(r, i);
            for ip in &h.missing_ips {
                for t in &plan.tasks {
                    push_unique(
                        e,
                        "failure_tasks",
                        json!({"url": t.url, "hostname": "", "ip": ip, "description": "no peer with this IP is known to the scheduler"}),
                    );
                }
            }
        });
    }

    /// Records one (task, host) result; a later one for the same pair replaces it.
    fn result(&self, i: usize, t: common::jobs_api::TaskResult) {
        let (hostname, ip) = host_entry(t.host.as_ref());
        self.with(|r| {
            let e = Self::entry(r, i);
            for list in ["success_tasks", "failure_tasks"] {
                if let Some(a) = e[list].as_array_mut() {
                    a.retain(|x| !(x["url"] == t.url.as_str() && x["ip"] == ip.as_str() && x["hostname"] == hostname.as_str()));
                }
            }
            if t.success {
                push(e, "success_tasks", json!({"url": t.url, "hostname": hostname, "ip": ip}));
            } else {
                push(e, "failure_tasks", json!({"url": t.url, "hostname": hostname, "ip": ip, "description": t.description}));
            }
        });
    }

    /// Every (task, chosen host) without a result failed with `why`.
    fn unfinished(&self, i: usize, plan: &Plan, why: &str) {
        self.with(|r| {
            let hosts: Vec<(String, String)> = r["job_states"][i]["hosts"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|h| {
                            (
                                h["hostname"].as_str().unwrap_or("").to_string(),
                                h["ip"].as_str().unwrap_or("").to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let e = Self::entry(r, i);
            for t in &plan.tasks {
                for (hostname, ip) in &hosts {
                    let done = ["success_tasks", "failure_tasks"].iter().any(|l| {
                        e[*l].as_array().is_some_and(|a| {
                            a.iter().any(|x| {
                                x["url"] == t.url.as_str()
                                    && x["ip"] == ip.as_str()
                                    && x["hostname"] == hostname.as_str()
                            })
                        })
                    });
                    if !done {
                        push(e, "failure_tasks", json!({"url": t.url, "hostname": hostname, "ip": ip, "description": why}));
                    }
                }
            }
            if hosts.is_empty() {
                r["job_states"][i]["error"] = json!(why);
            }
        });
    }

    /// `get_task`'s answer.
    fn peers(&self, i: usize, cluster: i64, g: common::jobs_api::GetTaskResponse) {
        self.with(|r| {
            r["job_states"][i]["results"] = json!([{
                "scheduler_cluster_id": cluster,
                "peers": g.hosts.iter().map(|h| json!({"hostname": h.hostname, "ip": h.ip, "id": h.id})).collect::<Vec<_>>(),
                "failure_tasks": g.failures.iter().map(|f| {
                    let (hostname, ip) = host_entry(f.host.as_ref());
                    json!({"hostname": hostname, "ip": ip, "url": "", "description": f.description})
                }).collect::<Vec<_>>(),
            }]);
        });
    }

    /// Settles job state `i`: FAILURE if it could not run or a task succeeded nowhere.
    fn close_cluster(&self, i: usize, plan: &Plan, outcome: Result<(), String>) {
        self.with(|r| {
            let state = match &outcome {
                Err(e) => {
                    r["job_states"][i]["error"] = json!(e);
                    "FAILURE"
                }
                Ok(()) if plan.kind == "preheat" => {
                    let e = Self::entry(r, i);
                    let ok = plan.tasks.iter().all(|t| {
                        e["success_tasks"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x["url"] == t.url.as_str()))
                    });
                    if ok {
                        "SUCCESS"
                    } else {
                        let failed = e["failure_tasks"].as_array().map_or(0, Vec::len);
                        if r["job_states"][i]["error"]
                            .as_str()
                            .unwrap_or("")
                            .is_empty()
                        {
                            r["job_states"][i]["error"] = json!(format!(
                                "{failed} downloads failed; a task was preheated on no host"
                            ));
                        }
                        "FAILURE"
                    }
                }
                Ok(()) => "SUCCESS",
            };
            r["job_states"][i]["state"] = json!(state);
            r["job_states"][i]["updated_at"] = json!(now());
        });
    }

    fn overall(&self) -> String {
        self.with(|r| {
            let states: Vec<String> = r["job_states"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| s["state"].as_str().unwrap_or("PENDING").to_string())
                        .collect()
                })
                .unwrap_or_default();
            if states.iter().any(|s| s == "FAILURE") || states.is_empty() {
                "FAILURE".to_string()
            } else if states.iter().all(|s| s == "SUCCESS") {
                "SUCCESS".to_string()
            } else {
                "FAILURE".to_string()
            }
        })
    }

    fn set_overall(&self, state: &str) {
        self.with(|r| {
            r["state"] = json!(state);
            r["updated_at"] = json!(now());
        });
    }

    /// Writes the result (the job's state with it when `fin`); skipped if the last write was
    /// under [`WRITE_EVERY`] ago, unless `fin`.
    async fn write(&self, fin: bool) {
        {
            let mut last = self.last_write.lock().unwrap_or_else(|p| p.into_inner());
            if !fin && last.elapsed() < WRITE_EVERY {
                return;
            }
            *last = Instant::now();
        }
        let (result, state) = self.with(|r| {
            let s = r["state"].as_str().map(str::to_string);
            (r.clone(), s)
        });
        let state = if fin {
            state.filter(|s| s == "SUCCESS" || s == "FAILURE")
        } else {
            None
        };
        // The final write is retried: a job must not stay PENDING because the database was
        // busy at that moment (and a sweeper runs PENDING jobs that nothing runs).
        let attempts = if fin { 5 } else { 1 };
        for attempt in 1..=attempts {
            match store(&self.db, self.id, &result, state.as_deref()).await {
                Ok(()) => break,
                Err(e) if attempt < attempts => {
                    tracing::warn!(job = self.id, error = %e, "cannot store a job's progress; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                }
                Err(e) => {
                    tracing::error!(job = self.id, error = %e, "cannot store a job's progress")
                }
            }
        }
    }
}

fn push(e: &mut Value, list: &str, item: Value) {
    if let Some(a) = e[list].as_array_mut() {
        a.push(item);
    }
}

fn push_unique(e: &mut Value, list: &str, item: Value) {
    if let Some(a) = e[list].as_array_mut() {
        if !a.contains(&item) {
            a.push(item);
        }
    }
}

async fn load(db: &Db, id: i64) -> Result<Option<(Plan, Value)>, DbError> {
    let Some(r) = sqlx::query("SELECT plan, result FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(&db.pool)
        .await
        .map_err(DbError::sqlx("find a job"))?
    else {
        return Ok(None);
    };
    let plan: String = r.try_get("plan").map_err(DbError::sqlx("read a job"))?;
    let result: String = r.try_get("result").map_err(DbError::sqlx("read a job"))?;
    let plan: Plan = serde_json::from_str(&plan)
        .map_err(|e| DbError::Other(format!("job {id}: its plan is not readable: {e}")))?;
    Ok(Some((
        plan,
        serde_json::from_str(&result).unwrap_or(Value::Null),
    )))
}

async fn store(db: &Db, id: i64, result: &Value, state: Option<&str>) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE jobs SET result = $1, state = COALESCE($2, state), updated_at = $3 WHERE id = $4",
    )
    .bind(result.to_string())
    .bind(state.map(str::to_string))
    .bind(now())
    .bind(id)
    .execute(&db.pool)
    .await
    .map_err(DbError::sqlx("store a job's progress"))?;
    Ok(())
}

const JOB_COLUMNS: &str =
    "id, task_id, bio, type, state, args, result, user_id, scheduler_cluster_ids, created_at, updated_at";

async fn read_job(db: &Db, r: &sqlx::any::AnyRow) -> Result<Job, DbError> {
    let get = |c: &str| -> Result<String, DbError> {
        r.try_get::<String, _>(c)
            .map_err(DbError::sqlx("read a job"))
    };
    let ids: Vec<i64> = serde_json::from_str(&get("scheduler_cluster_ids")?).unwrap_or_default();
    let mut scheduler_clusters = Vec::new();
    for id in ids {
        if let Some(c) = clusters::scheduler_cluster(db, id).await? {
            scheduler_clusters.push(serde_json::to_value(c).unwrap_or(Value::Null));
        }
    }
    Ok(Job {
        id: r.try_get("id").map_err(DbError::sqlx("read a job"))?,
        created_at: get("created_at")?,
        updated_at: get("updated_at")?,
        is_del: 0,
        task_id: get("task_id")?,
        bio: get("bio")?,
        kind: get("type")?,
        state: get("state")?,
        args: serde_json::from_str(&get("args")?).unwrap_or(Value::Null),
        result: serde_json::from_str(&get("result")?).unwrap_or(Value::Null),
        user_id: r.try_get("user_id").map_err(DbError::sqlx("read a job"))?,
        seed_peer_clusters: Vec::new(),
        scheduler_clusters,
    })
}

/// Job `id`.
pub async fn job(db: &Db, id: i64) -> Result<Option<Job>, DbError> {
    let Some(r) = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await
        .map_err(DbError::sqlx("find a job"))?
    else {
        return Ok(None);
    };
    read_job(db, &r).await.map(Some)
}

/// Which jobs a list shows.
#[derive(Debug, Default, Deserialize)]
pub struct JobFilter {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub state: Option<String>,
    pub user_id: Option<i64>,
}

/// One page of jobs (newest first) and how many match.
pub async fn list(
    db: &Db,
    f: &JobFilter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Job>, i64), DbError> {
    let clause = "WHERE ($1 IS NULL OR type = $1) AND ($2 IS NULL OR state = $2) AND ($3 IS NULL OR user_id = $3)";
    let total: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM jobs {clause}"))
        .bind(f.kind.clone())
        .bind(f.state.clone())
        .bind(f.user_id)
        .fetch_one(&db.pool)
        .await
        .and_then(|r| r.try_get("n"))
        .map_err(DbError::sqlx("count jobs"))?;
    let rows = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs {clause} ORDER BY id DESC LIMIT $4 OFFSET $5"
    ))
    .bind(f.kind.clone())
    .bind(f.state.clone())
    .bind(f.user_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(&db.pool)
    .await
    .map_err(DbError::sqlx("list jobs"))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(read_job(db, r).await?);
    }
    Ok((out, total))
}

/// Deletes job `id`; whether it existed.
pub async fn delete(db: &Db, id: i64) -> Result<bool, DbError> {
    let r = sqlx::query("DELETE FROM jobs WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .map_err(DbError::sqlx("delete a job"))?;
    Ok(r.rows_affected() > 0)
}

/// Changes job `id`'s bio; whether it exists.
pub async fn update_bio(db: &Db, id: i64, bio: &str) -> Result<bool, DbError> {
    let r = sqlx::query("UPDATE jobs SET bio = $1, updated_at = $2 WHERE id = $3")
        .bind(bio)
        .bind(now())
        .bind(id)
        .execute(&db.pool)
        .await
        .map_err(DbError::sqlx("update a job"))?;
    Ok(r.rows_affected() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> PreheatArgs {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn preheat_args_out_of_dragonflys_ranges_name_the_field() {
        let ok = args(
            json!({"type": "image", "url": "https://r/v2/a/manifests/1", "scope": "", "concurrent_count": 0, "timeout": 0, "tag": "", "filtered_query_params": ""}),
        );
        assert!(check_preheat(&ok).is_ok());
        for (v, field) in [
            (json!({"type": "docker"}), "args.type"),
            (json!({"type": "image", "percentage": 0}), "args.percentage"),
            (json!({"type": "image", "count": 100000}), "args.count"),
            (json!({"type": "image", "ips": []}), "args.ips"),
            (json!({"type": "image", "ips": ["nope"]}), "args.ips"),
            (
                json!({"type": "image", "piece_length": 1}),
                "args.piece_length",
            ),
            (
                json!({"type": "image", "concurrent_task_count": 101}),
                "args.concurrent_task_count",
            ),
            (json!({"type": "image", "scope": "everyone"}), "args.scope"),
            (json!({"type": "image", "timeout": -1}), "args.timeout"),
            (
                json!({"type": "file", "object_storage": {"vendor": "s3"}}),
                "args.object_storage",
            ),
        ] {
            let e = check_preheat(&args(v.clone())).unwrap_err();
            assert_eq!(e.status, 422);
            assert!(e.message.starts_with(field), "{v}: {}", e.message);
        }
    }

    #[test]
    fn requests_are_checked_without_the_network() {
        assert_eq!(
            check_request(br#"{"type":"get_task","args":{"task_id":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}"#).unwrap(),
            "get_task"
        );
        for (body, field) in [
            (&b"not json"[..], "body"),
            (
                br#"{"type":"preheat","args":{"type":"image","url":"x"}}"#,
                "args.url",
            ),
            (
                br#"{"type":"preheat","args":{"type":"file","platform":"x"}}"#,
                "args.platform",
            ),
            (br#"{"type":"x"}"#, "type"),
        ] {
            let e = check_request(body).unwrap_err();
            assert!(e.message.starts_with(field), "{}", e.message);
        }
    }

    #[test]
    fn the_rate_limiter_allows_its_rate_then_refuses() {
        let r = RateLimiter::default();
        assert!((0..3).all(|_| r.take(1, 3)));
        assert!(!r.take(1, 3));
        assert!(r.take(2, 3), "buckets are per cluster");
    }

    #[test]
    fn authorization_is_hidden_from_shown_args() {
        let mut h = BTreeMap::new();
        h.insert("Authorization".to_string(), "Bearer secret".to_string());
        h.insert("X-Other".to_string(), "v".to_string());
        let r = redacted(&h);
        assert_eq!(r["Authorization"], "<redacted>");
        assert_eq!(r["X-Other"], "<redacted>");
    }
}
