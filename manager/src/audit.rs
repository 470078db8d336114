//! The audit log: every write through the REST API and the Open API (who, what, the outcome),
//! kept for [`RETENTION`], listed to root at `GET /api/v1/audits`.

use crate::db::{now, timestamp, Db, DbError};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::time::Duration;

/// How long audit records and finished jobs are kept.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// One audit record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Audit {
    pub id: i64,
    /// `user` (a console session) or `token` (a personal access token).
    pub actor_type: String,
    pub actor_name: String,
    /// `<METHOD> <path>`.
    pub event: String,
    pub operation: String,
    pub path: String,
    pub status_code: i64,
    /// `success` (2xx, 3xx) or `failure`.
    pub state: String,
    pub created_at: String,
}

/// Records one write.
pub async fn record(
    db: &Db,
    actor_type: &str,
    actor_name: &str,
    method: &str,
    path: &str,
    status: u16,
) -> Result<(), DbError> {
    // Paths come from requests: bounded before they are stored.
    let path: String = path.chars().take(512).collect();
    sqlx::query(
        "INSERT INTO audits (actor_type, actor_name, event, operation, path, status_code, state, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(actor_type)
    .bind(actor_name)
    .bind(format!("{method} {path}"))
    .bind(method)
    .bind(&path)
    .bind(i64::from(status))
    .bind(if status < 400 { "success" } else { "failure" })
    .bind(now())
    .execute(&db.pool)
    .await
    .map_err(DbError::sqlx("record an audit"))?;
    Ok(())
}

/// One page of audit records, newest first, and how many there are.
pub async fn list(db: &Db, limit: i64, offset: i64) -> Result<(Vec<Audit>, i64), DbError> {
    let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audits")
        .fetch_one(&db.pool)
        .await
        .and_then(|r| r.try_get("n"))
        .map_err(DbError::sqlx("count audits"))?;
    let rows = sqlx::query(
        "SELECT id, actor_type, actor_name, event, operation, path, status_code, state, created_at \
         FROM audits ORDER BY id DESC LIMIT $1 OFFSET $2",
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(&db.pool)
    .await
    .map_err(DbError::sqlx("list audits"))?;
    let list = rows
        .iter()
        .map(|r| {
            Ok(Audit {
                id: r.try_get("id")?,
                actor_type: r.try_get("actor_type")?,
                actor_name: r.try_get("actor_name")?,
                event: r.try_get("event")?,
                operation: r.try_get("operation")?,
                path: r.try_get("path")?,
                status_code: r.try_get("status_code")?,
                state: r.try_get("state")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(DbError::sqlx("read audits"))?;
    Ok((list, total))
}

/// Deletes audit records and finished jobs older than [`RETENTION`]; how many of each.
pub async fn collect(db: &Db) -> Result<(u64, u64), DbError> {
    let before =
        timestamp(chrono::Utc::now() - chrono::Duration::from_std(RETENTION).unwrap_or_default());
    // RFC 3339 UTC with whole seconds sorts as text.
    let audits = sqlx::query("DELETE FROM audits WHERE created_at < $1")
        .bind(&before)
        .execute(&db.pool)
        .await
        .map_err(DbError::sqlx("collect audits"))?
        .rows_affected();
    let jobs = sqlx::query("DELETE FROM jobs WHERE state <> 'PENDING' AND updated_at < $1")
        .bind(&before)
        .execute(&db.pool)
        .await
        .map_err(DbError::sqlx("collect jobs"))?
        .rows_affected();
    Ok((audits, jobs))
}
