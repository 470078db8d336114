//! A small registry HTTP API client (distribution spec v2) that answers Bearer and Basic
//! challenges with the credentials it was given.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, Method, StatusCode};

use crate::image::sha256_digest;
use crate::{Error, Result};

/// Manifest media types a pull accepts.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// Talks to one registry (`base` = `http://127.0.0.1:<port>`).
#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    creds: Option<(String, String)>,
    /// The last Authorization header that worked, tried first on the next request.
    auth: Arc<Mutex<Option<String>>>,
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `bearer` or `basic` (lower-cased).
    pub scheme: String,
    /// Parameters (`realm`, `service`, `scope`, `error`, ...), keys lower-cased.
    pub params: HashMap<String, String>,
}

/// Parses `Bearer realm="...",service="...",scope="repository:a:pull,push"`.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = HashMap::new();
    let mut rest = rest.trim_start();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (val, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => out.push(c),
                }
            }
            (out, &quoted[end? + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, val);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

impl RegistryClient {
    /// A client for `base` (`http://127.0.0.1:<port>`), with optional user/password for
    /// Bearer-token or Basic challenges.
    pub fn new(base: impl Into<String>, creds: Option<(String, String)>) -> RegistryClient {
        let http = crate::http_client_builder()
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .unwrap_or_else(|e| panic!("building an HTTP client cannot fail without TLS: {e}"));
        RegistryClient {
            base: base.into().trim_end_matches('/').to_string(),
            http,
            creds,
            auth: Arc::new(Mutex::new(None)),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request to `url` (absolute, or a path starting with `/`), answering one
    /// authentication challenge if the registry asks for it.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<reqwest::Response> {
        let url = if url.starts_with('/') {
            format!("{}{}", self.base, url)
        } else {
            url.to_string()
        };
        let cached = self.auth.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let resp = self
            .send_once(&method, &url, headers, body.clone(), cached.as_deref())
            .await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let Some(challenge) = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
        else {
            return Ok(resp);
        };
        let authz = match challenge.scheme.as_str() {
            "bearer" => format!("Bearer {}", self.fetch_token(&challenge).await?),
            "basic" => match &self.creds {
                Some((u, p)) => format!("Basic {}", basic(u, p)),
                None => return Ok(resp),
            },
            _ => return Ok(resp),
        };
        let resp = self
            .send_once(&method, &url, headers, body, Some(&authz))
            .await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            *self.auth.lock().unwrap_or_else(|p| p.into_inner()) = Some(authz);
        }
        Ok(resp)
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
        authz: Option<&str>,
    ) -> Result<reqwest::Response> {
        let mut req = self.http.request(method.clone(), url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(a) = authz {
            req = req.header(header::AUTHORIZATION, a);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        req.send().await.map_err(|source| Error::Http {
            method: method.to_string(),
            url: url.to_string(),
            source,
        })
    }

    /// Gets a Bearer token from the challenge's realm (GET with Basic credentials, as docker
    /// and skopeo do).
    async fn fetch_token(&self, challenge: &Challenge) -> Result<String> {
        let realm = challenge
            .params
            .get("realm")
            .ok_or_else(|| Error::malformed("Bearer challenge", "no realm"))?;
        let mut url = url::Url::parse(realm)
            .map_err(|e| Error::malformed("Bearer realm", format!("{realm}: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = challenge.params.get("service") {
                q.append_pair("service", s);
            }
            if let Some(s) = challenge.params.get("scope") {
                for scope in s.split(' ') {
                    q.append_pair("scope", scope);
                }
            }
            if let Some((u, _)) = &self.creds {
                q.append_pair("account", u);
            }
        }
        let mut req = self.http.get(url.clone());
        if let Some((u, p)) = &self.creds {
            req = req.basic_auth(u, Some(p));
        }
        let err = |source| Error::Http {
            method: "GET".into(),
            url: url.to_string(),
            source,
        };
        let resp = req.send().await.map_err(err)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(err)?;
        if !status.is_success() {
            return Err(Error::HttpStatus {
                method: "GET".into(),
                url: url.to_string(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|source| Error::Json {
                what: format!("token response from {url}"),
                source,
            })?;
        doc.get("token")
            .or_else(|| doc.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| Error::malformed("token response", "no token field"))
    }

    /// Sends and requires one of `ok` statuses; returns the response.
    async fn expect(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
        ok: &[StatusCode],
    ) -> Result<reqwest::Response> {
        let resp = self.send(method.clone(), url, headers, body).await?;
        if ok.contains(&resp.status()) {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let url = resp.url().to_string();
        let body = resp.text().await.unwrap_or_default();
        Err(Error::HttpStatus {
            method: method.to_string(),
            url,
            status,
            body,
        })
    }

    /// Uploads `data` as a blob of `repo` (POST an upload, then one monolithic PUT with the
    /// digest). Returns `sha256:<hex>`.
    pub async fn push_blob(&self, repo: &str, data: impl Into<Bytes>) -> Result<String> {
        let data = data.into();
        let digest = sha256_digest(&data);
        let start = format!("/v2/{repo}/blobs/uploads/");
        let resp = self
            .expect(
                Method::POST,
                &start,
                &[("Content-Length", "0")],
                Some(Bytes::new()),
                &[StatusCode::ACCEPTED],
            )
            .await?;
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::malformed(format!("POST {start}"), "202 without Location"))?;
        let base = url::Url::parse(&format!("{}{}", self.base, start))
            .map_err(|e| Error::malformed("registry base URL", e.to_string()))?;
        let mut put_url = base
            .join(location)
            .map_err(|e| Error::malformed("upload Location", format!("{location}: {e}")))?;
        put_url.query_pairs_mut().append_pair("digest", &digest);
        self.expect(
            Method::PUT,
            put_url.as_str(),
            &[("Content-Type", "application/octet-stream")],
            Some(data),
            &[StatusCode::CREATED],
        )
        .await?;
        Ok(digest)
    }

    /// Downloads blob `digest` of `repo`.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<Bytes> {
        let url = format!("/v2/{repo}/blobs/{digest}");
        let resp = self
            .expect(Method::GET, &url, &[], None, &[StatusCode::OK])
            .await?;
        resp.bytes().await.map_err(|source| Error::Http {
            method: "GET".into(),
            url,
            source,
        })
    }

    /// The digest the registry reports for manifest `reference` of `repo`, or `None` on 404.
    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Result<Option<String>> {
        let url = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .expect(
                Method::HEAD,
                &url,
                &[("Accept", MANIFEST_ACCEPT)],
                None,
                &[StatusCode::OK, StatusCode::NOT_FOUND],
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        resp.headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(|d| Some(d.to_string()))
            .ok_or_else(|| Error::malformed(format!("HEAD {url}"), "no Docker-Content-Digest"))
    }

    /// Manifest `reference` of `repo`: (bytes, content type, digest of the bytes).
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(Bytes, String, String)> {
        let url = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .expect(
                Method::GET,
                &url,
                &[("Accept", MANIFEST_ACCEPT)],
                None,
                &[StatusCode::OK],
            )
            .await?;
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.bytes().await.map_err(|source| Error::Http {
            method: "GET".into(),
            url,
            source,
        })?;
        let digest = sha256_digest(&body);
        Ok((body, ct, digest))
    }

    /// Uploads a manifest under `reference` (a tag or its digest). Returns its digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: impl Into<Bytes>,
    ) -> Result<String> {
        let bytes = bytes.into();
        let digest = sha256_digest(&bytes);
        self.expect(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            Some(bytes),
            &[StatusCode::CREATED],
        )
        .await?;
        Ok(digest)
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:1/token",service="dfit-registry",scope="repository:a/b:pull,push",error="insufficient_scope""#,
        )
        .expect("parses");
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "http://127.0.0.1:1/token");
        assert_eq!(c.params["service"], "dfit-registry");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
        assert_eq!(c.params["error"], "insufficient_scope");

        let b = parse_challenge(r#"Basic realm="Registry Realm""#).expect("parses");
        assert_eq!(b.scheme, "basic");
        assert_eq!(b.params["realm"], "Registry Realm");

        let bare = parse_challenge("Bearer realm=x, service=y").expect("parses");
        assert_eq!(bare.params["realm"], "x");
        assert_eq!(bare.params["service"], "y");

        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
    }
}
