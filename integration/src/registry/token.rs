//! An in-process registry token server (docker "token" auth, as docker-registry 2.8 verifies it).
//!
//! The registry is configured with `auth.token` (realm = this server, `rootcertbundle` = a
//! self-signed EC P-256 certificate made with the `openssl` CLI). Tokens are ES256 JWTs whose
//! header carries that certificate in `x5c`; distribution checks the chain against the bundle,
//! then issuer, audience (= service), exp/nbf (60 s leeway) and the signature (r||s, 64 bytes).

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey as _;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::{Error, Result};

/// Who may get which token.
#[derive(Debug, Clone)]
pub struct TokenAuthOptions {
    /// The only user.
    pub username: String,
    pub password: String,
    /// Requests without credentials get `pull` (otherwise a token with no access, as Docker Hub
    /// does for private repositories, so the registry then answers 401).
    pub anonymous_pull: bool,
    /// The registry's `auth.token.service` (the token's `aud`).
    pub service: String,
    /// The registry's `auth.token.issuer` (the token's `iss`).
    pub issuer: String,
    /// Token lifetime (`exp - iat`, and `expires_in` in the response).
    pub expires_in: Duration,
}

impl Default for TokenAuthOptions {
    fn default() -> Self {
        TokenAuthOptions {
            username: "dfit-user".into(),
            password: "dfit-password".into(),
            anonymous_pull: false,
            service: "dfit-registry".into(),
            issuer: "dfit-token-issuer".into(),
            expires_in: Duration::from_secs(300),
        }
    }
}

/// One request the token server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// `GET` (docker/skopeo style, Basic credentials) or `POST` (OAuth2 password grant, which
    /// containerd tries first when it has credentials).
    pub method: String,
    /// Requested scopes, e.g. `repository:test:pull`.
    pub scopes: Vec<String>,
    /// The user that presented credentials (right or wrong), if any.
    pub user: Option<String>,
    /// True if the credentials were right.
    pub authenticated: bool,
    pub status: u16,
}

struct Shared {
    opts: TokenAuthOptions,
    key: SigningKey,
    cert_b64: String,
    log: Mutex<Vec<TokenRequest>>,
    next_jti: AtomicU64,
}

/// The running token server.
pub struct TokenServer {
    addr: SocketAddr,
    cert_pem: PathBuf,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServer")
            .field("addr", &self.addr)
            .field("cert_pem", &self.cert_pem)
            .finish()
    }
}

async fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|source| Error::Spawn {
            program: program.into(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

impl TokenServer {
    /// Makes a key and a self-signed certificate in `dir` (with `openssl`), then serves
    /// `/token` on 127.0.0.1 (ephemeral port).
    pub(crate) async fn start(dir: &Path, opts: TokenAuthOptions) -> Result<TokenServer> {
        let key_pem = dir.join("token-key.pem");
        let cert_pem = dir.join("token-cert.pem");
        let cert_der = dir.join("token-cert.der");
        let s = |p: &Path| p.to_string_lossy().into_owned();
        // genpkey writes PKCS#8 ("BEGIN PRIVATE KEY"), which the p256 crate reads.
        run(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &s(&key_pem),
            ],
        )
        .await?;
        let subject = format!("/CN={}", opts.issuer);
        run(
            "openssl",
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &s(&key_pem),
                "-out",
                &s(&cert_pem),
                "-days",
                "30",
                "-subj",
                &subject,
            ],
        )
        .await?;
        run(
            "openssl",
            &[
                "x509",
                "-in",
                &s(&cert_pem),
                "-outform",
                "DER",
                "-out",
                &s(&cert_der),
            ],
        )
        .await?;
        let pem = std::fs::read_to_string(&key_pem).map_err(|e| Error::io("read", &key_pem, e))?;
        let key = pkcs8_pem_to_der(&pem)
            .and_then(|der| SigningKey::from_pkcs8_der(&der).map_err(|e| e.to_string()))
            .map_err(|e| Error::malformed(format!("PKCS#8 key {}", key_pem.display()), e))?;
        let cert = std::fs::read(&cert_der).map_err(|e| Error::io("read", &cert_der, e))?;

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| Error::io("bind", "127.0.0.1:0", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("local_addr", "127.0.0.1:0", e))?;
        let shared = Arc::new(Shared {
            opts,
            key,
            cert_b64: STANDARD.encode(cert),
            log: Mutex::new(Vec::new()),
            next_jti: AtomicU64::new(1),
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        Ok(TokenServer {
            addr,
            cert_pem,
            shared,
            server,
        })
    }

    /// `http://127.0.0.1:<port>/token`, the registry's `auth.token.realm`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The certificate the registry trusts (`auth.token.rootcertbundle`).
    pub fn cert_pem(&self) -> &Path {
        &self.cert_pem
    }

    /// The options it runs with (user, password, service, issuer).
    pub fn options(&self) -> &TokenAuthOptions {
        &self.shared.opts
    }

    /// Every token request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A token for `subject` granting `access` = (repository, actions), e.g.
    /// `[("test", &["pull"])]`, signed like the served ones.
    pub fn issue_token(&self, subject: &str, access: &[(&str, &[&str])]) -> String {
        let access: Vec<serde_json::Value> = access
            .iter()
            .map(|(name, actions)| json!({"type": "repository", "name": name, "actions": actions}))
            .collect();
        self.shared.sign(subject, access)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Shared {
    fn sign(&self, subject: &str, access: Vec<serde_json::Value>) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [self.cert_b64]});
        let claims = json!({
            "iss": self.opts.issuer,
            "sub": subject,
            "aud": self.opts.service,
            "exp": now + self.opts.expires_in.as_secs(),
            "nbf": now,
            "iat": now,
            "jti": format!("dfit-{}-{}", std::process::id(), self.next_jti.fetch_add(1, Ordering::Relaxed)),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig: Signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }
}

/// The DER inside a `-----BEGIN PRIVATE KEY-----` PEM.
fn pkcs8_pem_to_der(pem: &str) -> std::result::Result<Vec<u8>, String> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return Err("no BEGIN PRIVATE KEY block".into());
    }
    STANDARD.decode(body).map_err(|e| e.to_string())
}

/// `type:name:actions` -> the access entry granted for it (`None` if nothing is granted).
fn grant(scope: &str, authenticated: bool, anonymous_pull: bool) -> Option<serde_json::Value> {
    let (typ, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let granted: Vec<&str> = actions
        .split(',')
        .filter(|a| match *a {
            "pull" => authenticated || anonymous_pull,
            "push" | "delete" | "*" => authenticated,
            _ => false,
        })
        .collect();
    if granted.is_empty() {
        return None;
    }
    // `repository(plugin)`-style types carry a class in parentheses.
    let (typ, class) = match typ.split_once('(') {
        Some((t, c)) => (t, Some(c.trim_end_matches(')'))),
        None => (typ, None),
    };
    let mut v = json!({"type": typ, "name": name, "actions": granted});
    if let Some(c) = class {
        v["class"] = json!(c);
    }
    Some(v)
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    crate::http_server::serve(listener, shared, handle).await
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// User and password from an `Authorization: Basic` header.
fn basic_credentials(value: &str) -> Option<(String, String)> {
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if parts.uri.path() != "/token" {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "not found"}),
        ));
    }
    let mut scopes = Vec::new();
    let creds = match parts.method {
        Method::GET => {
            let query = parts.uri.query().unwrap_or_default();
            for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                if k == "scope" {
                    scopes.extend(v.split(' ').filter(|s| !s.is_empty()).map(str::to_string));
                }
            }
            parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(basic_credentials)
        }
        Method::POST => {
            let mut grant_type = String::new();
            let (mut user, mut password) = (None, None);
            for (k, v) in url::form_urlencoded::parse(&body) {
                match &*k {
                    "scope" => {
                        scopes.extend(v.split(' ').filter(|s| !s.is_empty()).map(str::to_string))
                    }
                    "grant_type" => grant_type = v.into_owned(),
                    "username" => user = Some(v.into_owned()),
                    "password" => password = Some(v.into_owned()),
                    _ => {}
                }
            }
            if grant_type != "password" {
                let resp = json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "unsupported_grant_type"}),
                );
                shared.record("POST", scopes, user, false, resp.status());
                return Ok(resp);
            }
            user.zip(password)
        }
        _ => {
            return Ok(json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method not allowed"}),
            ))
        }
    };
    let method = parts.method.to_string();
    let user = creds.as_ref().map(|(u, _)| u.clone());
    let authenticated = creds
        .as_ref()
        .is_some_and(|(u, p)| *u == shared.opts.username && *p == shared.opts.password);
    if creds.is_some() && !authenticated {
        let resp = json_response(
            StatusCode::UNAUTHORIZED,
            json!({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}),
        );
        shared.record(&method, scopes, user, false, resp.status());
        return Ok(resp);
    }
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| grant(s, authenticated, shared.opts.anonymous_pull))
        .collect();
    let token = shared.sign(user.as_deref().unwrap_or(""), access);
    let resp = json_response(
        StatusCode::OK,
        json!({
            "token": token,
            "access_token": token,
            "expires_in": shared.opts.expires_in.as_secs(),
        }),
    );
    shared.record(&method, scopes, user, authenticated, resp.status());
    Ok(resp)
}

impl Shared {
    fn record(
        &self,
        method: &str,
        scopes: Vec<String>,
        user: Option<String>,
        authenticated: bool,
        status: StatusCode,
    ) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(TokenRequest {
                method: method.to_string(),
                scopes,
                user,
                authenticated,
                status: status.as_u16(),
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier as _;
    use p256::ecdsa::VerifyingKey;

    #[test]
    fn grants_follow_credentials() {
        let pull_push = "repository:a/b:pull,push";
        assert_eq!(
            grant(pull_push, true, false),
            Some(json!({"type": "repository", "name": "a/b", "actions": ["pull", "push"]}))
        );
        assert_eq!(
            grant(pull_push, false, true),
            Some(json!({"type": "repository", "name": "a/b", "actions": ["pull"]}))
        );
        assert_eq!(grant(pull_push, false, false), None);
        assert_eq!(
            grant("repository(plugin):p:pull", true, false),
            Some(
                json!({"type": "repository", "class": "plugin", "name": "p", "actions": ["pull"]})
            )
        );
        assert_eq!(grant("garbage", true, false), None);
        assert_eq!(
            basic_credentials("Basic dXNlcjpwYTpzcw=="),
            Some(("user".into(), "pa:ss".into()))
        );
    }

    #[tokio::test]
    async fn tokens_are_es256_jwts_with_x5c() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ts = TokenServer::start(dir.path(), TokenAuthOptions::default())
            .await
            .expect("start token server");
        let jwt = ts.issue_token("dfit-user", &[("test", &["pull"])]);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("b64")).expect("json");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["typ"], "JWT");
        let cert_der = STANDARD
            .decode(header["x5c"][0].as_str().expect("x5c string"))
            .expect("x5c is std base64");
        assert_eq!(
            cert_der,
            std::fs::read(dir.path().join("token-cert.der")).expect("cert")
        );
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(claims["aud"], "dfit-registry");
        assert_eq!(claims["iss"], "dfit-token-issuer");
        assert_eq!(claims["access"][0]["name"], "test");
        let sig_bytes = URL_SAFE_NO_PAD.decode(parts[2]).expect("b64");
        assert_eq!(sig_bytes.len(), 64, "r||s");
        let sig = Signature::from_slice(&sig_bytes).expect("signature");
        let vk = VerifyingKey::from(&ts.shared.key);
        vk.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .expect("signature verifies");

        // Over HTTP: right credentials get push, wrong ones 401, the POST grant works too.
        let http = crate::http_client();
        let url = format!(
            "{}?service=dfit-registry&scope=repository:test:pull,push",
            ts.realm()
        );
        let ok = http
            .get(&url)
            .basic_auth("dfit-user", Some("dfit-password"))
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        let ok: serde_json::Value = serde_json::from_slice(&ok).expect("json");
        assert!(ok["token"].is_string() && ok["access_token"].is_string());
        let bad = http
            .get(&url)
            .basic_auth("dfit-user", Some("wrong"))
            .send()
            .await
            .expect("get");
        assert_eq!(bad.status(), 401);
        let post = http
            .post(ts.realm())
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("grant_type=password&username=dfit-user&password=dfit-password&service=dfit-registry&scope=repository%3Atest%3Apull&client_id=containerd-client")
            .send()
            .await
            .expect("post");
        assert_eq!(post.status(), 200);
        let reqs = ts.requests();
        assert_eq!(reqs.len(), 3);
        assert!(reqs[0].authenticated && !reqs[1].authenticated && reqs[2].authenticated);
        assert_eq!(reqs[0].scopes, ["repository:test:pull,push"]);
        assert_eq!(reqs[2].method, "POST");
    }
}
