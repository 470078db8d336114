//! Mutual TLS between the services, configured as Dragonfly configures it: a section's
//! `caCert`, `cert` and `key` (PEM files), all three or none. A listener with them asks every
//! caller for a certificate issued by `caCert` and refuses callers without one; a client with
//! them checks the server's certificate against `caCert` (for the address it dials: an IP
//! address must be in the certificate's subject alternative names) and shows its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// PEM files larger than this are refused (a CA bundle is a few hundred KiB at most).
const MAX_PEM: u64 = 4 << 20;

/// The three files of a section (`caCert`, `cert`, `key`), as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsFiles {
    /// The CA that issued the certificates the other end must show.
    pub ca_cert: Option<PathBuf>,
    /// This end's certificate (chain), PEM.
    pub cert: Option<PathBuf>,
    /// This end's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

/// Loaded, checked mutual-TLS material.
pub struct Tls {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    roots: Arc<rustls::RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Where it came from, for messages.
    section: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("section", &self.section)
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &Path, key: &str) -> Result<Vec<u8>, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?
        .len();
    if len > MAX_PEM {
        return Err(format!(
            "{key}: {} is {len} bytes, more than a PEM file of certificates or a key can be",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))
}

fn certificates(
    pem: &[u8],
    key: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key}: {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key}: {} holds no CERTIFICATE block",
            path.display()
        ));
    }
    Ok(certs)
}

impl TlsFiles {
    /// The three keys of a config section that holds them inline (as dfdaemon's do).
    pub fn of(ca_cert: &Option<PathBuf>, cert: &Option<PathBuf>, key: &Option<PathBuf>) -> Self {
        TlsFiles {
            ca_cert: ca_cert.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }
    }

    /// Whether none of the three is set.
    pub fn is_empty(&self) -> bool {
        self.ca_cert.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// Reads and checks the files; `section` is the config path of the keys (e.g.
    /// `upload.server`), named in errors. None when none is set.
    pub fn load(&self, section: &str) -> Result<Option<Arc<Tls>>, String> {
        let (ca, cert, key) = match (&self.ca_cert, &self.cert, &self.key) {
            (None, None, None) => return Ok(None),
            (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
            _ => {
                return Err(format!(
                "{section}: caCert, cert and key go together (mutual TLS): set all three or none"
            ))
            }
        };
        let (ca_key, cert_key, key_key) = (
            format!("{section}.caCert"),
            format!("{section}.cert"),
            format!("{section}.key"),
        );
        let ca_pem = read_pem(ca, &ca_key)?;
        let cert_pem = read_pem(cert, &cert_key)?;
        let key_pem = read_pem(key, &key_key)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in certificates(&ca_pem, &ca_key, ca)? {
            roots
                .add(c)
                .map_err(|e| format!("{ca_key}: {}: {e}", ca.display()))?;
        }
        let chain = certificates(&cert_pem, &cert_key, cert)?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("{key_key}: {} holds no private key: {e}", key.display()))?;
        let tls = Tls {
            ca_pem,
            cert_pem,
            key_pem,
            roots: Arc::new(roots),
            chain,
            key: private,
            section: section.to_string(),
        };
        // Building a server config checks that the key is usable and belongs to the
        // certificate.
        let unusable = |e: rustls::Error| {
            format!(
                "{section}: {} and {} do not make a TLS identity: {e}",
                cert.display(),
                key.display()
            )
        };
        tls.rustls_server(false).map_err(unusable)?;
        tls.rustls_client(false).map_err(unusable)?;
        Ok(Some(Arc::new(tls)))
    }
}

impl Tls {
    /// The config section it came from.
    pub fn section(&self) -> &str {
        &self.section
    }

    /// A gRPC server's config: this identity, and a certificate from the CA required of every
    /// caller.
    pub fn grpc_server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
    }

    /// A gRPC client's config for a server reached as `host` (a name or an IP address, which
    /// the server's certificate must name).
    pub fn grpc_client(&self, host: &str) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .domain_name(host.trim_start_matches('[').trim_end_matches(']'))
    }

    /// A rustls server config asking every client for a certificate from the CA (TLS 1.3
    /// only when `tls13_only`, as QUIC needs).
    pub fn rustls_server(&self, tls13_only: bool) -> Result<rustls::ServerConfig, rustls::Error> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            provider(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider());
        let builder = if tls13_only {
            builder.with_protocol_versions(&[&rustls::version::TLS13])?
        } else {
            builder.with_safe_default_protocol_versions()?
        };
        builder
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
    }

    /// A rustls client config checking servers against the CA and showing this identity.
    pub fn rustls_client(&self, tls13_only: bool) -> Result<rustls::ClientConfig, rustls::Error> {
        let builder = rustls::ClientConfig::builder_with_provider(provider());
        let builder = if tls13_only {
            builder.with_protocol_versions(&[&rustls::version::TLS13])?
        } else {
            builder.with_safe_default_protocol_versions()?
        };
        builder
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
    }
}

/// A gRPC endpoint for `addr` (`host:port`, `http://host:port` or `https://host:port`):
/// plain HTTP/2 without `tls`, mutual TLS with it. An `https://` address without `tls` is an
/// error naming the section's keys.
pub fn endpoint(
    addr: &str,
    tls: Option<&Tls>,
    section: &str,
) -> Result<tonic::transport::Endpoint, String> {
    let rest = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    if addr.contains("://") && !addr.starts_with("http://") && !addr.starts_with("https://") {
        return Err(format!("{addr:?}: only http:// and https:// addresses"));
    }
    let rest = rest.trim_end_matches('/');
    match tls {
        None if addr.starts_with("https://") => Err(format!(
            "{addr:?}: https:// needs {section}.caCert, {section}.cert and {section}.key"
        )),
        None => tonic::transport::Endpoint::from_shared(format!("http://{rest}"))
            .map_err(|e| format!("{addr:?}: {e}")),
        Some(t) => {
            let ep = tonic::transport::Endpoint::from_shared(format!("https://{rest}"))
                .map_err(|e| format!("{addr:?}: {e}"))?;
            let host = ep.uri().host().unwrap_or_default().to_string();
            ep.tls_config(t.grpc_client(&host))
                .map_err(|e| format!("{addr:?}: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn all_three_or_none() {
        assert!(TlsFiles::default().load("upload.server").unwrap().is_none());
        let half = TlsFiles {
            ca_cert: Some("/x".into()),
            ..Default::default()
        };
        let e = half.load("upload.server").unwrap_err();
        assert!(
            e.contains("upload.server: caCert, cert and key go together"),
            "{e}"
        );
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let junk = write(dir.path(), "junk.pem", "not pem at all");
        let files = TlsFiles {
            ca_cert: Some(junk.clone()),
            cert: Some(junk.clone()),
            key: Some(junk.clone()),
        };
        let e = files.load("scheduler").unwrap_err();
        assert!(
            e.starts_with("scheduler.caCert:") && e.contains("no CERTIFICATE"),
            "{e}"
        );
        let missing = TlsFiles {
            ca_cert: Some(dir.path().join("absent.pem")),
            cert: Some(junk.clone()),
            key: Some(junk),
        };
        let e = missing.load("manager").unwrap_err();
        assert!(e.starts_with("manager.caCert: cannot read"), "{e}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let files = TlsFiles {
            ca_cert: Some(write(dir.path(), "ca.pem", &ca.cert.pem())),
            cert: Some(write(dir.path(), "a.pem", &a.cert.pem())),
            key: Some(write(dir.path(), "b.key", &b.signing_key.serialize_pem())),
        };
        let e = files.load("upload.client").unwrap_err();
        assert!(e.contains("do not make a TLS identity"), "{e}");
        let good = TlsFiles {
            key: Some(write(dir.path(), "a.key", &a.signing_key.serialize_pem())),
            ..files
        };
        let tls = good.load("upload.client").unwrap().unwrap();
        assert_eq!(tls.section(), "upload.client");
        assert!(endpoint("127.0.0.1:4000", Some(&tls), "upload.client").is_ok());
        let e = endpoint("https://127.0.0.1:4000", None, "scheduler").unwrap_err();
        assert!(e.contains("scheduler.caCert"), "{e}");
    }
}
