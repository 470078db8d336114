//! docker-registry (distribution 2.8) on 127.0.0.1, with its access log parsed for assertions.

mod access_log;
mod client;
mod token;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;

pub use access_log::{parse_access_log, parse_access_log_line, AccessLogEntry};
pub use client::{parse_challenge, Challenge, RegistryClient, MANIFEST_ACCEPT};
pub use token::{TokenAuthOptions, TokenRequest, TokenServer};

use crate::image::{
    build_oci_index, build_oci_layout, Compression, ImageConfig, ImageInfo, IndexInfo, LayerSpec,
    OciImage, PlatformImage,
};
use crate::process::ChildProcess;
use crate::{free_port, Error, Result, TestDir};

/// How long the registry may take to answer `/v2/` after start.
const START_TIMEOUT: Duration = Duration::from_secs(15);

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// Proxy variables removed from every tool the harness runs: test traffic stays on loopback.
pub(crate) const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
];

/// A running docker-registry with filesystem storage in the test dir, plain HTTP on
/// `127.0.0.1:<port>`, and its access log (one combined-format line per request) in its log file.
///
/// Stopped on drop (see [`ChildProcess`]).
#[derive(Debug)]
pub struct Registry {
    port: u16,
    dir: PathBuf,
    process: ChildProcess,
    token: Option<TokenServer>,
    client: RegistryClient,
    pushes: AtomicU32,
}

impl Registry {
    /// The layers (digest, size) of the manifest `repo:tag`.
    pub async fn manifest_layers(&self, repo: &str, tag: &str) -> Result<Vec<(String, u64)>> {
        let (body, _, _) = self.client().get_manifest(repo, tag).await?;
        let m: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| Error::malformed(format!("manifest {repo}:{tag}"), e.to_string()))?;
        Ok(m["layers"]
            .as_array()
            .map(|ls| {
                ls.iter()
                    .filter_map(|l| Some((l["digest"].as_str()?.to_string(), l["size"].as_u64()?)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Starts an open registry (no auth) and waits until `/v2/` answers.
    pub async fn start(dir: &TestDir) -> Result<Registry> {
        Self::start_inner(dir, None).await
    }

    /// Starts a registry with docker token auth ([`TokenAuthOptions::default`]: user
    /// `dfit-user`, password `dfit-password`, no anonymous pulls), the token server running
    /// in-process on the caller's runtime.
    pub async fn start_with_token_auth(dir: &TestDir) -> Result<Registry> {
        Self::start_with_token_auth_options(dir, TokenAuthOptions::default()).await
    }

    /// [`start_with_token_auth`](Self::start_with_token_auth) with explicit options.
    pub async fn start_with_token_auth_options(
        dir: &TestDir,
        opts: TokenAuthOptions,
    ) -> Result<Registry> {
        Self::start_inner(dir, Some(opts)).await
    }

    async fn start_inner(dir: &TestDir, auth: Option<TokenAuthOptions>) -> Result<Registry> {
        let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let name = format!("registry-{n}");
        let rdir = dir.subdir(&name)?;
        let storage = dir.subdir(format!("{name}/storage"))?;
        let creds = auth
            .as_ref()
            .map(|o| (o.username.clone(), o.password.clone()));
        let token = match auth {
            Some(opts) => Some(TokenServer::start(&rdir, opts).await?),
            None => None,
        };
        // The port is free when chosen but another process may take it before the registry
        // binds it: retry on a fresh port if the registry exits early.
        let mut last_err = None;
        for attempt in 0..3 {
            let port = free_port();
            let config = rdir.join("config.yml");
            let yaml = registry_config(port, &storage, token.as_ref());
            std::fs::write(&config, yaml).map_err(|e| Error::io("write", &config, e))?;
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve").arg(&config);
            for v in PROXY_VARS {
                cmd.env_remove(v);
            }
            // REGISTRY_* variables override the config file: keep the caller's out.
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(k);
                }
            }
            let log_name = if attempt == 0 {
                name.clone()
            } else {
                format!("{name}-try{attempt}")
            };
            let mut process = ChildProcess::spawn(dir, &log_name, cmd)?;
            let base = format!("http://127.0.0.1:{port}");
            let client = RegistryClient::new(&base, creds.clone());
            match wait_ready(&mut process, &base).await {
                Ok(()) => {
                    return Ok(Registry {
                        port,
                        dir: rdir,
                        process,
                        token,
                        client,
                        pushes: AtomicU32::new(0),
                    })
                }
                Err(e) => {
                    let port_taken = process.log().contains("address already in use");
                    last_err = Some(e);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::malformed("registry start", "no attempt made")))
    }

    /// `127.0.0.1:<port>`, the registry host as it appears in image references.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The registry's log (its access log lines included).
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The registry's directory (config, storage, token key and cert).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file in the registry's storage holding the blob whose sha256 is `hex` (to corrupt or
    /// cut it under the registry).
    pub fn blob_data_path(&self, hex: &str) -> PathBuf {
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(hex.get(..2).unwrap_or(hex))
            .join(hex)
            .join("data")
    }

    /// The registry process (to stop, kill or read its log).
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// An HTTP API client for this registry, with its credentials if it uses token auth.
    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// The token server, if this registry uses token auth.
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
    }

    /// (user, password) accepted by the token server, if this registry uses token auth.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.token
            .as_ref()
            .map(|t| (t.options().username.as_str(), t.options().password.as_str()))
    }

    /// Every request in the access log so far (the line is written just after the response
    /// is sent, so poll with [`wait_for`](crate::wait_for) when racing a client).
    ///
    /// Panics if the log cannot be read: the harness is broken then, not the code under test.
    pub fn requests(&self) -> Vec<AccessLogEntry> {
        let log = std::fs::read(self.process.log_path()).unwrap_or_else(|e| {
            panic!(
                "cannot read registry log {}: {e}",
                self.process.log_path().display()
            )
        });
        parse_access_log(&String::from_utf8_lossy(&log))
    }

    /// Every logged request (any method, any status) whose path ends with `/blobs/<digest>`.
    pub fn blob_requests(&self, digest: &str) -> Vec<AccessLogEntry> {
        let suffix = format!("/blobs/{digest}");
        self.requests()
            .into_iter()
            .filter(|e| e.path.ends_with(&suffix))
            .collect()
    }

    /// How many times the registry served blob `digest`: successful (2xx) `GET`s whose path
    /// ends with `/blobs/<digest>`. A 401 challenge or a 404 does not count.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.blob_requests(digest)
            .iter()
            .filter(|e| e.method == "GET" && e.is_success())
            .count()
    }

    /// Bytes the registry sent of blob `digest` in the requests [`Registry::blob_gets`] counts.
    pub fn blob_get_bytes(&self, digest: &str) -> u64 {
        self.blob_requests(digest)
            .iter()
            .filter(|e| e.method == "GET" && e.is_success())
            .map(|e| e.bytes.unwrap_or(0))
            .sum()
    }

    /// Uploads `data` as a blob of `repo` through the registry HTTP API. Returns its digest.
    pub async fn push_blob(&self, repo: &str, data: impl Into<Bytes>) -> Result<String> {
        self.client.push_blob(repo, data).await
    }

    /// Builds an image from `layers` (default config: `Cmd ["/bin/sh"]`) and pushes it as
    /// `<repo>:<tag>` with skopeo.
    pub async fn push_image(
        &self,
        repo: &str,
        tag: &str,
        layers: &[LayerSpec],
    ) -> Result<ImageInfo> {
        self.push_image_with_config(repo, tag, layers, &ImageConfig::default())
            .await
    }

    /// Pushes `pause:3.9`, a one-layer busybox image whose command idles until SIGTERM, for
    /// containerd's CRI `sandbox_image` (the machine has no pause image and no network to
    /// fetch one). Returns its reference.
    pub async fn push_pause_image(&self) -> Result<String> {
        let config = ImageConfig {
            cmd: vec![
                "/bin/busybox".into(),
                "sh".into(),
                "-c".into(),
                "trap 'exit 0' TERM INT; while :; do /bin/busybox sleep 1; done".into(),
            ],
            ..ImageConfig::default()
        };
        let busybox = LayerSpec::busybox(Compression::Gzip)?;
        let info = self
            .push_image_with_config("pause", "3.9", &[busybox], &config)
            .await?;
        Ok(info.reference)
    }

    /// [`push_image`](Self::push_image) with an explicit image config.
    pub async fn push_image_with_config(
        &self,
        repo: &str,
        tag: &str,
        layers: &[LayerSpec],
        config: &ImageConfig,
    ) -> Result<ImageInfo> {
        let out = self.layout_dir(repo);
        let (layers, config, tag_owned) = (layers.to_vec(), config.clone(), tag.to_string());
        let out2 = out.clone();
        let img = tokio::task::spawn_blocking(move || {
            build_oci_layout(&out2, &tag_owned, &layers, &config)
        })
        .await
        .map_err(|e| Error::malformed("image build task", e.to_string()))??;
        self.push_oci_image(&img, repo, tag).await
    }

    /// Pushes an image already built with [`build_oci_layout`] (e.g. once, to several
    /// registries) as `<repo>:<tag>`, and checks the registry has its manifest digest.
    pub async fn push_oci_image(&self, img: &OciImage, repo: &str, tag: &str) -> Result<ImageInfo> {
        self.push_oci_layout(&img.dir, &img.tag, repo, tag).await?;
        let info = ImageInfo::from_oci(&self.addr(), repo, tag, img);
        self.check_pushed(repo, tag, &info.reference, &info.manifest_digest)
            .await?;
        Ok(info)
    }

    /// Builds a multi-platform image (an image index over one manifest per entry of
    /// `platforms`, see [`build_oci_index`]) and pushes all of it as `<repo>:<tag>` with
    /// `skopeo copy --all`. The tag then resolves to the index; a client picks its platform.
    pub async fn push_image_index(
        &self,
        repo: &str,
        tag: &str,
        platforms: &[PlatformImage],
    ) -> Result<IndexInfo> {
        let out = self.layout_dir(repo);
        let (platforms, tag_owned) = (platforms.to_vec(), tag.to_string());
        let out2 = out.clone();
        let idx =
            tokio::task::spawn_blocking(move || build_oci_index(&out2, &tag_owned, &platforms))
                .await
                .map_err(|e| Error::malformed("image index build task", e.to_string()))??;
        self.push_oci_index(&idx.dir, &idx.tag, repo, tag).await?;
        let info = IndexInfo::from_oci(&self.addr(), repo, tag, &idx);
        self.check_pushed(repo, tag, &info.reference, &info.index_digest)
            .await?;
        Ok(info)
    }

    /// A fresh directory for an image layout built for a push to `repo`.
    fn layout_dir(&self, repo: &str) -> PathBuf {
        let n = self.pushes.fetch_add(1, Ordering::Relaxed);
        let safe: String = repo
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        self.dir.join("images").join(format!("{n}-{safe}"))
    }

    /// Fails unless the registry serves `<repo>:<tag>` with digest `want`.
    async fn check_pushed(&self, repo: &str, tag: &str, reference: &str, want: &str) -> Result<()> {
        let pushed = self.client.head_manifest(repo, tag).await?;
        if pushed.as_deref() != Some(want) {
            return Err(Error::malformed(
                format!("pushed manifest {reference}"),
                format!("registry has digest {pushed:?}, layout has {want}"),
            ));
        }
        Ok(())
    }

    /// `skopeo copy oci:<layout>:<layout_tag> docker://<this registry>/<repo>:<tag>`, with
    /// this registry's credentials if it has any.
    pub async fn push_oci_layout(
        &self,
        layout: &Path,
        layout_tag: &str,
        repo: &str,
        tag: &str,
    ) -> Result<()> {
        self.skopeo_push(layout, layout_tag, repo, tag, false).await
    }

    /// [`push_oci_layout`](Self::push_oci_layout) with `--all`: for a layout tag naming an image
    /// index, pushes the index and every manifest it lists (without `--all` skopeo would copy
    /// only this machine's platform).
    pub async fn push_oci_index(
        &self,
        layout: &Path,
        layout_tag: &str,
        repo: &str,
        tag: &str,
    ) -> Result<()> {
        self.skopeo_push(layout, layout_tag, repo, tag, true).await
    }

    async fn skopeo_push(
        &self,
        layout: &Path,
        layout_tag: &str,
        repo: &str,
        tag: &str,
        all: bool,
    ) -> Result<()> {
        let src = format!("oci:{}:{layout_tag}", layout.display());
        let dst = format!("docker://{}/{repo}:{tag}", self.addr());
        let mut cmd = tokio::process::Command::new("skopeo");
        // --preserve-digests: skopeo would otherwise gzip uncompressed layers on the way to a
        // registry, changing the manifest digest.
        cmd.args([
            "copy",
            "--quiet",
            "--insecure-policy",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]);
        if all {
            cmd.arg("--all");
        }
        if let Some((u, p)) = self.credentials() {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        cmd.arg(&src).arg(&dst);
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        let out = cmd.output().await.map_err(|source| Error::Spawn {
            program: "skopeo".into(),
            source,
        })?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("skopeo copy{} {src} {dst}", if all { " --all" } else { "" }),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }
}

fn registry_config(port: u16, storage: &Path, token: Option<&TokenServer>) -> String {
    let mut yaml = format!(
        r#"version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: dfit-not-secret
health:
  storagedriver:
    enabled: false
"#,
        storage = storage.display()
    );
    if let Some(t) = token {
        yaml.push_str(&format!(
            r#"auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {cert}
"#,
            realm = t.realm(),
            service = t.options().service,
            issuer = t.options().issuer,
            cert = t.cert_pem().display()
        ));
    }
    yaml
}

/// Waits until `/v2/` answers at all (200 open, 401 with auth); fails early if the process exits.
async fn wait_ready(process: &mut ChildProcess, base: &str) -> Result<()> {
    let http = crate::http_client_builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|source| Error::Http {
            method: "GET".into(),
            url: base.into(),
            source,
        })?;
    let url = format!("{base}/v2/");
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Some(e) = process.exited_error("before answering /v2/") {
            return Err(e);
        }
        if let Ok(resp) = http.get(&url).send().await {
            let s = resp.status().as_u16();
            if s == 200 || s == 401 {
                return Ok(());
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("{url} to answer (log {})", process.log_path().display()),
                timeout: START_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
