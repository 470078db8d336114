//! The manager's database: SQLite (a file, the default) or PostgreSQL, through `sqlx`'s `Any`
//! driver, with versioned migrations per backend (`migrations/sqlite`, `migrations/postgres`)
//! run at start. Queries use `$N` placeholders, which both backends take. Times are stored as
//! RFC 3339 text in UTC.

use crate::config::{DatabaseKind, ManagerConfig};
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use std::time::Duration;

/// Errors of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {what}: {source}")]
    Sqlx {
        what: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Other(String),
}

impl DbError {
    pub fn sqlx(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> DbError {
        let what = what.into();
        move |source| DbError::Sqlx { what, source }
    }

    /// Whether a unique constraint refused the write.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            DbError::Sqlx {
                source: sqlx::Error::Database(e),
                ..
            } => e.is_unique_violation(),
            _ => false,
        }
    }
}

/// A connection pool to the configured database, migrated.
#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub kind: DatabaseKind,
}

impl Db {
    /// Connects (creating the SQLite file and its directory if needed) and migrates.
    pub async fn open(config: &ManagerConfig) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let kind = config.database.kind;
        let (url, what) = match kind {
            DatabaseKind::Sqlite => {
                let path = config.sqlite_path();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| DbError::Other(format!("creating {}: {e}", dir.display())))?;
                }
                let p = path
                    .to_str()
                    .ok_or_else(|| DbError::Other(format!("{}: not UTF-8", path.display())))?;
                (format!("sqlite://{p}?mode=rwc"), format!("sqlite {p}"))
            }
            DatabaseKind::Postgres => {
                let pg = &config.database.postgres;
                (
                    pg.url(),
                    format!("postgres {}:{}/{}", pg.host, pg.port, pg.dbname),
                )
            }
        };
        let mut options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        if kind == DatabaseKind::Sqlite {
            // One writer at a time is what SQLite does; a small pool avoids lock contention.
            options = options.max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    use sqlx::Executor;
                    conn.execute("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL;")
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = options
            .connect(&url)
            .await
            .map_err(DbError::sqlx(format!("connect to {what}")))?;
        let migrate = kind == DatabaseKind::Sqlite || config.database.postgres.migrate;
        if migrate {
            match kind {
                DatabaseKind::Sqlite => sqlx::migrate!("migrations/sqlite").run(&pool).await?,
                DatabaseKind::Postgres => sqlx::migrate!("migrations/postgres").run(&pool).await?,
            }
        }
        Ok(Db { pool, kind })
    }
}

/// Now, as stored.
pub fn now() -> String {
    timestamp(chrono::Utc::now())
}

/// A time as stored: RFC 3339, UTC, whole seconds.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A stored time.
pub fn parse_timestamp(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}
