use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The containerd snapshotter dfdaemon serves (`proxy_plugins` in containerd's config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Snapshotter {
    /// Serve the snapshotter. Default: true.
    pub enable: bool,
    /// Its gRPC socket (mode 0600: only root may call it).
    /// Default: /var/run/dragonfly/snapshotter.sock.
    pub socket_path: PathBuf,
    /// Snapshot directories and metadata. Default: /var/lib/dragonfly/snapshotter.
    pub root: PathBuf,
    /// containerd's registry `config_path`: a Nydus image's blobs are read from the `server`
    /// of `<hostsDir>/<registry>/hosts.toml` (else `https://<registry>`).
    /// Default: /etc/containerd/certs.d.
    pub hosts_dir: PathBuf,
}

impl Default for Snapshotter {
    fn default() -> Self {
        Snapshotter {
            enable: true,
            socket_path: PathBuf::from("/var/run/dragonfly/snapshotter.sock"),
            root: PathBuf::from("/var/lib/dragonfly/snapshotter"),
            hosts_dir: PathBuf::from("/etc/containerd/certs.d"),
        }
    }
}

impl Snapshotter {
    pub(crate) fn validate(&self, p: &mut Vec<String>) {
        if self.enable && !self.socket_path.is_absolute() {
            p.push("snapshotter.socketPath: must be an absolute path".into());
        }
        if self.enable && !self.root.is_absolute() {
            p.push("snapshotter.root: must be an absolute path".into());
        }
    }
}
