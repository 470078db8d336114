//! HTTP clients for talking to harness-run servers on 127.0.0.1.

/// Installs rustls's ring crypto provider as the process default (once; later calls are no-ops).
///
/// reqwest is built with `rustls-no-provider` in this workspace, so building any
/// `reqwest::Client` (including the one behind `reqwest::get`) panics until a provider is
/// installed. [`require_root_and_tools`](crate::require_root_and_tools) and [`http_client`] call
/// this, so tests that start with the prerequisite check need not.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A reqwest client that ignores proxy variables (test traffic stays on loopback).
pub fn http_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("building a reqwest client: {e}"))
}

/// [`http_client`]'s builder, for clients that need more settings (timeouts, redirects).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().no_proxy()
}
