use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Metrics server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsServer {
    /// Listen address. Default: `0.0.0.0`.
    pub ip: IpAddr,
    /// Listen port. Default: 4002.
    pub port: u16,
}

impl Default for MetricsServer {
    fn default() -> Self {
        MetricsServer {
            ip: IpAddr::from([0, 0, 0, 0]),
            port: 4002,
        }
    }
}

/// Prometheus `/metrics` and `/healthy`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Metrics {
    /// Metrics server.
    pub server: MetricsServer,
}

impl Metrics {
    pub(crate) fn validate(&self, p: &mut Vec<String>) {
        super::check_port(p, "metrics.server.port", self.server.port);
    }
}
