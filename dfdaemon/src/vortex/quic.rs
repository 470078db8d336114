//! Vortex over QUIC (quinn): one bidirectional stream per piece over pooled connections.
//!
//! Without mutual TLS the server presents a self-signed certificate for `d7y` and clients do
//! not verify it, as Dragonfly's peers do (pieces are CRC-checked and blobs digest-checked end
//! to end). With it (`upload.server` / `upload.client` `caCert`, `cert`, `key`) the server
//! presents its certificate and requires one from the CA of every client, and clients verify
//! the server's certificate for the parent's IP address.

use super::client::{
    check_task_id, receive_piece_into, request, PieceInfo, PieceSink, ReceivedPiece,
};
use super::VortexError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SERVER_NAME: &str = "d7y";
const WINDOW: u32 = 16 * 1024 * 1024;

/// Connection settings of both ends. Datagrams keep quinn's default size (path MTU discovery
/// up to 1,452 bytes): quinn sends them in batches with UDP GSO and the kernel hands them over
/// with GRO, which measured faster on loopback than 64 KiB datagrams, each encrypted, sent and
/// acknowledged on its own (docs/performance.md).
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(3)));
    t.max_idle_timeout(Duration::from_secs(60).try_into().ok());
    t.send_window(u64::from(WINDOW));
    t.receive_window(WINDOW.into());
    t.stream_receive_window(WINDOW.into());
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    Arc::new(t)
}

/// Socket buffer asked for each QUIC endpoint's UDP socket. With the
/// kernel's default (about 200 KiB) a receiver falls behind a fast sender,
/// the kernel drops datagrams (`UdpRcvbufErrors`) and congestion control
/// backs off. As root the size is forced; otherwise the kernel caps it at
/// `net.core.rmem_max` / `wmem_max` (docs/operations.md).
const UDP_BUFFER: usize = 16 * 1024 * 1024;

/// A UDP socket bound to `addr` with large send and receive buffers.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    use rustix::net::sockopt;
    if sockopt::set_socket_recv_buffer_size_force(&socket, UDP_BUFFER).is_err() {
        sockopt::set_socket_recv_buffer_size(&socket, UDP_BUFFER)?;
    }
    if sockopt::set_socket_send_buffer_size_force(&socket, UDP_BUFFER).is_err() {
        sockopt::set_socket_send_buffer_size(&socket, UDP_BUFFER)?;
    }
    Ok(socket)
}

fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, VortexError> {
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        udp_socket(addr)?,
        Arc::new(quinn::TokioRuntime),
    )?)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A QUIC endpoint serving Vortex on `addr`; with `mtls`, only to clients with a certificate
/// from its CA.
pub fn server_endpoint(
    addr: SocketAddr,
    mtls: Option<&common::tls::Tls>,
) -> Result<quinn::Endpoint, VortexError> {
    let other = |e: String| VortexError::Io(std::io::Error::other(e));
    let tls = match mtls {
        Some(t) => t.rustls_server(true).map_err(|e| other(e.to_string()))?,
        None => {
            let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
                .map_err(|e| other(e.to_string()))?;
            let key =
                rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
            rustls::ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| other(e.to_string()))?
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert.der().clone()], key)
                .map_err(|e| other(e.to_string()))?
        }
    };
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| other(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport());
    endpoint(addr, Some(cfg))
}

/// Accepts any server certificate (see the module docs).
#[derive(Debug)]
struct NoVerifier(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A QUIC Vortex client with one pooled connection per parent.
pub struct QuicClient {
    endpoint: quinn::Endpoint,
    conns: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    /// Whether servers are verified (mutual TLS): then the name checked is the parent's IP.
    verify: bool,
}

impl QuicClient {
    /// A client that does not verify servers, as Dragonfly's (see the module docs).
    pub fn new() -> Result<QuicClient, VortexError> {
        Self::with_tls(None)
    }

    /// With `mtls`, a client that verifies servers against its CA and shows its certificate.
    pub fn with_tls(mtls: Option<&common::tls::Tls>) -> Result<QuicClient, VortexError> {
        let other = |e: String| VortexError::Io(std::io::Error::other(e));
        let p = provider();
        let tls = match mtls {
            Some(t) => t.rustls_client(true).map_err(|e| other(e.to_string()))?,
            None => rustls::ClientConfig::builder_with_provider(p.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| other(e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerifier(p)))
                .with_no_client_auth(),
        };
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| other(e.to_string()))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        cfg.transport_config(transport());
        let mut endpoint = endpoint(SocketAddr::from(([0, 0, 0, 0], 0)), None)?;
        endpoint.set_default_client_config(cfg);
        Ok(QuicClient {
            endpoint,
            conns: Mutex::new(HashMap::new()),
            verify: mtls.is_some(),
        })
    }

    /// The pooled connection to `addr`, opened if there is none (or it closed).
    pub async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, VortexError> {
        if let Some(c) = self.lock().get(&addr) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let name = if self.verify {
            addr.ip().to_string()
        } else {
            SERVER_NAME.to_string()
        };
        let c = self
            .endpoint
            .connect(addr, &name)
            .map_err(|e| VortexError::Io(std::io::Error::other(e.to_string())))?
            .await
            .map_err(|e| VortexError::Io(std::io::Error::other(e.to_string())))?;
        self.lock().insert(addr, c.clone());
        Ok(c)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, quinn::Connection>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Downloads one piece over a new stream of the pooled connection.
    pub async fn download_piece(
        &self,
        addr: SocketAddr,
        task_id: &str,
        number: u32,
        offset: u64,
        length: u64,
        timeout: Duration,
    ) -> Result<ReceivedPiece, VortexError> {
        let mut sink = super::client::MemorySink::new(offset, length)?;
        let info = self
            .download_piece_into(addr, task_id, number, offset, length, timeout, &mut sink)
            .await?;
        Ok(sink.into_piece(number, offset, info))
    }

    /// Like [`QuicClient::download_piece`], streaming the bytes into `sink`.
    #[allow(clippy::too_many_arguments)]
    pub async fn download_piece_into<S: PieceSink>(
        &self,
        addr: SocketAddr,
        task_id: &str,
        number: u32,
        offset: u64,
        length: u64,
        timeout: Duration,
        sink: &mut S,
    ) -> Result<PieceInfo, VortexError> {
        check_task_id(task_id)?;
        tokio::time::timeout(timeout, async {
            let conn = self.connection(addr).await?;
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| VortexError::Io(std::io::Error::other(e.to_string())))?;
            send.write_all(&request(task_id, number))
                .await
                .map_err(std::io::Error::from)?;
            let _ = send.finish();
            receive_piece_into(&mut recv, &addr.to_string(), number, offset, length, sink).await
        })
        .await
        .map_err(|_| VortexError::Timeout)?
    }
}
