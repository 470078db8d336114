//! Registry credentials for the requests dfdaemon makes on its own behalf (the lazy-loading
//! runtime's blob reads), as containerd makes them: the `WWW-Authenticate` challenge of a
//! `401` is answered with HTTP Basic or with a bearer token from the registry's token service
//! (Docker's token flow: anonymous when there are no credentials, as public images on Docker
//! Hub need). Credentials come from dfdaemon's config (`runtime.auths`) or Docker's
//! `config.json`, looked up by registry host.
//!
//! Requests that clients send through the proxy carry their own credentials and never get
//! these.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderValue;
use nydus::nydusify::registry::Credentials;

/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 1024 * 1024;
/// Lifetime of a token whose response gives none (Docker's token spec).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Longest a token is kept, whatever the token service says.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long a token request may take.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
use common::registry_challenge::MAX_CHALLENGE;
pub use common::registry_challenge::{parse_challenge, Challenge};

/// What a token service answers.
#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The credentials and current authorization of one image's blob requests.
pub struct RegistryAuth {
    registry: String,
    credentials: Option<Credentials>,
    /// The `Authorization` value to send, and until when (`None`: for good).
    current: Mutex<Option<(HeaderValue, Option<Instant>)>>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("registry", &self.registry)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

fn basic(c: &Credentials) -> Result<HeaderValue, String> {
    use base64::Engine as _;
    let raw = format!("{}:{}", c.username, c.password);
    HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
    .map_err(|_| "the credentials cannot be sent in a header".to_string())
}

impl RegistryAuth {
    /// Authorization for `registry` (named in errors) with `credentials` (none: anonymous).
    pub fn new(registry: impl Into<String>, credentials: Option<Credentials>) -> RegistryAuth {
        RegistryAuth {
            registry: registry.into(),
            credentials,
            current: Mutex::new(None),
        }
    }

    /// The registry these credentials are for.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Whether there are credentials (else requests are anonymous).
    pub fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// The `Authorization` value to send now, if a challenge was answered and it has not
    /// expired.
    pub fn header(&self) -> Option<HeaderValue> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        match &*cur {
            Some((_, Some(until))) if Instant::now() >= *until => {
                *cur = None;
                None
            }
            Some((h, _)) => Some(h.clone()),
            None => None,
        }
    }

    /// Answers the `WWW-Authenticate` challenge of a `401`: Basic with the credentials, or a
    /// token from the Bearer realm (with the credentials, or anonymously without). Returns the
    /// `Authorization` value to retry with; [`RegistryAuth::header`] has it until it expires.
    pub async fn answer(
        &self,
        client: &reqwest::Client,
        challenge: &str,
    ) -> Result<HeaderValue, String> {
        let named = |m: String| format!("registry {}: {m}", self.registry);
        match parse_challenge(challenge).map_err(named)? {
            Challenge::Basic => {
                let c = self.credentials.as_ref().ok_or_else(|| {
                    named(
                        "asks for credentials and none are configured (runtime.auths, or \
                         Docker's config.json)"
                            .into(),
                    )
                })?;
                let value = basic(c).map_err(named)?;
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((value.clone(), None));
                Ok(value)
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let mut url = url::Url::parse(&realm).map_err(|e| named(e.to_string()))?;
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = &service {
                        q.append_pair("service", s);
                    }
                    if let Some(s) = &scope {
                        q.append_pair("scope", s);
                    }
                }
                let mut rb = client.get(url.as_str()).timeout(TOKEN_TIMEOUT);
                if let Some(c) = &self.credentials {
                    rb = rb.header(http::header::AUTHORIZATION, basic(c).map_err(named)?);
                }
                let started = Instant::now();
                let mut resp = rb
                    .send()
                    .await
                    .map_err(|e| named(format!("token request to {realm}: {e}")))?;
                let status = resp.status();
                let mut body = Vec::new();
                while let Some(chunk) = resp
                    .chunk()
                    .await
                    .map_err(|e| named(format!("token response from {realm}: {e}")))?
                {
                    if body.len() + chunk.len() > MAX_TOKEN_RESPONSE {
                        return Err(named(format!(
                            "token response from {realm} is over {MAX_TOKEN_RESPONSE} bytes"
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                if !status.is_success() {
                    let why = if status == http::StatusCode::UNAUTHORIZED {
                        if self.credentials.is_some() {
                            "the credentials were refused"
                        } else {
                            "no credentials are configured (runtime.auths, or Docker's \
                             config.json) and anonymous access is refused"
                        }
                    } else {
                        "the token service failed"
                    };
                    return Err(named(format!("token request to {realm}: {status}: {why}")));
                }
                let t: TokenResponse = serde_json::from_slice(&body)
                    .map_err(|e| named(format!("token response from {realm}: {e}")))?;
                let token = t
                    .token
                    .filter(|t| !t.is_empty())
                    .or(t.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| named(format!("token response from {realm} has no token")))?;
                let value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| named(format!("token from {realm} is not a header value")))?;
                let life = t
                    .expires_in
                    .map(Duration::from_secs)
                    .unwrap_or(DEFAULT_TOKEN_LIFETIME)
                    .min(MAX_TOKEN_LIFETIME);
                // Renewed a little early, so a request in flight does not carry a stale one.
                let until = started + life - (life / 10).min(Duration::from_secs(30));
                *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((value.clone(), Some(until)));
                Ok(value)
            }
        }
    }
}

/// A registry's credentials in dfdaemon's config (`runtime.auths.<host>`): `username` and
/// `password`, or `auth` (base64 of `username:password`), as in Docker's `config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthEntry {
    pub username: String,
    pub password: String,
    pub auth: String,
}

impl AuthEntry {
    /// The credentials, or why the entry is unusable.
    pub fn credentials(&self) -> Result<Credentials, String> {
        use base64::Engine as _;
        if !self.auth.is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|e| format!("auth is not base64: {e}"))?;
            let s = String::from_utf8(raw).map_err(|_| "auth is not UTF-8".to_string())?;
            let (u, p) = s
                .split_once(':')
                .ok_or("auth is not base64 of username:password")?;
            return Ok(Credentials {
                username: u.into(),
                password: p.into(),
            });
        }
        if self.username.is_empty() {
            return Err("set username and password, or auth".into());
        }
        Ok(Credentials {
            username: self.username.clone(),
            password: self.password.clone(),
        })
    }
}

/// Where the credentials of a registry are found: the config's entries first, then Docker's
/// `config.json` (read at each lookup, so a `docker login` needs no restart).
#[derive(Debug, Clone, Default)]
pub struct CredentialSource {
    pub config: BTreeMap<String, AuthEntry>,
    /// `$DOCKER_CONFIG/config.json` or `~/.docker/config.json` of dfdaemon's user.
    pub docker_config: Option<PathBuf>,
}

impl CredentialSource {
    /// From the config's entries and the environment's Docker `config.json`.
    pub fn new(config: BTreeMap<String, AuthEntry>) -> CredentialSource {
        CredentialSource {
            config,
            docker_config: nydus::nydusify::registry::docker_config_path(),
        }
    }

    /// The credentials for `registry` (`host[:port]`; `registry-1.docker.io` is looked up as
    /// `docker.io`), if any.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credentials>, String> {
        let name = match registry {
            "registry-1.docker.io" | "index.docker.io" => "docker.io",
            r => r,
        };
        for key in [registry, name] {
            if let Some(e) = self.config.get(key) {
                return e
                    .credentials()
                    .map(Some)
                    .map_err(|m| format!("runtime.auths.{key}: {m}"));
            }
        }
        let Some(path) = &self.docker_config else {
            return Ok(None);
        };
        let doc = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        nydus::nydusify::registry::credentials_from_docker_config(&doc, path, name)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_in_any_order_quoted_or_not() {
        assert_eq!(parse_challenge("Basic realm=\"x\""), Ok(Challenge::Basic));
        assert_eq!(
            parse_challenge(
                "Bearer realm=\"https://auth.example/token\",service=\"registry.example\",\
                 scope=\"repository:a/b:pull\""
            ),
            Ok(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge("bearer scope=\"a,b\" , realm=http://t/x"),
            Ok(Challenge::Bearer {
                realm: "http://t/x".into(),
                service: None,
                scope: Some("a,b".into()),
            })
        );
        assert_eq!(
            parse_challenge("Bearer realm=\"https://t/\\\"q\""),
            Ok(Challenge::Bearer {
                realm: "https://t/\"q".into(),
                service: None,
                scope: None,
            })
        );
    }

    #[test]
    fn bad_challenges_are_named() {
        for (h, want) in [
            ("Digest realm=\"x\"", "unsupported"),
            ("Bearer service=\"x\"", "no realm"),
            ("Bearer realm=\"file:///etc/passwd\"", "not an http"),
            ("Bearer realm=\"https://x", "unterminated"),
            ("Bearer =x", "malformed"),
            ("Bearer realm", "malformed"),
        ] {
            let e = parse_challenge(h).unwrap_err();
            assert!(e.contains(want), "{h}: {e}");
        }
        assert!(parse_challenge(&"x".repeat(MAX_CHALLENGE + 1))
            .unwrap_err()
            .contains("limit"));
    }

    #[test]
    fn config_entries_come_before_docker_config_and_docker_hub_has_one_name() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("config.json");
        std::fs::write(
            &docker,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOnB3"},"r.example":{"username":"d","password":"p"}}}"#,
        )
        .unwrap();
        let src = CredentialSource {
            config: BTreeMap::from([(
                "r.example".to_string(),
                AuthEntry {
                    username: "cfg".into(),
                    password: "pw".into(),
                    auth: String::new(),
                },
            )]),
            docker_config: Some(docker),
        };
        assert_eq!(src.lookup("r.example").unwrap().unwrap().username, "cfg");
        assert_eq!(
            src.lookup("registry-1.docker.io")
                .unwrap()
                .unwrap()
                .username,
            "hub"
        );
        assert_eq!(src.lookup("other.example").unwrap(), None);
        let bad = CredentialSource {
            config: BTreeMap::from([(
                "r.example".to_string(),
                AuthEntry {
                    auth: "!!".into(),
                    ..Default::default()
                },
            )]),
            docker_config: None,
        };
        assert!(bad
            .lookup("r.example")
            .unwrap_err()
            .contains("runtime.auths.r.example"));
    }
}
