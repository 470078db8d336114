use serde::{Deserialize, Serialize};

/// This host's identity, announced to schedulers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Host {
    /// Hostname. Default: the system hostname.
    pub hostname: Option<String>,
    /// IP advertised to other peers. Default: the address of the default route's interface.
    pub ip: Option<std::net::IpAddr>,
    /// IDC (data centre) of the host, used for affinity. Default: empty.
    pub idc: String,
    /// Location (`country|province|city|...`), used for affinity. Default: empty.
    pub location: String,
    /// The scheduler cluster to use: the manager then lists that cluster's schedulers only.
    /// Default: none (the manager's searcher chooses).
    #[serde(rename = "schedulerClusterID")]
    pub scheduler_cluster_id: Option<u64>,
}
