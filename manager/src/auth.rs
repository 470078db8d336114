//! Users, passwords, personal access tokens and console sessions.
//!
//! - Passwords are hashed with Argon2id (PHC strings in `users.password_hash`).
//! - The root user's first password comes from `DRAGONFLY_INITIAL_ROOT_PASSWORD` (Dragonfly's
//!   variable) or is generated and written once to `<workHome>/initial-root-password` (0600).
//! - A personal access token is 32 random bytes, shown once; only its SHA-256 is stored, and the
//!   stored hash is compared in constant time.
//! - Console sessions are HS256 JWTs signed with a key generated on first start and kept in
//!   `<workHome>/jwt.key` (0600).

use crate::db::{now, parse_timestamp, Db, DbError};
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use sqlx::Row;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

/// The environment variable that sets the root user's first password (Dragonfly's).
pub const INITIAL_ROOT_PASSWORD_ENV: &str = "DRAGONFLY_INITIAL_ROOT_PASSWORD";

/// Token scopes: what a personal access token may call.
pub const SCOPES: &[&str] = &["job", "cluster"];

/// Hashes a password (Argon2id, random salt).
pub fn hash_password(password: &str) -> Result<String, DbError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| DbError::Other(format!("hashing a password: {e}")))
}

/// Whether `password` matches the stored hash (a malformed hash matches nothing).
pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A random secret: `bytes` random bytes, base64url without padding.
pub fn random_secret(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Writes `data` to a new file `path` with mode 0600 (never wider, not even for a moment);
/// `AlreadyExists` if it is there.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The console's JWT signing key: read from `<work_home>/jwt.key`, or generated there.
pub fn jwt_key(work_home: &Path) -> std::io::Result<Vec<u8>> {
    let path = work_home.join("jwt.key");
    match std::fs::read(&path) {
        Ok(k) if k.len() >= 32 => return Ok(k),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: shorter than 32 bytes; remove it to have a new key made",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            ))
        }
    }
    let mut key = vec![0u8; 64];
    rand::rng().fill_bytes(&mut key);
    match write_private(&path, &key) {
        Ok(()) => Ok(key),
        // Another manager on the same work home made it first.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(&path),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        )),
    }
}

/// What [`ensure_root`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum RootSetup {
    /// Users exist already: nothing changed.
    Existing,
    /// Root created with the password from the environment.
    FromEnv,
    /// Root created with a generated password, written to this file (0600).
    Generated(PathBuf),
}

/// Creates the root user on first start (no user yet).
pub async fn ensure_root(db: &Db, work_home: &Path) -> Result<RootSetup, DbError> {
    let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users")
        .fetch_one(&db.pool)
        .await
        .map_err(DbError::sqlx("count users"))?
        .try_get("n")
        .map_err(DbError::sqlx("count users"))?;
    if count > 0 {
        return Ok(RootSetup::Existing);
    }
    let (password, setup) = match std::env::var(INITIAL_ROOT_PASSWORD_ENV) {
        Ok(p) if !p.is_empty() => (p, RootSetup::FromEnv),
        _ => {
            let p = random_secret(18);
            let path = work_home.join("initial-root-password");
            write_private(&path, format!("{p}\n").as_bytes()).map_err(|e| {
                DbError::Other(format!(
                    "{}: {e} (remove it if it is left from an earlier database)",
                    path.display()
                ))
            })?;
            (p, RootSetup::Generated(path))
        }
    };
    let t = now();
    sqlx::query(
        "INSERT INTO users (name, password_hash, role, state, created_at, updated_at) \
         VALUES ($1, $2, 'root', 'enable', $3, $3)",
    )
    .bind("root")
    .bind(hash_password(&password)?)
    .bind(&t)
    .execute(&db.pool)
    .await
    .map_err(DbError::sqlx("create the root user"))?;
    Ok(setup)
}

/// A user as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub bio: String,
    pub role: String,
    pub state: String,
    pub created_at: String,
    pub updated_at: String,
}

fn user_from_row(r: &sqlx::any::AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        email: r.try_get("email")?,
        bio: r.try_get("bio")?,
        role: r.try_get("role")?,
        state: r.try_get("state")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

const USER_COLUMNS: &str = "id, name, email, bio, role, state, created_at, updated_at";

/// The user `name` if `password` is theirs and they are enabled.
pub async fn sign_in(db: &Db, name: &str, password: &str) -> Result<Option<User>, DbError> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLUMNS}, password_hash FROM users WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(&db.pool)
    .await
    .map_err(DbError::sqlx("find a user"))?;
    let Some(row) = row else {
        // The same work as a real check, so timing does not tell which names exist.
        let _ = verify_password(password, dummy_hash());
        return Ok(None);
    };
    let stored: String = row
        .try_get("password_hash")
        .map_err(DbError::sqlx("read a user"))?;
    let user = user_from_row(&row).map_err(DbError::sqlx("read a user"))?;
    Ok((verify_password(password, &stored) && user.state == "enable").then_some(user))
}

/// An Argon2id hash of a random password nobody has, for checks of unknown names.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&random_secret(18)).unwrap_or_default())
}

/// The user with this id.
pub async fn user(db: &Db, id: i64) -> Result<Option<User>, DbError> {
    sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await
        .map_err(DbError::sqlx("find a user"))?
        .map(|r| user_from_row(&r))
        .transpose()
        .map_err(DbError::sqlx("read a user"))
}

/// Every user, in id order.
pub async fn list_users(db: &Db) -> Result<Vec<User>, DbError> {
    sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"))
        .fetch_all(&db.pool)
        .await
        .map_err(DbError::sqlx("list users"))?
        .iter()
        .map(user_from_row)
        .collect::<Result<_, _>>()
        .map_err(DbError::sqlx("read users"))
}

/// Creates a user with `role` (`root` or `guest`); its record.
pub async fn create_user(
    db: &Db,
    name: &str,
    password: &str,
    email: &str,
    role: &str,
) -> Result<User, DbError> {
    let t = now();
    let id: i64 = sqlx::query(
        "INSERT INTO users (name, email, password_hash, role, state, created_at, updated_at)          VALUES ($1, $2, $3, $4, 'enable', $5, $5) RETURNING id",
    )
    .bind(name)
    .bind(email)
    .bind(hash_password(password)?)
    .bind(role)
    .bind(&t)
    .fetch_one(&db.pool)
    .await
    .and_then(|r| r.try_get("id"))
    .map_err(DbError::sqlx("create a user"))?;
    user(db, id)
        .await?
        .ok_or_else(|| DbError::Other("the new user vanished".into()))
}

/// A personal access token as the API shows it (`token` only in the answer that created it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PersonalAccessToken {
    pub id: i64,
    pub name: String,
    pub bio: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub scopes: Vec<String>,
    pub state: String,
    pub expired_at: String,
    pub user_id: i64,
    pub created_at: String,
    pub updated_at: String,
}

const PAT_COLUMNS: &str =
    "id, name, bio, scopes, state, expired_at, user_id, created_at, updated_at";

fn pat_from_row(r: &sqlx::any::AnyRow) -> Result<PersonalAccessToken, sqlx::Error> {
    let scopes: String = r.try_get("scopes")?;
    Ok(PersonalAccessToken {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        bio: r.try_get("bio")?,
        token: None,
        scopes: serde_json::from_str(&scopes).unwrap_or_default(),
        state: r.try_get("state")?,
        expired_at: r.try_get("expired_at")?,
        user_id: r.try_get("user_id")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// The environment variable that gives root a personal access token (Dragonfly's), for
/// setups that configure Harbor without signing in.
pub const PAT_ENV: &str = "DRAGONFLY_PAT";

/// Keeps the token in `DRAGONFLY_PAT` (if set) as root's token `default`, with every scope,
/// valid 10 years. Unlike upstream, a restart with the variable still set changes nothing, and
/// a changed value replaces the earlier token. Whether it made or replaced one.
pub async fn ensure_env_token(db: &Db) -> Result<bool, DbError> {
    match std::env::var(PAT_ENV) {
        Ok(token) => ensure_default_token(db, &token).await,
        Err(_) => Ok(false),
    }
}

/// [`ensure_env_token`] with the token given.
pub async fn ensure_default_token(db: &Db, token: &str) -> Result<bool, DbError> {
    if token.len() < 16 {
        return Err(DbError::Other(format!(
            "{PAT_ENV}: a personal access token needs at least 16 characters"
        )));
    }
    let hash = token_hash(token);
    let existing =
        sqlx::query("SELECT token_hash FROM personal_access_tokens WHERE name = 'default'")
            .fetch_optional(&db.pool)
            .await
            .map_err(DbError::sqlx("find the default token"))?;
    if let Some(row) = existing {
        let stored: String = row
            .try_get("token_hash")
            .map_err(DbError::sqlx("read a token"))?;
        if bool::from(stored.as_bytes().ct_eq(hash.as_bytes())) {
            return Ok(false);
        }
        sqlx::query("DELETE FROM personal_access_tokens WHERE name = 'default'")
            .execute(&db.pool)
            .await
            .map_err(DbError::sqlx("replace the default token"))?;
    }
    let t = now();
    let expires = crate::db::timestamp(chrono::Utc::now() + chrono::Duration::days(3650));
    sqlx::query(
        "INSERT INTO personal_access_tokens (name, bio, token_hash, scopes, state, expired_at, user_id, created_at, updated_at) \
         SELECT 'default', $1, $2, $3, 'active', $4, id, $5, $5 FROM users WHERE name = 'root'",
    )
    .bind(format!("from {PAT_ENV}"))
    .bind(hash)
    .bind(serde_json::to_string(SCOPES).unwrap_or_else(|_| "[]".into()))
    .bind(expires)
    .bind(&t)
    .execute(&db.pool)
    .await
    .map_err(DbError::sqlx("create the default token"))?;
    Ok(true)
}

/// Creates a token for `user_id`; the answer carries the token itself (shown this once).
pub async fn create_token(
    db: &Db,
    user_id: i64,
    name: &str,
    bio: &str,
    scopes: &[String],
    expired_at: &str,
) -> Result<PersonalAccessToken, DbError> {
    let token = random_secret(32);
    let t = now();
    let row = sqlx::query(&format!(
        "INSERT INTO personal_access_tokens (name, bio, token_hash, scopes, state, expired_at, user_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 'active', $5, $6, $7, $7) RETURNING {PAT_COLUMNS}"
    ))
    .bind(name)
    .bind(bio)
    .bind(token_hash(&token))
    .bind(serde_json::to_string(scopes).unwrap_or_else(|_| "[]".into()))
    .bind(expired_at)
    .bind(user_id)
    .bind(&t)
    .fetch_one(&db.pool)
    .await
    .map_err(DbError::sqlx("create a personal access token"))?;
    let mut pat = pat_from_row(&row).map_err(DbError::sqlx("read a personal access token"))?;
    pat.token = Some(token);
    Ok(pat)
}

/// Every token (of `user_id` when given).
pub async fn list_tokens(
    db: &Db,
    user_id: Option<i64>,
) -> Result<Vec<PersonalAccessToken>, DbError> {
    Ok(list_tokens_page(db, user_id, i64::MAX, 0).await?.0)
}

/// Up to `limit` tokens (of `user_id` when given) after the first `offset`, in id order, and
/// how many there are in all.
pub async fn list_tokens_page(
    db: &Db,
    user_id: Option<i64>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<PersonalAccessToken>, i64), DbError> {
    let filter = if user_id.is_some() {
        "WHERE user_id = $1"
    } else {
        "WHERE $1 = $1"
    };
    let uid = user_id.unwrap_or(0);
    let total: i64 = sqlx::query(&format!(
        "SELECT COUNT(*) AS n FROM personal_access_tokens {filter}"
    ))
    .bind(uid)
    .fetch_one(&db.pool)
    .await
    .map_err(DbError::sqlx("count personal access tokens"))?
    .try_get("n")
    .map_err(DbError::sqlx("count personal access tokens"))?;
    let rows = sqlx::query(&format!(
        "SELECT {PAT_COLUMNS} FROM personal_access_tokens {filter} ORDER BY id LIMIT $2 OFFSET $3"
    ))
    .bind(uid)
    .bind(limit)
    .bind(offset)
    .fetch_all(&db.pool)
    .await
    .map_err(DbError::sqlx("list personal access tokens"))?;
    let list = rows
        .iter()
        .map(pat_from_row)
        .collect::<Result<_, _>>()
        .map_err(DbError::sqlx("read a personal access token"))?;
    Ok((list, total))
}

/// The token with this id.
pub async fn token(db: &Db, id: i64) -> Result<Option<PersonalAccessToken>, DbError> {
    sqlx::query(&format!(
        "SELECT {PAT_COLUMNS} FROM personal_access_tokens WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await
    .map_err(DbError::sqlx("find a personal access token"))?
    .map(|r| pat_from_row(&r))
    .transpose()
    .map_err(DbError::sqlx("read a personal access token"))
}

/// Changes what is given of a token: `bio`, `scopes`, `state` (`active`, or `inactive`:
/// revoked), `expired_at`; whether it exists.
pub async fn update_token(
    db: &Db,
    id: i64,
    bio: Option<&str>,
    scopes: Option<&[String]>,
    state: Option<&str>,
    expired_at: Option<&str>,
) -> Result<bool, DbError> {
    let scopes = scopes.map(|s| serde_json::to_string(s).unwrap_or_else(|_| "[]".into()));
    let r = sqlx::query(
        "UPDATE personal_access_tokens SET bio = COALESCE($1, bio), scopes = COALESCE($2, scopes), \
         state = COALESCE($3, state), expired_at = COALESCE($4, expired_at), updated_at = $5 WHERE id = $6",
    )
    .bind(bio.map(str::to_string))
    .bind(scopes)
    .bind(state.map(str::to_string))
    .bind(expired_at.map(str::to_string))
    .bind(now())
    .bind(id)
    .execute(&db.pool)
    .await
    .map_err(DbError::sqlx("update a personal access token"))?;
    Ok(r.rows_affected() > 0)
}

/// Deletes a token; whether it existed.
pub async fn delete_token(db: &Db, id: i64) -> Result<bool, DbError> {
    let r = sqlx::query("DELETE FROM personal_access_tokens WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .map_err(DbError::sqlx("delete a personal access token"))?;
    Ok(r.rows_affected() > 0)
}

/// Why a presented token is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No such token: 401.
    Unknown,
    /// Revoked: 403.
    Inactive,
    /// Past its expiry: 403.
    Expired,
    /// Valid, but not for this scope: 403.
    Scope(String),
}

/// Checks a presented token for `scope`: the token's record when it may be used.
pub async fn check_token(
    db: &Db,
    presented: &str,
    scope: &str,
) -> Result<Result<PersonalAccessToken, TokenRefusal>, DbError> {
    let want = token_hash(presented);
    let row = sqlx::query(&format!(
        "SELECT {PAT_COLUMNS}, token_hash FROM personal_access_tokens WHERE token_hash = $1"
    ))
    .bind(&want)
    .fetch_optional(&db.pool)
    .await
    .map_err(DbError::sqlx("find a personal access token"))?;
    let Some(row) = row else {
        return Ok(Err(TokenRefusal::Unknown));
    };
    let stored: String = row
        .try_get("token_hash")
        .map_err(DbError::sqlx("read a token"))?;
    if !bool::from(stored.as_bytes().ct_eq(want.as_bytes())) {
        return Ok(Err(TokenRefusal::Unknown));
    }
    let pat = pat_from_row(&row).map_err(DbError::sqlx("read a personal access token"))?;
    if pat.state != "active" {
        return Ok(Err(TokenRefusal::Inactive));
    }
    match parse_timestamp(&pat.expired_at) {
        Some(t) if t > chrono::Utc::now() => {}
        _ => return Ok(Err(TokenRefusal::Expired)),
    }
    // An empty scope list allows everything (Dragonfly's tokens made before scopes).
    if !pat.scopes.is_empty() && !pat.scopes.iter().any(|s| s == scope) {
        return Ok(Err(TokenRefusal::Scope(scope.to_string())));
    }
    Ok(Ok(pat))
}
