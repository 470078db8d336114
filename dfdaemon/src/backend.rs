//! HTTP origin client: ranged GETs with per-request headers, manual redirect
//! handling (targets cached per task), system roots plus an optional CA.

use crate::config;
use crate::registry_auth::RegistryAuth;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 10;
/// Largest error body kept from an origin to pass back to the client.
pub const MAX_ERROR_BODY: usize = 1024 * 1024;

/// The end of a range to [`Backend::get`] that asks for everything from its start
/// (`bytes=N-`).
pub const OPEN_ENDED: u64 = u64::MAX;

/// Errors talking to an origin.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot build HTTP client: {0}")]
    Client(String),
    #[error("request to {url} failed: {message}")]
    Request { url: String, message: String },
    #[error("too many redirects from {url}")]
    TooManyRedirects { url: String },
    #[error("redirect from {url} has an invalid Location")]
    BadRedirect { url: String },
    #[error("{url}: {message}")]
    Auth { url: String, message: String },
}

/// Hop-by-hop headers never forwarded.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers (and those named by `Connection`).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
}

/// The origin client.
pub struct Backend {
    client: reqwest::Client,
    cache_redirects: bool,
    redirect_ttl: Duration,
    redirects: Mutex<HashMap<String, (String, Instant)>>,
}

fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Backend {
    pub fn new(cfg: &config::Backend) -> Result<Backend, BackendError> {
        install_crypto_provider();
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .http1_only();
        if let Some(ca) = &cfg.ca_cert {
            let pem = std::fs::read(ca)
                .map_err(|e| BackendError::Client(format!("{}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| BackendError::Client(format!("{}: {e}", ca.display())))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let client = b.build().map_err(|e| BackendError::Client(e.to_string()))?;
        Ok(Backend {
            client,
            cache_redirects: cfg.enable_cache_temporary_redirect,
            redirect_ttl: cfg.cache_temporary_redirect_ttl,
            redirects: Mutex::new(HashMap::new()),
        })
    }

    /// The underlying client (for pass-through requests).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    fn cached_target(&self, key: &str) -> Option<String> {
        let mut m = self.redirects.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(key) {
            Some((u, at)) if at.elapsed() < self.redirect_ttl => Some(u.clone()),
            Some(_) => {
                m.remove(key);
                None
            }
            None => None,
        }
    }

    fn remember_target(&self, key: &str, target: &str) {
        if !self.cache_redirects {
            return;
        }
        let mut m = self.redirects.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= 10_000 {
            m.retain(|_, (_, at)| at.elapsed() < self.redirect_ttl);
            if m.len() >= 10_000 {
                m.clear();
            }
        }
        m.insert(key.to_string(), (target.to_string(), Instant::now()));
    }

    /// Forgets a cached redirect target (e.g. it started failing).
    pub fn forget_target(&self, key: &str) {
        self.redirects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// GET `url` (optionally a byte range), following redirects. `cache_key`
    /// (the task ID) remembers the final target for later pieces. With `auth` (requests
    /// dfdaemon makes on its own behalf, never a proxied client's), a `401` of the origin is
    /// answered once ([`RegistryAuth::answer`]) and the request sent again. Returns the
    /// response of the final hop, whatever its status.
    pub async fn get(
        &self,
        cache_key: &str,
        url: &str,
        headers: &HeaderMap,
        auth: Option<&RegistryAuth>,
        range: Option<(u64, u64)>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, BackendError> {
        let (mut current, mut via_cache) = match self.cached_target(cache_key) {
            Some(t) => (t, true),
            None => (url.to_string(), false),
        };
        let origin_host = host_of(url);
        let mut headers = headers.clone();
        let auth = auth.filter(|_| !headers.contains_key(http::header::AUTHORIZATION));
        if let Some(h) = auth.and_then(|a| a.header()) {
            headers.insert(http::header::AUTHORIZATION, h);
        }
        let mut answered = false;
        for _ in 0..=MAX_REDIRECTS {
            let mut req_headers = headers.clone();
            if via_cache && host_of(&current) != origin_host {
                strip_credentials(&mut req_headers);
            }
            if let Some((start, end_incl)) = range {
                let value = if end_incl == OPEN_ENDED {
                    format!("bytes={start}-")
                } else {
                    format!("bytes={start}-{end_incl}")
                };
                req_headers.insert(
                    http::header::RANGE,
                    HeaderValue::from_str(&value)
                        .map_err(|e| BackendError::Client(e.to_string()))?,
                );
            }
            let mut rb = self.client.get(&current).headers(req_headers);
            if let Some(t) = timeout {
                rb = rb.timeout(t);
            }
            let resp = match rb.send().await {
                Ok(r) => r,
                Err(e) if via_cache => {
                    // A cached target may have expired at the origin: retry from the start.
                    tracing::debug!(task_id = cache_key, error = %e, "cached redirect target failed");
                    self.forget_target(cache_key);
                    current = url.to_string();
                    via_cache = false;
                    continue;
                }
                Err(e) => {
                    return Err(BackendError::Request {
                        url: current,
                        message: error_chain(&e),
                    })
                }
            };
            let status = resp.status();
            if let (StatusCode::UNAUTHORIZED, Some(a), false, false) =
                (status, auth, via_cache, answered)
            {
                if host_of(&current) == origin_host {
                    let value = self.answer(a, &resp, &current).await?;
                    headers.insert(http::header::AUTHORIZATION, value);
                    answered = true;
                    continue;
                }
            }
            if via_cache && (status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED)
            {
                self.forget_target(cache_key);
                current = url.to_string();
                via_cache = false;
                continue;
            }
            if matches!(
                status,
                StatusCode::MOVED_PERMANENTLY
                    | StatusCode::FOUND
                    | StatusCode::SEE_OTHER
                    | StatusCode::TEMPORARY_REDIRECT
                    | StatusCode::PERMANENT_REDIRECT
            ) {
                let loc = resp
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| BackendError::BadRedirect {
                        url: current.clone(),
                    })?;
                let next = url::Url::parse(&current)
                    .and_then(|base| base.join(loc))
                    .map_err(|_| BackendError::BadRedirect {
                        url: current.clone(),
                    })?
                    .to_string();
                if host_of(&next) != host_of(&current) {
                    // Never leak registry credentials to a storage backend.
                    strip_credentials(&mut headers);
                }
                // Only absolute targets are cached (a relative Location may depend on state).
                if loc.contains("://") {
                    self.remember_target(cache_key, &next);
                }
                current = next;
                continue;
            }
            return Ok(resp);
        }
        Err(BackendError::TooManyRedirects {
            url: url.to_string(),
        })
    }
}

impl Backend {
    /// `HEAD url` with `headers`, a `401` answered once with `auth`: the status the origin
    /// gives (a redirect is not followed; for a registry blob it means access is granted).
    pub async fn head(
        &self,
        url: &str,
        headers: &HeaderMap,
        auth: Option<&RegistryAuth>,
        timeout: Duration,
    ) -> Result<StatusCode, BackendError> {
        let mut headers = headers.clone();
        let auth = auth.filter(|_| !headers.contains_key(http::header::AUTHORIZATION));
        if let Some(h) = auth.and_then(|a| a.header()) {
            headers.insert(http::header::AUTHORIZATION, h);
        }
        let send = |headers: HeaderMap| async move {
            self.client
                .head(url)
                .headers(headers)
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| BackendError::Request {
                    url: url.to_string(),
                    message: error_chain(&e),
                })
        };
        let resp = send(headers.clone()).await?;
        let (StatusCode::UNAUTHORIZED, Some(a)) = (resp.status(), auth) else {
            return Ok(resp.status());
        };
        let value = self.answer(a, &resp, url).await?;
        headers.insert(http::header::AUTHORIZATION, value);
        Ok(send(headers).await?.status())
    }

    /// Answers the challenge of `resp` (a `401` of `url`) with `auth`: the `Authorization`
    /// value to send the request again with.
    async fn answer(
        &self,
        auth: &RegistryAuth,
        resp: &reqwest::Response,
        url: &str,
    ) -> Result<HeaderValue, BackendError> {
        let challenge = resp
            .headers()
            .get(http::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        auth.answer(&self.client, challenge)
            .await
            .map_err(|message| BackendError::Auth {
                url: url.to_string(),
                message,
            })
    }
}

fn strip_credentials(h: &mut HeaderMap) {
    h.remove(http::header::AUTHORIZATION);
    h.remove(http::header::COOKIE);
}

fn host_of(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?))
}

/// Error text with its sources (reqwest hides the useful part in `source()`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let part = c.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        cur = c.source();
    }
    s
}

/// Parses `Content-Range: bytes a-b/total` (or `bytes */total`).
pub fn parse_content_range(v: &str) -> Option<(Option<(u64, u64)>, u64)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total: u64 = total.trim().parse().ok()?;
    if range.trim() == "*" {
        return Some((None, total));
    }
    let (a, b) = range.split_once('-')?;
    let a: u64 = a.trim().parse().ok()?;
    let b: u64 = b.trim().parse().ok()?;
    if a > b || b >= total {
        return None;
    }
    Some((Some((a, b)), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 0-0/1234"),
            Some((Some((0, 0)), 1234))
        );
        assert_eq!(parse_content_range("bytes */0"), Some((None, 0)));
        assert_eq!(parse_content_range("bytes 5-2/10"), None);
        assert_eq!(parse_content_range("bytes 0-10/10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes 0-1/x"), None);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-foo"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("authorization", HeaderValue::from_static("Bearer t"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("authorization"));
    }
}
