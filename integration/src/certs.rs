//! A test certificate authority for mutual TLS: a CA and certificates it issues for
//! `127.0.0.1` (and `localhost`), usable by servers and clients, written as PEM files the
//! configs point to (`caCert`, `cert`, `key`).

use crate::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A CA whose certificate is `<dir>/<name>-ca.pem`.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
    /// The CA certificate (PEM file).
    pub ca_cert: PathBuf,
}

/// A certificate and key issued by a [`TestCa`], and that CA's certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn cert_error(what: &str, e: rcgen::Error) -> Error {
    Error::malformed("test CA", format!("{what}: {e}"))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io("write", path, e))
}

impl TestCa {
    /// A new CA named `name`, its certificate written under `dir`.
    pub fn new(dir: &Path, name: &str) -> Result<TestCa> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| cert_error("CA params", e))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let key = KeyPair::generate().map_err(|e| cert_error("CA key", e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| cert_error("CA certificate", e))?;
        let ca_cert = dir.join(format!("{name}-ca.pem"));
        write(&ca_cert, &cert.pem())?;
        Ok(TestCa {
            issuer: Issuer::new(params, key),
            dir: dir.to_path_buf(),
            name: name.to_string(),
            ca_cert,
        })
    }

    /// A certificate for `127.0.0.1` and `localhost`, for servers and clients, named `who`.
    pub fn issue(&self, who: &str) -> Result<Issued> {
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .map_err(|e| cert_error("params", e))?;
        params.distinguished_name.push(DnType::CommonName, who);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(|e| cert_error("key", e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| cert_error("certificate", e))?;
        let base = format!("{}-{who}", self.name);
        let (cert_path, key_path) = (
            self.dir.join(format!("{base}.pem")),
            self.dir.join(format!("{base}.key")),
        );
        write(&cert_path, &cert.pem())?;
        write(&key_path, &key.serialize_pem())?;
        Ok(Issued {
            ca_cert: self.ca_cert.clone(),
            cert: cert_path,
            key: key_path,
        })
    }
}

impl Issued {
    /// The three keys as a YAML mapping (flow style: `{caCert: …, cert: …, key: …}`).
    pub fn yaml(&self) -> String {
        format!(
            "{{caCert: '{}', cert: '{}', key: '{}'}}",
            self.ca_cert.display(),
            self.cert.display(),
            self.key.display()
        )
    }

    /// The files as a config section holds them.
    pub fn files(&self) -> common::tls::TlsFiles {
        common::tls::TlsFiles {
            ca_cert: Some(self.ca_cert.clone()),
            cert: Some(self.cert.clone()),
            key: Some(self.key.clone()),
        }
    }

    /// Loaded, for clients in tests.
    pub fn load(&self) -> Result<std::sync::Arc<common::tls::Tls>> {
        self.files()
            .load("test")
            .map_err(|e| Error::malformed("test certificate", e))?
            .ok_or_else(|| Error::malformed("test certificate", "not loaded".to_string()))
    }
}
