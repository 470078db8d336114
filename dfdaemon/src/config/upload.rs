use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;

/// Upload gRPC server (peers and schedulers talk to it; used by the P2P issue).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct UploadServer {
    /// Listen address. Default: `0.0.0.0`.
    pub ip: IpAddr,
    /// Listen port. Default: 4000.
    pub port: u16,
    /// Mutual TLS (all three or none): the CA whose certificates callers must show, and this
    /// server's certificate and key (PEM). With them the upload gRPC port, Vortex TCP and
    /// Vortex QUIC refuse callers without a certificate from the CA. Default: none.
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl UploadServer {
    pub fn tls_files(&self) -> common::tls::TlsFiles {
        common::tls::TlsFiles::of(&self.ca_cert, &self.cert, &self.key)
    }
}

/// How this peer reaches other peers' upload servers and Vortex ports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct UploadClient {
    /// Mutual TLS (all three or none): the CA that issued the parents' certificates, and this
    /// peer's client certificate and key (PEM). Default: none (plain gRPC and Vortex).
    pub ca_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl UploadClient {
    pub fn tls_files(&self) -> common::tls::TlsFiles {
        common::tls::TlsFiles::of(&self.ca_cert, &self.cert, &self.key)
    }
}

impl Default for UploadServer {
    fn default() -> Self {
        UploadServer {
            ip: IpAddr::from([0, 0, 0, 0]),
            port: 4000,
            ca_cert: None,
            cert: None,
            key: None,
        }
    }
}

/// Upload (P2P serving) settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Upload {
    /// Upload server.
    pub server: UploadServer,
    /// Client side of P2P transfers.
    pub client: UploadClient,
    /// Never serve pieces to other peers (leech mode). Default: false.
    pub disable_shared: bool,
    /// Most bytes per second served to other peers, over all connections
    /// (e.g. `100MiB`). Default: 0 (unlimited).
    #[serde(alias = "bandwidthLimit")]
    pub rate_limit: bytesize::ByteSize,
}

impl Upload {
    pub(crate) fn validate(&self, p: &mut Vec<String>) {
        super::check_port(p, "upload.server.port", self.server.port);
        super::check_tls(p, "upload.server", &self.server.tls_files());
        super::check_tls(p, "upload.client", &self.client.tls_files());
        if self.server.tls_files().is_empty() != self.client.tls_files().is_empty() {
            p.push(
                "upload.server and upload.client: mutual TLS is on for one and not the other; \
                 peers of one fleet either all use it or none does"
                    .into(),
            );
        }
    }
}
