//! `TestOrigin`: an in-process HTTP/1.1 origin on 127.0.0.1 that serves registered objects with
//! Range support and fault knobs, and records every request.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{Error, Result};

/// Per-object fault knobs. The default serves the bytes normally.
#[derive(Debug, Clone, Default)]
pub struct ObjectOptions {
    /// Answer every request for the object with this status and body (no Range handling;
    /// `extra_headers` are added, e.g. a `Location` for a redirect).
    pub status_override: Option<(u16, Bytes)>,
    /// Ignore `Range`: always `200` with the full body.
    pub no_range: bool,
    /// Send the body at about this many bytes per second.
    pub bytes_per_sec: Option<u64>,
    /// Bytes at or beyond this offset are held back until [`TestOrigin::release`]: a request
    /// whose range starts there hangs before the response headers; a request whose range spans
    /// the offset gets headers and the bytes before it, then hangs mid-body.
    pub stall_from_offset: Option<u64>,
    /// The first response whose body spans this offset sends the bytes before it and then
    /// ends the connection (a transfer that breaks off); later responses are whole.
    pub break_once_at: Option<u64>,
    /// Extra response headers (e.g. `ETag`, `Docker-Content-Digest`).
    pub extra_headers: Vec<(String, String)>,
}

/// One request as the origin saw it.
#[derive(Debug, Clone)]
pub struct OriginRequest {
    pub method: String,
    /// Path without the query.
    pub path: String,
    pub query: Option<String>,
    /// The `Range` header value, if any.
    pub range: Option<String>,
    /// All request headers (names lower-case), in arrival order.
    pub headers: Vec<(String, String)>,
    /// The status the origin answered (or will answer, for a stalled request).
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

impl OriginRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a `Range` header asks of a body of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// No usable range: serve `200` with the whole body. Also for malformed, non-`bytes` and
    /// multi-range headers, which a server may ignore (RFC 9110 14.2).
    Full,
    /// Serve `206` with bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// Serve `416` with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Interprets a `Range` header for a body of `len` bytes.
pub fn parse_range(header: Option<&str>, len: u64) -> RangeOutcome {
    let Some(h) = header else {
        return RangeOutcome::Full;
    };
    let h = h.trim();
    let Some((unit, spec)) = h.split_once('=') else {
        return RangeOutcome::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeOutcome::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeOutcome::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if a.is_empty() {
        // Suffix range: the last n bytes.
        let Some(n) = digits(b).then(|| b.parse::<u64>().ok()).flatten() else {
            return RangeOutcome::Full;
        };
        if n == 0 || len == 0 {
            return RangeOutcome::Unsatisfiable;
        }
        return RangeOutcome::Partial {
            start: len.saturating_sub(n),
            end: len - 1,
        };
    }
    let Some(start) = digits(a).then(|| a.parse::<u64>().ok()).flatten() else {
        return RangeOutcome::Full;
    };
    let end = if b.is_empty() {
        None
    } else {
        match digits(b).then(|| b.parse::<u64>().ok()).flatten() {
            Some(e) if e >= start => Some(e),
            _ => return RangeOutcome::Full,
        }
    };
    if start >= len {
        return RangeOutcome::Unsatisfiable;
    }
    RangeOutcome::Partial {
        start,
        end: end.map_or(len - 1, |e| e.min(len - 1)),
    }
}

struct Object {
    body: Bytes,
    opts: ObjectOptions,
    released: watch::Sender<bool>,
    /// A response was broken off at `opts.break_once_at`.
    broke: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Default)]
struct Shared {
    objects: Mutex<HashMap<String, Object>>,
    log: Mutex<Vec<OriginRequest>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An HTTP origin for tests (plain HTTP/1.1 on 127.0.0.1, an ephemeral port).
///
/// Serves `GET`/`HEAD` of registered paths (exact match, query ignored) with `Content-Length`,
/// `Accept-Ranges: bytes`, single-range `206` + `Content-Range`, and `416` for unsatisfiable
/// ranges; `404` for unknown paths, `405` for other methods. Runs on the caller's tokio runtime
/// (use a multi-thread runtime if the test blocks its thread); stops on drop.
pub struct TestOrigin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for TestOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestOrigin")
            .field("addr", &self.addr)
            .finish()
    }
}

impl TestOrigin {
    /// Starts the origin on 127.0.0.1 (port chosen by the kernel).
    pub async fn start() -> Result<TestOrigin> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| Error::io("bind", "127.0.0.1:0", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("local_addr", "127.0.0.1:0", e))?;
        let shared = Arc::new(Shared::default());
        let server = tokio::spawn(serve(listener, shared.clone()));
        Ok(TestOrigin {
            addr,
            shared,
            server,
        })
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:<port><path>` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Serves `body` at `path` with default options (replacing what was there).
    pub fn put(&self, path: &str, body: impl Into<Bytes>) {
        self.put_with(path, body, ObjectOptions::default());
    }

    /// Serves `body` at `path` with `opts` (replacing what was there; not released).
    pub fn put_with(&self, path: &str, body: impl Into<Bytes>, opts: ObjectOptions) {
        let (released, _) = watch::channel(false);
        lock(&self.shared.objects).insert(
            path.to_string(),
            Object {
                body: body.into(),
                opts,
                released,
                broke: Arc::default(),
            },
        );
    }

    /// Changes the options of `path` (the object must exist). Re-arms a stall: the object is
    /// no longer released.
    pub fn update(&self, path: &str, f: impl FnOnce(&mut ObjectOptions)) {
        let mut objects = lock(&self.shared.objects);
        let obj = objects
            .get_mut(path)
            .unwrap_or_else(|| panic!("TestOrigin::update: no object at {path}"));
        f(&mut obj.opts);
        obj.released.send_replace(false);
    }

    /// Stops serving `path` (later requests get 404).
    pub fn remove(&self, path: &str) {
        lock(&self.shared.objects).remove(path);
    }

    /// Lets stalled requests for `path` (and later ones) through.
    pub fn release(&self, path: &str) {
        if let Some(obj) = lock(&self.shared.objects).get(path) {
            obj.released.send_replace(true);
        }
    }

    /// [`release`](Self::release) for every object.
    pub fn release_all(&self) {
        for obj in lock(&self.shared.objects).values() {
            obj.released.send_replace(true);
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<OriginRequest> {
        lock(&self.shared.log).clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    /// How many requests (any method) arrived for `path`.
    pub fn requests_for(&self, path: &str) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// The `Range` header of each `GET` for `path`, in arrival order.
    pub fn ranges_for(&self, path: &str) -> Vec<Option<String>> {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.path == path && r.method == "GET")
            .map(|r| r.range.clone())
            .collect()
    }
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.server.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    crate::http_server::serve(listener, shared, handle).await
}

/// The response body: a fixed buffer, or bytes fed by a producer task (throttled / stalled).
pub(crate) enum OriginBody {
    Full(Option<Bytes>),
    Channel {
        rx: mpsc::Receiver<Bytes>,
        remaining: u64,
    },
}

impl OriginBody {
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        OriginBody::Full(Some(b.into()))
    }
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            OriginBody::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            OriginBody::Channel { rx, remaining } => match rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => {
                    *remaining = remaining.saturating_sub(b.len() as u64);
                    Poll::Ready(Some(Ok(Frame::data(b))))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OriginBody::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            OriginBody::Channel { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OriginBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            OriginBody::Channel { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}

fn simple(status: StatusCode, body: impl Into<Bytes>) -> Response<OriginBody> {
    let body = body.into();
    let mut resp = Response::new(OriginBody::full(body.clone()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, body.len().into());
    resp
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> std::result::Result<Response<OriginBody>, Infallible> {
    let (parts, body) = req.into_parts();
    // Drain any request body so keep-alive works; the origin ignores it.
    let _ = body.collect().await;
    let path = parts.uri.path().to_string();
    let range = parts
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut record = OriginRequest {
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_string),
        range: range.clone(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        status: 0,
        at: Instant::now(),
    };
    let mut log = |status: StatusCode| {
        record.status = status.as_u16();
        lock(&shared.log).push(record.clone());
    };

    let found = lock(&shared.objects).get(&path).map(|o| {
        (
            o.body.clone(),
            o.opts.clone(),
            o.released.subscribe(),
            o.broke.clone(),
        )
    });
    let Some((body, opts, mut released, broke)) = found else {
        log(StatusCode::NOT_FOUND);
        return Ok(simple(StatusCode::NOT_FOUND, "not found\n"));
    };
    if let Some((code, text)) = &opts.status_override {
        let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        log(status);
        let mut resp = simple(status, text.clone());
        for (k, v) in &opts.extra_headers {
            if let (Ok(k), Ok(v)) = (
                header::HeaderName::from_bytes(k.as_bytes()),
                header::HeaderValue::from_str(v),
            ) {
                resp.headers_mut().append(k, v);
            }
        }
        return Ok(resp);
    }
    let is_head = parts.method == Method::HEAD;
    if parts.method != Method::GET && !is_head {
        log(StatusCode::METHOD_NOT_ALLOWED);
        return Ok(simple(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n",
        ));
    }

    let len = body.len() as u64;
    let outcome = if opts.no_range {
        RangeOutcome::Full
    } else {
        parse_range(range.as_deref(), len)
    };
    let (status, start, end_excl) = match outcome {
        RangeOutcome::Full => (StatusCode::OK, 0, len),
        RangeOutcome::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end + 1),
        RangeOutcome::Unsatisfiable => {
            log(StatusCode::RANGE_NOT_SATISFIABLE);
            let mut resp = simple(StatusCode::RANGE_NOT_SATISFIABLE, "");
            if let Ok(v) = format!("bytes */{len}").parse() {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    log(status);

    // A request that starts in the held-back region waits before any byte of the response.
    if let Some(off) = opts.stall_from_offset {
        if start >= off && !is_head && start < end_excl {
            let _ = released.wait_for(|r| *r).await;
        }
    }

    let count = end_excl - start;
    let cut = opts.break_once_at.filter(|o| {
        !is_head
            && start < *o
            && *o < end_excl
            && !broke.swap(true, std::sync::atomic::Ordering::AcqRel)
    });
    let body_out = if let Some(cut) = cut {
        let (tx, rx) = mpsc::channel(4);
        let before = body.slice(start as usize..cut as usize);
        tokio::spawn(async move {
            for c in before.chunks(256 * 1024) {
                if tx.send(before.slice_ref(c)).await.is_err() {
                    return;
                }
            }
        });
        OriginBody::Channel {
            rx,
            remaining: count,
        }
    } else if is_head || count == 0 {
        OriginBody::Full(None)
    } else if opts.bytes_per_sec.is_none() && opts.stall_from_offset.is_none_or(|o| o >= end_excl) {
        OriginBody::full(body.slice(start as usize..end_excl as usize))
    } else {
        let (tx, rx) = mpsc::channel(4);
        let slice = body.slice(start as usize..end_excl as usize);
        tokio::spawn(produce(slice, start, opts.clone(), released, tx));
        OriginBody::Channel {
            rx,
            remaining: count,
        }
    };
    let mut resp = Response::new(body_out);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, count.into());
    h.insert(
        header::ACCEPT_RANGES,
        http::HeaderValue::from_static("bytes"),
    );
    h.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = format!("bytes {}-{}/{}", start, end_excl - 1, len).parse() {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    for (k, v) in &opts.extra_headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::try_from(k.as_str()),
            http::HeaderValue::try_from(v.as_str()),
        ) {
            h.append(k, v);
        }
    }
    Ok(resp)
}

/// Feeds `data` (which starts at object offset `base`) into `tx`, pacing it to
/// `opts.bytes_per_sec` and holding back bytes at or beyond `opts.stall_from_offset` until
/// released. Stops when the receiver goes away (client disconnected).
async fn produce(
    data: Bytes,
    base: u64,
    opts: ObjectOptions,
    mut released: watch::Receiver<bool>,
    tx: mpsc::Sender<Bytes>,
) {
    let chunk = match opts.bytes_per_sec {
        Some(bps) => (bps / 20).clamp(1, 256 * 1024),
        None => 256 * 1024,
    } as usize;
    let started = Instant::now();
    let mut sent = 0usize;
    while sent < data.len() {
        let offset = base + sent as u64;
        let mut n = chunk.min(data.len() - sent);
        if let Some(stall) = opts.stall_from_offset {
            if offset >= stall && !*released.borrow() {
                tokio::select! {
                    _ = released.wait_for(|r| *r) => {}
                    _ = tx.closed() => return,
                }
            } else if offset < stall {
                // Stop this chunk at the stall offset.
                n = n.min((stall - offset) as usize);
            }
        }
        if let Some(bps) = opts.bytes_per_sec.filter(|b| *b > 0) {
            let due = started + Duration::from_secs_f64(sent as f64 / bps as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        if tx.send(data.slice(sent..sent + n)).await.is_err() {
            return;
        }
        sent += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeOutcome::*;

    #[test]
    fn range_parsing() {
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(
            parse_range(Some("bytes=0-4"), 10),
            Partial { start: 0, end: 4 }
        );
        assert_eq!(
            parse_range(Some("bytes=5-"), 10),
            Partial { start: 5, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=5-100"), 10),
            Partial { start: 5, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-3"), 10),
            Partial { start: 7, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=-30"), 10),
            Partial { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(Some(" Bytes = 2 - 3 "), 10),
            Partial { start: 2, end: 3 }
        );
        assert_eq!(
            parse_range(Some("bytes=9-9"), 10),
            Partial { start: 9, end: 9 }
        );
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=10-20"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-5"), 0), Unsatisfiable);
        // Ignored: malformed, reversed, other units, multiple ranges.
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Full);
        assert_eq!(parse_range(Some("bytes=a-2"), 10), Full);
        assert_eq!(parse_range(Some("bytes=+1-2"), 10), Full);
        assert_eq!(parse_range(Some("bytes=-"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse_range(Some("bytes 0-1"), 10), Full);
        assert_eq!(
            parse_range(Some("bytes=99999999999999999999999-"), 10),
            Full
        );
    }

    fn client() -> reqwest::Client {
        crate::http_client()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_ranges_and_records_requests() {
        let origin = TestOrigin::start().await.expect("start");
        let data = crate::random_bytes(3, 1000);
        origin.put("/blob", data.clone());
        let c = client();

        let r = c.get(origin.url("/blob?x=1")).send().await.expect("get");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-length"], "1000");
        assert_eq!(r.bytes().await.expect("body"), &data[..]);

        let r = c
            .get(origin.url("/blob"))
            .header("Range", "bytes=10-19")
            .send()
            .await
            .expect("get range");
        assert_eq!(r.status(), 206);
        assert_eq!(r.headers()["content-range"], "bytes 10-19/1000");
        assert_eq!(r.bytes().await.expect("body"), &data[10..20]);

        let r = c
            .get(origin.url("/blob"))
            .header("Range", "bytes=1000-")
            .send()
            .await
            .expect("get 416");
        assert_eq!(r.status(), 416);
        assert_eq!(r.headers()["content-range"], "bytes */1000");

        let r = c.head(origin.url("/blob")).send().await.expect("head");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-length"], "1000");

        let r = c.get(origin.url("/nope")).send().await.expect("404");
        assert_eq!(r.status(), 404);

        assert_eq!(origin.requests_for("/blob"), 4);
        assert_eq!(
            origin.ranges_for("/blob"),
            vec![None, Some("bytes=10-19".into()), Some("bytes=1000-".into())]
        );
        let first = &origin.requests()[0];
        assert_eq!(first.query.as_deref(), Some("x=1"));
        assert!(first.header("host").is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn knobs_status_no_range_throttle_and_stall() {
        let origin = TestOrigin::start().await.expect("start");
        let data = crate::random_bytes(4, 100_000);
        let c = client();

        origin.put_with(
            "/err",
            data.clone(),
            ObjectOptions {
                status_override: Some((500, Bytes::from_static(b"boom"))),
                ..Default::default()
            },
        );
        let r = c.get(origin.url("/err")).send().await.expect("get");
        assert_eq!(r.status(), 500);
        assert_eq!(r.bytes().await.expect("body"), &b"boom"[..]);

        origin.put_with(
            "/norange",
            data.clone(),
            ObjectOptions {
                no_range: true,
                ..Default::default()
            },
        );
        let r = c
            .get(origin.url("/norange"))
            .header("Range", "bytes=0-9")
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.expect("body").len(), 100_000);

        origin.put_with(
            "/slow",
            data.clone(),
            ObjectOptions {
                bytes_per_sec: Some(200_000),
                ..Default::default()
            },
        );
        let t = Instant::now();
        let body = c
            .get(origin.url("/slow"))
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert_eq!(body, &data[..]);
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );

        // Stall: a range starting past the offset hangs; one spanning it delivers the prefix.
        origin.put_with(
            "/stall",
            data.clone(),
            ObjectOptions {
                stall_from_offset: Some(50_000),
                ..Default::default()
            },
        );
        let after = c
            .get(origin.url("/stall"))
            .header("Range", "bytes=60000-60099")
            .send();
        assert!(tokio::time::timeout(Duration::from_millis(300), after)
            .await
            .is_err());
        let mut spanning = c.get(origin.url("/stall")).send().await.expect("headers");
        assert_eq!(spanning.status(), 200);
        let mut got = Vec::new();
        while got.len() < 50_000 {
            let chunk = spanning.chunk().await.expect("chunk").expect("more");
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got.len(), 50_000, "exactly the bytes before the stall");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), spanning.chunk())
                .await
                .is_err(),
            "must stall at the offset"
        );
        origin.release("/stall");
        while let Some(chunk) = spanning.chunk().await.expect("chunk") {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, data);
        let r = c
            .get(origin.url("/stall"))
            .header("Range", "bytes=60000-60099")
            .send()
            .await
            .expect("released");
        assert_eq!(r.bytes().await.expect("body"), &data[60_000..60_100]);
    }
}
