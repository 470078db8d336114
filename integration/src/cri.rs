//! A CRI (`runtime.v1`) client over containerd's unix socket: the daemon-side pull path, which
//! is what reads `registry.config_path` hosts.toml (a `ctr pull` resolves in the ctr client).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AuthConfig, ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest,
    ExecSyncRequest, ImageSpec, ImageStatusRequest, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListImagesRequest, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    PullImageRequest, RemoveImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest, VersionRequest,
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

/// A pod sandbox started by [`CriClient::run_pod`]: on the node's network (no CNI), its
/// containers' logs under `log_dir`.
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    config: PodSandboxConfig,
    pub log_dir: PathBuf,
}

/// What `ExecSync` returned.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

fn node_namespaces() -> Option<NamespaceOption> {
    Some(NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    })
}

impl CriClient {
    /// `RunPodSandbox` of a pod named `name` on the node's network (as `hostNetwork: true`),
    /// so no CNI plugin is involved. containerd starts its sandbox image (`sandbox_image`).
    pub async fn run_pod(&self, name: &str, log_dir: &Path) -> Result<Pod> {
        std::fs::create_dir_all(log_dir).map_err(|e| Error::io("create", log_dir, e))?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            // The node's UTS namespace too (runc cannot set a hostname without its own).
            hostname: String::new(),
            log_directory: log_dir.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: node_namespaces(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let resp = self
            .runtime
            .clone()
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map_err(|s| cri_err("RunPodSandbox", name, s))?;
        Ok(Pod {
            id: resp.into_inner().pod_sandbox_id,
            config,
            log_dir: log_dir.to_path_buf(),
        })
    }

    /// `CreateContainer` + `StartContainer`: `command` in a container `name` of `image` in
    /// `pod`; its output goes to `<pod.log_dir>/<name>.log` (CRI's log format). Returns its ID.
    pub async fn start_container(
        &self,
        pod: &Pod,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<String> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: spec(image),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: node_namespaces(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .runtime
            .clone()
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await
            .map_err(|s| cri_err("CreateContainer", image, s))?
            .into_inner()
            .container_id;
        self.runtime
            .clone()
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(|s| cri_err("StartContainer", image, s))?;
        Ok(id)
    }

    /// `ExecSync` of `cmd` in the container `id`, with a deadline of `timeout`.
    pub async fn exec(&self, id: &str, cmd: &[&str], timeout: Duration) -> Result<ExecOutput> {
        let resp = self
            .runtime
            .clone()
            .exec_sync(ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: timeout.as_secs() as i64,
            })
            .await
            .map_err(|s| cri_err("ExecSync", id, s))?
            .into_inner();
        Ok(ExecOutput {
            exit_code: resp.exit_code,
            stdout: String::from_utf8_lossy(&resp.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&resp.stderr).into_owned(),
        })
    }

    /// `ContainerStatus`: the container's state (`CONTAINER_RUNNING` = 1, `CONTAINER_EXITED`
    /// = 2) and exit code.
    pub async fn container_state(&self, id: &str) -> Result<(i32, i32)> {
        let status = self
            .runtime
            .clone()
            .container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .map_err(|s| cri_err("ContainerStatus", id, s))?
            .into_inner()
            .status
            .unwrap_or_default();
        Ok((status.state, status.exit_code))
    }

    /// `StopPodSandbox` + `RemovePodSandbox`: the pod and its containers go (and with them
    /// their snapshots).
    pub async fn remove_pod(&self, pod: &Pod) -> Result<()> {
        let mut rt = self.runtime.clone();
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .map_err(|s| cri_err("StopPodSandbox", &pod.id, s))?;
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .map_err(|s| cri_err("RemovePodSandbox", &pod.id, s))?;
        Ok(())
    }
}

fn cri_err(call: &'static str, image: &str, status: tonic::Status) -> Error {
    Error::Cri {
        call,
        image: image.to_string(),
        status: Box::new(status),
    }
}
