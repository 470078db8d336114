use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Proxy listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyServer {
    /// Listen address. Default: `127.0.0.1` (containerd on the same node). Bind
    /// beyond loopback only together with `proxy.allowedRegistries`.
    pub ip: IpAddr,
    /// Listen port. Default: 4001.
    pub port: u16,
}

impl Default for ProxyServer {
    fn default() -> Self {
        ProxyServer {
            ip: IpAddr::from([127, 0, 0, 1]),
            port: 4001,
        }
    }
}

/// A routing rule: GET requests whose URL (without query) matches `regex` are
/// served through the piece store; everything else is forwarded untouched.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyRule {
    /// Regular expression matched against the URL without its query.
    pub regex: String,
    /// Upgrade matching `http://` requests to `https://` at the origin. Default: false.
    #[serde(default)]
    pub use_tls: bool,
    /// Replace the origin host of matching requests with this host. Default: none.
    #[serde(default)]
    pub redirect: Option<String>,
    /// Query parameters removed before computing the task ID. Default: the
    /// built-in list (presigned-URL signatures and containerd's `ns`).
    #[serde(default)]
    pub filtered_query_params: Option<Vec<String>>,
}

/// Upstream registry for mirror-mode requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryMirror {
    /// Registry used when a mirror request names none (no `X-Dragonfly-Registry`
    /// header and no `ns` query). Default: `https://index.docker.io`.
    pub addr: String,
    /// Use the blob digest as the task ID for `/v2/<name>/blobs/<digest>`, so one
    /// blob is one task whichever registry serves it, and verify the content
    /// against the digest before it is marked complete. Default: true.
    #[serde(rename = "enableTaskIDBasedBlobDigest")]
    pub enable_task_id_based_blob_digest: bool,
}

impl Default for RegistryMirror {
    fn default() -> Self {
        RegistryMirror {
            addr: "https://index.docker.io".into(),
            enable_task_id_based_blob_digest: true,
        }
    }
}

/// Registry mirror and HTTP proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Proxy {
    /// Listener.
    pub server: ProxyServer,
    /// Routing rules. Default: one rule, `blobs/sha256.*`.
    pub rules: Vec<ProxyRule>,
    /// Upstream registry for mirror requests.
    pub registry_mirror: RegistryMirror,
    /// Hosts (`host` or `host:port`, `*` wildcard prefix allowed as in
    /// `*.example.com`) the proxy may reach. Others get 403. Empty: any host.
    /// Default: empty.
    pub allowed_registries: Vec<String>,
    /// Largest request head (request line + headers) accepted. Default: 64KiB.
    pub max_request_head_size: bytesize::ByteSize,
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy {
            server: ProxyServer::default(),
            rules: vec![ProxyRule {
                regex: "blobs/sha256.*".into(),
                use_tls: false,
                redirect: None,
                filtered_query_params: None,
            }],
            registry_mirror: RegistryMirror::default(),
            allowed_registries: Vec::new(),
            max_request_head_size: bytesize::ByteSize::kib(64),
        }
    }
}

impl Proxy {
    pub(crate) fn validate(&self, p: &mut Vec<String>) {
        super::check_port(p, "proxy.server.port", self.server.port);
        for (i, r) in self.rules.iter().enumerate() {
            if let Err(e) = regex::Regex::new(&r.regex) {
                p.push(format!("proxy.rules[{i}].regex: {e}"));
            }
            if let Some(h) = &r.redirect {
                if !super::is_host_port(h, false) {
                    p.push(format!(
                        "proxy.rules[{i}].redirect: {h:?} must be a host or host:port"
                    ));
                }
            }
        }
        match url::Url::parse(&self.registry_mirror.addr) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => p.push(format!(
                "proxy.registryMirror.addr: {:?} is not an http(s) URL",
                self.registry_mirror.addr
            )),
        }
        for (i, h) in self.allowed_registries.iter().enumerate() {
            if h.is_empty() || h.contains('/') {
                p.push(format!(
                    "proxy.allowedRegistries[{i}]: {h:?} must be a host or host:port"
                ));
            }
        }
        let head = self.max_request_head_size.as_u64();
        if !(8192..=1024 * 1024).contains(&head) {
            p.push("proxy.maxRequestHeadSize: must be 8KiB-1MiB".into());
        }
    }
}
