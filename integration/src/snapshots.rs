//! A client of a containerd snapshotter's gRPC service (`containerd.services.snapshots.v1`) on
//! its unix socket: what dfdaemon's snapshotter itself holds, not containerd's view of it.

use std::path::Path;

use containerd_client::services::v1::snapshots as pb;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use hyper_util::rt::TokioIo;
use tonic::transport::Endpoint;

use crate::{Error, Result};

/// A snapshot as the snapshotter lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapshotInfo {
    pub name: String,
    pub parent: String,
    /// `VIEW` 1, `ACTIVE` 2, `COMMITTED` 3.
    pub kind: i32,
}

/// Every snapshot the snapshotter on `socket` holds (`List` without filters), sorted by name.
pub async fn list(socket: &Path) -> Result<Vec<SnapshotInfo>> {
    let path = socket.to_path_buf();
    let fail = |m: String| Error::malformed(format!("snapshotter {}", socket.display()), m);
    let channel = Endpoint::from_static("http://[::1]:1")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .map_err(|e| fail(format!("connect: {e}")))?;
    let mut s = SnapshotsClient::new(channel)
        .list(pb::ListSnapshotsRequest {
            snapshotter: String::new(),
            filters: Vec::new(),
        })
        .await
        .map_err(|e| fail(format!("List: {e}")))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.map_err(|e| fail(format!("List: {e}")))? {
        out.extend(m.info.into_iter().map(|i| SnapshotInfo {
            name: i.name,
            parent: i.parent,
            kind: i.kind,
        }));
    }
    out.sort();
    Ok(out)
}
