//! Scheduler clusters and seed peer clusters: what they store (Dragonfly's JSON configs), the
//! defaults made on first start, and their records.

use crate::db::{now, Db, DbError};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// `config` of a scheduler cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerClusterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_parent_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_parent_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_rate_limit: Option<u32>,
}

/// `client_config` of a scheduler cluster (its peers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_limit: Option<u32>,
    /// Dragonfly's per-task-type block lists, kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_list: Option<serde_json::Value>,
}

/// `seed_client_config` of a scheduler cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedClientConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_list: Option<serde_json::Value>,
}

/// `scopes` of a scheduler cluster: which peers it serves (the searcher's inputs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scopes {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub idc: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<String>,
    /// Regular expressions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
}

/// `config` of a seed peer cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedPeerClusterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_list: Option<serde_json::Value>,
}

impl SchedulerClusterConfig {
    /// Problems, each naming its key under `prefix`: Dragonfly's ranges.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        let mut range = |key: &str, v: Option<u32>, lo: u32, hi: u32| {
            if let Some(v) = v {
                if !(lo..=hi).contains(&v) {
                    p.push(format!("{prefix}.{key}: {v} is not within {lo}..={hi}"));
                }
            }
        };
        range("candidate_parent_limit", self.candidate_parent_limit, 1, 20);
        range("filter_parent_limit", self.filter_parent_limit, 10, 1000);
        range("job_rate_limit", self.job_rate_limit, 1, 1_000_000);
        p
    }
}

impl ClientConfig {
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        match self.load_limit {
            Some(v) if !(1..=2000).contains(&v) => {
                vec![format!("{prefix}.load_limit: {v} is not within 1..=2000")]
            }
            _ => Vec::new(),
        }
    }
}

impl SeedPeerClusterConfig {
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        match self.load_limit {
            Some(v) if !(1..=50000).contains(&v) => {
                vec![format!("{prefix}.load_limit: {v} is not within 1..=50000")]
            }
            _ => Vec::new(),
        }
    }
}

impl Scopes {
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut p = Vec::new();
        for c in &self.cidrs {
            if !valid_cidr(c) {
                p.push(format!(
                    "{prefix}.cidrs: {c:?} is not a CIDR like 10.0.0.0/8"
                ));
            }
        }
        for h in &self.hostnames {
            if let Err(e) = regex_lite_check(h) {
                p.push(format!("{prefix}.hostnames: {h:?}: {e}"));
            }
        }
        p
    }
}

fn valid_cidr(c: &str) -> bool {
    let Some((ip, bits)) = c.split_once('/') else {
        return false;
    };
    match (ip.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(b)) => b <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(b)) => b <= 128,
        _ => false,
    }
}

/// Whether `pattern` is a regular expression (bounded in size: it comes from a request).
fn regex_lite_check(pattern: &str) -> Result<(), String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A scheduler cluster as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SchedulerCluster {
    pub id: i64,
    pub created_at: String,
    pub updated_at: String,
    pub is_del: u8,
    pub name: String,
    pub bio: String,
    pub config: SchedulerClusterConfig,
    pub client_config: ClientConfig,
    pub seed_client_config: SeedClientConfig,
    pub scopes: Scopes,
    pub is_default: bool,
    /// The seed peer clusters that serve it (their ids and names).
    pub seed_peer_clusters: Vec<ClusterRef>,
}

/// A seed peer cluster as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeedPeerCluster {
    pub id: i64,
    pub created_at: String,
    pub updated_at: String,
    pub is_del: u8,
    pub name: String,
    pub bio: String,
    pub config: SeedPeerClusterConfig,
    pub scheduler_clusters: Vec<ClusterRef>,
}

/// Another cluster, by id and name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterRef {
    pub id: i64,
    pub name: String,
}

fn json<T: serde::de::DeserializeOwned + Default>(
    r: &sqlx::any::AnyRow,
    col: &str,
) -> Result<T, sqlx::Error> {
    let text: String = r.try_get(col)?;
    Ok(serde_json::from_str(&text).unwrap_or_default())
}

/// Creates the default clusters on first start (no scheduler cluster and no seed peer
/// cluster yet), as Dragonfly does: scheduler cluster `cluster-1` (default; parent limits 3 and
/// 15, job rate limit 10, peer load limit 200) served by seed peer cluster `cluster-1` (load
/// limit 2000). Whether it made them.
pub async fn seed(db: &Db) -> Result<bool, DbError> {
    let count = |table: &'static str| async move {
        sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(&db.pool)
            .await
            .and_then(|r| r.try_get::<i64, _>("n"))
            .map_err(DbError::sqlx(format!("count {table}")))
    };
    if count("scheduler_clusters").await? > 0 || count("seed_peer_clusters").await? > 0 {
        return Ok(false);
    }
    let sc = create_scheduler_cluster(
        db,
        "cluster-1",
        "",
        &SchedulerClusterConfig {
            candidate_parent_limit: Some(3),
            filter_parent_limit: Some(15),
            job_rate_limit: Some(10),
        },
        &ClientConfig {
            load_limit: Some(200),
            block_list: None,
        },
        &SeedClientConfig::default(),
        &Scopes::default(),
        true,
    )
    .await?;
    let spc = create_seed_peer_cluster(
        db,
        "cluster-1",
        "",
        &SeedPeerClusterConfig {
            load_limit: Some(2000),
            block_list: None,
        },
    )
    .await?;
    link(db, spc, sc).await?;
    Ok(true)
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

/// Creates a scheduler cluster; its id. Making it the default clears the flag elsewhere.
#[allow(clippy::too_many_arguments)]
pub async fn create_scheduler_cluster(
    db: &Db,
    name: &str,
    bio: &str,
    config: &SchedulerClusterConfig,
    client_config: &ClientConfig,
    seed_client_config: &SeedClientConfig,
    scopes: &Scopes,
    is_default: bool,
) -> Result<i64, DbError> {
    let mut tx = db.pool.begin().await.map_err(DbError::sqlx("begin"))?;
    if is_default {
        sqlx::query("UPDATE scheduler_clusters SET is_default = 0")
            .execute(&mut *tx)
            .await
            .map_err(DbError::sqlx("clear the default scheduler cluster"))?;
    }
    let t = now();
    let id: i64 = sqlx::query(
        "INSERT INTO scheduler_clusters (name, bio, config, client_config, seed_client_config, scopes, is_default, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id",
    )
    .bind(name)
    .bind(bio)
    .bind(to_json(config))
    .bind(to_json(client_config))
    .bind(to_json(seed_client_config))
    .bind(to_json(scopes))
    .bind(i64::from(is_default))
    .bind(&t)
    .fetch_one(&mut *tx)
    .await
    .and_then(|r| r.try_get("id"))
    .map_err(DbError::sqlx("create a scheduler cluster"))?;
    tx.commit().await.map_err(DbError::sqlx("commit"))?;
    Ok(id)
}

/// Creates a seed peer cluster; its id.
pub async fn create_seed_peer_cluster(
    db: &Db,
    name: &str,
    bio: &str,
    config: &SeedPeerClusterConfig,
) -> Result<i64, DbError> {
    let t = now();
    sqlx::query(
        "INSERT INTO seed_peer_clusters (name, bio, config, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4) RETURNING id",
    )
    .bind(name)
    .bind(bio)
    .bind(to_json(config))
    .bind(&t)
    .fetch_one(&db.pool)
    .await
    .and_then(|r| r.try_get("id"))
    .map_err(DbError::sqlx("create a seed peer cluster"))
}

/// Makes seed peer cluster `spc` serve scheduler cluster `sc` (and only it: a scheduler
/// cluster has at most one seed peer cluster, as in Dragonfly).
pub async fn link(db: &Db, spc: i64, sc: i64) -> Result<(), DbError> {
    let mut tx = db.pool.begin().await.map_err(DbError::sqlx("begin"))?;
    sqlx::query("DELETE FROM seed_peer_cluster_scheduler_clusters WHERE scheduler_cluster_id = $1")
        .bind(sc)
        .execute(&mut *tx)
        .await
        .map_err(DbError::sqlx("unlink a scheduler cluster"))?;
    sqlx::query(
        "INSERT INTO seed_peer_cluster_scheduler_clusters (seed_peer_cluster_id, scheduler_cluster_id) VALUES ($1, $2)",
    )
    .bind(spc)
    .bind(sc)
    .execute(&mut *tx)
    .await
    .map_err(DbError::sqlx("link a seed peer cluster"))?;
    tx.commit().await.map_err(DbError::sqlx("commit"))?;
    Ok(())
}

/// The clusters of the other kind linked to cluster `id` of `table` (a scheduler cluster's
/// seed peer clusters, a seed peer cluster's scheduler clusters).
async fn linked(db: &Db, table: Table, id: i64) -> Result<Vec<ClusterRef>, DbError> {
    let (other, this_column, other_column) = match table {
        Table::SchedulerClusters => (
            Table::SeedPeerClusters,
            "scheduler_cluster_id",
            "seed_peer_cluster_id",
        ),
        Table::SeedPeerClusters => (
            Table::SchedulerClusters,
            "seed_peer_cluster_id",
            "scheduler_cluster_id",
        ),
    };
    let rows = sqlx::query(&format!(
        "SELECT c.id AS id, c.name AS name FROM {} c \
         JOIN seed_peer_cluster_scheduler_clusters l ON l.{other_column} = c.id \
         WHERE l.{this_column} = $1 ORDER BY c.id",
        other.name()
    ))
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .map_err(DbError::sqlx(format!(
        "find the clusters linked to {} {id}",
        table.name()
    )))?;
    rows.iter()
        .map(|l| {
            Ok(ClusterRef {
                id: l.try_get("id")?,
                name: l.try_get("name")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(DbError::sqlx("read linked clusters"))
}

/// Scheduler cluster `id`.
pub async fn scheduler_cluster(db: &Db, id: i64) -> Result<Option<SchedulerCluster>, DbError> {
    let Some(r) = sqlx::query(
        "SELECT id, name, bio, config, client_config, seed_client_config, scopes, is_default, created_at, updated_at \
         FROM scheduler_clusters WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await
    .map_err(DbError::sqlx("find a scheduler cluster"))?
    else {
        return Ok(None);
    };
    let links = linked(db, Table::SchedulerClusters, id).await?;
    let read = || -> Result<SchedulerCluster, sqlx::Error> {
        Ok(SchedulerCluster {
            id: r.try_get("id")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            is_del: 0,
            name: r.try_get("name")?,
            bio: r.try_get("bio")?,
            config: json(&r, "config")?,
            client_config: json(&r, "client_config")?,
            seed_client_config: json(&r, "seed_client_config")?,
            scopes: json(&r, "scopes")?,
            is_default: r.try_get::<i64, _>("is_default")? != 0,
            seed_peer_clusters: links,
        })
    };
    read()
        .map(Some)
        .map_err(DbError::sqlx("read a scheduler cluster"))
}

/// Seed peer cluster `id`.
pub async fn seed_peer_cluster(db: &Db, id: i64) -> Result<Option<SeedPeerCluster>, DbError> {
    let Some(r) = sqlx::query(
        "SELECT id, name, bio, config, created_at, updated_at FROM seed_peer_clusters WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await
    .map_err(DbError::sqlx("find a seed peer cluster"))?
    else {
        return Ok(None);
    };
    let links = linked(db, Table::SeedPeerClusters, id).await?;
    let read = || -> Result<SeedPeerCluster, sqlx::Error> {
        Ok(SeedPeerCluster {
            id: r.try_get("id")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            is_del: 0,
            name: r.try_get("name")?,
            bio: r.try_get("bio")?,
            config: json(&r, "config")?,
            scheduler_clusters: links,
        })
    };
    read()
        .map(Some)
        .map_err(DbError::sqlx("read a seed peer cluster"))
}

/// Ids of the rows of `table` named `name` (or all), `limit` after the first `offset`, in id
/// order, and how many there are in all.
pub async fn list_ids(
    db: &Db,
    table: Table,
    name: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<i64>, i64), DbError> {
    let t = table.name();
    let filter = if name.is_some() {
        "WHERE name = $1"
    } else {
        "WHERE $1 = $1"
    };
    let name = name.unwrap_or("");
    let total: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {t} {filter}"))
        .bind(name)
        .fetch_one(&db.pool)
        .await
        .and_then(|r| r.try_get("n"))
        .map_err(DbError::sqlx(format!("count {t}")))?;
    let ids = sqlx::query(&format!(
        "SELECT id FROM {t} {filter} ORDER BY id LIMIT $2 OFFSET $3"
    ))
    .bind(name)
    .bind(limit)
    .bind(offset)
    .fetch_all(&db.pool)
    .await
    .map_err(DbError::sqlx(format!("list {t}")))?
    .iter()
    .map(|r| r.try_get("id"))
    .collect::<Result<_, _>>()
    .map_err(DbError::sqlx(format!("list {t}")))?;
    Ok((ids, total))
}

/// The cluster tables.
#[derive(Debug, Clone, Copy)]
pub enum Table {
    SchedulerClusters,
    SeedPeerClusters,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::SchedulerClusters => "scheduler_clusters",
            Table::SeedPeerClusters => "seed_peer_clusters",
        }
    }
}

/// Deletes cluster `id` of `table` (and its links); whether it existed.
pub async fn delete(db: &Db, table: Table, id: i64) -> Result<bool, DbError> {
    let t = table.name();
    let column = match table {
        Table::SchedulerClusters => "scheduler_cluster_id",
        Table::SeedPeerClusters => "seed_peer_cluster_id",
    };
    let mut tx = db.pool.begin().await.map_err(DbError::sqlx("begin"))?;
    sqlx::query(&format!(
        "DELETE FROM seed_peer_cluster_scheduler_clusters WHERE {column} = $1"
    ))
    .bind(id)
    .execute(&mut *tx)
    .await
    .map_err(DbError::sqlx(format!("unlink {t}")))?;
    let r = sqlx::query(&format!("DELETE FROM {t} WHERE id = $1"))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(DbError::sqlx(format!("delete from {t}")))?;
    tx.commit().await.map_err(DbError::sqlx("commit"))?;
    Ok(r.rows_affected() > 0)
}

/// What a PATCH of a scheduler cluster changes (`None`: unchanged).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerClusterPatch {
    pub name: Option<String>,
    pub bio: Option<String>,
    pub config: Option<SchedulerClusterConfig>,
    pub client_config: Option<ClientConfig>,
    pub seed_client_config: Option<SeedClientConfig>,
    pub scopes: Option<Scopes>,
    pub is_default: Option<bool>,
    pub seed_peer_cluster_id: Option<i64>,
}

/// Applies `p` to scheduler cluster `id`; whether it exists.
pub async fn update_scheduler_cluster(
    db: &Db,
    id: i64,
    p: &SchedulerClusterPatch,
) -> Result<bool, DbError> {
    let mut tx = db.pool.begin().await.map_err(DbError::sqlx("begin"))?;
    if p.is_default == Some(true) {
        sqlx::query("UPDATE scheduler_clusters SET is_default = 0 WHERE id <> $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(DbError::sqlx("clear the default scheduler cluster"))?;
    }
    let r = sqlx::query(
        "UPDATE scheduler_clusters SET name = COALESCE($1, name), bio = COALESCE($2, bio), \
         config = COALESCE($3, config), client_config = COALESCE($4, client_config), \
         seed_client_config = COALESCE($5, seed_client_config), scopes = COALESCE($6, scopes), \
         is_default = COALESCE($7, is_default), updated_at = $8 WHERE id = $9",
    )
    .bind(p.name.clone())
    .bind(p.bio.clone())
    .bind(p.config.as_ref().map(to_json))
    .bind(p.client_config.as_ref().map(to_json))
    .bind(p.seed_client_config.as_ref().map(to_json))
    .bind(p.scopes.as_ref().map(to_json))
    .bind(p.is_default.map(i64::from))
    .bind(now())
    .bind(id)
    .execute(&mut *tx)
    .await
    .map_err(DbError::sqlx("update a scheduler cluster"))?;
    tx.commit().await.map_err(DbError::sqlx("commit"))?;
    Ok(r.rows_affected() > 0)
}

/// What a PATCH of a seed peer cluster changes (`None`: unchanged).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedPeerClusterPatch {
    pub name: Option<String>,
    pub bio: Option<String>,
    pub config: Option<SeedPeerClusterConfig>,
}

/// Applies `p` to seed peer cluster `id`; whether it exists.
pub async fn update_seed_peer_cluster(
    db: &Db,
    id: i64,
    p: &SeedPeerClusterPatch,
) -> Result<bool, DbError> {
    let r = sqlx::query(
        "UPDATE seed_peer_clusters SET name = COALESCE($1, name), bio = COALESCE($2, bio), \
         config = COALESCE($3, config), updated_at = $4 WHERE id = $5",
    )
    .bind(p.name.clone())
    .bind(p.bio.clone())
    .bind(p.config.as_ref().map(to_json))
    .bind(now())
    .bind(id)
    .execute(&db.pool)
    .await
    .map_err(DbError::sqlx("update a seed peer cluster"))?;
    Ok(r.rows_affected() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_out_of_dragonflys_ranges_name_the_key() {
        let c: SchedulerClusterConfig =
            serde_json::from_str(r#"{"candidate_parent_limit": 0, "filter_parent_limit": 15}"#)
                .unwrap();
        assert_eq!(
            c.problems("config"),
            ["config.candidate_parent_limit: 0 is not within 1..=20"]
        );
        let c = ClientConfig {
            load_limit: Some(5000),
            block_list: None,
        };
        assert_eq!(
            c.problems("client_config"),
            ["client_config.load_limit: 5000 is not within 1..=2000"]
        );
        let s = Scopes {
            cidrs: vec!["10.0.0.0/8".into(), "10.0.0.0/33".into(), "nowhere".into()],
            hostnames: vec!["^node-[0-9]+$".into(), "(".into()],
            ..Default::default()
        };
        let p = s.problems("scopes");
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("10.0.0.0/33") && p[1].contains("nowhere") && p[2].contains("\"(\""));
        let e = serde_json::from_str::<SchedulerClusterConfig>(r#"{"candidate_parent_limt": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("candidate_parent_limt"), "{e}");
    }
}
