//! The lazy-loading runtime: Nydus (RAFS) images mounted by dfdaemon, their
//! file data read on demand through the piece store ([`crate::lazy`]), every
//! chunk checked (CRC32C or digest) before the kernel sees it.
//!
//! One mount per (bootstrap, repository): mounting the same image again
//! returns the existing mount. Mounts end with [`Runtime::unmount`] or when
//! dfdaemon stops.

pub mod grpc;

use crate::config::{self, RuntimeMode};
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
    },
}

struct Mounted {
    info: MountInfo,
    kind: Option<MountKind>,
    /// Background fetches, stopped when the image is unmounted.
    prefetch: Option<tokio::task::JoinHandle<()>>,
    blobs: Arc<StoreBlobs>,
    stats: Arc<ReadStats>,
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

/// The mounts of this dfdaemon.
pub struct Runtime {
    engine: Arc<Engine>,
    config: config::Runtime,
    mounts: tokio::sync::Mutex<BTreeMap<PathBuf, Mounted>>,
    /// Serialises mounts, so one image is never mounted twice.
    stopping: Mutex<bool>,
}

impl Runtime {
    pub fn new(engine: Arc<Engine>, config: config::Runtime) -> Arc<Runtime> {
        Arc::new(Runtime {
            engine,
            config,
            mounts: tokio::sync::Mutex::new(BTreeMap::new()),
            stopping: Mutex::new(false),
        })
    }

    /// Mounts an image (or returns its existing mount).
    pub async fn mount(&self, spec: MountSpec) -> Result<MountInfo, RuntimeError> {
        let invalid = RuntimeError::InvalidArgument;
        let mode = spec.mode.unwrap_or(self.config.mode);
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
        if *self.stopping.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(RuntimeError::Unavailable("dfdaemon is stopping".into()));
        }

        let mut mounts = self.mounts.lock().await;
        if let Some(m) = mounts.values().find(|m| {
            m.info.bootstrap_path == spec.bootstrap_path && m.info.repository == spec.repository
        }) {
            if spec
                .mountpoint
                .as_ref()
                .is_none_or(|p| *p == m.info.mountpoint)
            {
                return Ok(self.info(m));
            }
        }
        let path = spec.bootstrap_path.clone();
        let img = tokio::task::spawn_blocking(move || nydus::image::load(&path))
            .await
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))?
            .map_err(|e| RuntimeError::Image {
                path: spec.bootstrap_path.clone(),
                message: e.to_string(),
            })?;
        nydus::image::check_chunk_addresses(&img).map_err(|message| RuntimeError::Image {
            path: spec.bootstrap_path.clone(),
            message,
        })?;
        for b in &img.blobs {
            if let Some(f) = b.unsupported_feature() {
                return Err(RuntimeError::Image {
                    path: spec.bootstrap_path.clone(),
                    message: format!("blob {}: {f} is not supported", b.id),
                });
            }
        }
        let mountpoint = match &spec.mountpoint {
            Some(m) => m.clone(),
            None => self
                .config
                .mount_root
                .join(&hex::encode(sha2::Sha256::digest(&img.bootstrap))[..16]),
        };
        if mounts.contains_key(&mountpoint) {
            return Err(RuntimeError::AlreadyMounted { mountpoint });
        }
        std::fs::create_dir_all(&mountpoint).map_err(|e| RuntimeError::Mount {
            mountpoint: mountpoint.clone(),
            message: e.to_string(),
        })?;
        if mode == RuntimeMode::Erofs && img.version != 6 {
            return Err(invalid(format!(
                "mode erofs needs a RAFS v6 image; {} is v{}",
                spec.bootstrap_path.display(),
                img.version
            )));
        }
        let repo_url = format!("{scheme}://{host}/v2/{name}");
        let sources =
            StoreBlobs::registry_sources(&repo_url, &img.blobs, &headers).map_err(|e| {
                RuntimeError::Image {
                    path: spec.bootstrap_path.clone(),
                    message: e.to_string(),
                }
            })?;
        let blobs = Arc::new(StoreBlobs::new(
            self.engine.clone(),
            tokio::runtime::Handle::current(),
            sources,
        ));
        let blob_ids: Vec<String> = img.blobs.iter().map(|b| b.id.clone()).collect();
        let prefetch = if self.config.prefetch.enable {
            nydus::image::prefetch_ranges(&img).map_err(|e| RuntimeError::Image {
                path: spec.bootstrap_path.clone(),
                message: e.to_string(),
            })?
        } else {
            Default::default()
        };
        let metrics = self.engine.metrics().clone();
        let new_reader = || {
            let m = metrics.clone();
            ChunkReader::new(img.blobs.clone(), blobs.clone())
                .with_cache_bytes(self.config.chunk_cache_size.as_u64() as usize)
                .with_max_merge(self.config.max_merge_size.as_u64())
                .on_check_failure(Arc::new(move |_| {
                    m.chunk_check_failures.inc();
                }))
        };
        let observer = |mode: &'static str| {
            Arc::new(MountObserver {
                metrics: metrics.clone(),
                image: spec.repository.clone(),
                mode,
            }) as Arc<dyn nydus::fusefs::Observer>
        };
        let mut served = None;
        if mode != RuntimeMode::Fuse && img.version == 6 {
            match self
                .mount_erofs(
                    &img,
                    new_reader(),
                    observer("erofs"),
                    &spec.bootstrap_path,
                    &mountpoint,
                )
                .await
            {
                Ok(m) => served = Some(m),
                Err(e) if mode == RuntimeMode::Erofs => return Err(e),
                Err(e) => {
                    tracing::warn!(mountpoint = %mountpoint.display(), error = %e,
                        "kernel EROFS mode failed; serving the image over FUSE");
                }
            }
        }
        let (kind, stats, mode) = match served {
            Some((kind, stats)) => (kind, stats, "erofs"),
            None => {
                let reader = new_reader();
                let stats = reader.stats.clone();
                let fs = nydus::fusefs::RafsFs::new(img, reader).with_observer(observer("fuse"));
                let options = nydus::fusefs::mount_config(self.config.threads, false);
                let mp = mountpoint.clone();
                let session =
                    tokio::task::spawn_blocking(move || fuser::spawn_mount(fs, &mp, &options))
                        .await
                        .map_err(|e| RuntimeError::Unavailable(e.to_string()))?
                        .map_err(|e| RuntimeError::Mount {
                            mountpoint: mountpoint.clone(),
                            message: e.to_string(),
                        })?;
                (MountKind::Fuse(session), stats, "fuse")
            }
        };
        let m = Mounted {
            info: MountInfo {
                mountpoint: mountpoint.clone(),
                bootstrap_path: spec.bootstrap_path.clone(),
                repository: spec.repository.clone(),
                mode,
                blob_ids,
                read_bytes: 0,
                origin_bytes: 0,
                parent_bytes: 0,
                chunk_check_failures: 0,
            },
            kind: Some(kind),
            blobs,
            stats,
            prefetch: None,
        };
        tracing::info!(mountpoint = %mountpoint.display(), bootstrap = %spec.bootstrap_path.display(),
            repository = %spec.repository, mode, "image mounted");
        let info = self.info(&m);
        let background = (!prefetch.is_empty() || self.config.prefetch.all)
            .then(|| spawn_prefetch(m.blobs.clone(), prefetch, self.config.prefetch.all));
        let m = Mounted {
            prefetch: background,
            ..m
        };
        mounts.insert(mountpoint, m);
        Ok(info)
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

    /// Serves the blob views of `img` over FUSE under `runtime.mountRoot` and mounts the
    /// bootstrap with them as kernel EROFS at `mountpoint`.
    async fn mount_erofs(
        &self,
        img: &nydus::image::Image,
        reader: ChunkReader<Arc<StoreBlobs>>,
        observer: Arc<dyn nydus::fusefs::Observer>,
        bootstrap: &Path,
        mountpoint: &Path,
    ) -> Result<(MountKind, Arc<ReadStats>), RuntimeError> {
        let mount_err = |message: String| RuntimeError::Mount {
            mountpoint: mountpoint.to_path_buf(),
            message,
        };
        let stats = reader.stats.clone();
        let fs = nydus::blobfs::BlobFs::new(img, reader)
            .map_err(|e| RuntimeError::Image {
                path: bootstrap.to_path_buf(),
                message: e.to_string(),
            })?
            .with_observer(observer);
        let key = hex::encode(sha2::Sha256::digest(
            mountpoint.as_os_str().as_encoded_bytes(),
        ));
        let blob_dir = self.config.mount_root.join(".blobs").join(&key[..16]);
        std::fs::create_dir_all(&blob_dir)
            .map_err(|e| mount_err(format!("{}: {e}", blob_dir.display())))?;
        let devices = fs.device_paths(&blob_dir);
        let options = nydus::blobfs::blobfs_config(self.config.threads);
        let dir = blob_dir.clone();
        let session = tokio::task::spawn_blocking(move || fuser::spawn_mount(fs, &dir, &options))
            .await
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))?
            .map_err(|e| mount_err(format!("blob views at {}: {e}", blob_dir.display())))?;
        let (b, m) = (bootstrap.to_path_buf(), mountpoint.to_path_buf());
        let r = tokio::task::spawn_blocking(move || nydus::blobfs::mount_erofs(&b, &m, &devices))
            .await
            .map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
        match r {
            Ok(()) => Ok((
                MountKind::Erofs {
                    blobs: session,
                    blob_dir,
                },
                stats,
            )),
            Err(e) => {
                let _ = tokio::task::spawn_blocking(move || session.umount_and_join()).await;
                let _ = std::fs::remove_dir(&blob_dir);
                Err(mount_err(e.to_string()))
            }
        }
    }

    /// Unmounts an image.
    pub async fn unmount(&self, mountpoint: &Path) -> Result<(), RuntimeError> {
        let mut mounts = self.mounts.lock().await;
        let m = mounts
            .get_mut(mountpoint)
            .ok_or_else(|| RuntimeError::NotMounted(mountpoint.to_path_buf()))?;
        let unmount_err = |e: String| RuntimeError::Mount {
            mountpoint: mountpoint.to_path_buf(),
            message: format!("unmount: {e}"),
        };
        match m.kind.take() {
            None => {}
            Some(MountKind::Fuse(session)) => {
                tokio::task::spawn_blocking(move || session.umount_and_join())
                    .await
                    .map_err(|e| RuntimeError::Unavailable(e.to_string()))?
                    .map_err(|e| unmount_err(e.to_string()))?;
            }
            Some(MountKind::Erofs { blobs, blob_dir }) => {
                // The filesystem first (it may be busy: then nothing changes), its devices after.
                let mp = mountpoint.to_path_buf();
                let r = tokio::task::spawn_blocking(move || nydus::blobfs::unmount(&mp))
                    .await
                    .map_err(|e| RuntimeError::Unavailable(e.to_string()))?;
                if let Err(e) = r {
                    m.kind = Some(MountKind::Erofs { blobs, blob_dir });
                    return Err(unmount_err(e.to_string()));
                }
                tokio::task::spawn_blocking(move || blobs.umount_and_join())
                    .await
                    .map_err(|e| RuntimeError::Unavailable(e.to_string()))?
                    .map_err(|e| unmount_err(e.to_string()))?;
                let _ = std::fs::remove_dir(&blob_dir);
            }
        }
        if let Some(p) = mounts.remove(mountpoint).and_then(|m| m.prefetch) {
            p.abort();
        }
        tracing::info!(mountpoint = %mountpoint.display(), "image unmounted");
        Ok(())
    }

    /// The mounted images.
    pub async fn list(&self) -> Vec<MountInfo> {
        let mounts = self.mounts.lock().await;
        mounts.values().map(|m| self.info(m)).collect()
    }

    /// Unmounts everything (dfdaemon stops).
    pub async fn shutdown(&self) {
        *self.stopping.lock().unwrap_or_else(|p| p.into_inner()) = true;
        let all: Vec<PathBuf> = self.mounts.lock().await.keys().cloned().collect();
        for m in all {
            if let Err(e) = self.unmount(&m).await {
                tracing::warn!(mountpoint = %m.display(), error = %e, "unmount at shutdown failed");
            }
        }
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
