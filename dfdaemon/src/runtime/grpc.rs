//! The `dragonfly_rs.runtime.v1.Runtime` gRPC service (proto/runtime.proto),
//! served on the download socket.

use super::{MountSpec, Runtime, RuntimeError};
use crate::config::RuntimeMode;
use std::path::PathBuf;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Generated messages, client and server.
pub mod proto {
    tonic::include_proto!("dragonfly_rs.runtime.v1");
}

use proto::runtime_server::RuntimeServer;
use proto::*;

/// The service over a [`Runtime`].
pub struct RuntimeService {
    runtime: Arc<Runtime>,
}

impl RuntimeService {
    pub fn new(runtime: Arc<Runtime>) -> RuntimeService {
        RuntimeService { runtime }
    }

    pub fn into_server(self) -> RuntimeServer<RuntimeService> {
        RuntimeServer::new(self)
    }
}

fn status(e: RuntimeError) -> Status {
    let m = e.to_string();
    match e {
        RuntimeError::InvalidArgument(_) | RuntimeError::Image { .. } => {
            Status::invalid_argument(m)
        }
        RuntimeError::AlreadyMounted { .. } => Status::already_exists(m),
        RuntimeError::NotMounted(_) => Status::not_found(m),
        RuntimeError::Mount { .. } => Status::failed_precondition(m),
        RuntimeError::Unavailable(_) => Status::unavailable(m),
    }
}

fn info(m: super::MountInfo) -> proto::MountInfo {
    proto::MountInfo {
        mountpoint: m.mountpoint.display().to_string(),
        bootstrap_path: m.bootstrap_path.display().to_string(),
        repository: m.repository,
        mode: m.mode.to_string(),
        read_bytes: m.read_bytes,
        origin_bytes: m.origin_bytes,
        parent_bytes: m.parent_bytes,
        chunk_check_failures: m.chunk_check_failures,
    }
}

#[tonic::async_trait]
impl proto::runtime_server::Runtime for RuntimeService {
    async fn mount(&self, r: Request<MountRequest>) -> Result<Response<MountResponse>, Status> {
        let r = r.into_inner();
        let mode = match r.mode.as_str() {
            "" => None,
            "auto" => Some(RuntimeMode::Auto),
            "fuse" => Some(RuntimeMode::Fuse),
            "erofs" => Some(RuntimeMode::Erofs),
            m => {
                return Err(Status::invalid_argument(format!(
                    "mode {m:?}: must be auto, fuse or erofs"
                )))
            }
        };
        let spec = MountSpec {
            bootstrap_path: PathBuf::from(r.bootstrap_path),
            mountpoint: (!r.mountpoint.is_empty()).then(|| PathBuf::from(r.mountpoint)),
            repository: r.repository,
            scheme: (!r.scheme.is_empty()).then_some(r.scheme),
            headers: r.headers.into_iter().collect(),
            mode,
        };
        let m = self.runtime.mount(spec).await.map_err(status)?;
        Ok(Response::new(MountResponse {
            mountpoint: m.mountpoint.display().to_string(),
            mode: m.mode.to_string(),
            blob_ids: m.blob_ids,
        }))
    }

    async fn unmount(
        &self,
        r: Request<UnmountRequest>,
    ) -> Result<Response<UnmountResponse>, Status> {
        let p = PathBuf::from(r.into_inner().mountpoint);
        self.runtime.unmount(&p).await.map_err(status)?;
        Ok(Response::new(UnmountResponse {}))
    }

    async fn list_mounts(
        &self,
        _r: Request<ListMountsRequest>,
    ) -> Result<Response<ListMountsResponse>, Status> {
        let mounts = self.runtime.list().await.into_iter().map(info).collect();
        Ok(Response::new(ListMountsResponse { mounts }))
    }
}
