//! A CRI (`runtime.v1`) client over containerd's unix socket: the daemon-side pull path, which
//! is what reads `registry.config_path` hosts.toml (a `ctr pull` resolves in the ctr client).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AuthConfig, ImageSpec, ImageStatusRequest, ListImagesRequest, PullImageRequest,
    RemoveImageRequest, VersionRequest,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1::Image as CriImage;

use crate::{Error, Result};

/// Per-call deadline: a hung pull fails the test instead of hanging it.
pub const CRI_CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// CRI image and runtime services on one containerd socket.
#[derive(Debug, Clone)]
pub struct CriClient {
    socket: PathBuf,
    images: ImageServiceClient<Channel>,
    runtime: RuntimeServiceClient<Channel>,
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

impl CriClient {
    /// A client for `socket`. Connects lazily, on the first call.
    pub fn connect(socket: &Path) -> Result<CriClient> {
        let path = socket.to_path_buf();
        // The URI is required by tonic but unused: the connector always dials the socket.
        let endpoint = Endpoint::try_from("http://[::1]:50051")
            .map_err(|source| Error::CriConnect {
                socket: socket.to_path_buf(),
                source,
            })?
            .timeout(CRI_CALL_TIMEOUT);
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }));
        Ok(CriClient {
            socket: socket.to_path_buf(),
            images: ImageServiceClient::new(channel.clone()),
            runtime: RuntimeServiceClient::new(channel),
        })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `RuntimeService/Version`: the runtime's name and version, e.g. `containerd v1.6.20`.
    pub async fn version(&self) -> Result<String> {
        let resp = self
            .runtime
            .clone()
            .version(VersionRequest::default())
            .await
            .map_err(|s| cri_err("Version", "", s))?
            .into_inner();
        Ok(format!("{} {}", resp.runtime_name, resp.runtime_version))
    }

    /// `ImageService/PullImage`; returns the image ref (the image ID, `sha256:<config>`).
    pub async fn pull(&self, image: &str, auth: Option<(&str, &str)>) -> Result<String> {
        let req = PullImageRequest {
            image: spec(image),
            auth: auth.map(|(u, p)| AuthConfig {
                username: u.to_string(),
                password: p.to_string(),
                ..Default::default()
            }),
            sandbox_config: None,
        };
        let resp = self
            .images
            .clone()
            .pull_image(req)
            .await
            .map_err(|s| cri_err("PullImage", image, s))?;
        Ok(resp.into_inner().image_ref)
    }

    /// `ImageService/RemoveImage` (all references of the image; containerd garbage-collects
    /// synchronously on the last one). Removing an absent image succeeds.
    pub async fn remove(&self, image: &str) -> Result<()> {
        self.images
            .clone()
            .remove_image(RemoveImageRequest { image: spec(image) })
            .await
            .map_err(|s| cri_err("RemoveImage", image, s))?;
        Ok(())
    }

    /// `ImageService/ImageStatus`: the image, or `None` if containerd does not have it.
    pub async fn image_status(&self, image: &str) -> Result<Option<CriImage>> {
        let resp = self
            .images
            .clone()
            .image_status(ImageStatusRequest {
                image: spec(image),
                verbose: false,
            })
            .await
            .map_err(|s| cri_err("ImageStatus", image, s))?;
        Ok(resp.into_inner().image)
    }

    /// `ImageService/ListImages`.
    pub async fn list_images(&self) -> Result<Vec<CriImage>> {
        let resp = self
            .images
            .clone()
            .list_images(ListImagesRequest { filter: None })
            .await
            .map_err(|s| cri_err("ListImages", "", s))?;
        Ok(resp.into_inner().images)
    }
}

fn cri_err(call: &'static str, image: &str, status: tonic::Status) -> Error {
    Error::Cri {
        call,
        image: image.to_string(),
        status: Box::new(status),
    }
}
