//! The REST API (`/api/v1`, console sessions), the Open API (`/oapi/v1`, personal access
//! tokens) and `/healthy`, with Dragonfly's routes and JSON shapes. Errors are
//! `{"message": "..."}` naming what is wrong.

mod clusters;
mod jobs;

use crate::auth;
use crate::db::{parse_timestamp, Db, DbError};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failed sign-ins allowed per client address within [`SIGNIN_WINDOW`].
pub const SIGNIN_FAILURES: usize = 5;
/// The window of [`SIGNIN_FAILURES`].
pub const SIGNIN_WINDOW: Duration = Duration::from_secs(60);

/// What the handlers share.
pub struct AppState {
    pub db: Db,
    pub jwt_key: Vec<u8>,
    pub jwt_timeout: Duration,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub runner: Arc<crate::jobs::Runner>,
    failures: Mutex<HashMap<IpAddr, Vec<Instant>>>,
    /// Mutual TLS on the gRPC port (`server.grpc.tls`).
    pub grpc_tls: Option<Arc<common::tls::Tls>>,
}

impl AppState {
    pub fn new(
        db: Db,
        jwt_key: Vec<u8>,
        jwt_timeout: Duration,
        metrics: Arc<crate::metrics::Metrics>,
        runner: Arc<crate::jobs::Runner>,
        grpc_tls: Option<Arc<common::tls::Tls>>,
    ) -> Arc<AppState> {
        Arc::new(AppState {
            db,
            jwt_key,
            jwt_timeout,
            metrics,
            runner,
            failures: Mutex::new(HashMap::new()),
            grpc_tls,
        })
    }

    /// Recent failed sign-ins from `ip` (older ones forgotten).
    fn recent_failures(&self, ip: IpAddr) -> Vec<Instant> {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let list = f.entry(ip).or_default();
        list.retain(|t| now.duration_since(*t) < SIGNIN_WINDOW);
        let out = list.clone();
        if out.is_empty() {
            f.remove(&ip);
        }
        out
    }

    fn failed(&self, ip: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: a flood of addresses cannot grow the map past this.
        if f.len() >= 100_000 && !f.contains_key(&ip) {
            let now = Instant::now();
            f.retain(|_, l| l.iter().any(|t| now.duration_since(*t) < SIGNIN_WINDOW));
            if f.len() >= 100_000 {
                return;
            }
        }
        f.entry(ip).or_default().push(Instant::now());
    }
}

/// An error answer: status and message.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::UNPROCESSABLE_ENTITY, message.into())
    }
    fn not_found() -> ApiError {
        ApiError(StatusCode::NOT_FOUND, "record not found".into())
    }
    fn unauthorized() -> ApiError {
        ApiError(StatusCode::UNAUTHORIZED, "Unauthorized".into())
    }
}

impl IntoResponse for ApiError {
    /// `{"message": ...}`; bad input (400, 422) also under `errors`, where Dragonfly puts it.
    fn into_response(self) -> Response {
        let body =
            if self.0 == StatusCode::BAD_REQUEST || self.0 == StatusCode::UNPROCESSABLE_ENTITY {
                serde_json::json!({ "message": self.1, "errors": self.1 })
            } else {
                serde_json::json!({ "message": self.1 })
            };
        (self.0, Json(body)).into_response()
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> ApiError {
        tracing::error!(error = %e, "database");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

/// A JSON body, its rejection answered as 422 (as Dragonfly answers every bad body) with the
/// parser's message, which names the field.
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(ApiError::bad(e.body_text())),
        }
    }
}

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/users", get(list_users))
        .route("/users/signup", post(signup))
        .route("/users/{id}", get(get_user))
        .route(
            "/personal-access-tokens",
            post(create_token).get(list_tokens),
        )
        .route(
            "/personal-access-tokens/{id}",
            get(get_token).patch(update_token).delete(delete_token),
        )
        .merge(clusters::routes())
        .merge(jobs::routes())
        .route("/audits", get(list_audits))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ))
        .route("/users/signin", post(signin))
        .route("/users/signout", post(signout))
        // Outside authentication: refused writes and sign-ins are recorded too.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), audit));
    let oapi = Router::new()
        .merge(clusters::open_routes())
        .merge(jobs::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_pat,
        ))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), audit));
    Router::new()
        .merge(crate::console::routes())
        .route("/healthy", get(|| async { "OK" }))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .nest("/oapi/v1", oapi)
        .with_state(state)
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let text = s.metrics.render(&s.db).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Claims of a console session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub id: i64,
    pub name: String,
    pub role: String,
    pub exp: u64,
    pub iat: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SigninRequest {
    name: String,
    password: String,
}

/// `POST /api/v1/users/signin`; the name tried goes to the audit log (never the password).
async fn signin(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    JsonBody(req): JsonBody<SigninRequest>,
) -> Response {
    let name: String = req.name.chars().take(256).collect();
    let mut resp = signin_as(s, peer, req).await.into_response();
    resp.extensions_mut().insert(Actor { kind: "user", name });
    resp
}

async fn signin_as(
    s: Arc<AppState>,
    peer: SocketAddr,
    req: SigninRequest,
) -> Result<Response, ApiError> {
    let ip = peer.ip();
    let recent = s.recent_failures(ip);
    if recent.len() >= SIGNIN_FAILURES {
        let wait = SIGNIN_WINDOW.saturating_sub(recent[0].elapsed()).as_secs() + 1;
        return Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed sign-ins from {ip}; try again in {wait} s"),
        ));
    }
    let Some(user) = auth::sign_in(&s.db, &req.name, &req.password).await? else {
        s.failed(ip);
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "incorrect name or password".into(),
        ));
    };
    let now = chrono::Utc::now();
    let exp = now + chrono::Duration::from_std(s.jwt_timeout).unwrap_or(chrono::Duration::days(14));
    let claims = Claims {
        id: user.id,
        name: user.name.clone(),
        role: user.role.clone(),
        exp: exp.timestamp().max(0) as u64,
        iat: now.timestamp().max(0) as u64,
    };
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&s.jwt_key),
    )
    .map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("signing a session: {e}"),
        )
    })?;
    let cookie = format!(
        "jwt={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        s.jwt_timeout.as_secs()
    );
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(serde_json::json!({
            "code": 200,
            "token": token,
            "expire": crate::db::timestamp(exp),
        })),
    )
        .into_response())
}

/// The session's claims from `Authorization: Bearer <jwt>` or the `jwt` cookie.
fn session(s: &AppState, headers: &HeaderMap) -> Option<Claims> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        });
    let cookie = || {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix("jwt=").map(str::to_string))
    };
    let token = bearer.or_else(cookie)?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.leeway = 0;
    jsonwebtoken::decode::<Claims>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(&s.jwt_key),
        &v,
    )
    .ok()
    .map(|d| d.claims)
}

async fn require_session(
    State(s): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let claims = session(&s, req.headers()).ok_or_else(ApiError::unauthorized)?;
    // The user may have been disabled since the session began.
    match auth::user(&s.db, claims.id).await? {
        Some(u) if u.state == "enable" => {}
        _ => return Err(ApiError::unauthorized()),
    }
    let actor = Actor {
        kind: "user",
        name: claims.name.clone(),
    };
    req.extensions_mut().insert(claims);
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(actor);
    Ok(resp)
}

/// The personal access token of an Open API request: `?access_token=` (first) or
/// `Authorization: Bearer <token>`, as Dragonfly reads it.
fn presented_token(req: &Request) -> Option<String> {
    if let Some(q) = req.uri().query() {
        let found = form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.trim().to_string());
        if let Some(v) = found.filter(|v| !v.is_empty()) {
            return Some(v);
        }
    }
    let h = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let fields: Vec<&str> = h.split_whitespace().collect();
    match fields.as_slice() {
        [scheme, token] if scheme.eq_ignore_ascii_case("bearer") => Some(token.to_string()),
        _ => None,
    }
}

/// The scope an Open API path needs: `job` for `/oapi/v1/jobs...`, `cluster` for
/// `/oapi/v1/clusters...`.
fn scope_of(path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/oapi/v1/")?;
    let resource = rest.split('/').next().unwrap_or("");
    match resource {
        "jobs" => Some("job"),
        "clusters" => Some("cluster"),
        _ => None,
    }
}

/// Open API authentication: a personal access token, active, unexpired, with the path's
/// scope. The request then runs as the token's user.
async fn require_pat(
    State(s): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = presented_token(&req).ok_or_else(ApiError::unauthorized)?;
    let path = format!("/oapi/v1{}", req.uri().path());
    let path = if req.uri().path().starts_with("/oapi/") {
        req.uri().path().to_string()
    } else {
        path
    };
    let scope = scope_of(&path).ok_or_else(|| {
        ApiError(
            StatusCode::FORBIDDEN,
            format!("Failed to extract resource type from path: {path}"),
        )
    })?;
    let pat = match auth::check_token(&s.db, &token, scope).await? {
        Ok(p) => p,
        Err(auth::TokenRefusal::Unknown) => return Err(ApiError::unauthorized()),
        Err(auth::TokenRefusal::Inactive) => {
            return Err(ApiError(StatusCode::FORBIDDEN, "Token is inactive".into()))
        }
        Err(auth::TokenRefusal::Expired) => {
            return Err(ApiError(StatusCode::FORBIDDEN, "Token has expired".into()))
        }
        Err(auth::TokenRefusal::Scope(need)) => {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "Token doesn't have permission to access this resource. Required permission: {need}"
                ),
            ))
        }
    };
    let user = match auth::user(&s.db, pat.user_id).await? {
        Some(u) if u.state == "enable" => u,
        _ => return Err(ApiError::unauthorized()),
    };
    req.extensions_mut().insert(Claims {
        id: user.id,
        name: user.name.clone(),
        role: user.role.clone(),
        exp: 0,
        iat: 0,
    });
    req.extensions_mut().insert(TokenName(pat.name.clone()));
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(Actor {
        kind: "token",
        name: pat.name.clone(),
    });
    Ok(resp)
}

/// Records every write (not GET or HEAD) with its actor and outcome; runs after
/// authentication.
async fn audit(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        return next.run(req).await;
    }
    let path = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map(|u| u.path().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let resp = next.run(req).await;
    // Who it was, as authentication (or sign-in) found out.
    let (kind, name) = match resp.extensions().get::<Actor>() {
        Some(a) => (a.kind, a.name.clone()),
        None => ("anonymous", String::new()),
    };
    if let Err(e) = crate::audit::record(
        &s.db,
        kind,
        &name,
        method.as_str(),
        &path,
        resp.status().as_u16(),
    )
    .await
    {
        tracing::warn!(error = %e, "audit record not written");
    }
    resp
}

/// `GET /api/v1/audits[?page=&per_page=]` (root): the audit log, newest first.
async fn list_audits(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    if c.role != "root" {
        return Err(ApiError(StatusCode::UNAUTHORIZED, "permission deny".into()));
    }
    let Query(q) = q.map_err(|e| ApiError::bad(e.body_text()))?;
    let (page, per_page, offset) = page_of(q.page, q.per_page)?;
    let (list, total) = crate::audit::list(&s.db, per_page, offset).await?;
    let link = link_header("/api/v1/audits", Vec::new(), page, per_page, total);
    Ok(([(header::LINK, link)], Json(list)).into_response())
}

/// Who made a request, put on the response for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `user` (a session, or a sign-in attempt: then the name tried) or `token`.
    pub kind: &'static str,
    pub name: String,
}

/// The name of the personal access token an Open API request runs with.
#[derive(Debug, Clone)]
pub struct TokenName(pub String);

/// `POST /api/v1/users/signout`: the session cookie is cleared.
async fn signout() -> Response {
    (
        [(
            header::SET_COOKIE,
            "jwt=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        )],
        StatusCode::OK,
    )
        .into_response()
}

/// `GET /api/v1/users`: every user for root, oneself for others.
async fn list_users(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
) -> Result<Json<Vec<auth::User>>, ApiError> {
    let all = auth::list_users(&s.db).await?;
    Ok(Json(if c.role == "root" {
        all
    } else {
        all.into_iter().filter(|u| u.id == c.id).collect()
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignupRequest {
    name: String,
    password: String,
    #[serde(default)]
    email: String,
}

/// `POST /api/v1/users/signup`: root creates a guest user (Dragonfly lets anyone sign up; here
/// only root adds users).
async fn signup(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    JsonBody(req): JsonBody<SignupRequest>,
) -> Result<Json<auth::User>, ApiError> {
    require_root(&c)?;
    check_name("name", &req.name)?;
    if req.password.chars().count() < 8 || req.password.len() > 1024 {
        return Err(ApiError::bad("password: 8 to 1024 characters"));
    }
    if req.email.len() > 256 {
        return Err(ApiError::bad("email: at most 256 characters"));
    }
    auth::create_user(&s.db, req.name.trim(), &req.password, &req.email, "guest")
        .await
        .map(Json)
        .map_err(|e| conflict(e, "user", req.name.trim()))
}

async fn get_user(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    Path(id): Path<i64>,
) -> Result<Json<auth::User>, ApiError> {
    if c.role != "root" && c.id != id {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "only root may see other users".into(),
        ));
    }
    auth::user(&s.db, id)
        .await?
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTokenRequest {
    name: String,
    #[serde(default)]
    bio: String,
    #[serde(default)]
    scopes: Vec<String>,
    expired_at: String,
    user_id: i64,
}

fn check_scopes(scopes: &[String]) -> Result<(), ApiError> {
    match scopes.iter().find(|s| !auth::SCOPES.contains(&s.as_str())) {
        Some(s) => Err(ApiError::bad(format!(
            "scopes: unknown scope {s:?} (known: {})",
            auth::SCOPES.join(", ")
        ))),
        None => Ok(()),
    }
}

fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(ApiError::bad(format!(
            "{field}: must be 1 to 256 characters without control characters"
        )));
    }
    Ok(())
}

async fn create_token(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    JsonBody(req): JsonBody<CreateTokenRequest>,
) -> Result<Json<auth::PersonalAccessToken>, ApiError> {
    check_name("name", &req.name)?;
    if req.bio.len() > 1024 {
        return Err(ApiError::bad("bio: at most 1024 characters"));
    }
    check_scopes(&req.scopes)?;
    let scopes = with_every_scope_if_empty(&req.scopes);
    let expires = future_time(&req.expired_at)?;
    if c.role != "root" && req.user_id != c.id {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "only root may create tokens for other users".into(),
        ));
    }
    if auth::user(&s.db, req.user_id).await?.is_none() {
        return Err(ApiError::bad(format!("user_id: no user {}", req.user_id)));
    }
    match auth::create_token(
        &s.db,
        req.user_id,
        req.name.trim(),
        &req.bio,
        &scopes,
        &expires,
    )
    .await
    {
        Ok(pat) => Ok(Json(pat)),
        Err(e) if e.is_unique_violation() => Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "name: a personal access token named {:?} exists",
                req.name.trim()
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    user_id: Option<i64>,
    page: Option<i64>,
    per_page: Option<i64>,
}

/// Dragonfly's pagination: `page` (from 1, default 1) and `per_page` (default 10); the
/// (limit, offset).
fn page_of(page: Option<i64>, per_page: Option<i64>) -> Result<(i64, i64, i64), ApiError> {
    let page = page.unwrap_or(1);
    let per_page = per_page.unwrap_or(10);
    if page < 1 {
        return Err(ApiError::bad("page: must be at least 1"));
    }
    if !(1..=10_000_000).contains(&per_page) {
        return Err(ApiError::bad("per_page: must be 1 to 10000000"));
    }
    let offset = (page - 1)
        .checked_mul(per_page)
        .ok_or_else(|| ApiError::bad("page: too large"))?;
    Ok((page, per_page, offset))
}

/// Dragonfly's `Link` header: relative URLs of the prev, next, first and last pages, the
/// query's other keys kept (sorted).
fn link_header(
    path: &str,
    mut query: Vec<(String, String)>,
    page: i64,
    per_page: i64,
    total: i64,
) -> String {
    query.retain(|(k, _)| k != "page" && k != "per_page");
    let last = (total + per_page - 1) / per_page;
    let url = |p: i64| {
        let mut q = query.clone();
        q.push(("page".into(), p.to_string()));
        q.push(("per_page".into(), per_page.to_string()));
        q.sort();
        let q: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("<{path}?{}>", q.join("&"))
    };
    let next = if page >= last { page } else { page + 1 };
    format!(
        "{};rel=prev,{};rel=next,{};rel=first,{};rel=last",
        url((page - 1).max(1)),
        url(next),
        url(1),
        url(last)
    )
}

async fn list_tokens(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad(e.body_text()))?;
    let (page, per_page, offset) = page_of(q.page, q.per_page)?;
    // Root sees every token (or one user's); others their own.
    let user = if c.role == "root" {
        q.user_id
    } else {
        Some(c.id)
    };
    let (list, total) = auth::list_tokens_page(&s.db, user, per_page, offset).await?;
    let mut kept = Vec::new();
    if let Some(u) = q.user_id {
        kept.push(("user_id".to_string(), u.to_string()));
    }
    let link = link_header(
        "/api/v1/personal-access-tokens",
        kept,
        page,
        per_page,
        total,
    );
    Ok(([(header::LINK, link)], Json(list)).into_response())
}

/// The token `id` if the session may see it.
async fn visible_token(
    s: &AppState,
    c: &Claims,
    id: i64,
) -> Result<auth::PersonalAccessToken, ApiError> {
    match auth::token(&s.db, id).await? {
        Some(t) if c.role == "root" || t.user_id == c.id => Ok(t),
        _ => Err(ApiError::not_found()),
    }
}

async fn get_token(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    Path(id): Path<i64>,
) -> Result<Json<auth::PersonalAccessToken>, ApiError> {
    visible_token(&s, &c, id).await.map(Json)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateTokenRequest {
    bio: Option<String>,
    scopes: Option<Vec<String>>,
    state: Option<String>,
    expired_at: Option<String>,
}

async fn update_token(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    Path(id): Path<i64>,
    JsonBody(req): JsonBody<UpdateTokenRequest>,
) -> Result<Json<auth::PersonalAccessToken>, ApiError> {
    if let Some(state) = &req.state {
        if state != "active" && state != "inactive" {
            return Err(ApiError::bad(format!(
                "state: {state:?} is neither active nor inactive"
            )));
        }
    }
    if req.bio.as_ref().is_some_and(|b| b.len() > 1024) {
        return Err(ApiError::bad("bio: at most 1024 characters"));
    }
    let scopes = match &req.scopes {
        Some(list) => {
            check_scopes(list)?;
            Some(with_every_scope_if_empty(list))
        }
        None => None,
    };
    let expires = req.expired_at.as_deref().map(future_time).transpose()?;
    visible_token(&s, &c, id).await?;
    auth::update_token(
        &s.db,
        id,
        req.bio.as_deref(),
        scopes.as_deref(),
        req.state.as_deref(),
        expires.as_deref(),
    )
    .await?;
    visible_token(&s, &c, id).await.map(Json)
}

/// No scopes means every scope, written out (as Dragonfly stores it).
fn with_every_scope_if_empty(scopes: &[String]) -> Vec<String> {
    if scopes.is_empty() {
        auth::SCOPES.iter().map(|s| s.to_string()).collect()
    } else {
        scopes.to_vec()
    }
}

/// An `expired_at` value: an RFC 3339 time in the future, as stored.
fn future_time(text: &str) -> Result<String, ApiError> {
    let t = parse_timestamp(text).ok_or_else(|| {
        ApiError::bad(format!(
            "expired_at: {text:?} is not an RFC 3339 time (like 2027-01-01T00:00:00Z)"
        ))
    })?;
    if t <= chrono::Utc::now() {
        return Err(ApiError::bad("expired_at: must be in the future"));
    }
    Ok(crate::db::timestamp(t))
}

async fn delete_token(
    State(s): State<Arc<AppState>>,
    axum::Extension(c): axum::Extension<Claims>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    visible_token(&s, &c, id).await?;
    auth::delete_token(&s.db, id).await?;
    Ok(StatusCode::OK)
}

/// Writes need the root role (Dragonfly answers others 401 `permission deny`).
fn require_root(c: &Claims) -> Result<(), ApiError> {
    if c.role == "root" {
        Ok(())
    } else {
        Err(ApiError(StatusCode::UNAUTHORIZED, "permission deny".into()))
    }
}

/// The problems as one 422, if any.
fn reject(problems: Vec<String>) -> Result<(), ApiError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad(problems.join("; ")))
    }
}

/// A unique-name refusal as 409 naming the name; other errors as they are.
fn conflict(e: DbError, what: &str, name: &str) -> ApiError {
    if e.is_unique_violation() {
        ApiError(
            StatusCode::CONFLICT,
            format!("name: a {what} named {name:?} exists"),
        )
    } else {
        e.into()
    }
}
