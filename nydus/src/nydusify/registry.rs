//! Registry access for `nydusify`: one repository of one registry, with the image-spec types of
//! `oci-client`, credentials from Docker's `config.json` or flags, plain HTTP when asked, bounded
//! reads of manifests and configs, verified blob streams, chunked uploads, cross-repository
//! mounts and retries with back-off.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

/// Largest manifest or index read from a registry (distribution's own limit).
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;
/// Largest image config read from a registry.
pub const MAX_CONFIG_SIZE: usize = 8 << 20;

/// Media types a manifest request accepts.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    super::manifest::OCI_MANIFEST,
    super::manifest::OCI_INDEX,
    super::manifest::DOCKER_MANIFEST,
    super::manifest::DOCKER_MANIFEST_LIST,
];

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The image reference does not parse.
    #[error("invalid image reference {reference:?}: {msg}")]
    Reference { reference: String, msg: String },
    /// The registry refused the credentials.
    #[error("{registry}: authentication failed ({msg}); check the credentials (docker config.json or --{side}-username/--{side}-password)")]
    Auth {
        registry: String,
        side: &'static str,
        msg: String,
    },
    /// Docker's config file is unreadable or malformed.
    #[error("docker config {path}: {msg}")]
    DockerConfig { path: PathBuf, msg: String },
    /// A manifest, config or section is larger than allowed.
    #[error("{what} is {size} bytes, over the {limit}-byte limit")]
    TooLarge { what: String, size: u64, limit: u64 },
    /// The registry answered, but not as the distribution spec says.
    #[error("{what}: {msg}")]
    Invalid { what: String, msg: String },
    /// An operation failed (after its retries).
    #[error("{what}: {source}")]
    Op {
        what: String,
        #[source]
        source: OciDistributionError,
    },
}

impl RegistryError {
    fn op(what: impl Into<String>, source: OciDistributionError) -> Self {
        RegistryError::Op {
            what: what.into(),
            source,
        }
    }
}

/// How often and how long to retry an operation that failed for a transient reason.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts after the first.
    pub count: u32,
    /// Delay before the first retry; doubled for each further one.
    pub delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            count: 3,
            delay: Duration::from_secs(5),
        }
    }
}

impl Retry {
    /// Runs `f` until it succeeds, fails for a reason retrying cannot fix, or the retries are
    /// used up.
    pub async fn run<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        let mut delay = self.delay;
        let mut attempt = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < self.count && is_transient(&e) => {
                    attempt += 1;
                    tracing::warn!("{what}: {e}; retry {attempt}/{} in {delay:?}", self.count);
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                }
                Err(e) => return Err(RegistryError::op(what, e)),
            }
        }
    }
}

/// Whether retrying may help: network errors and 5xx/429 answers, not refusals.
pub fn is_transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RequestError(e) => {
            e.is_connect() || e.is_timeout() || e.is_body() || e.is_request()
        }
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

/// Username and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

/// Where Docker's `config.json` is: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker").join("config.json"))
}

/// The host part of a `config.json` `auths` key (`https://host/v1/` → `host`).
fn auth_key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// Looks up the credentials for `registry` in a Docker `config.json` document. `docker.io`
/// images use the `index.docker.io` entry, as Docker does.
pub fn credentials_from_docker_config(
    doc: &[u8],
    path: &Path,
    registry: &str,
) -> Result<Option<Credentials>, RegistryError> {
    let bad = |msg: String| RegistryError::DockerConfig {
        path: path.to_path_buf(),
        msg,
    };
    let v: serde_json::Value =
        serde_json::from_slice(doc).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let wanted: &[&str] = if registry == "docker.io" || registry == "index.docker.io" {
        &["index.docker.io", "docker.io", "registry-1.docker.io"]
    } else {
        &[registry]
    };
    for (key, entry) in auths {
        if !wanted.contains(&auth_key_host(key)) {
            continue;
        }
        if let (Some(u), Some(p)) = (
            entry.get("username").and_then(|u| u.as_str()),
            entry.get("password").and_then(|p| p.as_str()),
        ) {
            return Ok(Some(Credentials {
                username: u.to_string(),
                password: p.to_string(),
            }));
        }
        if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
            if auth.is_empty() {
                continue;
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| bad(format!("auths.{key}.auth is not base64: {e}")))?;
            let s = String::from_utf8(raw)
                .map_err(|_| bad(format!("auths.{key}.auth is not UTF-8")))?;
            let (u, p) = s
                .split_once(':')
                .ok_or_else(|| bad(format!("auths.{key}.auth is not user:password")))?;
            return Ok(Some(Credentials {
                username: u.to_string(),
                password: p.to_string(),
            }));
        }
    }
    Ok(None)
}

/// How to reach one side (source or target) of a command.
#[derive(Debug, Clone, Default)]
pub struct RemoteOptions {
    /// Plain HTTP (`--source-insecure`/`--target-insecure`).
    pub insecure: bool,
    /// Credentials given on the command line; otherwise Docker's config is consulted.
    pub credentials: Option<Credentials>,
    /// Retry policy for transient failures.
    pub retry: Retry,
    /// `source` or `target`, for messages.
    pub side: &'static str,
    /// An HTTP proxy every request goes through (e.g. a dfdaemon's proxy).
    pub proxy: Option<String>,
}

/// Parses an image reference as Docker does (`busybox` → `docker.io/library/busybox:latest`).
pub fn parse_reference(s: &str) -> Result<Reference, RegistryError> {
    s.parse::<Reference>()
        .map_err(|e| RegistryError::Reference {
            reference: s.to_string(),
            msg: e.to_string(),
        })
}

/// What one manifest GET gave.
enum Fetched {
    Body(Bytes, String),
    Missing,
    TooLarge(u64),
    Invalid(String),
}

/// A repository of a registry, authenticated.
#[derive(Clone)]
pub struct Remote {
    client: Client,
    /// For the requests oci-client cannot bound (manifests).
    http: reqwest::Client,
    insecure: bool,
    reference: Reference,
    auth: RegistryAuth,
    retry: Retry,
    side: &'static str,
}

impl Remote {
    /// Connects to the repository of `reference` and authenticates for `op` (push includes
    /// pull). Wrong credentials are an error here, not on the first request.
    pub async fn connect(
        reference: &str,
        opts: &RemoteOptions,
        op: RegistryOperation,
    ) -> Result<Remote, RegistryError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let reference = parse_reference(reference)?;
        let registry = reference.resolve_registry().to_string();
        let creds = match &opts.credentials {
            Some(c) => Some(c.clone()),
            None => match docker_config_path() {
                Some(p) => match std::fs::read(&p) {
                    Ok(doc) => credentials_from_docker_config(&doc, &p, reference.registry())?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => {
                        return Err(RegistryError::DockerConfig {
                            path: p,
                            msg: e.to_string(),
                        })
                    }
                },
                None => None,
            },
        };
        let auth = match creds {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        let config = ClientConfig {
            protocol: if opts.insecure {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(300)),
            user_agent: concat!("nydusify-rs/", env!("CARGO_PKG_VERSION")),
            http_proxy: opts.proxy.clone(),
            https_proxy: opts.proxy.clone(),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config)
            .map_err(|e| RegistryError::op(format!("{registry}: building the client"), e))?;
        let retry = opts.retry;
        let r = retry
            .run(&format!("{registry}: authenticating"), || {
                client.auth(&reference, &auth, op)
            })
            .await;
        match r {
            Ok(_) => {}
            Err(RegistryError::Op {
                source: OciDistributionError::AuthenticationFailure(msg),
                ..
            }) => {
                return Err(RegistryError::Auth {
                    registry,
                    side: opts.side,
                    msg: one_line(&msg),
                })
            }
            Err(e) => return Err(e),
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("nydusify-rs/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| RegistryError::Invalid {
                what: format!("{registry}: building the HTTP client"),
                msg: e.to_string(),
            })?;
        Ok(Remote {
            client,
            http,
            insecure: opts.insecure,
            reference,
            auth,
            retry,
            side: opts.side,
        })
    }

    /// The reference this remote was opened with.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// `registry/repository`, for messages.
    pub fn repo_name(&self) -> String {
        format!(
            "{}/{}",
            self.reference.resolve_registry(),
            self.reference.repository()
        )
    }

    /// This repository at another tag or digest.
    pub fn at(&self, tag_or_digest: &str) -> Reference {
        if tag_or_digest.starts_with("sha256:") {
            Reference::with_digest(
                self.reference.registry().to_string(),
                self.reference.repository().to_string(),
                tag_or_digest.to_string(),
            )
        } else {
            Reference::with_tag(
                self.reference.registry().to_string(),
                self.reference.repository().to_string(),
                tag_or_digest.to_string(),
            )
        }
    }

    fn unauthorized(&self, e: OciDistributionError, what: &str) -> RegistryError {
        match e {
            OciDistributionError::UnauthorizedError { url } => RegistryError::Auth {
                registry: self.reference.resolve_registry().to_string(),
                side: self.side,
                msg: format!("{what}: not authorized ({url})"),
            },
            e => RegistryError::op(what.to_string(), e),
        }
    }

    /// Fetches a manifest or index (at most [`MAX_MANIFEST_SIZE`], never holding more of the
    /// response): its bytes, digest and media type. `None` if the registry does not have it.
    pub async fn manifest(
        &self,
        reference: &Reference,
    ) -> Result<Option<(Bytes, String, String)>, RegistryError> {
        let what = format!("manifest {reference}");
        let r = self
            .retry
            .run(&what, || self.fetch_manifest(reference))
            .await;
        let (body, digest) = match r {
            Ok(Fetched::Body(body, digest)) => (body, digest),
            Ok(Fetched::Missing) => return Ok(None),
            Ok(Fetched::TooLarge(size)) => {
                return Err(RegistryError::TooLarge {
                    what,
                    size,
                    limit: MAX_MANIFEST_SIZE as u64,
                })
            }
            Ok(Fetched::Invalid(msg)) => return Err(RegistryError::Invalid { what, msg }),
            Err(RegistryError::Op { source, .. }) => return Err(self.unauthorized(source, &what)),
            Err(e) => return Err(e),
        };
        let media_type =
            super::manifest::media_type_of(&body).map_err(|msg| RegistryError::Invalid {
                what: what.clone(),
                msg,
            })?;
        Ok(Some((body, digest, media_type)))
    }

    /// One GET of a manifest, its body read up to [`MAX_MANIFEST_SIZE`] (oci-client would read
    /// any size whole). Authenticates through oci-client (its Bearer token, or Basic).
    async fn fetch_manifest(&self, reference: &Reference) -> Result<Fetched, OciDistributionError> {
        let token = self
            .client
            .auth(reference, &self.auth, RegistryOperation::Pull)
            .await?;
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            if self.insecure { "http" } else { "https" },
            reference.resolve_registry(),
            reference.repository(),
            reference
                .digest()
                .or_else(|| reference.tag())
                .unwrap_or("latest")
        );
        let mut req = self
            .http
            .get(&url)
            .header(http::header::ACCEPT, MANIFEST_MEDIA_TYPES.join(", "));
        req = match (&token, &self.auth) {
            (Some(t), _) => req.bearer_auth(t),
            (None, RegistryAuth::Basic(u, p)) => req.basic_auth(u, Some(p)),
            _ => req,
        };
        let mut res = req.send().await?;
        let status = res.status();
        match status.as_u16() {
            200..=299 => {}
            404 => return Ok(Fetched::Missing),
            401 | 403 => return Err(OciDistributionError::UnauthorizedError { url }),
            code => {
                return Err(OciDistributionError::ServerError {
                    code,
                    url,
                    message: status.canonical_reason().unwrap_or("").to_string(),
                })
            }
        }
        if let Some(len) = res
            .content_length()
            .filter(|l| *l > MAX_MANIFEST_SIZE as u64)
        {
            return Ok(Fetched::TooLarge(len));
        }
        let header_digest = res
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = res.chunk().await? {
            if body.len() + chunk.len() > MAX_MANIFEST_SIZE {
                return Ok(Fetched::TooLarge((body.len() + chunk.len()) as u64));
            }
            body.extend_from_slice(&chunk);
        }
        let digest = super::manifest::sha256_digest(&body);
        // A digest reference must match what came back; a tag's digest header, when the
        // registry sends one for sha256, too.
        if let Some(want) = reference.digest().or(header_digest
            .as_deref()
            .filter(|d| d.starts_with("sha256:")))
        {
            if want != digest {
                return Ok(Fetched::Invalid(format!(
                    "the registry sent bytes whose digest is {digest}, not {want}"
                )));
            }
        }
        Ok(Fetched::Body(body.freeze(), digest))
    }

    /// Reads a small blob (a config) whole, at most `limit` bytes, verified against its digest.
    pub async fn blob_bytes(
        &self,
        desc: &OciDescriptor,
        limit: usize,
    ) -> Result<Bytes, RegistryError> {
        let what = format!("blob {}", desc.digest);
        if desc.size < 0 || desc.size as u64 > limit as u64 {
            return Err(RegistryError::TooLarge {
                what,
                size: desc.size.max(0) as u64,
                limit: limit as u64,
            });
        }
        self.retry
            .run(&what, || async {
                let s = self.client.pull_blob_stream(&self.reference, desc).await?;
                let mut out = Vec::with_capacity(desc.size as usize);
                let mut stream = s.stream;
                while let Some(b) = stream.next().await {
                    let b = b?;
                    if out.len() + b.len() > limit {
                        return Err(OciDistributionError::GenericError(Some(format!(
                            "more than {limit} bytes"
                        ))));
                    }
                    out.extend_from_slice(&b);
                }
                Ok(Bytes::from(out))
            })
            .await
    }

    /// Streams a blob; the stream fails at its end if the bytes do not match the digest.
    pub async fn blob_stream(
        &self,
        desc: &OciDescriptor,
    ) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static, RegistryError> {
        let what = format!("blob {}", desc.digest);
        let s = self
            .retry
            .run(&what, || {
                self.client.pull_blob_stream(&self.reference, desc)
            })
            .await
            .map_err(|e| match e {
                RegistryError::Op { source, what } => self.unauthorized(source, &what),
                e => e,
            })?;
        let digest = desc.digest.clone();
        Ok(s.stream
            .map_err(move |e| std::io::Error::new(e.kind(), format!("reading blob {digest}: {e}"))))
    }

    /// Reads `len` bytes of a blob at `offset` (at most `limit`).
    pub async fn blob_range(
        &self,
        desc: &OciDescriptor,
        offset: u64,
        len: u64,
        limit: u64,
    ) -> Result<Bytes, RegistryError> {
        let what = format!("blob {} bytes {offset}+{len}", desc.digest);
        if len > limit {
            return Err(RegistryError::TooLarge {
                what,
                size: len,
                limit,
            });
        }
        if len == 0 {
            return Ok(Bytes::new());
        }
        self.retry
            .run(&what, || async {
                let r = self
                    .client
                    .pull_blob_stream_partial(&self.reference, desc, offset, Some(len))
                    .await?;
                let (mut stream, skip) = match r {
                    BlobResponse::Partial(s) => (s.stream, 0u64),
                    // A registry that ignores Range sends the whole blob: skip to the offset.
                    BlobResponse::Full(s) => (s.stream, offset),
                };
                let mut out = Vec::with_capacity(len as usize);
                let mut skip = skip;
                while let Some(b) = stream.next().await {
                    let mut b = b?;
                    if skip > 0 {
                        let n = skip.min(b.len() as u64) as usize;
                        let _ = b.split_to(n);
                        skip -= n as u64;
                    }
                    let room = len as usize - out.len();
                    out.extend_from_slice(&b[..b.len().min(room)]);
                    if out.len() as u64 == len {
                        break;
                    }
                }
                if (out.len() as u64) < len {
                    return Err(OciDistributionError::GenericError(Some(format!(
                        "short read: {} of {len} bytes",
                        out.len()
                    ))));
                }
                Ok(Bytes::from(out))
            })
            .await
    }

    /// Whether this repository has blob `digest`.
    pub async fn blob_exists(&self, digest: &str) -> Result<bool, RegistryError> {
        self.retry
            .run(&format!("blob {digest}"), || {
                self.client.blob_exists(&self.reference, digest)
            })
            .await
    }

    /// Makes blob `digest` available in this repository: nothing if it is there, a
    /// cross-repository mount from `from` if the registry allows it. Returns whether the blob is
    /// now present (if not, it has to be uploaded).
    pub async fn ensure_by_mount(
        &self,
        digest: &str,
        from: Option<&Reference>,
    ) -> Result<bool, RegistryError> {
        if self.blob_exists(digest).await? {
            return Ok(true);
        }
        let Some(from) = from else { return Ok(false) };
        if from.resolve_registry() != self.reference.resolve_registry()
            || from.repository() == self.reference.repository()
        {
            return Ok(false);
        }
        match self.client.mount_blob(&self.reference, from, digest).await {
            Ok(()) => Ok(true),
            // 202 (mount refused, an upload session was opened instead) and any other answer:
            // fall back to uploading.
            Err(e) => {
                tracing::debug!("mounting {digest} from {}: {e}", from.repository());
                self.blob_exists(digest).await
            }
        }
    }

    /// Uploads a blob held in memory (skipped if the repository has it).
    pub async fn push_bytes(&self, data: Bytes, digest: &str) -> Result<(), RegistryError> {
        if self.blob_exists(digest).await? {
            return Ok(());
        }
        self.retry
            .run(&format!("uploading blob {digest}"), || {
                self.client.push_blob(&self.reference, data.clone(), digest)
            })
            .await
            .map(|_| ())
    }

    /// Uploads a stream as a chunked upload; returns its digest and size. Not retried (a stream
    /// cannot be replayed): callers retry by producing the stream again.
    pub async fn push_stream<S>(&self, stream: S) -> Result<(String, u64), OciDistributionError>
    where
        S: Stream<Item = oci_client::errors::Result<Bytes>> + Send + 'static,
    {
        let r = self
            .client
            .push_blob_stream_chunked(&self.reference, stream)
            .await?;
        Ok((r.blob_digest, r.size))
    }

    /// Puts a manifest or index at `reference` (a tag or a digest).
    pub async fn push_manifest(
        &self,
        reference: &Reference,
        body: Bytes,
        media_type: &str,
    ) -> Result<(), RegistryError> {
        let ct: http::HeaderValue = media_type.parse().map_err(|_| RegistryError::Invalid {
            what: format!("manifest {reference}"),
            msg: format!("media type {media_type:?} is not a header value"),
        })?;
        self.retry
            .run(&format!("pushing manifest {reference}"), || {
                self.client
                    .push_manifest_raw(reference, body.clone(), ct.clone())
            })
            .await
            .map(|_| ())
    }

    /// The retry policy.
    pub fn retry(&self) -> Retry {
        self.retry
    }
}

/// Whether a registry answer means "no such manifest or blob".
pub fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                oci_client::errors::OciErrorCode::ManifestUnknown
                    | oci_client::errors::OciErrorCode::BlobUnknown
                    | oci_client::errors::OciErrorCode::NameUnknown
            )
        }),
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        _ => false,
    }
}

fn one_line(s: &str) -> String {
    let s = s.trim();
    let s: String = s.chars().take(300).collect();
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_auth_field_and_plain_fields_are_read() {
        let doc = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
            "127.0.0.1:5000":{"username":"a","password":"b:c"},
            "http://reg.example:8443/v2/":{"auth":"eDp5Ono="}
        }}"#;
        let p = Path::new("config.json");
        let c = credentials_from_docker_config(doc, p, "docker.io").unwrap();
        assert_eq!(c.unwrap().username, "user");
        let c = credentials_from_docker_config(doc, p, "127.0.0.1:5000")
            .unwrap()
            .unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("a", "b:c"));
        let c = credentials_from_docker_config(doc, p, "reg.example:8443")
            .unwrap()
            .unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("x", "y:z"));
        assert!(credentials_from_docker_config(doc, p, "other:1")
            .unwrap()
            .is_none());
    }

    #[test]
    fn malformed_docker_config_names_the_problem() {
        let p = Path::new("/home/u/.docker/config.json");
        let e = credentials_from_docker_config(b"{", p, "r").unwrap_err();
        assert!(e.to_string().contains("config.json"), "{e}");
        let e = credentials_from_docker_config(br#"{"auths":{"r":{"auth":"!!"}}}"#, p, "r")
            .unwrap_err();
        assert!(e.to_string().contains("auths.r.auth is not base64"), "{e}");
        let e = credentials_from_docker_config(br#"{"auths":{"r":{"auth":"YWJj"}}}"#, p, "r")
            .unwrap_err();
        assert!(e.to_string().contains("not user:password"), "{e}");
    }

    #[test]
    fn transient_errors_are_server_errors_and_429() {
        let e = |code| OciDistributionError::ServerError {
            code,
            url: String::new(),
            message: String::new(),
        };
        assert!(is_transient(&e(500)));
        assert!(is_transient(&e(503)));
        assert!(is_transient(&e(429)));
        assert!(!is_transient(&e(404)));
        assert!(!is_transient(&OciDistributionError::AuthenticationFailure(
            String::new()
        )));
    }
}
