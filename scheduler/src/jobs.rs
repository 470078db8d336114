//! The scheduler's job service (`dragonfly_rs.jobs.v1.Jobs`), called by the manager: preheat
//! (each task downloaded on the hosts the scope selects, through `DfdaemonUpload.DownloadTask`),
//! which hosts hold a task, and deleting a task everywhere. Results stream back per host as
//! they happen.

use crate::service::SchedulerService;
use common::jobs_api::jobs_server::{Jobs, JobsServer};
use common::jobs_api::{
    preheat_event, DeleteTaskRequest, GetTaskRequest, GetTaskResponse, Host as JobHost, Hosts,
    PreheatEvent, PreheatRequest, PreheatTask, TaskResult,
};
use dragonfly_api::common::v2::{Download, Host, TaskType};
use dragonfly_api::dfdaemon::v2::dfdaemon_upload_client::DfdaemonUploadClient;
use dragonfly_api::dfdaemon::v2::{download_task_response, DownloadTaskRequest, StatTaskRequest};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Most tasks in one preheat.
pub const MAX_TASKS: usize = 10_000;
/// Most hosts asked at once by GetTask and DeleteTask.
const FAN_OUT: usize = 64;

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The job service over a scheduler's hosts.
#[derive(Clone)]
pub struct JobService {
    scheduler: SchedulerService,
    /// Mutual TLS to seed peers (`seedPeer.tls`) and to other peers (`peer.tls`).
    seed_tls: Option<Arc<common::tls::Tls>>,
    peer_tls: Option<Arc<common::tls::Tls>>,
}

impl JobService {
    /// A job service for the hosts `scheduler` knows.
    pub fn new(scheduler: SchedulerService) -> JobService {
        JobService {
            scheduler,
            seed_tls: None,
            peer_tls: None,
        }
    }

    /// Reaches seed peers with `seed` and other peers with `peer` over mutual TLS.
    pub fn with_tls(
        mut self,
        seed: Option<Arc<common::tls::Tls>>,
        peer: Option<Arc<common::tls::Tls>>,
    ) -> JobService {
        self.seed_tls = seed;
        self.peer_tls = peer;
        self
    }

    /// The TLS for host `h`: a seed peer's or another peer's.
    fn tls_for(&self, h: &Host) -> Option<Arc<common::tls::Tls>> {
        if h.r#type != 0 {
            self.seed_tls.clone()
        } else {
            self.peer_tls.clone()
        }
    }

    /// The tonic server.
    pub fn into_server(self) -> JobsServer<JobService> {
        JobsServer::new(self)
    }
}

fn job_host(h: &Host) -> JobHost {
    JobHost {
        hostname: h.hostname.clone(),
        ip: h.ip.clone(),
        id: h.id.clone(),
    }
}

/// Which hosts of `hosts` an all-* scope narrows to: `ips` (those asked for that exist), else
/// the first `count`, else `percentage` (at least one), else all. Also the asked IPs no host
/// has. Hosts are taken in hostname order, so a count is stable.
pub fn narrow(
    mut hosts: Vec<Host>,
    ips: &[String],
    count: Option<u32>,
    percentage: Option<u32>,
) -> (Vec<Host>, Vec<String>) {
    hosts.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.ip.cmp(&b.ip)));
    if !ips.is_empty() {
        let missing = ips
            .iter()
            .filter(|ip| !hosts.iter().any(|h| &h.ip == *ip))
            .cloned()
            .collect();
        hosts.retain(|h| ips.contains(&h.ip));
        return (hosts, missing);
    }
    if let Some(n) = count {
        hosts.truncate(n as usize);
    } else if let Some(p) = percentage {
        let n = (hosts.len() * p.min(100) as usize / 100).max(1);
        hosts.truncate(n);
    }
    (hosts, Vec::new())
}

/// The task ID a host gives `t`: the blob digest's hex for image blobs (as the mirror does),
/// else Dragonfly's URL-based ID.
fn task_id(t: &PreheatTask, r: &PreheatRequest) -> Result<String, String> {
    if let Some(d) = common::id::BlobDigest::parse(&t.digest) {
        if common::id::BlobDigest::from_blob_url(&t.url).is_some() {
            return Ok(d.encoded);
        }
    }
    let filtered = if r.filtered_query_params.is_empty() {
        common::id::default_filtered_query_params()
    } else {
        r.filtered_query_params.clone()
    };
    common::id::url_task_id(&common::id::UrlTaskId {
        url: &t.url,
        tag: Some(r.tag.as_str()).filter(|s| !s.is_empty()),
        application: Some(r.application.as_str()).filter(|s| !s.is_empty()),
        piece_length: (r.piece_length > 0).then_some(r.piece_length),
        filtered_query_params: &filtered,
    })
    .map_err(|e| format!("{}: {e}", t.url))
}

fn download_of(t: &PreheatTask, r: &PreheatRequest, timeout: Duration) -> Download {
    Download {
        url: t.url.clone(),
        digest: (!t.digest.is_empty()).then(|| t.digest.clone()),
        r#type: TaskType::Standard as i32,
        tag: Some(r.tag.clone()),
        application: Some(r.application.clone()),
        piece_length: (r.piece_length > 0).then_some(r.piece_length),
        filtered_query_params: r.filtered_query_params.clone(),
        request_header: r.headers.clone(),
        timeout: prost_wkt_types::Duration::try_from(timeout).ok(),
        enable_task_id_based_blob_digest: !t.digest.is_empty(),
        ..Default::default()
    }
}

/// One connection to a host's upload service (HTTP/2: every download of a job to that host
/// shares it), made when first used.
fn channel_to(
    h: &Host,
    tls: Option<&common::tls::Tls>,
) -> Result<tonic::transport::Channel, String> {
    let addr = std::net::SocketAddr::new(
        h.ip.parse()
            .map_err(|e| format!("host {} has IP {:?}: {e}", h.id, h.ip))?,
        u16::try_from(h.port).map_err(|_| format!("host {} has port {}", h.id, h.port))?,
    );
    let section = if h.r#type != 0 {
        "seedPeer.tls"
    } else {
        "peer.tls"
    };
    Ok(common::tls::endpoint(&addr.to_string(), tls, section)?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy())
}

fn upload_client(
    h: &Host,
    tls: Option<&common::tls::Tls>,
) -> Result<DfdaemonUploadClient<tonic::transport::Channel>, String> {
    Ok(DfdaemonUploadClient::new(channel_to(h, tls)?))
}

/// Downloads `d` over `channel` (to one host) to the end; the content length.
async fn download_on(channel: tonic::transport::Channel, d: Download) -> Result<u64, String> {
    let mut c = DfdaemonUploadClient::new(channel);
    let mut s = c
        .download_task(DownloadTaskRequest { download: Some(d) })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let mut length = 0;
    while let Some(m) = s.message().await.map_err(|e| e.message().to_string())? {
        if let Some(download_task_response::Response::DownloadTaskStartedResponse(r)) = m.response {
            length = r.content_length;
        }
    }
    Ok(length)
}

impl JobService {
    /// The announced hosts of a kind.
    fn hosts(&self, seeds: bool) -> Vec<Host> {
        self.scheduler
            .announced_hosts()
            .into_iter()
            .filter(|h| (h.r#type != 0) == seeds)
            .collect()
    }

    /// Every announced host.
    fn all_hosts(&self) -> Vec<Host> {
        self.scheduler.announced_hosts()
    }
}

fn result(url: &str, h: &Host, task_id: &str, r: Result<u64, String>) -> TaskResult {
    let host = Some(job_host(h));
    match r {
        Ok(len) => TaskResult {
            url: url.into(),
            host,
            success: true,
            description: String::new(),
            content_length: len,
            task_id: task_id.into(),
        },
        Err(e) => TaskResult {
            url: url.into(),
            host,
            success: false,
            description: format!("task {task_id} failed: {e}"),
            content_length: 0,
            task_id: task_id.into(),
        },
    }
}

#[tonic::async_trait]
impl Jobs for JobService {
    type PreheatStream = EventStream<PreheatEvent>;

    async fn preheat(
        &self,
        request: Request<PreheatRequest>,
    ) -> Result<Response<Self::PreheatStream>, Status> {
        let r = request.into_inner();
        if r.tasks.is_empty() {
            return Err(Status::invalid_argument("tasks: nothing to preheat"));
        }
        if r.tasks.len() > MAX_TASKS {
            return Err(Status::invalid_argument(format!(
                "tasks: at most {MAX_TASKS}"
            )));
        }
        let mut ids = Vec::with_capacity(r.tasks.len());
        for t in &r.tasks {
            ids.push(task_id(t, &r).map_err(Status::invalid_argument)?);
        }
        let scope = r.scope.as_str();
        // Per task, the hosts that download it.
        let (plan, chosen, missing): (Vec<Arc<Vec<Host>>>, Vec<Host>, Vec<String>) = match scope {
            "all_peers" | "all_seed_peers" => {
                let seeds = scope == "all_seed_peers";
                let (hosts, missing) = narrow(self.hosts(seeds), &r.ips, r.count, r.percentage);
                if hosts.is_empty() && missing.is_empty() {
                    return Err(Status::failed_precondition(format!(
                        "no {} known to this scheduler",
                        if seeds { "seed peer is" } else { "peer is" }
                    )));
                }
                // One list shared by every task (a fleet's hosts are not copied per task).
                let shared = Arc::new(hosts.clone());
                (vec![shared; r.tasks.len()], hosts, missing)
            }
            // single_seed_peer, and (as Dragonfly) anything else, e.g. Harbor 2.12's single_peer.
            _ => {
                let seeds = self.hosts(true);
                let mut plan = Vec::with_capacity(ids.len());
                let mut chosen: Vec<Host> = Vec::new();
                for id in &ids {
                    let host = self
                        .scheduler
                        .seed_host_for(id)
                        .and_then(|hid| seeds.iter().find(|h| h.id == hid.as_str()).cloned())
                        .ok_or_else(|| {
                            Status::failed_precondition("no seed peer known to this scheduler")
                        })?;
                    if !chosen.iter().any(|c| c.id == host.id) {
                        chosen.push(host.clone());
                    }
                    plan.push(Arc::new(vec![host]));
                }
                (plan, chosen, Vec::new())
            }
        };
        let timeout = Duration::from_secs(if r.timeout_seconds == 0 {
            3600
        } else {
            r.timeout_seconds
        });
        let tasks_at_once = r.concurrent_task_count.clamp(1, 100) as usize;
        let hosts_at_once = r.concurrent_peer_count.clamp(1, 1000) as usize;
        let (tx, rx) = mpsc::channel::<Result<PreheatEvent, Status>>(256);
        let _ = tx
            .send(Ok(PreheatEvent {
                event: Some(preheat_event::Event::Hosts(Hosts {
                    hosts: chosen.iter().map(job_host).collect(),
                    missing_ips: missing,
                })),
            }))
            .await;
        tracing::info!(
            tasks = r.tasks.len(),
            hosts = chosen.len(),
            scope,
            "preheat started"
        );
        let closed = tx.clone();
        let mut channels = std::collections::HashMap::new();
        for h in &chosen {
            let c = channel_to(h, self.tls_for(h).as_deref()).map_err(Status::internal)?;
            channels.insert(h.id.clone(), c);
        }
        let channels = Arc::new(channels);
        let r = Arc::new(r);
        let task_slots = Arc::new(Semaphore::new(tasks_at_once));
        let work = async move {
            let mut all = tokio::task::JoinSet::new();
            for ((t, id), hosts) in r.tasks.iter().cloned().zip(ids).zip(plan) {
                let (r, tx, task_slots, channels) =
                    (r.clone(), tx.clone(), task_slots.clone(), channels.clone());
                all.spawn(async move {
                    let Ok(_slot) = task_slots.acquire_owned().await else {
                        return;
                    };
                    let host_slots = Arc::new(Semaphore::new(hosts_at_once));
                    let mut each = tokio::task::JoinSet::new();
                    for h in hosts.iter().cloned() {
                        let (t, id, tx, host_slots) =
                            (t.clone(), id.clone(), tx.clone(), host_slots.clone());
                        let channel = channels.get(&h.id).cloned();
                        let d = download_of(&t, &r, timeout);
                        each.spawn(async move {
                            let Ok(_slot) = host_slots.acquire_owned().await else {
                                return;
                            };
                            let out = match channel {
                                Some(c) => download_on(c, d).await,
                                None => Err("no connection to the host".to_string()),
                            };
                            if let Err(e) = &out {
                                tracing::warn!(url = %t.url, host = %h.hostname, error = %e, "preheat download failed");
                            }
                            let _ = tx
                                .send(Ok(PreheatEvent {
                                    event: Some(preheat_event::Event::Result(result(
                                        &t.url, &h, &id, out,
                                    ))),
                                }))
                                .await;
                        });
                    }
                    while each.join_next().await.is_some() {}
                });
            }
            let all_done = async { while all.join_next().await.is_some() {} };
            if tokio::time::timeout(timeout, all_done).await.is_err() {
                let _ = tx
                    .send(Err(Status::deadline_exceeded(format!(
                        "preheat did not finish within {}s",
                        timeout.as_secs()
                    ))))
                    .await;
            }
        };
        // The work stops when it is done or when the caller goes away (its downloads are
        // dropped; what they stored is resumed by the next preheat of the task).
        tokio::spawn(async move {
            tokio::select! {
                _ = work => {}
                _ = closed.closed() => tracing::info!("preheat caller went away; stopping"),
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        let id = request.into_inner().task_id;
        check_task_id(&id)?;
        let this = self.clone();
        let results = fan_out(self.all_hosts(), move |h| {
            let id = id.clone();
            let tls = this.tls_for(&h);
            async move {
                let mut c = upload_client(&h, tls.as_deref())?;
                match c
                    .stat_task(StatTaskRequest {
                        task_id: id.clone(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(t) => Ok(Some(t.into_inner().state == "Succeeded")),
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                    Err(s) => Err(s.message().to_string()),
                }
            }
        })
        .await;
        let mut out = GetTaskResponse::default();
        for (h, r) in results {
            match r {
                Ok(Some(true)) => out.hosts.push(job_host(&h)),
                Ok(_) => {}
                Err(e) => out.failures.push(TaskResult {
                    host: Some(job_host(&h)),
                    description: e,
                    ..Default::default()
                }),
            }
        }
        Ok(Response::new(out))
    }

    type DeleteTaskStream = EventStream<TaskResult>;

    async fn delete_task(
        &self,
        request: Request<DeleteTaskRequest>,
    ) -> Result<Response<Self::DeleteTaskStream>, Status> {
        let id = request.into_inner().task_id;
        check_task_id(&id)?;
        let hosts = self.all_hosts();
        let (tx, rx) = mpsc::channel(256);
        let this = self.clone();
        tokio::spawn(async move {
            let results = fan_out(hosts, {
                let id = id.clone();
                move |h| {
                    let id = id.clone();
                    let tls = this.tls_for(&h);
                    async move {
                        let mut c = upload_client(&h, tls.as_deref())?;
                        match c
                            .delete_task(dragonfly_api::dfdaemon::v2::DeleteTaskRequest {
                                task_id: id.clone(),
                                ..Default::default()
                            })
                            .await
                        {
                            Ok(_) => Ok(true),
                            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
                            Err(s) => Err(s.message().to_string()),
                        }
                    }
                }
            })
            .await;
            for (h, r) in results {
                let item = match r {
                    Ok(false) => continue,
                    Ok(true) => result("", &h, &id, Ok(0)),
                    Err(e) => result("", &h, &id, Err(e)),
                };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

fn check_task_id(id: &str) -> Result<(), Status> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "task_id: {id:?} is not a task ID (64 hex digits)"
        )))
    }
}

/// Runs `f` on every host, [`FAN_OUT`] at once; each host with its result.
async fn fan_out<F, Fut, T>(hosts: Vec<Host>, f: F) -> Vec<(Host, Result<T, String>)>
where
    F: Fn(Host) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
    T: Send + 'static,
{
    let slots = Arc::new(Semaphore::new(FAN_OUT));
    let mut set = tokio::task::JoinSet::new();
    for h in hosts {
        let fut = f(h.clone());
        let slots = slots.clone();
        set.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let r = tokio::time::timeout(Duration::from_secs(30), fut)
                .await
                .unwrap_or_else(|_| Err("no answer within 30s".into()));
            (h, r)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.0.hostname.cmp(&b.0.hostname));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, ip: &str) -> Host {
        Host {
            hostname: name.into(),
            ip: ip.into(),
            ..Default::default()
        }
    }

    #[test]
    fn scopes_narrow_by_ips_then_count_then_percentage() {
        let hosts: Vec<Host> = (1..=6)
            .map(|i| host(&format!("peer{i}"), &format!("10.0.0.{i}")))
            .collect();
        let names = |v: Vec<Host>| v.into_iter().map(|h| h.hostname).collect::<Vec<_>>();
        let (h, missing) = narrow(
            hosts.clone(),
            &["10.0.0.2".into(), "10.0.0.9".into()],
            Some(5),
            Some(100),
        );
        assert_eq!(names(h), ["peer2"]);
        assert_eq!(missing, ["10.0.0.9"]);
        let (h, _) = narrow(hosts.clone(), &[], Some(2), Some(100));
        assert_eq!(names(h), ["peer1", "peer2"]);
        let (h, _) = narrow(hosts.clone(), &[], Some(200), None);
        assert_eq!(h.len(), 6);
        let (h, _) = narrow(hosts.clone(), &[], None, Some(50));
        assert_eq!(names(h), ["peer1", "peer2", "peer3"]);
        let (h, _) = narrow(hosts.clone(), &[], None, Some(1));
        assert_eq!(names(h), ["peer1"], "at least one host");
        let (h, _) = narrow(hosts, &[], None, None);
        assert_eq!(h.len(), 6);
    }

    #[test]
    fn image_blobs_use_their_digest_as_task_id_and_files_their_url() {
        let r = PreheatRequest::default();
        let digest = format!("sha256:{}", "ab".repeat(32));
        let blob = PreheatTask {
            url: format!("http://reg:5000/v2/app/blobs/{digest}"),
            digest: digest.clone(),
        };
        assert_eq!(task_id(&blob, &r).unwrap(), "ab".repeat(32));
        let file = PreheatTask {
            url: "http://files/a.bin".into(),
            digest: String::new(),
        };
        let id = task_id(&file, &r).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, "ab".repeat(32));
        assert!(check_task_id(&id).is_ok());
        assert!(check_task_id("../etc").is_err());
    }
}
