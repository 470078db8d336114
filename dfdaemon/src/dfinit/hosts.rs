//! Registry URLs given to dfinit and the `hosts.toml` files it writes for them (pure).

use super::*;

/// `scheme://host[:port]`, validated: http or https, no path, query, fragment or credentials.
/// An explicitly written port is kept even when it is the scheme's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Origin {
    pub(super) scheme: String,
    pub(super) host: String,
    pub(super) port: Option<u16>,
}

impl Origin {
    fn parse(input: &str) -> Result<Self, UrlError> {
        let input = input.trim();
        let Some(scheme_end) = input.find("://") else {
            return Err(UrlError::MissingScheme(input.to_string()));
        };
        let url = url::Url::parse(input)?;
        let scheme = url.scheme().to_string();
        if scheme != "http" && scheme != "https" {
            return Err(UrlError::UnsupportedScheme(scheme));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::HasCredentials);
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(UrlError::HasQueryOrFragment);
        }
        if url.path() != "/" {
            return Err(UrlError::HasPath(url.path().to_string()));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(UrlError::Parse(url::ParseError::EmptyHost))?
            .to_string();
        // `url` drops a port equal to the scheme's default; keep it if the user wrote one, because
        // containerd picks the host directory by the registry host exactly as written in the
        // image reference (`registry.example.com:443/app` uses `registry.example.com:443/`).
        let authority = input[scheme_end + 3..]
            .split(['/', '?', '#'])
            .next()
            .unwrap_or_default();
        let after_host = authority.rsplit(']').next().unwrap_or(authority);
        let port = if after_host.contains(':') {
            url.port_or_known_default()
        } else {
            None
        };
        Ok(Self { scheme, host, port })
    }

    fn authority(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }

    fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority())
    }
}

/// An upstream registry given with `--registry`: where its `hosts.toml` goes and what containerd
/// falls back to when the mirror fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    pub(super) input: String,
    pub(super) host_dir: String,
    pub(super) server: String,
}

impl Registry {
    /// Directory name under `config_path`: the registry host as it appears in image references
    /// (`docker.io`, `ghcr.io`, `127.0.0.1:5000`).
    pub fn host_dir(&self) -> &str {
        &self.host_dir
    }

    /// The upstream URL written as `server` and as the `X-Dragonfly-Registry` header
    /// (`https://index.docker.io` for Docker Hub).
    pub fn server(&self) -> &str {
        &self.server
    }
}

impl FromStr for Registry {
    type Err = UrlError;

    /// Parses `http(s)://host[:port]`. `https://docker.io`, `https://index.docker.io` and
    /// `https://registry-1.docker.io` all become Docker Hub (`docker.io`, `https://index.docker.io`).
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let origin = Origin::parse(input)?;
        let is_docker_hub = DOCKER_HUB_HOSTS.contains(&origin.host.as_str())
            && matches!(origin.port, None | Some(443));
        let (host_dir, server) = if is_docker_hub {
            if origin.scheme != "https" {
                return Err(UrlError::PlainHttpDockerHub);
            }
            (
                DOCKER_HUB_NAMESPACE.to_string(),
                DOCKER_HUB_SERVER.to_string(),
            )
        } else {
            (origin.authority(), origin.url())
        };
        if host_dir == DEFAULT_HOST_DIR {
            return Err(UrlError::ReservedHost);
        }
        Ok(Self {
            input: input.trim().to_string(),
            host_dir,
            server,
        })
    }
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.server)
    }
}

/// The registry mirror's address (`--proxy-addr`), normalised to `scheme://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAddr(String);

impl ProxyAddr {
    /// The address as written into `hosts.toml` (`http://127.0.0.1:4001`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ProxyAddr {
    fn default() -> Self {
        Self(DEFAULT_PROXY_ADDR.to_string())
    }
}

impl FromStr for ProxyAddr {
    type Err = UrlError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Ok(Self(Origin::parse(input)?.url()))
    }
}

impl fmt::Display for ProxyAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// hosts.toml rendering
// ---------------------------------------------------------------------------------------------

/// A TOML basic string with everything escaped that needs it.
pub(super) fn toml_string(s: &str) -> String {
    Value::from(s).to_string().trim().to_string()
}

pub(super) fn capabilities() -> String {
    let quoted: Vec<String> = MIRROR_CAPABILITIES.iter().map(|c| toml_string(c)).collect();
    format!("[{}]", quoted.join(", "))
}

/// `hosts.toml` for one registry: pulls go to the mirror, which is told the upstream by header;
/// containerd falls back to `server` when the mirror fails.
pub fn render_registry_hosts_toml(registry: &Registry, proxy: &ProxyAddr) -> String {
    let server = toml_string(registry.server());
    let host = toml_string(proxy.as_str());
    format!(
        "{MANAGED_HEADER}server = {server}\n\
         \n\
         [host.{host}]\n  \
           capabilities = {caps}\n  \
           skip_verify = true\n\
         \n\
         [host.{host}.header]\n  \
           {REGISTRY_HEADER} = {server}\n",
        caps = capabilities(),
    )
}

/// `_default/hosts.toml`: every registry without its own directory goes through the mirror, which
/// infers the upstream from the `ns=` query parameter containerd appends. No `server`, so the
/// fallback is the registry named in the image reference.
pub fn render_default_hosts_toml(proxy: &ProxyAddr) -> String {
    let host = toml_string(proxy.as_str());
    format!(
        "{MANAGED_HEADER}[host.{host}]\n  \
           capabilities = {caps}\n",
        caps = capabilities(),
    )
}

/// Whether an existing `hosts.toml` was written by dfinit (and may be overwritten freely).
pub fn is_managed(contents: &[u8]) -> bool {
    contents.starts_with(MANAGED_MARKER.as_bytes())
}
