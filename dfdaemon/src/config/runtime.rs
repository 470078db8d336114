use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How an image is mounted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeMode {
    /// Kernel EROFS for RAFS v6 images where the kernel can mount it, FUSE
    /// otherwise (and for v5 images).
    #[default]
    Auto,
    /// A FUSE filesystem serves metadata and data.
    Fuse,
    /// The kernel mounts the bootstrap as EROFS (file-backed, Linux ≥ 6.12);
    /// the blobs' uncompressed views are served by FUSE. v6 images only.
    Erofs,
}

impl RuntimeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeMode::Auto => "auto",
            RuntimeMode::Fuse => "fuse",
            RuntimeMode::Erofs => "erofs",
        }
    }
}

/// What happens to image mounts when dfdaemon stops or dies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecoverPolicy {
    /// Mounts stay while dfdaemon is down (their FUSE descriptors are kept by systemd's file
    /// descriptor store or a holder process); the next dfdaemon serves them again, and reads
    /// in flight are resent (Linux >= 6.9): readers wait, they see no error.
    #[default]
    Failover,
    /// Mounts end when dfdaemon stops; the next dfdaemon mounts them again at the same paths.
    Restart,
    /// Mounts end when dfdaemon stops and are not mounted again.
    None,
}

/// What a mount fetches before it is read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Prefetch {
    /// Fetch the files the image's prefetch table lists, in the background,
    /// right after mounting. Default: true.
    pub enable: bool,
    /// Then fetch every blob of the image whole, in the background (each
    /// completes as a task: a P2P source and a mirror cache hit). Default: false.
    pub all: bool,
}

impl Default for Prefetch {
    fn default() -> Self {
        Prefetch {
            enable: true,
            all: false,
        }
    }
}

/// The lazy-loading runtime (Nydus images mounted through the piece store).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Runtime {
    /// Where images are mounted when a mount request names no mountpoint.
    /// Default: /var/lib/dragonfly/mounts.
    pub mount_root: PathBuf,
    /// auto | fuse | erofs. Default: auto.
    pub mode: RuntimeMode,
    /// FUSE worker threads per mount. Default: 4.
    pub threads: usize,
    /// Decompressed chunks kept in memory per mount. Default: 32MiB.
    pub chunk_cache_size: bytesize::ByteSize,
    /// Largest blob read made of several chunks of one file read. Default: 4MiB.
    pub max_merge_size: bytesize::ByteSize,
    /// Largest read-ahead window of a file read sequentially (each read starting where the
    /// last ended): the chunks that follow are fetched with the ones read, the window doubling
    /// up to this. The first read of a file and reads elsewhere fetch only their chunks.
    /// 0: no read-ahead. Default: 4MiB.
    pub read_ahead: bytesize::ByteSize,
    /// Background fetches after mounting. Background fetches run one at a
    /// time per node, beside on-demand reads, never instead of them.
    pub prefetch: Prefetch,
    /// failover | restart | none. Default: failover.
    pub recover_policy: RecoverPolicy,
    /// Credentials for the registries images' blobs are read from, by registry host
    /// (`host[:port]`, `docker.io` for Docker Hub): `username` and `password`, or `auth`
    /// (base64 of `username:password`), as in Docker's `config.json` (which is read too, after
    /// these). Default: none.
    pub auths: std::collections::BTreeMap<String, crate::registry_auth::AuthEntry>,
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime {
            mount_root: PathBuf::from("/var/lib/dragonfly/mounts"),
            mode: RuntimeMode::Auto,
            threads: 4,
            chunk_cache_size: bytesize::ByteSize::mib(32),
            max_merge_size: bytesize::ByteSize::mib(4),
            read_ahead: bytesize::ByteSize::mib(4),
            prefetch: Prefetch::default(),
            recover_policy: RecoverPolicy::Failover,
            auths: Default::default(),
        }
    }
}

impl Runtime {
    pub(crate) fn validate(&self, p: &mut Vec<String>) {
        for (host, entry) in &self.auths {
            if host.is_empty() || host.contains(['/', ' ']) {
                p.push(format!(
                    "runtime.auths.{host}: the key must be a registry host[:port]"
                ));
            } else if let Err(e) = entry.credentials() {
                p.push(format!("runtime.auths.{host}: {e}"));
            }
        }
        if !self.mount_root.is_absolute() {
            p.push("runtime.mountRoot: must be an absolute path".into());
        }
        if !(1..=64).contains(&self.threads) {
            p.push("runtime.threads: must be 1-64".into());
        }
        if self.chunk_cache_size.as_u64() > 4 << 30 {
            p.push("runtime.chunkCacheSize: at most 4GiB".into());
        }
        if !(4096..=(64 << 20)).contains(&self.max_merge_size.as_u64()) {
            p.push("runtime.maxMergeSize: must be 4KiB-64MiB".into());
        }
        if self.read_ahead.as_u64() > 64 << 20 {
            p.push("runtime.readAhead: at most 64MiB".into());
        }
    }
}
