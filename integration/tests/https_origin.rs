//! HTTPS origins: verified with the system roots plus `backend.caCert` (a private CA).

use integration::agent::Agent;
use integration::image::sha256_digest;
use integration::{random_bytes, TestDir, TestOrigin};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA and a server certificate for 127.0.0.1 signed by it (openssl CLI).
/// Returns (CA cert, server cert, server key).
fn make_pki(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-subj",
        "/CN=dfit test CA",
        "-days",
        "1",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&ca, dir);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(&csr, dir);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
        dir,
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// Terminates TLS on a loopback port and relays the plain bytes to `backend`.
async fn tls_front(cert: &Path, key: &Path, backend: std::net::SocketAddr) -> u16 {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    if let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_origin_is_trusted_only_with_the_configured_ca() {
    integration::require_root_and_tools(&["openssl"]);
    let dir = TestDir::new("https-origin").unwrap();
    let (ca, cert, key) = make_pki(dir.path());
    let origin = TestOrigin::start().await.unwrap();
    let data = random_bytes(81, 6 * 1024 * 1024);
    let path = format!("/v2/secure/blobs/{}", sha256_digest(&data));
    origin.put(&path, data.clone());
    let port = tls_front(&cert, &key, origin.addr()).await;
    let upstream = format!("https://127.0.0.1:{port}");

    let trusting = Agent::start(
        &dir,
        "with-ca",
        &format!("backend:\n  caCert: {}\n", ca.display()),
    )
    .await
    .unwrap();
    let r = reqwest::Client::new()
        .get(format!("{}{path}", trusting.proxy_url()))
        .header("X-Dragonfly-Registry", &upstream)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.bytes().await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body[..] == data[..]);

    let plain = Agent::start(&dir, "system-roots-only", "").await.unwrap();
    let r = reqwest::Client::new()
        .get(format!("{}{path}", plain.proxy_url()))
        .header("X-Dragonfly-Registry", &upstream)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        502,
        "a self-signed origin must not be trusted by default"
    );
    let body = r.text().await.unwrap();
    assert!(body.to_lowercase().contains("certificate"), "{body}");
}
