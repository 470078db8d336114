//! The lazy-loading runtime as the snapshotter's [`snapshotter::Rafs`]: a container's Nydus
//! image is mounted from its bootstrap layer, its blobs read through the piece store from the
//! registry its reference names, at the address containerd's `hosts.toml` gives that registry
//! (`server`; `https://<registry>` without one, as containerd does).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use super::{MountSpec, Runtime};

/// Mounts Nydus images for the snapshotter.
pub struct SnapshotterRafs {
    runtime: Arc<Runtime>,
    /// containerd's `config_path` (one `<registry>/hosts.toml` per registry).
    hosts_dir: PathBuf,
}

impl SnapshotterRafs {
    pub fn new(runtime: Arc<Runtime>, hosts_dir: PathBuf) -> SnapshotterRafs {
        SnapshotterRafs { runtime, hosts_dir }
    }
}

type Done = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

impl snapshotter::Rafs for SnapshotterRafs {
    fn mount(&self, bootstrap: PathBuf, image_ref: String, mountpoint: PathBuf) -> Done {
        let (runtime, hosts) = (self.runtime.clone(), self.hosts_dir.clone());
        Box::pin(async move {
            let (scheme, repository) = blob_repository(&hosts, &image_ref)?;
            std::fs::create_dir_all(&mountpoint)
                .map_err(|e| format!("creating {}: {e}", mountpoint.display()))?;
            runtime
                .mount(MountSpec {
                    bootstrap_path: bootstrap,
                    mountpoint: Some(mountpoint),
                    repository,
                    scheme: Some(scheme),
                    headers: Vec::new(),
                    mode: None,
                })
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    fn unmount(&self, mountpoint: PathBuf) -> Done {
        let runtime = self.runtime.clone();
        Box::pin(async move {
            runtime
                .unmount(&mountpoint)
                .await
                .map_err(|e| e.to_string())?;
            let _ = std::fs::remove_dir(&mountpoint);
            Ok(())
        })
    }
}

/// `(scheme, host[:port]/repository)` the blobs of the image `image_ref` (the CRI label, which
/// is the snapshotter's client's to set) are read from. A reference that is not one (a path,
/// `..` components) is refused.
pub fn blob_repository(hosts_dir: &Path, image_ref: &str) -> Result<(String, String), String> {
    let r = nydus::nydusify::registry::parse_reference(image_ref)
        .map_err(|e| format!("image reference {image_ref:?}: {e}"))?;
    if r.repository()
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "image reference {image_ref:?}: the repository is not a repository name"
        ));
    }
    let (scheme, host) = registry_server(hosts_dir, r.registry())?;
    Ok((scheme, format!("{host}/{}", r.repository())))
}

/// `(scheme, host[:port])` containerd pulls `registry` from: the `server` of
/// `<hosts_dir>/<registry>/hosts.toml`, else `https://<registry>` (`registry-1.docker.io` for
/// `docker.io`).
pub fn registry_server(hosts_dir: &Path, registry: &str) -> Result<(String, String), String> {
    let default = || {
        let host = match registry {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            r => r,
        };
        Ok(("https".to_string(), host.to_string()))
    };
    // The registry name comes from an image reference: only a plain directory name is looked
    // up.
    if registry.is_empty() || registry.contains(['/', '\0']) || registry.starts_with('.') {
        return Err(format!("registry {registry:?} is not a host name"));
    }
    let path = hosts_dir.join(registry).join("hosts.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return default(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let Some(server) = doc.get("server").and_then(|v| v.as_str()) else {
        return default();
    };
    let url = url::Url::parse(server)
        .map_err(|e| format!("{}: server {server:?}: {e}", path.display()))?;
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return Err(format!("{}: server {server:?} has no host", path.display())),
    };
    Ok((url.scheme().to_string(), host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_that_are_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            blob_repository(dir.path(), "127.0.0.1:5000/app/x:v1").unwrap(),
            ("https".to_string(), "127.0.0.1:5000/app/x".to_string())
        );
        for bad in [
            "../../etc/passwd",
            "127.0.0.1:5000/../../etc:v1",
            "127.0.0.1:5000/a/../b:v1",
            "/etc/passwd",
            "127.0.0.1:5000//x:v1",
            "",
        ] {
            assert!(
                blob_repository(dir.path(), bad).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn the_server_comes_from_hosts_toml_else_https() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("127.0.0.1:5000");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("hosts.toml"), "server = \"http://127.0.0.1:5000\"\n").unwrap();
        assert_eq!(
            registry_server(dir.path(), "127.0.0.1:5000").unwrap(),
            ("http".into(), "127.0.0.1:5000".into())
        );
        assert_eq!(
            registry_server(dir.path(), "ghcr.io").unwrap(),
            ("https".into(), "ghcr.io".into())
        );
        assert_eq!(
            registry_server(dir.path(), "docker.io").unwrap().1,
            "registry-1.docker.io"
        );
        assert!(registry_server(dir.path(), "../etc").is_err());
        std::fs::write(d.join("hosts.toml"), "server = [").unwrap();
        assert!(registry_server(dir.path(), "127.0.0.1:5000")
            .unwrap_err()
            .contains("hosts.toml"));
    }
}
