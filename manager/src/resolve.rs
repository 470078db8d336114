//! What a preheat downloads: an image's manifest URL resolved to its blobs (an index to the
//! platform's manifest, then the config and the layers, as Dragonfly does), with the
//! `Authorization` the peers send to the registry; the allowlist of hosts preheats may reach.

use common::registry_challenge::{parse_challenge, Challenge};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Largest manifest or index read.
const MAX_MANIFEST: usize = 4 * 1024 * 1024;
/// Largest token response read.
const MAX_TOKEN: usize = 1024 * 1024;
/// Each registry request's limit (Harbor gives the whole POST 30 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most manifests an index may name that we look at.
const MAX_INDEX_ENTRIES: usize = 1000;

/// The media types asked for, as Dragonfly's manager asks.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// One blob to preheat.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Blob {
    pub url: String,
    pub digest: String,
}

/// A manifest URL's parts: `<scheme>://<host>/v2/<repository>/manifests/<reference>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestUrl {
    pub scheme: String,
    pub host: String,
    pub repository: String,
    pub reference: String,
}

impl ManifestUrl {
    /// Parses a manifest URL; the error says what is wrong.
    pub fn parse(url: &str) -> Result<ManifestUrl, String> {
        let u = url::Url::parse(url).map_err(|e| format!("url: {url:?}: {e}"))?;
        let scheme = u.scheme().to_string();
        if scheme != "http" && scheme != "https" {
            return Err(format!("url: {url:?} is not an http(s) URL"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err("url: credentials go in username/password, not in the URL".into());
        }
        let host = match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => return Err(format!("url: {url:?} has no host")),
        };
        let path = u.path();
        let rest = path
            .strip_prefix("/v2/")
            .ok_or_else(|| format!("url: {url:?} is not <registry>/v2/<name>/manifests/<ref>"))?;
        let (repository, reference) = rest
            .rsplit_once("/manifests/")
            .ok_or_else(|| format!("url: {url:?} is not <registry>/v2/<name>/manifests/<ref>"))?;
        if repository.is_empty() || reference.is_empty() || reference.contains('/') {
            return Err(format!(
                "url: {url:?} is not <registry>/v2/<name>/manifests/<ref>"
            ));
        }
        Ok(ManifestUrl {
            scheme,
            host,
            repository: repository.to_string(),
            reference: reference.to_string(),
        })
    }

    fn manifest(&self, reference: &str) -> String {
        format!(
            "{}://{}/v2/{}/manifests/{reference}",
            self.scheme, self.host, self.repository
        )
    }

    fn blob(&self, digest: &str) -> String {
        format!(
            "{}://{}/v2/{}/blobs/{digest}",
            self.scheme, self.host, self.repository
        )
    }
}

/// Whether `host` (`name` or `name:port`) may be preheated from: it matches an entry of
/// `allowed` exactly (`name:port`, or `name` for any port) or by suffix (`*.example.com`).
pub fn allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.rsplit_once(':') {
        // `[::1]:5000` and `name:5000`; a bare IPv6 has more colons and no brackets.
        Some((n, p)) if p.parse::<u16>().is_ok() && !n.ends_with(':') => n,
        _ => host,
    };
    allowed.iter().any(|a| {
        let a = a.trim().to_ascii_lowercase();
        let host = host.to_ascii_lowercase();
        let name = name.to_ascii_lowercase();
        if let Some(suffix) = a.strip_prefix("*.") {
            name.ends_with(&format!(".{suffix}"))
        } else {
            a == host || a == name
        }
    })
}

/// The host of a URL (`name[:port]`), for the allowlist.
pub fn url_host(url: &str) -> Result<String, String> {
    let u = url::Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(format!("{url:?} is not an http(s) URL"));
    }
    match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => Ok(format!("{h}:{p}")),
        (Some(h), None) => Ok(h.to_string()),
        _ => Err(format!("{url:?} has no host")),
    }
}

/// Registry credentials given with a job.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// `Authorization` given by the caller (Harbor's token): used as it is.
    pub authorization: Option<String>,
    pub username: String,
    pub password: String,
}

/// The resolved image: its blobs (config first, then layers) and the `Authorization` peers
/// send (if any).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub blobs: Vec<Blob>,
    pub authorization: Option<String>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// What a manifest body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An index (or manifest list): the digest of the entry for the platform asked.
    Index(String),
    /// An image manifest: its blobs' digests, config first.
    Image(Vec<String>),
}

/// Reads a manifest or index body (`content_type` as the registry sent it) and, for an index,
/// picks the entry of `platform` (`os`, `arch`, `variant`). Every error says what is wrong.
pub fn parse_manifest(
    body: &[u8],
    content_type: &str,
    platform: &(String, String, Option<String>),
) -> Result<Parsed, String> {
    let m: Manifest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let is_index = m.manifests.is_some()
        || content_type.contains("index")
        || content_type.contains("manifest.list")
        || m.media_type.contains("index")
        || m.media_type.contains("manifest.list");
    if is_index {
        let entries = m.manifests.unwrap_or_default();
        if entries.len() > MAX_INDEX_ENTRIES {
            return Err(format!(
                "an index of {} manifests (limit {MAX_INDEX_ENTRIES})",
                entries.len()
            ));
        }
        let (os, arch, variant) = platform;
        let pick = entries
            .iter()
            .find(|d| {
                d.platform.as_ref().is_some_and(|p| {
                    &p.os == os
                        && &p.architecture == arch
                        && (variant.is_none() || &p.variant == variant)
                })
            })
            .ok_or_else(|| {
                let v = variant
                    .as_deref()
                    .map(|v| format!("/{v}"))
                    .unwrap_or_default();
                format!("no matching manifest for platform {os}/{arch}{v}")
            })?;
        if common::id::BlobDigest::parse(&pick.digest).is_none() {
            return Err(format!("the index names a manifest {:?}", pick.digest));
        }
        return Ok(Parsed::Index(pick.digest.clone()));
    }
    let config = m.config.ok_or("the manifest has no config")?;
    let mut out = Vec::new();
    for d in std::iter::once(config).chain(m.layers.unwrap_or_default()) {
        if common::id::BlobDigest::parse(&d.digest).is_none() {
            return Err(format!("the manifest names a blob {:?}", d.digest));
        }
        out.push(d.digest);
    }
    Ok(Parsed::Image(out))
}

/// `os/arch[/variant]`, as Dragonfly's `platform` argument; the error names the field.
pub fn parse_platform(s: &str) -> Result<(String, String, Option<String>), String> {
    let parts: Vec<&str> = s.split('/').collect();
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    match parts.as_slice() {
        [os, arch] if ok(os) && ok(arch) => Ok((os.to_string(), arch.to_string(), None)),
        [os, arch, v] if ok(os) && ok(arch) && ok(v) => {
            Ok((os.to_string(), arch.to_string(), Some(v.to_string())))
        }
        _ => Err(format!(
            "platform: {s:?} is not os/arch[/variant] like linux/amd64"
        )),
    }
}

/// This machine's platform as OCI names it (the default, as Dragonfly uses its own).
pub fn default_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

/// Fetches the manifest at `url` (following an index to `platform`) and lists its blobs.
pub async fn resolve(
    client: &reqwest::Client,
    url: &ManifestUrl,
    auth: &Auth,
    extra_headers: &BTreeMap<String, String>,
    platform: &str,
    allowed_hosts: &[String],
) -> Result<Resolved, String> {
    let platform_parts = parse_platform(platform)?;
    let mut authorization = auth.authorization.clone();
    let mut reference = url.reference.clone();
    let mut blobs = Vec::new();
    // The manifest, or an index and then its platform's manifest (an index in an index is an
    // error).
    for depth in 0..2 {
        let manifest_url = url.manifest(&reference);
        let (body, media_type) = get_manifest(
            client,
            &manifest_url,
            auth,
            &mut authorization,
            extra_headers,
            url,
            allowed_hosts,
        )
        .await?;
        match parse_manifest(&body, &media_type, &platform_parts)
            .map_err(|e| format!("manifest {manifest_url}: {e}"))?
        {
            Parsed::Index(digest) if depth == 0 => reference = digest,
            Parsed::Index(_) => {
                return Err(format!(
                    "manifest {manifest_url} is an index inside an index"
                ))
            }
            Parsed::Image(digests) => {
                blobs = digests
                    .into_iter()
                    .map(|d| Blob {
                        url: url.blob(&d),
                        digest: d,
                    })
                    .collect();
                break;
            }
        }
    }
    Ok(Resolved {
        blobs,
        authorization,
    })
}

/// GETs one manifest, answering a `401` challenge once (Basic with the credentials, or a Bearer
/// token for `repository:<name>:pull`); the body and its content type. `authorization` is
/// what was sent and worked.
async fn get_manifest(
    client: &reqwest::Client,
    manifest_url: &str,
    auth: &Auth,
    authorization: &mut Option<String>,
    extra_headers: &BTreeMap<String, String>,
    url: &ManifestUrl,
    allowed_hosts: &[String],
) -> Result<(Vec<u8>, String), String> {
    for attempt in 0..2 {
        let mut rb = client
            .get(manifest_url)
            .timeout(REQUEST_TIMEOUT)
            .header(reqwest::header::ACCEPT, MANIFEST_ACCEPT);
        for (k, v) in extra_headers {
            if !k.eq_ignore_ascii_case("authorization") && !k.eq_ignore_ascii_case("accept") {
                rb = rb.header(k.as_str(), v.as_str());
            }
        }
        if let Some(a) = authorization.as_deref() {
            rb = rb.header(reqwest::header::AUTHORIZATION, a);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| format!("GET {manifest_url}: {e}"))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED
            && attempt == 0
            && auth.authorization.is_none()
        {
            let challenge = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("GET {manifest_url}: 401 without a challenge"))?
                .to_string();
            *authorization = Some(answer(client, &challenge, auth, url, allowed_hosts).await?);
            continue;
        }
        if !status.is_success() {
            // The registry's own words, short: it is allowlisted, and redirects elsewhere are
            // refused.
            let text = read_limited(resp, 512).await.unwrap_or_default();
            return Err(format!(
                "GET {manifest_url}: {status}: {}",
                String::from_utf8_lossy(&text).trim()
            ));
        }
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = read_limited(resp, MAX_MANIFEST)
            .await
            .map_err(|e| format!("GET {manifest_url}: {e}"))?;
        return Ok((body, ct));
    }
    Err(format!(
        "GET {manifest_url}: the registry refused the credentials"
    ))
}

async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("response over {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn basic(auth: &Auth) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", auth.username, auth.password))
    )
}

/// The `Authorization` answering `challenge`.
async fn answer(
    client: &reqwest::Client,
    challenge: &str,
    auth: &Auth,
    url: &ManifestUrl,
    allowed_hosts: &[String],
) -> Result<String, String> {
    let has_credentials = !auth.username.is_empty();
    match parse_challenge(challenge).map_err(|e| format!("registry {}: {e}", url.host))? {
        Challenge::Basic => {
            if !has_credentials {
                return Err(format!(
                    "registry {} asks for credentials: give username and password",
                    url.host
                ));
            }
            Ok(basic(auth))
        }
        Challenge::Bearer { realm, service, .. } => {
            // The token service is fetched (with the credentials) only if it is allowlisted
            // too: a registry must not send the manager to other hosts.
            let realm_host = url_host(&realm).map_err(|e| format!("realm: {e}"))?;
            if !allowed(&realm_host, allowed_hosts) {
                return Err(format!(
                    "registry {} sends tokens from {realm_host}, which is not in job.preheat.allowedHosts (add it to preheat from this registry)",
                    url.host
                ));
            }
            let mut token_url =
                url::Url::parse(&realm).map_err(|e| format!("realm {realm:?}: {e}"))?;
            {
                let mut q = token_url.query_pairs_mut();
                if let Some(s) = &service {
                    q.append_pair("service", s);
                }
                q.append_pair("scope", &format!("repository:{}:pull", url.repository));
            }
            let mut rb = client.get(token_url.as_str()).timeout(REQUEST_TIMEOUT);
            if has_credentials {
                rb = rb.header(reqwest::header::AUTHORIZATION, basic(auth));
            }
            let resp = rb
                .send()
                .await
                .map_err(|e| format!("token request to {realm}: {e}"))?;
            let status = resp.status();
            let body = read_limited(resp, MAX_TOKEN)
                .await
                .map_err(|e| format!("token response from {realm}: {e}"))?;
            if !status.is_success() {
                return Err(format!(
                    "token request to {realm}: {status}{}",
                    if status == reqwest::StatusCode::UNAUTHORIZED {
                        if has_credentials {
                            ": the credentials were refused"
                        } else {
                            ": anonymous access is refused; give username and password"
                        }
                    } else {
                        ""
                    }
                ));
            }
            #[derive(Deserialize)]
            struct Token {
                #[serde(default)]
                token: Option<String>,
                #[serde(default)]
                access_token: Option<String>,
            }
            let t: Token = serde_json::from_slice(&body)
                .map_err(|e| format!("token response from {realm}: {e}"))?;
            let token = t
                .token
                .filter(|t| !t.is_empty())
                .or(t.access_token.filter(|t| !t.is_empty()))
                .ok_or_else(|| format!("token response from {realm} has no token"))?;
            Ok(format!("Bearer {token}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_urls_are_split_as_dragonfly_does() {
        let u = ManifestUrl::parse("https://harbor.example.com/v2/library/nginx/manifests/1.27")
            .unwrap();
        assert_eq!(u.host, "harbor.example.com");
        assert_eq!(u.repository, "library/nginx");
        assert_eq!(u.reference, "1.27");
        assert_eq!(
            u.blob("sha256:ab"),
            "https://harbor.example.com/v2/library/nginx/blobs/sha256:ab"
        );
        let u = ManifestUrl::parse("http://127.0.0.1:5000/v2/a/manifests/sha256:00").unwrap();
        assert_eq!(u.host, "127.0.0.1:5000");
        for bad in [
            "ftp://r/v2/a/manifests/x",
            "https://r/v3/a/manifests/x",
            "https://r/v2/a/blobs/x",
            "https://u:p@r/v2/a/manifests/x",
            "not a url",
        ] {
            let e = ManifestUrl::parse(bad).unwrap_err();
            assert!(e.starts_with("url:"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_allowlist_matches_hosts_ports_and_suffixes() {
        let list = vec![
            "harbor.example.com".to_string(),
            "127.0.0.1:5000".to_string(),
            "*.registry.internal".to_string(),
        ];
        assert!(allowed("harbor.example.com", &list));
        assert!(allowed("harbor.example.com:443", &list));
        assert!(allowed("127.0.0.1:5000", &list));
        assert!(!allowed("127.0.0.1:5001", &list));
        assert!(!allowed("127.0.0.1", &list));
        assert!(allowed("a.registry.internal", &list));
        assert!(!allowed("registry.internal", &list));
        assert!(!allowed("evil.com", &list));
        assert!(!allowed("169.254.169.254", &list));
        assert!(!allowed("harbor.example.com", &[]));
    }

    #[test]
    fn an_index_leads_to_the_platforms_manifest_and_a_manifest_to_its_blobs() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"digest": d('a'), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"digest": d('b'), "platform": {"os": "linux", "architecture": "amd64"}}
            ]
        })
        .to_string();
        let amd64 = ("linux".to_string(), "amd64".to_string(), None);
        let arm64 = parse_platform("linux/arm64/v8").unwrap();
        assert_eq!(
            parse_manifest(index.as_bytes(), "", &amd64).unwrap(),
            Parsed::Index(d('b'))
        );
        assert_eq!(
            parse_manifest(index.as_bytes(), "", &arm64).unwrap(),
            Parsed::Index(d('a'))
        );
        let s390 = ("linux".to_string(), "s390x".to_string(), None);
        let e = parse_manifest(index.as_bytes(), "", &s390).unwrap_err();
        assert_eq!(e, "no matching manifest for platform linux/s390x");
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "config": {"digest": d('c')},
            "layers": [{"digest": d('1')}, {"digest": d('2')}]
        })
        .to_string();
        assert_eq!(
            parse_manifest(
                manifest.as_bytes(),
                "application/vnd.oci.image.manifest.v1+json",
                &amd64
            )
            .unwrap(),
            Parsed::Image(vec![d('c'), d('1'), d('2')])
        );
        let bad = r#"{"config": {"digest": "sha256:../../x"}, "layers": []}"#;
        assert!(parse_manifest(bad.as_bytes(), "", &amd64).is_err());
        assert!(parse_manifest(b"{", "", &amd64).is_err());
        assert!(parse_manifest(br#"{"layers": []}"#, "", &amd64)
            .unwrap_err()
            .contains("no config"));
    }

    #[test]
    fn platforms_parse_or_name_the_field() {
        assert_eq!(
            parse_platform("linux/arm64/v8").unwrap(),
            ("linux".into(), "arm64".into(), Some("v8".into()))
        );
        assert!(parse_platform("linux")
            .unwrap_err()
            .starts_with("platform:"));
        assert!(parse_platform("linux/amd64/v1/x").is_err());
        assert!(default_platform().starts_with("linux/"));
    }
}
