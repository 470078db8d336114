//! `containerd.services.snapshots.v1.Snapshots` over gRPC for any [`Snapshotter`]: containerd's
//! message types (`containerd-client`), every RPC, and containerd's error codes (`NotFound`,
//! `AlreadyExists`, `FailedPrecondition`, `InvalidArgument`; `Internal` for the store).
//! containerd-client generates clients only, so the routing is here.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use containerd_client::services::v1::snapshots as pb;
use tonic::{Request, Response, Status};

use crate::core::{Kind, Mount, SnapshotError};

/// A snapshot as `Stat`, `Update` and `List` describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub parent: String,
    pub kind: Kind,
    pub labels: BTreeMap<String, String>,
    /// Nanoseconds since the Unix epoch.
    pub created: i64,
    pub updated: i64,
}

type Labels = BTreeMap<String, String>;
type Done<T> = Result<T, SnapshotError>;

/// A snapshotter, as containerd drives it.
pub trait Snapshotter: Send + Sync + 'static {
    fn prepare(
        &self,
        key: String,
        parent: String,
        labels: Labels,
    ) -> impl Future<Output = Done<Vec<Mount>>> + Send;
    fn view(
        &self,
        key: String,
        parent: String,
        labels: Labels,
    ) -> impl Future<Output = Done<Vec<Mount>>> + Send;
    fn mounts(&self, key: String) -> impl Future<Output = Done<Vec<Mount>>> + Send;
    fn commit(
        &self,
        name: String,
        key: String,
        labels: Labels,
    ) -> impl Future<Output = Done<()>> + Send;
    fn remove(&self, key: String) -> impl Future<Output = Done<()>> + Send;
    fn stat(&self, key: String) -> impl Future<Output = Done<Info>> + Send;
    /// `paths`: the update mask (`labels`, `labels.<key>`; empty: every label).
    fn update(&self, info: Info, paths: Vec<String>) -> impl Future<Output = Done<Info>> + Send;
    fn list(&self, filters: Vec<String>) -> impl Future<Output = Done<Vec<Info>>> + Send;
    /// (bytes, inodes).
    fn usage(&self, key: String) -> impl Future<Output = Done<(i64, i64)>> + Send;
    fn cleanup(&self) -> impl Future<Output = Done<()>> + Send;
}

/// Mounts Nydus images (the lazy-loading runtime): the lowest layer of a container over a Nydus
/// image is its RAFS mount.
pub trait Rafs: Send + Sync + 'static {
    /// Mounts (or finds mounted) at `mountpoint` the image whose bootstrap is the file
    /// `bootstrap` and whose blobs are in the repository of `image_ref`; a message saying what
    /// is wrong otherwise.
    fn mount(
        &self,
        bootstrap: std::path::PathBuf,
        image_ref: String,
        mountpoint: std::path::PathBuf,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
    /// Unmounts `mountpoint`.
    fn unmount(
        &self,
        mountpoint: std::path::PathBuf,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
}

/// The gRPC status of a refusal.
pub fn status(e: SnapshotError) -> Status {
    let m = e.to_string();
    match e {
        SnapshotError::NotFound(_) => Status::not_found(m),
        SnapshotError::AlreadyExists(_) => Status::already_exists(m),
        SnapshotError::FailedPrecondition(_) => Status::failed_precondition(m),
        SnapshotError::InvalidArgument(_) => Status::invalid_argument(m),
        SnapshotError::Store(_) => Status::internal(m),
    }
}

fn pb_mounts(ms: Vec<Mount>) -> Vec<containerd_client::types::Mount> {
    ms.into_iter()
        .map(|m| containerd_client::types::Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn timestamp(nanos: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: nanos.rem_euclid(1_000_000_000) as i32,
    }
}

fn nanos(t: Option<prost_types::Timestamp>) -> i64 {
    t.map(|t| {
        t.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(t.nanos))
    })
    .unwrap_or(0)
}

fn pb_kind(k: Kind) -> i32 {
    match k {
        Kind::View => pb::Kind::View as i32,
        Kind::Active => pb::Kind::Active as i32,
        Kind::Committed => pb::Kind::Committed as i32,
    }
}

fn pb_info(i: Info) -> pb::Info {
    pb::Info {
        name: i.name,
        parent: i.parent,
        kind: pb_kind(i.kind),
        created_at: Some(timestamp(i.created)),
        updated_at: Some(timestamp(i.updated)),
        labels: i.labels.into_iter().collect(),
    }
}

fn labels(m: std::collections::HashMap<String, String>) -> Labels {
    m.into_iter().collect()
}

/// The server: routes each RPC to `T`.
pub struct SnapshotsServer<T> {
    inner: Arc<T>,
}

impl<T> Clone for SnapshotsServer<T> {
    fn clone(&self) -> Self {
        SnapshotsServer {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Snapshotter> SnapshotsServer<T> {
    pub fn new(inner: Arc<T>) -> Self {
        SnapshotsServer { inner }
    }
}

/// The full name of the service.
pub const SERVICE_NAME: &str = "containerd.services.snapshots.v1.Snapshots";

impl<T> tonic::server::NamedService for SnapshotsServer<T> {
    const NAME: &'static str = SERVICE_NAME;
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;
type Reply<T> = Result<Response<T>, Status>;

/// One RPC as a function of its request.
struct Unary<F>(F);

impl<Req, Resp, F, Fut> tonic::server::UnaryService<Req> for Unary<F>
where
    F: FnMut(Request<Req>) -> Fut,
    Fut: Future<Output = Reply<Resp>> + Send + 'static,
{
    type Response = Resp;
    type Future = Fut;
    fn call(&mut self, request: Request<Req>) -> Fut {
        (self.0)(request)
    }
}

/// The server-streaming `List`, answered in one message per 100 snapshots.
struct Listing<T>(Arc<T>);

impl<T: Snapshotter> tonic::server::ServerStreamingService<pb::ListSnapshotsRequest>
    for Listing<T>
{
    type Response = pb::ListSnapshotsResponse;
    type ResponseStream =
        Pin<Box<dyn futures_util::Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;
    fn call(&mut self, request: Request<pb::ListSnapshotsRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            let infos = inner
                .list(request.into_inner().filters)
                .await
                .map_err(status)?;
            let chunks: Vec<Result<pb::ListSnapshotsResponse, Status>> = infos
                .chunks(100)
                .map(|c| {
                    Ok(pb::ListSnapshotsResponse {
                        info: c.iter().cloned().map(pb_info).collect(),
                    })
                })
                .collect();
            let stream: Self::ResponseStream = Box::pin(tokio_stream::iter(chunks));
            Ok(Response::new(stream))
        })
    }
}

fn unary<B, Req, Resp, F, Fut>(
    req: http::Request<B>,
    f: F,
) -> BoxFuture<http::Response<tonic::body::Body>, std::convert::Infallible>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: FnMut(Request<Req>) -> Fut + Send + 'static,
    Fut: Future<Output = Reply<Resp>> + Send + 'static,
{
    Box::pin(async move {
        let codec = tonic_prost::ProstCodec::<Resp, Req>::default();
        let mut grpc = tonic::server::Grpc::new(codec);
        Ok(grpc.unary(Unary(f), req).await)
    })
}

impl<T, B> tower::Service<http::Request<B>> for SnapshotsServer<T>
where
    T: Snapshotter,
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let s = self.inner.clone();
        let method = req
            .uri()
            .path()
            .strip_prefix("/containerd.services.snapshots.v1.Snapshots/")
            .unwrap_or("")
            .to_string();
        match method.as_str() {
            "Prepare" => unary(req, move |r: Request<pb::PrepareSnapshotRequest>| {
                let s = s.clone();
                async move {
                    let r = r.into_inner();
                    let mounts = s.prepare(r.key, r.parent, labels(r.labels)).await;
                    Ok(Response::new(pb::PrepareSnapshotResponse {
                        mounts: pb_mounts(mounts.map_err(status)?),
                    }))
                }
            }),
            "View" => unary(req, move |r: Request<pb::ViewSnapshotRequest>| {
                let s = s.clone();
                async move {
                    let r = r.into_inner();
                    let mounts = s.view(r.key, r.parent, labels(r.labels)).await;
                    Ok(Response::new(pb::ViewSnapshotResponse {
                        mounts: pb_mounts(mounts.map_err(status)?),
                    }))
                }
            }),
            "Mounts" => unary(req, move |r: Request<pb::MountsRequest>| {
                let s = s.clone();
                async move {
                    let mounts = s.mounts(r.into_inner().key).await.map_err(status)?;
                    Ok(Response::new(pb::MountsResponse {
                        mounts: pb_mounts(mounts),
                    }))
                }
            }),
            "Commit" => unary(req, move |r: Request<pb::CommitSnapshotRequest>| {
                let s = s.clone();
                async move {
                    let r = r.into_inner();
                    s.commit(r.name, r.key, labels(r.labels))
                        .await
                        .map_err(status)?;
                    Ok(Response::new(()))
                }
            }),
            "Remove" => unary(req, move |r: Request<pb::RemoveSnapshotRequest>| {
                let s = s.clone();
                async move {
                    s.remove(r.into_inner().key).await.map_err(status)?;
                    Ok(Response::new(()))
                }
            }),
            "Stat" => unary(req, move |r: Request<pb::StatSnapshotRequest>| {
                let s = s.clone();
                async move {
                    let info = s.stat(r.into_inner().key).await.map_err(status)?;
                    Ok(Response::new(pb::StatSnapshotResponse {
                        info: Some(pb_info(info)),
                    }))
                }
            }),
            "Update" => unary(req, move |r: Request<pb::UpdateSnapshotRequest>| {
                let s = s.clone();
                async move {
                    let r = r.into_inner();
                    let i = r
                        .info
                        .ok_or_else(|| Status::invalid_argument("info is required"))?;
                    let kind = match pb::Kind::try_from(i.kind) {
                        Ok(pb::Kind::View) => Kind::View,
                        Ok(pb::Kind::Active) => Kind::Active,
                        Ok(pb::Kind::Committed) => Kind::Committed,
                        _ => Kind::Committed,
                    };
                    let info = Info {
                        name: i.name,
                        parent: i.parent,
                        kind,
                        labels: labels(i.labels),
                        created: nanos(i.created_at),
                        updated: nanos(i.updated_at),
                    };
                    let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
                    let info = s.update(info, paths).await.map_err(status)?;
                    Ok(Response::new(pb::UpdateSnapshotResponse {
                        info: Some(pb_info(info)),
                    }))
                }
            }),
            "Usage" => unary(req, move |r: Request<pb::UsageRequest>| {
                let s = s.clone();
                async move {
                    let (size, inodes) = s.usage(r.into_inner().key).await.map_err(status)?;
                    Ok(Response::new(pb::UsageResponse { size, inodes }))
                }
            }),
            "Cleanup" => unary(req, move |_: Request<pb::CleanupRequest>| {
                let s = s.clone();
                async move {
                    s.cleanup().await.map_err(status)?;
                    Ok(Response::new(()))
                }
            }),
            "List" => Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<
                    pb::ListSnapshotsResponse,
                    pb::ListSnapshotsRequest,
                >::default();
                let mut grpc = tonic::server::Grpc::new(codec);
                Ok(grpc.server_streaming(Listing(s), req).await)
            }),
            _ => Box::pin(async move {
                Ok(
                    Status::unimplemented(format!("no method {method:?} in {SERVICE_NAME}"))
                        .into_http(),
                )
            }),
        }
    }
}
