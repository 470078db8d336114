use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Origin (back-to-source) HTTP client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Backend {
    /// Retries of a failed piece request (connection error, 5xx, short body),
    /// with exponential backoff starting at 100ms. Default: 3.
    pub max_retries: u32,
    /// Timeout to connect to the origin. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Remember 302/303/307/308 redirect targets per task so each piece does not
    /// re-resolve them. Default: true.
    pub enable_cache_temporary_redirect: bool,
    /// How long a remembered redirect target is used. Default: 600s.
    #[serde(rename = "cacheTemporaryRedirectTTL", with = "humantime_serde")]
    pub cache_temporary_redirect_ttl: Duration,
    /// Extra PEM CA certificates trusted for HTTPS origins, in addition to the
    /// system roots. Default: none.
    pub ca_cert: Option<PathBuf>,
}

impl Default for Backend {
    fn default() -> Self {
        Backend {
            max_retries: 3,
            connect_timeout: Duration::from_secs(10),
            enable_cache_temporary_redirect: true,
            cache_temporary_redirect_ttl: Duration::from_secs(600),
            ca_cert: None,
        }
    }
}

impl Backend {
    pub(crate) fn validate(&self, p: &mut Vec<String>) {
        if self.max_retries > 20 {
            p.push("backend.maxRetries: must be at most 20".into());
        }
        if self.connect_timeout.is_zero() {
            p.push("backend.connectTimeout: must be greater than 0".into());
        }
        if let Some(ca) = &self.ca_cert {
            if !ca.is_file() {
                p.push(format!(
                    "backend.caCert: {} is not a readable file",
                    ca.display()
                ));
            }
        }
    }
}
