//! The lazy-loading runtime: Nydus (RAFS) images mounted by dfdaemon, their
//! file data read on demand through the piece store ([`crate::lazy`]), every
//! chunk checked (CRC32C or digest) before the kernel sees it.
//!
//! One mount per (bootstrap, repository): mounting the same image again
//! returns the existing mount. Mounts end with [`Runtime::unmount`] or when
//! dfdaemon stops.

pub mod grpc;
pub mod holder;
pub mod images;

use crate::config::{self, RecoverPolicy, RuntimeMode};
use crate::download::Engine;
use crate::lazy::blobs::StoreBlobs;
use http::{HeaderMap, HeaderName, HeaderValue};
use nydus::reader::{ChunkReader, ReadStats};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// What to mount.
#[derive(Debug, Clone, Default)]
pub struct MountSpec {
    /// The image's bootstrap file.
    pub bootstrap_path: PathBuf,
    /// Where to mount (else under `runtime.mountRoot`).
    pub mountpoint: Option<PathBuf>,
    /// `host[:port]/name` of the repository holding the blobs.
    pub repository: String,
    /// `https` (default) or `http`.
    pub scheme: Option<String>,
    /// Headers for blob requests.
    pub headers: Vec<(String, String)>,
    /// Mode (else `runtime.mode`).
    pub mode: Option<RuntimeMode>,
}

/// A mounted image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mountpoint: PathBuf,
    pub bootstrap_path: PathBuf,
    pub repository: String,
    pub mode: &'static str,
    pub blob_ids: Vec<String>,
    /// File bytes returned to readers.
    pub read_bytes: u64,
    /// Blob bytes fetched from the origin and from parents, over the image's blob tasks.
    pub origin_bytes: u64,
    pub parent_bytes: u64,
    /// Chunks that failed their check.
    pub chunk_check_failures: u64,
}

/// Errors of the runtime, each naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("bootstrap {path}: {message}")]
    Image { path: PathBuf, message: String },
    #[error("{mountpoint} is already a mount of another image")]
    AlreadyMounted { mountpoint: PathBuf },
    #[error("{0} is not an image mount of this dfdaemon")]
    NotMounted(PathBuf),
    #[error("mounting at {mountpoint}: {message}")]
    Mount {
        mountpoint: PathBuf,
        message: String,
    },
    #[error("{0}")]
    Unavailable(String),
}

/// How a mount is served.
enum MountKind {
    /// A FUSE filesystem serves metadata and data.
    Fuse(fuser::BackgroundSession),
    /// The kernel mounts the bootstrap (EROFS); a FUSE filesystem at `blob_dir` serves the
    /// blobs' uncompressed views as its devices.
    Erofs {
        blobs: fuser::BackgroundSession,
        blob_dir: PathBuf,
        /// Complete tasks whose content files are devices of the mount (kept from GC).
        pinned: Vec<crate::storage::TaskUse>,
    },
}

/// A mount as recorded in `<mountRoot>/.mounts.json`, to serve it again after a restart.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SavedMount {
    mountpoint: PathBuf,
    bootstrap_path: PathBuf,
    repository: String,
    scheme: String,
    headers: Vec<(String, String)>,
    /// How it is served: `fuse` or `erofs`.
    mode: RuntimeMode,
}

impl SavedMount {
    fn spec(&self) -> MountSpec {
        MountSpec {
            bootstrap_path: self.bootstrap_path.clone(),
            mountpoint: Some(self.mountpoint.clone()),
            repository: self.repository.clone(),
            scheme: Some(self.scheme.clone()),
            headers: self.headers.clone(),
            mode: Some(self.mode),
        }
    }
}

struct Mounted {
    info: MountInfo,
    saved: SavedMount,
    kind: Option<MountKind>,
    /// Background fetches, stopped when the image is unmounted.
    prefetch: Option<tokio::task::JoinHandle<()>>,
    blobs: Arc<StoreBlobs>,
    stats: Arc<ReadStats>,
}

impl Mounted {
    /// Whether this is the mount `spec` asks for (same bootstrap and repository, at its
    /// mountpoint if given).
    fn serves(&self, spec: &MountSpec) -> bool {
        self.info.bootstrap_path == spec.bootstrap_path
            && self.info.repository == spec.repository
            && spec
                .mountpoint
                .as_ref()
                .is_none_or(|p| *p == self.info.mountpoint)
    }
}

/// Feeds a mount's requests into the metrics.
struct MountObserver {
    metrics: Arc<crate::metrics::Metrics>,
    image: String,
    mode: &'static str,
}

impl nydus::fusefs::Observer for MountObserver {
    fn request(&self, op: &'static str, elapsed: std::time::Duration) {
        self.metrics
            .fuse_requests
            .get_or_create(&crate::metrics::FuseOpLabels {
                op,
                mode: self.mode,
            })
            .observe(elapsed.as_secs_f64());
    }

    fn read(&self, bytes: u64) {
        self.metrics
            .image_read_bytes
            .get_or_create(&crate::metrics::ImageLabels {
                image: self.image.clone(),
            })
            .inc_by(bytes);
    }
}

/// An image checked and ready to be served.
struct Prepared {
    /// Taken by the filesystem that serves it.
    img: Option<nydus::image::Image>,
    version: u32,
    blob_table: Vec<nydus::image::ImageBlob>,
    blobs: Arc<StoreBlobs>,
    prefetch: BTreeMap<u32, Vec<(u64, u64)>>,
    saved: SavedMount,
}

/// The mounts of this dfdaemon.
pub struct Runtime {
    engine: Arc<Engine>,
    config: config::Runtime,
    /// Serialises mounts, so one image is never mounted twice.
    mounts: tokio::sync::Mutex<BTreeMap<PathBuf, Mounted>>,
    stopping: Mutex<bool>,
    /// Keeps the mounts' FUSE descriptors while dfdaemon is down (policy `failover`).
    keeper: std::sync::OnceLock<holder::Keeper>,
    /// Why the runtime is off (another dfdaemon serves `runtime.mountRoot`).
    disabled: std::sync::OnceLock<String>,
    /// Registry credentials for blob reads (`runtime.auths`, Docker's `config.json`).
    credentials: crate::registry_auth::CredentialSource,
}

impl Runtime {
    pub fn new(engine: Arc<Engine>, config: config::Runtime) -> Arc<Runtime> {
        Arc::new(Runtime {
            engine,
            mounts: tokio::sync::Mutex::new(BTreeMap::new()),
            stopping: Mutex::new(false),
            keeper: std::sync::OnceLock::new(),
            disabled: std::sync::OnceLock::new(),
            credentials: crate::registry_auth::CredentialSource::new(config.auths.clone()),
            config,
        })
    }

    fn state_path(&self) -> PathBuf {
        self.config.mount_root.join(".mounts.json")
    }

    /// Serves again the mounts an earlier dfdaemon left (`<mountRoot>/.mounts.json`): with
    /// policy `failover`, the ones whose FUSE descriptors were kept are taken over where they
    /// are (readers saw a delay); the others are unmounted and, unless the policy is `none`,
    /// mounted again. Call once, before serving the API. When another dfdaemon serves the
    /// mounts under `runtime.mountRoot`, the runtime stays off (mount requests say why) and the
    /// rest of dfdaemon works.
    pub async fn recover(&self) {
        let policy = self.config.recover_policy;
        let mut kept = BTreeMap::new();
        if policy == RecoverPolicy::Failover {
            let root = self.config.mount_root.clone();
            match tokio::task::spawn_blocking(move || holder::Keeper::open(&root)).await {
                Ok(Ok((keeper, fds))) => {
                    tracing::info!(keeper = %keeper.describe(), kept = fds.len(),
                        "image mounts survive restarts of dfdaemon");
                    kept = fds;
                    let _ = self.keeper.set(keeper);
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    // Another dfdaemon owns these mounts: leave them (and the state) alone.
                    let why = format!("{e}; give this dfdaemon its own runtime.mountRoot");
                    tracing::error!(error = %why, "the image runtime is off");
                    let _ = self.disabled.set(why);
                    return;
                }
                Ok(Err(e)) => tracing::warn!(error = %e,
                    "no descriptor keeper: image mounts will end when dfdaemon does"),
                Err(e) => tracing::warn!(error = %e, "descriptor keeper"),
            }
        }
        let path = self.state_path();
        let saved: Vec<SavedMount> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e,
                    "mount state unreadable; earlier mounts are not served again");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "mount state unreadable");
                Vec::new()
            }
        };
        for s in saved {
            let name = fd_name(&s.mountpoint);
            if let Some(fd) = kept.remove(&name) {
                match self.adopt(&s, fd).await {
                    Ok(()) => continue,
                    Err(e) => tracing::warn!(mountpoint = %s.mountpoint.display(), error = %e,
                        "cannot take the mount over; mounting it again"),
                }
            }
            // Its server is gone: what is left at the mountpoint only answers errors.
            detach(&s.mountpoint);
            if s.mode == RuntimeMode::Erofs {
                detach(&self.blob_dir(&s.mountpoint));
            }
            if policy == RecoverPolicy::None {
                continue;
            }
            match self.mount(s.spec()).await {
                Ok(_) => {
                    tracing::info!(mountpoint = %s.mountpoint.display(), "image mounted again")
                }
                Err(e) => tracing::error!(mountpoint = %s.mountpoint.display(), error = %e,
                    "cannot mount the image again"),
            }
        }
        if let Some(k) = self.keeper.get() {
            for name in kept.keys() {
                let _ = k.remove(name);
            }
        }
        self.save(&*self.mounts.lock().await);
    }

    /// Writes the mount state (atomically, mode 0600: it holds the mounts' request headers).
    fn save(&self, mounts: &BTreeMap<PathBuf, Mounted>) {
        let saved: Vec<&SavedMount> = mounts.values().map(|m| &m.saved).collect();
        let path = self.state_path();
        let r = (|| -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::create_dir_all(&self.config.mount_root)?;
            let tmp = path.with_extension("json.tmp");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&saved).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = r {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the mount state");
        }
    }

    /// Checks a mount request and loads its image.
    async fn prepare(&self, spec: &MountSpec) -> Result<Prepared, RuntimeError> {
        let invalid = RuntimeError::InvalidArgument;
        let scheme = spec.scheme.as_deref().unwrap_or("https");
        if scheme != "https" && scheme != "http" {
            return Err(invalid(format!("scheme {scheme:?}: must be https or http")));
        }
        let (host, name) = parse_repository(&spec.repository).map_err(invalid)?;
        let mut headers = HeaderMap::new();
        for (k, v) in &spec.headers {
            let n = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| invalid(format!("header name {k:?} is invalid")))?;
            let v = HeaderValue::from_str(v)
                .map_err(|_| invalid(format!("header {k}: the value is invalid")))?;
            headers.append(n, v);
        }
        if !spec.bootstrap_path.is_absolute() {
            return Err(invalid(format!(
                "bootstrap path {} must be absolute",
                spec.bootstrap_path.display()
            )));
        }
        if let Some(m) = &spec.mountpoint {
            if !m.is_absolute() {
                return Err(invalid(format!(
                    "mountpoint {} must be absolute",
                    m.display()
                )));
            }
        }
        let image_err = |message: String| RuntimeError::Image {
            path: spec.bootstrap_path.clone(),
            message,
        };
        let path = spec.bootstrap_path.clone();
        let img = tokio::task::spawn_blocking(move || nydus::image::load(&path))
            .await
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))?
            .map_err(|e| image_err(e.to_string()))?;
        nydus::image::check_chunk_addresses(&img).map_err(image_err)?;
        for b in &img.blobs {
            if let Some(f) = b.unsupported_feature() {
                return Err(image_err(format!("blob {}: {f} is not supported", b.id)));
            }
        }
        let mountpoint = match &spec.mountpoint {
            Some(m) => m.clone(),
            None => self
                .config
                .mount_root
                .join(&hex::encode(sha2::Sha256::digest(&img.bootstrap))[..16]),
        };
        let repo_url = format!("{scheme}://{host}/v2/{name}");
        // Without an Authorization header of the request's own, the registry's challenges are
        // answered with the configured credentials (or anonymously).
        let auth = if headers.contains_key(http::header::AUTHORIZATION) {
            None
        } else {
            let creds = self
                .credentials
                .lookup(host)
                .map_err(|m| invalid(format!("credentials for {host}: {m}")))?;
            Some(Arc::new(crate::registry_auth::RegistryAuth::new(
                host, creds,
            )))
        };
        let sources = StoreBlobs::registry_sources(&repo_url, &img.blobs, &headers, auth)
            .map_err(|e| image_err(e.to_string()))?;
        let blobs = Arc::new(StoreBlobs::new(
            self.engine.clone(),
            tokio::runtime::Handle::current(),
            sources,
        ));
        let prefetch = if self.config.prefetch.enable {
            nydus::image::prefetch_ranges(&img).map_err(|e| image_err(e.to_string()))?
        } else {
            Default::default()
        };
        Ok(Prepared {
            version: img.version,
            blob_table: img.blobs.clone(),
            img: Some(img),
            blobs,
            prefetch,
            saved: SavedMount {
                mountpoint,
                bootstrap_path: spec.bootstrap_path.clone(),
                repository: spec.repository.clone(),
                scheme: scheme.to_string(),
                headers: spec.headers.clone(),
                // Set to how it is served.
                mode: RuntimeMode::Auto,
            },
        })
    }

    fn reader(&self, p: &Prepared) -> ChunkReader<Arc<StoreBlobs>> {
        let m = self.engine.metrics().clone();
        ChunkReader::new(p.blob_table.clone(), p.blobs.clone())
            .with_cache_bytes(self.config.chunk_cache_size.as_u64() as usize)
            .with_max_merge(self.config.max_merge_size.as_u64())
            .with_read_ahead(self.config.read_ahead.as_u64())
            .on_check_failure(Arc::new(move |_| {
                m.chunk_check_failures.inc();
            }))
    }

    fn observer(&self, p: &Prepared, mode: &'static str) -> Arc<dyn nydus::fusefs::Observer> {
        Arc::new(MountObserver {
            metrics: self.engine.metrics().clone(),
            image: p.saved.repository.clone(),
            mode,
        })
    }

    /// Where the blob views of an EROFS mount at `mountpoint` are served.
    fn blob_dir(&self, mountpoint: &Path) -> PathBuf {
        let key = hex::encode(sha2::Sha256::digest(
            mountpoint.as_os_str().as_encoded_bytes(),
        ));
        self.config.mount_root.join(".blobs").join(&key[..16])
    }

    /// Hands a mount's `/dev/fuse` descriptor to the keeper, so the mount outlives this process.
    fn keep(&self, mountpoint: &Path, dev: std::os::fd::OwnedFd) {
        if let Some(k) = self.keeper.get() {
            if let Err(e) = k.put(&fd_name(mountpoint), std::os::fd::AsFd::as_fd(&dev)) {
                tracing::warn!(mountpoint = %mountpoint.display(), error = %e,
                    "the mount will end when dfdaemon does");
            }
        }
    }

    /// Mounts an image (or returns its existing mount).
    pub async fn mount(&self, spec: MountSpec) -> Result<MountInfo, RuntimeError> {
        if let Some(why) = self.disabled.get() {
            return Err(RuntimeError::Unavailable(why.clone()));
        }
        let mode = spec.mode.unwrap_or(self.config.mode);
        // The image already mounted (one mount per image, shared by its containers): answered
        // without reading its bootstrap again.
        if let Some(info) = self.existing(&spec).await {
            return Ok(info);
        }
        let mut p = self.prepare(&spec).await?;
        p.blobs
            .check_access()
            .await
            .map_err(|message| RuntimeError::Mount {
                mountpoint: p.saved.mountpoint.clone(),
                message,
            })?;
        if *self.stopping.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(RuntimeError::Unavailable("dfdaemon is stopping".into()));
        }
        let mut mounts = self.mounts.lock().await;
        // Mounted meanwhile (the lock is held from here on, so only once).
        if let Some(m) = mounts.values().find(|m| m.serves(&spec)) {
            return Ok(self.info(m));
        }
        let mountpoint = p.saved.mountpoint.clone();
        if mounts.contains_key(&mountpoint) {
            return Err(RuntimeError::AlreadyMounted { mountpoint });
        }
        std::fs::create_dir_all(&mountpoint).map_err(|e| RuntimeError::Mount {
            mountpoint: mountpoint.clone(),
            message: e.to_string(),
        })?;
        if mode == RuntimeMode::Erofs && p.version != 6 {
            return Err(RuntimeError::InvalidArgument(format!(
                "mode erofs needs a RAFS v6 image; {} is v{}",
                spec.bootstrap_path.display(),
                p.version
            )));
        }
        let mut served = None;
        if mode != RuntimeMode::Fuse && p.version == 6 {
            match self.mount_erofs(&p).await {
                Ok(m) => served = Some(m),
                Err(e) if mode == RuntimeMode::Erofs => return Err(e),
                Err(e) => {
                    tracing::warn!(mountpoint = %mountpoint.display(), error = %e,
                        "kernel EROFS mode failed; serving the image over FUSE");
                }
            }
        }
        let (kind, stats, mode) = match served {
            Some((kind, stats)) => (kind, stats, RuntimeMode::Erofs),
            None => {
                let reader = self.reader(&p);
                let stats = reader.stats.clone();
                let img = p.img.take().ok_or_else(|| {
                    RuntimeError::Unavailable("the image was already served".into())
                })?;
                let first = nydus::fusefs::first_file(&img.tree);
                let fs = nydus::fusefs::RafsFs::new(img, reader)
                    .with_observer(self.observer(&p, "fuse"));
                let options = nydus::fusefs::mount_config(self.config.threads, false);
                let mp = mountpoint.clone();
                let (session, dev) =
                    tokio::task::spawn_blocking(move || nydus::takeover::mount(fs, &mp, &options))
                        .await
                        .map_err(|e| RuntimeError::Unavailable(e.to_string()))?
                        .map_err(|e| RuntimeError::Mount {
                            mountpoint: mountpoint.clone(),
                            message: e.to_string(),
                        })?;
                self.keep(&mountpoint, dev);
                let mp = mountpoint.clone();
                let warm = tokio::task::spawn_blocking(move || {
                    nydus::fusefs::warm_up(&mp, first.as_deref())
                })
                .await;
                if let Ok(Err(e)) = warm {
                    tracing::warn!(mountpoint = %mountpoint.display(), "opening a file of the new mount: {e}");
                }
                (MountKind::Fuse(session), stats, RuntimeMode::Fuse)
            }
        };
        tracing::info!(mountpoint = %mountpoint.display(), bootstrap = %spec.bootstrap_path.display(),
            repository = %spec.repository, mode = mode.as_str(), "image mounted");
        let info = self.insert(&mut mounts, p, kind, stats, mode);
        self.save(&mounts);
        Ok(info)
    }

    /// The mount of `spec`'s image (same bootstrap and repository, at its mountpoint if given).
    async fn existing(&self, spec: &MountSpec) -> Option<MountInfo> {
        let mounts = self.mounts.lock().await;
        let m = mounts.values().find(|m| m.serves(spec))?;
        Some(self.info(m))
    }

    /// Records a served mount and starts its prefetch.
    fn insert(
        &self,
        mounts: &mut BTreeMap<PathBuf, Mounted>,
        p: Prepared,
        kind: MountKind,
        stats: Arc<ReadStats>,
        mode: RuntimeMode,
    ) -> MountInfo {
        let background = (!p.prefetch.is_empty() || self.config.prefetch.all)
            .then(|| spawn_prefetch(p.blobs.clone(), p.prefetch, self.config.prefetch.all));
        let m = Mounted {
            info: MountInfo {
                mountpoint: p.saved.mountpoint.clone(),
                bootstrap_path: p.saved.bootstrap_path.clone(),
                repository: p.saved.repository.clone(),
                mode: mode.as_str(),
                blob_ids: p.blob_table.iter().map(|b| b.id.clone()).collect(),
                read_bytes: 0,
                origin_bytes: 0,
                parent_bytes: 0,
                chunk_check_failures: 0,
            },
            saved: SavedMount { mode, ..p.saved },
            kind: Some(kind),
            blobs: p.blobs,
            stats,
            prefetch: background,
        };
        let info = self.info(&m);
        mounts.insert(info.mountpoint.clone(), m);
        info
    }

    /// Serves a mount an earlier dfdaemon left, on its kept descriptor `dev`.
    async fn adopt(&self, s: &SavedMount, dev: std::os::fd::OwnedFd) -> Result<(), RuntimeError> {
        let spec = s.spec();
        let mut p = self.prepare(&spec).await?;
        let img = p
            .img
            .take()
            .ok_or_else(|| RuntimeError::Unavailable("the image was already served".into()))?;
        let mountpoint = s.mountpoint.clone();
        let unavailable = |e: std::io::Error| RuntimeError::Mount {
            mountpoint: mountpoint.clone(),
            message: format!("taking over: {e}"),
        };
        let resend = dev.try_clone().map_err(unavailable)?;
        let reader = self.reader(&p);
        let stats = reader.stats.clone();
        let (kind, mode) = if s.mode == RuntimeMode::Erofs {
            let fs = nydus::blobfs::BlobFs::new(&img, reader)
                .map_err(|e| RuntimeError::Image {
                    path: s.bootstrap_path.clone(),
                    message: e.to_string(),
                })?
                .with_observer(self.observer(&p, "erofs"));
            let is_view: Vec<bool> = (0..p.blob_table.len())
                .map(|i| fs.blob_is_its_view(i))
                .collect();
            let options = nydus::blobfs::blobfs_config(self.config.threads);
            let session = take_over(fs, dev, options).await?.map_err(unavailable)?;
            // The kernel's mount kept its devices; the store files among them stay pinned.
            let pinned = (0..p.blob_table.len())
                .filter_map(|i| self.store_file(&p, is_view[i], i))
                .map(|t| t.use_task())
                .collect();
            (
                MountKind::Erofs {
                    blobs: session,
                    blob_dir: self.blob_dir(&mountpoint),
                    pinned,
                },
                RuntimeMode::Erofs,
            )
        } else {
            let fs =
                nydus::fusefs::RafsFs::new(img, reader).with_observer(self.observer(&p, "fuse"));
            let options = nydus::fusefs::mount_config(self.config.threads, false);
            let session = take_over(fs, dev, options).await?.map_err(unavailable)?;
            (MountKind::Fuse(session), RuntimeMode::Fuse)
        };
        // Requests the dead dfdaemon had read but not answered.
        if let Err(e) = nydus::takeover::resend(std::os::fd::AsFd::as_fd(&resend)) {
            tracing::warn!(mountpoint = %mountpoint.display(), error = %e,
                "the kernel did not resend requests in flight (Linux >= 6.9 does): their readers get an error");
        }
        let mut mounts = self.mounts.lock().await;
        self.insert(&mut mounts, p, kind, stats, mode);
        tracing::info!(mountpoint = %mountpoint.display(), mode = mode.as_str(), "image mount taken over");
        Ok(())
    }

    fn info(&self, m: &Mounted) -> MountInfo {
        let mut info = m.info.clone();
        info.read_bytes = m.stats.bytes_read.load(Ordering::Relaxed);
        info.chunk_check_failures = m.stats.check_failures.load(Ordering::Relaxed);
        for i in 0..info.blob_ids.len() {
            if let Some(t) = m.blobs.opened(i as u32) {
                info.origin_bytes += t.stats.origin_bytes.load(Ordering::Relaxed);
                info.parent_bytes += t.stats.parent_bytes.load(Ordering::Relaxed);
            }
        }
        info
    }

    /// Serves the blob views of the image over FUSE under `runtime.mountRoot` and mounts the
    /// bootstrap with them as kernel EROFS at its mountpoint.
    async fn mount_erofs(&self, p: &Prepared) -> Result<(MountKind, Arc<ReadStats>), RuntimeError> {
        let mountpoint = &p.saved.mountpoint;
        let bootstrap = &p.saved.bootstrap_path;
        let mount_err = |message: String| RuntimeError::Mount {
            mountpoint: mountpoint.to_path_buf(),
            message,
        };
        let img = p
            .img
            .as_ref()
            .ok_or_else(|| RuntimeError::Unavailable("the image was already served".into()))?;
        let reader = self.reader(p);
        let stats = reader.stats.clone();
        let fs = nydus::blobfs::BlobFs::new(img, reader)
            .map_err(|e| RuntimeError::Image {
                path: bootstrap.to_path_buf(),
                message: e.to_string(),
            })?
            .with_observer(self.observer(p, "erofs"));
        let blob_dir = self.blob_dir(mountpoint);
        std::fs::create_dir_all(&blob_dir)
            .map_err(|e| mount_err(format!("{}: {e}", blob_dir.display())))?;
        let mut devices = fs.device_paths(&blob_dir);
        let mut pinned = Vec::new();
        for (i, device) in devices.iter_mut().enumerate() {
            if let Some(task) = self.store_file(p, fs.blob_is_its_view(i), i) {
                tracing::info!(blob = %p.blob_table[i].id, file = %task.path().display(),
                    "blob device: the store's complete file, read by the kernel directly");
                *device = task.path().to_path_buf();
                pinned.push(task.use_task());
            }
        }
        let options = nydus::blobfs::blobfs_config(self.config.threads);
        let dir = blob_dir.clone();
        let (session, dev) =
            tokio::task::spawn_blocking(move || nydus::takeover::mount(fs, &dir, &options))
                .await
                .map_err(|e| RuntimeError::Unavailable(e.to_string()))?
                .map_err(|e| mount_err(format!("blob views at {}: {e}", blob_dir.display())))?;
        let (b, m) = (bootstrap.to_path_buf(), mountpoint.to_path_buf());
        let r = tokio::task::spawn_blocking(move || nydus::blobfs::mount_erofs(&b, &m, &devices))
            .await
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        match r {
            Ok(()) => {
                self.keep(mountpoint, dev);
                Ok((
                    MountKind::Erofs {
                        blobs: session,
                        blob_dir,
                        pinned,
                    },
                    stats,
                ))
            }
            Err(e) => {
                // The session does not unmount when it ends ([`nydus::takeover::mount`]).
                let dir = blob_dir.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let _ = nydus::blobfs::unmount(&dir);
                    session.join()
                })
                .await;
                let _ = std::fs::remove_dir(&blob_dir);
                Err(mount_err(e.to_string()))
            }
        }
    }

    /// The complete task of blob `i` whose content file can be the blob's EROFS device
    /// (`is_view`: the blob's bytes are its uncompressed view), if the store has it.
    fn store_file(
        &self,
        p: &Prepared,
        is_view: bool,
        i: usize,
    ) -> Option<Arc<crate::storage::Task>> {
        if !is_view {
            return None;
        }
        let task = self.engine.store().get(&p.blob_table.get(i)?.id)?;
        task.is_complete().then_some(task)
    }

    /// Unmounts an image.
    pub async fn unmount(&self, mountpoint: &Path) -> Result<(), RuntimeError> {
        self.end(mountpoint, true).await
    }

    /// Unmounts an image; with `forget`, it is also removed from the saved state.
    async fn end(&self, mountpoint: &Path, forget: bool) -> Result<(), RuntimeError> {
        let mut mounts = self.mounts.lock().await;
        let m = mounts
            .get_mut(mountpoint)
            .ok_or_else(|| RuntimeError::NotMounted(mountpoint.to_path_buf()))?;
        let unmount_err = |e: String| RuntimeError::Mount {
            mountpoint: mountpoint.to_path_buf(),
            message: format!("unmount: {e}"),
        };
        // The kernel's mount first (it may be busy: then nothing changes); that ends the FUSE
        // connection, and the session's threads with it.
        let mp = mountpoint.to_path_buf();
        let r = tokio::task::spawn_blocking(move || nydus::blobfs::unmount(&mp))
            .await
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        if let Err(e) = r {
            return Err(unmount_err(e.to_string()));
        }
        let (session, blob_dir, pinned) = match m.kind.take() {
            None => (None, None, Vec::new()),
            Some(MountKind::Fuse(session)) => (Some(session), None, Vec::new()),
            Some(MountKind::Erofs {
                blobs,
                blob_dir,
                pinned,
            }) => {
                let dir = blob_dir.clone();
                let r = tokio::task::spawn_blocking(move || nydus::blobfs::unmount(&dir))
                    .await
                    .map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
                if let Err(e) = r {
                    tracing::warn!(dir = %blob_dir.display(), error = %e, "unmounting the blob views");
                }
                (Some(blobs), Some(blob_dir), pinned)
            }
        };
        // The session ends when the kernel ends its connection (the unmounts above).
        if let Some(session) = session {
            tokio::task::spawn_blocking(move || session.join())
                .await
                .map_err(|e| RuntimeError::Unavailable(e.to_string()))?
                .map_err(|e| unmount_err(e.to_string()))?;
        }
        // The kernel no longer reads the store files it had as devices.
        drop(pinned);
        if let Some(dir) = blob_dir {
            let _ = std::fs::remove_dir(&dir);
        }
        if let Some(k) = self.keeper.get() {
            if let Err(e) = k.remove(&fd_name(mountpoint)) {
                tracing::warn!(mountpoint = %mountpoint.display(), error = %e,
                    "the descriptor keeper did not drop the mount's descriptor");
            }
        }
        if let Some(p) = mounts.remove(mountpoint).and_then(|m| m.prefetch) {
            p.abort();
        }
        if forget {
            self.save(&mounts);
        }
        tracing::info!(mountpoint = %mountpoint.display(), "image unmounted");
        Ok(())
    }

    /// The mounted images.
    pub async fn list(&self) -> Vec<MountInfo> {
        let mounts = self.mounts.lock().await;
        mounts.values().map(|m| self.info(m)).collect()
    }

    /// dfdaemon stops. With policy `failover` and a descriptor keeper, mounts stay (the next
    /// dfdaemon serves them); otherwise they are unmounted (`restart`: and mounted again by the
    /// next dfdaemon).
    pub async fn shutdown(&self) {
        *self.stopping.lock().unwrap_or_else(|p| p.into_inner()) = true;
        let policy = self.config.recover_policy;
        if policy == RecoverPolicy::Failover {
            if let Some(k) = self.keeper.get() {
                let mounts = self.mounts.lock().await;
                for m in mounts.values() {
                    if let Some(p) = &m.prefetch {
                        p.abort();
                    }
                }
                if !mounts.is_empty() {
                    tracing::info!(mounts = mounts.len(), keeper = %k.describe(),
                        "leaving the image mounts to the next dfdaemon");
                }
                return;
            }
        }
        let all: Vec<PathBuf> = self.mounts.lock().await.keys().cloned().collect();
        for m in all {
            if let Err(e) = self.end(&m, policy != RecoverPolicy::Restart).await {
                tracing::warn!(mountpoint = %m.display(), error = %e, "unmount at shutdown failed");
            }
        }
    }
}

/// Serves `fs` on the kept descriptor `dev` ([`nydus::takeover::adopt`]) on a blocking thread.
async fn take_over<FS: fuser::Filesystem + Send + 'static>(
    fs: FS,
    dev: std::os::fd::OwnedFd,
    options: fuser::Config,
) -> Result<std::io::Result<fuser::BackgroundSession>, RuntimeError> {
    tokio::task::spawn_blocking(move || nydus::takeover::adopt(fs, dev, &options))
        .await
        .map_err(|e| RuntimeError::Unavailable(e.to_string()))
}

/// The keeper's name for a mount's descriptor.
fn fd_name(mountpoint: &Path) -> String {
    let h = hex::encode(sha2::Sha256::digest(
        mountpoint.as_os_str().as_encoded_bytes(),
    ));
    format!("mount-{}", &h[..16])
}

/// Lazily unmounts whatever is mounted at `path` (a mount whose server is gone).
fn detach(path: &Path) {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) => tracing::info!(path = %path.display(), "unmounted a mount whose server was gone"),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot unmount"),
    }
}

/// Fetches the prefetch table's ranges, then (with `all`) every blob whole.
fn spawn_prefetch(
    blobs: Arc<StoreBlobs>,
    ranges: BTreeMap<u32, Vec<(u64, u64)>>,
    all: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for (blob, rs) in ranges {
            for (s, e) in rs {
                if let Err(e) = blobs.prefetch(blob, s, e).await {
                    tracing::warn!(blob, error = %e, "prefetch failed");
                }
            }
        }
        if all {
            for blob in 0..blobs.len() as u32 {
                if let Err(e) = blobs.prefetch(blob, 0, u64::MAX).await {
                    tracing::warn!(blob, error = %e, "prefetch of the whole blob failed");
                }
            }
        }
        tracing::info!("prefetch done");
    })
}

/// `host[:port]/name` → (host[:port], name), both checked.
fn parse_repository(r: &str) -> Result<(&str, &str), String> {
    let bad = |why: &str| format!("repository {r:?}: {why} (want host[:port]/name)");
    let (host, name) = r.split_once('/').ok_or_else(|| bad("no name"))?;
    if !crate::config::is_host_port(host, false) {
        return Err(bad("the host is invalid"));
    }
    let ok_component = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c != "."
            && c != ".."
    };
    if !name.split('/').all(ok_component) {
        return Err(bad("the name is invalid"));
    }
    Ok((host, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_are_checked() {
        assert_eq!(
            parse_repository("127.0.0.1:5000/library/app").unwrap(),
            ("127.0.0.1:5000", "library/app")
        );
        for bad in [
            "noname",
            "host/",
            "host/../x",
            "host/a//b",
            "host/UPPER",
            "ho st/x",
            "host/x?y",
        ] {
            assert!(parse_repository(bad).is_err(), "{bad}");
        }
    }
}
