//! Registry mirror and HTTP proxy (hyper). Mirror mode serves origin-form
//! requests from containerd (`hosts.toml`); forward-proxy mode serves
//! absolute-URI requests (`curl -x`); `CONNECT` is tunnelled. GETs matching a
//! rule go through the piece store; everything else is streamed through.

mod fast;
pub mod range;

use crate::backend::{strip_hop_by_hop, Backend};
use crate::config;
use crate::download::{DownloadRequest, Engine, OriginReply, Started};
use bytes::Bytes;
use common::id::{self, BlobDigest};
use futures_util::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use regex::Regex;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

pub type Body = BoxBody<Bytes, std::io::Error>;

pub const HEADER_REGISTRY: &str = "x-dragonfly-registry";
pub const HEADER_TAG: &str = "x-dragonfly-tag";
pub const HEADER_APPLICATION: &str = "x-dragonfly-application";
pub const HEADER_FILTERED_QUERY_PARAMS: &str = "x-dragonfly-filtered-query-params";
pub const HEADER_USE_P2P: &str = "x-dragonfly-use-p2p";
pub const HEADER_PIECE_LENGTH: &str = "x-dragonfly-piece-length";
pub const HEADER_TASK_ID: &str = "x-dragonfly-task-id";
pub const HEADER_TASK_FINISHED: &str = "x-dragonfly-task-download-finished";
pub const HEADER_ERROR_TYPE: &str = "x-dragonfly-error-type";
pub const HEADER_BLOB_DIGEST_MODE: &str = "x-dragonfly-enable-task-id-based-blob-digest";

struct Rule {
    regex: Regex,
    use_tls: bool,
    redirect: Option<String>,
    filtered: Vec<String>,
}

/// Proxy state shared by all connections.
pub struct Proxy {
    engine: Arc<Engine>,
    rules: Vec<Rule>,
    mirror_addr: String,
    blob_digest_ids: bool,
    allowed: Vec<String>,
    read_buffer: usize,
    max_head: usize,
}

fn body_full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn text(status: StatusCode, error_type: &'static str, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    msg.push('\n');
    let mut r = Response::new(body_full(msg));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(HEADER_ERROR_TYPE, HeaderValue::from_static(error_type));
    r
}

/// Maps containerd's `ns=` value (a registry host) to the registry's URL.
pub fn registry_from_ns(ns: &str) -> String {
    if ns.contains("://") {
        return ns.trim_end_matches('/').to_string();
    }
    match ns {
        "docker.io" | "index.docker.io" => "https://registry-1.docker.io".into(),
        _ => format!("https://{ns}"),
    }
}

/// Whether `host` (`host[:port]`) is allowed by a pattern list; empty allows all.
pub fn host_allowed(allowed: &[String], host: &str, port: u16) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let with_port = format!("{host}:{port}");
    allowed.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        let (pat_host, pat_port) = match p.rsplit_once(':') {
            Some((h, pt)) if pt.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty() => {
                (h.to_string(), Some(pt.to_string()))
            }
            _ => (p.clone(), None),
        };
        if let Some(pt) = &pat_port {
            if *pt != port.to_string() {
                return false;
            }
        }
        let target = if pat_port.is_some() {
            &with_port
        } else {
            &host
        };
        let target_host = target.split(':').next().unwrap_or("");
        match pat_host.strip_prefix("*.") {
            Some(suffix) => target_host.ends_with(&format!(".{suffix}")),
            None => target_host == pat_host,
        }
    })
}

impl Proxy {
    pub fn new(cfg: &config::Proxy, storage: &config::Storage, engine: Arc<Engine>) -> Proxy {
        let rules = cfg
            .rules
            .iter()
            .filter_map(|r| {
                Some(Rule {
                    regex: Regex::new(&r.regex).ok()?,
                    use_tls: r.use_tls,
                    redirect: r.redirect.clone(),
                    filtered: r
                        .filtered_query_params
                        .clone()
                        .unwrap_or_else(id::default_filtered_query_params),
                })
            })
            .collect();
        Proxy {
            engine,
            rules,
            mirror_addr: cfg.registry_mirror.addr.trim_end_matches('/').to_string(),
            blob_digest_ids: cfg.registry_mirror.enable_task_id_based_blob_digest,
            allowed: cfg.allowed_registries.clone(),
            read_buffer: storage.read_buffer_size.as_u64() as usize,
            max_head: cfg.max_request_head_size.as_u64() as usize,
        }
    }

    fn backend(&self) -> &Backend {
        self.engine.backend()
    }

    /// Accepts connections until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(fast::serve(self.clone(), stream, peer));
        }
    }

    /// Serves a connection with hyper (everything but the fast path). With `first`, the
    /// first request (which the fast path read and started) is answered so.
    async fn serve_hyper(
        self: Arc<Self>,
        io: fast::Rewind,
        peer: SocketAddr,
        first: Option<fast::First>,
    ) {
        let max_head = self.max_head;
        let first = Arc::new(std::sync::Mutex::new(first));
        let svc = hyper::service::service_fn(move |req| {
            let this = self.clone();
            let first = first.lock().unwrap_or_else(|p| p.into_inner()).take();
            async move {
                let resp = match first {
                    None => this.handle(req, peer).await,
                    Some(fast::First::Respond(resp)) => resp,
                    Some(fast::First::Forward(url)) => this.forward(req, url).await,
                };
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let r = hyper::server::conn::http1::Builder::new()
            .max_buf_size(max_head)
            .serve_connection(TokioIo::new(io), svc)
            .with_upgrades()
            .await;
        if let Err(e) = r {
            tracing::debug!(%peer, error = %e, "proxy connection ended with error");
        }
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        tracing::debug!(%peer, method = %req.method(), uri = %req.uri(), "proxy request");
        match self.plan(req.method(), req.uri(), req.headers()) {
            Plan::Tunnel => self.tunnel(req).await,
            Plan::Forward(url) => self.forward(req, url).await,
            Plan::Store(p) => self.via_store(req, p).await,
            Plan::Reply {
                status,
                outcome,
                message,
            } => {
                self.engine.metrics().proxy_outcome(outcome);
                text(status, "proxy", message)
            }
        }
    }

    /// Decides what to do with a request, from its head alone.
    fn plan(&self, method: &Method, uri: &http::Uri, headers: &HeaderMap) -> Plan {
        let reply = |status, outcome, message: String| Plan::Reply {
            status,
            outcome,
            message,
        };
        if method == Method::CONNECT {
            return Plan::Tunnel;
        }
        let url = match self.target_url(uri, headers) {
            Ok(u) => u,
            Err(msg) => return reply(StatusCode::BAD_REQUEST, "bad_request", msg),
        };
        let Some(host) = url.host_str().map(str::to_string) else {
            return reply(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("no host in {url}"),
            );
        };
        let port = url.port_or_known_default().unwrap_or(80);
        if !host_allowed(&self.allowed, &host, port) {
            tracing::info!(%host, port, "refused: not in proxy.allowedRegistries");
            return reply(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("{host}:{port} is not in proxy.allowedRegistries"),
            );
        }
        let no_query = {
            let mut u = url.clone();
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        };
        let rule = self.rules.iter().find(|r| r.regex.is_match(&no_query));
        let force_p2p = header_str(headers, HEADER_USE_P2P)
            .map(|v| v.eq_ignore_ascii_case("true"))
            .unwrap_or(false);
        let mut url = url;
        if let Some(r) = rule {
            if r.use_tls && url.scheme() == "http" {
                let _ = url.set_scheme("https");
            }
            if let Some(h) = &r.redirect {
                if url.set_host(Some(h)).is_err() {
                    return reply(
                        StatusCode::BAD_GATEWAY,
                        "error",
                        format!("proxy rule redirect {h:?} is not a valid host"),
                    );
                }
            }
        }
        if method != Method::GET || (rule.is_none() && !force_p2p) {
            return Plan::Forward(url);
        }
        let filtered = match header_str(headers, HEADER_FILTERED_QUERY_PARAMS) {
            Some(v) => v.split(',').map(|s| s.trim().to_string()).collect(),
            None => rule
                .map(|r| r.filtered.clone())
                .unwrap_or_else(id::default_filtered_query_params),
        };
        let url_s = url.to_string();
        let digest = BlobDigest::from_blob_url(&url_s);
        let blob_mode = header_str(headers, HEADER_BLOB_DIGEST_MODE)
            .map(|v| v.eq_ignore_ascii_case("true"))
            .unwrap_or(self.blob_digest_ids);
        let piece_length = match header_str(headers, HEADER_PIECE_LENGTH) {
            None => None,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if common::piece::valid_user_piece_length(n) => Some(n),
                _ => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("{HEADER_PIECE_LENGTH}: {v:?} must be a byte count from 4194304 (4 MiB) to 1073741824 (1 GiB)"),
                    )
                }
            },
        };
        let task_id = match (&digest, blob_mode) {
            (Some(d), true) => Ok(d.encoded.clone()),
            _ => id::url_task_id(&id::UrlTaskId {
                url: &url_s,
                tag: header_str(headers, HEADER_TAG),
                application: header_str(headers, HEADER_APPLICATION),
                piece_length,
                filtered_query_params: &filtered,
            }),
        };
        let task_id = match task_id {
            Ok(t) => t,
            Err(e) => return reply(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
        };
        let range = match header_str(headers, "range") {
            None => None,
            Some(v) => match range::parse(v) {
                Ok(r) => Some((r, v.to_string())),
                Err(e) => return reply(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
            },
        };
        Plan::Store(StorePlan {
            url,
            task_id,
            digest,
            piece_length,
            range,
        })
    }

    /// The origin URL a request is for.
    fn target_url(&self, uri: &http::Uri, headers: &HeaderMap) -> Result<url::Url, String> {
        let bad = |m: String| m;
        if uri.scheme().is_some() {
            // Forward-proxy mode: absolute URI.
            return url::Url::parse(&uri.to_string())
                .map_err(|e| bad(format!("invalid request URI {uri}: {e}")));
        }
        // Mirror mode: origin-form, upstream from header, ns= or config.
        let upstream = header_str(headers, HEADER_REGISTRY)
            .map(|s| s.trim_end_matches('/').to_string())
            .or_else(|| {
                uri.query().and_then(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "ns")
                        .map(|(_, v)| registry_from_ns(&v))
                })
            })
            .unwrap_or_else(|| self.mirror_addr.clone());
        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let u = url::Url::parse(&format!("{upstream}{pq}"))
            .map_err(|e| bad(format!("invalid upstream registry {upstream:?}: {e}")))?;
        if u.scheme() != "http" && u.scheme() != "https" {
            return Err(bad(format!(
                "upstream registry {upstream:?} is not http(s)"
            )));
        }
        Ok(u)
    }

    /// Headers to send to the origin.
    fn origin_headers(headers: &HeaderMap, for_store: bool) -> HeaderMap {
        let mut h = headers.clone();
        strip_hop_by_hop(&mut h);
        h.remove(http::header::HOST);
        let dragonfly: Vec<_> = h
            .keys()
            .filter(|k| k.as_str().starts_with("x-dragonfly-"))
            .cloned()
            .collect();
        for k in dragonfly {
            h.remove(k);
        }
        if for_store {
            // The store fetches its own ranges, uncompressed.
            h.remove(http::header::RANGE);
            h.remove(http::header::ACCEPT_ENCODING);
            h.remove(http::header::IF_RANGE);
            h.remove(http::header::IF_NONE_MATCH);
            h.remove(http::header::IF_MODIFIED_SINCE);
        }
        h
    }

    /// A Range request for a task that is neither complete in the store nor being
    /// downloaded whole: only the bytes asked for are fetched (range reads, shared with the
    /// lazy-loading runtime: Nydus's nydusd reading chunks through this proxy does not make it
    /// download whole blobs). `None` sends the request the whole-task way (complete or running
    /// tasks, ranges over 64 MiB, origins that refuse ranges, unsatisfiable ranges).
    async fn range_read(
        &self,
        dreq: &DownloadRequest,
        r: &range::ByteRange,
        raw: &str,
        digest: Option<&BlobDigest>,
    ) -> Option<Response<Body>> {
        let id = &dreq.task_id;
        if self.engine.store().get(id).is_some_and(|t| t.is_complete())
            || self.engine.is_downloading(id)
        {
            return None;
        }
        let lazy = match self.engine.open_lazy(dreq.clone()).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(task_id = %id, error = %e, "range read refused; whole-task download");
                return None;
            }
        };
        let (start, end) = r.resolve(lazy.len(), raw).ok()?;
        if end - start > MAX_RANGE_READ {
            return None;
        }
        let metrics = self.engine.metrics();
        match lazy.read(start, end - start, false).await {
            Ok(bytes) => {
                metrics.proxy_outcome("range_read");
                let meta = lazy.task().meta();
                let mut resp = Response::new(BodyExt::boxed(
                    http_body_util::Full::new(bytes::Bytes::from(bytes))
                        .map_err(|never| match never {}),
                ));
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                *resp.headers_mut() = content_headers(&Served {
                    meta: &meta,
                    start,
                    end,
                    partial: true,
                    digest,
                    task_id: id,
                    cached: false,
                });
                Some(resp)
            }
            Err(e) => {
                metrics.proxy_outcome("error");
                Some(text(failure_status(e.kind()), "backend", e.to_string()))
            }
        }
    }

    /// The download a store plan asks for.
    fn store_request(headers: &HeaderMap, p: &StorePlan) -> DownloadRequest {
        DownloadRequest {
            task_id: p.task_id.clone(),
            url: p.url.to_string(),
            headers: Self::origin_headers(headers, true),
            // The client's own credentials (in `headers`); dfdaemon's are never lent.
            auth: None,
            digest: p.digest.clone(),
            piece_length: p.piece_length,
            parents: Vec::new(),
            disable_back_to_source: false,
            need_back_to_source: false,
            reporter: None,
            parent_updates: None,
        }
    }

    /// Starts (or joins) the download of a store plan's task: the task to serve from (and
    /// whether it was complete already), or what to answer instead.
    async fn start_store(&self, dreq: DownloadRequest) -> StoreStart {
        let metrics = self.engine.metrics();
        match self.engine.start(dreq).await {
            Ok(Started::Stored { task, cached }) => StoreStart::Task { task, cached },
            Ok(Started::Origin(reply)) => {
                metrics.proxy_outcome("origin_error");
                StoreStart::Respond(origin_reply(reply))
            }
            Ok(Started::NotCacheable(Some(resp))) => {
                metrics.proxy_outcome("passthrough");
                StoreStart::Respond(stream_response(resp))
            }
            Ok(Started::NotCacheable(None)) => StoreStart::Forward,
            Err(e) => {
                metrics.proxy_outcome("error");
                StoreStart::Respond(text(failure_status(e.kind()), "backend", e.to_string()))
            }
        }
    }

    async fn via_store(&self, req: Request<Incoming>, p: StorePlan) -> Response<Body> {
        let dreq = Self::store_request(req.headers(), &p);
        let StorePlan {
            url,
            task_id,
            digest,
            range,
            ..
        } = p;
        if let Some((r, raw)) = &range {
            if let Some(resp) = self.range_read(&dreq, r, raw, digest.as_ref()).await {
                return resp;
            }
        }
        let metrics = self.engine.metrics().clone();
        let (task, cached) = match self.start_store(dreq).await {
            StoreStart::Task { task, cached } => (task, cached),
            StoreStart::Respond(resp) => return resp,
            StoreStart::Forward => return self.forward(req, url).await,
        };
        let len = task.content_length();
        let (start, end, partial) = match &range {
            None => (0, len, false),
            Some((r, raw)) => match r.resolve(len, raw) {
                Ok((a, b)) => (a, b, true),
                Err(e) => {
                    metrics.proxy_outcome("bad_request");
                    let mut resp = text(StatusCode::RANGE_NOT_SATISFIABLE, "proxy", e.to_string());
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                        resp.headers_mut().insert(http::header::CONTENT_RANGE, v);
                    }
                    return resp;
                }
            },
        };
        metrics.proxy_outcome(if cached {
            "cache_hit"
        } else {
            "back_to_source"
        });
        let meta = task.meta();
        let stream = task.read_range(start, end, self.read_buffer);
        let m2 = metrics.clone();
        let body = StreamBody::new(stream.map(move |r| match r {
            Ok(b) => {
                if cached {
                    m2.traffic("local_cache", b.len() as u64);
                }
                Ok(Frame::data(b))
            }
            Err(e) => {
                tracing::warn!(error = %e, "aborting response");
                Err(std::io::Error::other(e.to_string()))
            }
        }));
        let mut resp = Response::new(BodyExt::boxed(body));
        *resp.status_mut() = if partial {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        *resp.headers_mut() = content_headers(&Served {
            meta: &meta,
            start,
            end,
            partial,
            digest: digest.as_ref(),
            task_id: &task_id,
            cached,
        });
        resp
    }

    /// Streams a request to the origin and its response back, untouched.
    async fn forward(&self, req: Request<Incoming>, url: url::Url) -> Response<Body> {
        let metrics = self.engine.metrics().clone();
        let (parts, body) = req.into_parts();
        let headers = Self::origin_headers(&parts.headers, false);
        let has_body = parts.headers.contains_key(http::header::CONTENT_LENGTH)
            || parts.headers.contains_key(http::header::TRANSFER_ENCODING);
        let mut rb = self
            .backend()
            .client()
            .request(parts.method.clone(), url.as_str())
            .headers(headers);
        if has_body {
            rb = rb.body(reqwest::Body::wrap_stream(body.into_data_stream()));
        }
        match rb.send().await {
            Ok(resp) => {
                metrics.proxy_outcome("passthrough");
                stream_response(resp)
            }
            Err(e) => {
                metrics.proxy_outcome("error");
                text(
                    StatusCode::BAD_GATEWAY,
                    "backend",
                    format!("{url}: {}", crate::backend::error_chain(&e)),
                )
            }
        }
    }

    /// `CONNECT host:port`: opens a TCP tunnel (allowed hosts only).
    async fn tunnel(&self, req: Request<Incoming>) -> Response<Body> {
        let metrics = self.engine.metrics().clone();
        let Some(auth) = req.uri().authority().cloned() else {
            metrics.proxy_outcome("bad_request");
            return text(StatusCode::BAD_REQUEST, "proxy", "CONNECT needs host:port");
        };
        let port = auth.port_u16().unwrap_or(443);
        if !host_allowed(&self.allowed, auth.host(), port) {
            metrics.proxy_outcome("forbidden");
            return text(
                StatusCode::FORBIDDEN,
                "proxy",
                format!("{auth} is not in proxy.allowedRegistries"),
            );
        }
        let upstream = match tokio::net::TcpStream::connect((auth.host(), port)).await {
            Ok(s) => s,
            Err(e) => {
                metrics.proxy_outcome("error");
                return text(StatusCode::BAD_GATEWAY, "backend", format!("{auth}: {e}"));
            }
        };
        metrics.proxy_outcome("tunnel");
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(up) => {
                    let mut client = TokioIo::new(up);
                    let mut upstream = upstream;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
            }
        });
        Response::new(body_full(Bytes::new()))
    }
}

/// What a request routes to, decided from its head.
enum Plan {
    Tunnel,
    Forward(url::Url),
    Store(StorePlan),
    Reply {
        status: StatusCode,
        outcome: &'static str,
        message: String,
    },
}

/// How the download of a store plan started ([`Proxy::start_store`]).
enum StoreStart {
    Task {
        task: Arc<crate::storage::Task>,
        cached: bool,
    },
    /// Answer this instead.
    Respond(Response<Body>),
    /// The origin's answer cannot be cached and another request took it: forward this one.
    Forward,
}

/// A GET served through the piece store.
struct StorePlan {
    url: url::Url,
    task_id: String,
    digest: Option<BlobDigest>,
    piece_length: Option<u64>,
    range: Option<(range::ByteRange, String)>,
}

/// A response body cut from a stored task.
/// Largest Range answered by range reads; larger ones download the whole task.
const MAX_RANGE_READ: u64 = 64 << 20;

struct Served<'a> {
    meta: &'a crate::storage::TaskMeta,
    start: u64,
    end: u64,
    partial: bool,
    digest: Option<&'a BlobDigest>,
    task_id: &'a str,
    cached: bool,
}

/// Headers of a response served from the store.
fn content_headers(s: &Served<'_>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_LENGTH,
        HeaderValue::from(s.end - s.start),
    );
    h.insert(
        http::header::ACCEPT_RANGES,
        HeaderValue::from_static("bytes"),
    );
    let ct = s
        .meta
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    h.insert(http::header::CONTENT_TYPE, ct);
    if s.partial {
        let v = format!("bytes {}-{}/{}", s.start, s.end - 1, s.meta.content_length);
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(http::header::CONTENT_RANGE, v);
        }
    }
    if let Some(d) = s.digest {
        if let Ok(v) = HeaderValue::from_str(&d.to_string()) {
            h.insert("docker-content-digest", v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(s.task_id) {
        h.insert(HEADER_TASK_ID, v);
    }
    h.insert(
        HEADER_TASK_FINISHED,
        HeaderValue::from_static(if s.cached { "true" } else { "false" }),
    );
    h
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn origin_reply(r: OriginReply) -> Response<Body> {
    let mut resp = Response::new(body_full(r.body));
    *resp.status_mut() = r.status;
    let mut h = r.headers;
    strip_hop_by_hop(&mut h);
    h.remove(http::header::CONTENT_LENGTH);
    *resp.headers_mut() = h;
    resp
}

fn stream_response(resp: reqwest::Response) -> Response<Body> {
    let status = resp.status();
    let mut headers = resp.headers().clone();
    strip_hop_by_hop(&mut headers);
    let body = StreamBody::new(
        resp.bytes_stream()
            .map_ok(Frame::data)
            .map_err(|e| std::io::Error::other(crate::backend::error_chain(&e))),
    );
    let mut out = Response::new(BodyExt::boxed(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// The HTTP status of a failed download: a local failure is ours (500); the origin's, the
/// parents' or the content's is the upstream's (502).
fn failure_status(kind: crate::storage::FailureKind) -> StatusCode {
    match kind {
        crate::storage::FailureKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_GATEWAY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_maps_to_registry_url() {
        assert_eq!(
            registry_from_ns("docker.io"),
            "https://registry-1.docker.io"
        );
        assert_eq!(registry_from_ns("ghcr.io"), "https://ghcr.io");
        assert_eq!(
            registry_from_ns("http://127.0.0.1:5000/"),
            "http://127.0.0.1:5000"
        );
    }

    #[test]
    fn allowed_hosts() {
        let a: Vec<String> = vec![
            "registry.example.com".into(),
            "*.corp.net".into(),
            "127.0.0.1:5000".into(),
        ];
        assert!(host_allowed(&[], "anything", 80));
        assert!(host_allowed(&a, "registry.example.com", 443));
        assert!(host_allowed(&a, "REGISTRY.example.com", 80));
        assert!(host_allowed(&a, "a.corp.net", 443));
        assert!(!host_allowed(&a, "corp.net", 443));
        assert!(!host_allowed(&a, "evilcorp.net", 443));
        assert!(host_allowed(&a, "127.0.0.1", 5000));
        assert!(!host_allowed(&a, "127.0.0.1", 5001));
        assert!(!host_allowed(&a, "example.com", 443));
    }
}
