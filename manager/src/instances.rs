//! Schedulers and seed peers: the records their `UpdateScheduler` / `UpdateSeedPeer` calls
//! keep, their state (active while a `KeepAlive` stream is open), and the searcher that picks
//! the scheduler clusters a peer should use (Dragonfly's weights).

use crate::clusters::{self, Scopes};
use crate::db::{now, Db, DbError};
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// Features a scheduler has when it names none (Dragonfly's default).
pub const DEFAULT_FEATURES: [&str; 2] = ["schedule", "preheat"];

/// A scheduler as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Scheduler {
    pub id: i64,
    pub created_at: String,
    pub updated_at: String,
    pub is_del: u8,
    pub hostname: String,
    pub idc: String,
    pub location: String,
    pub ip: String,
    pub port: i64,
    pub state: String,
    pub features: Vec<String>,
    pub scheduler_cluster_id: i64,
}

/// A seed peer as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeedPeer {
    pub id: i64,
    pub created_at: String,
    pub updated_at: String,
    pub is_del: u8,
    pub hostname: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub idc: String,
    pub location: String,
    pub ip: String,
    pub port: i64,
    pub download_port: i64,
    pub state: String,
    pub seed_peer_cluster_id: i64,
}

/// Which kind of instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Scheduler,
    SeedPeer,
}

impl Kind {
    fn table(self) -> &'static str {
        match self {
            Kind::Scheduler => "schedulers",
            Kind::SeedPeer => "seed_peers",
        }
    }
    fn cluster_column(self) -> &'static str {
        match self {
            Kind::Scheduler => "scheduler_cluster_id",
            Kind::SeedPeer => "seed_peer_cluster_id",
        }
    }
    /// As messages name it.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Scheduler => "scheduler",
            Kind::SeedPeer => "seed peer",
        }
    }
}

const SCHEDULER_COLUMNS: &str =
    "id, hostname, idc, location, ip, port, state, features, scheduler_cluster_id, created_at, updated_at";
const SEED_PEER_COLUMNS: &str =
    "id, hostname, type, idc, location, ip, port, download_port, state, seed_peer_cluster_id, created_at, updated_at";

fn read_scheduler(r: &sqlx::any::AnyRow) -> Result<Scheduler, sqlx::Error> {
    let features: String = r.try_get("features")?;
    Ok(Scheduler {
        id: r.try_get("id")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        is_del: 0,
        hostname: r.try_get("hostname")?,
        idc: r.try_get("idc")?,
        location: r.try_get("location")?,
        ip: r.try_get("ip")?,
        port: r.try_get("port")?,
        state: r.try_get("state")?,
        features: serde_json::from_str(&features).unwrap_or_default(),
        scheduler_cluster_id: r.try_get("scheduler_cluster_id")?,
    })
}

fn read_seed_peer(r: &sqlx::any::AnyRow) -> Result<SeedPeer, sqlx::Error> {
    Ok(SeedPeer {
        id: r.try_get("id")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        is_del: 0,
        hostname: r.try_get("hostname")?,
        kind: r.try_get("type")?,
        idc: r.try_get("idc")?,
        location: r.try_get("location")?,
        ip: r.try_get("ip")?,
        port: r.try_get("port")?,
        download_port: r.try_get("download_port")?,
        state: r.try_get("state")?,
        seed_peer_cluster_id: r.try_get("seed_peer_cluster_id")?,
    })
}

/// What a scheduler says of itself in `UpdateScheduler`.
#[derive(Debug, Clone, Default)]
pub struct SchedulerUpdate {
    pub hostname: String,
    pub ip: String,
    pub port: i64,
    pub idc: String,
    pub location: String,
    pub features: Vec<String>,
    pub cluster_id: i64,
}

/// What a seed peer says of itself in `UpdateSeedPeer`.
#[derive(Debug, Clone, Default)]
pub struct SeedPeerUpdate {
    pub hostname: String,
    pub kind: String,
    pub ip: String,
    pub port: i64,
    pub download_port: i64,
    pub idc: String,
    pub location: String,
    pub cluster_id: i64,
}

/// Creates or updates the scheduler (`hostname`, `ip`) of its cluster; the record. Its state
/// is left as it is (KeepAlive sets it).
pub async fn upsert_scheduler(db: &Db, u: &SchedulerUpdate) -> Result<Scheduler, DbError> {
    let features = if u.features.is_empty() {
        DEFAULT_FEATURES.iter().map(|s| s.to_string()).collect()
    } else {
        u.features.clone()
    };
    let t = now();
    let r = sqlx::query(&format!(
        "INSERT INTO schedulers (hostname, idc, location, ip, port, features, scheduler_cluster_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
         ON CONFLICT (hostname, ip, scheduler_cluster_id) DO UPDATE SET \
         idc = excluded.idc, location = excluded.location, port = excluded.port, \
         features = excluded.features, updated_at = excluded.updated_at \
         RETURNING {SCHEDULER_COLUMNS}"
    ))
    .bind(&u.hostname)
    .bind(&u.idc)
    .bind(&u.location)
    .bind(&u.ip)
    .bind(u.port)
    .bind(serde_json::to_string(&features).unwrap_or_else(|_| "[]".into()))
    .bind(u.cluster_id)
    .bind(&t)
    .fetch_one(&db.pool)
    .await
    .map_err(DbError::sqlx("record a scheduler"))?;
    read_scheduler(&r).map_err(DbError::sqlx("read a scheduler"))
}

/// Creates or updates the seed peer (`hostname`, `ip`) of its cluster; the record.
pub async fn upsert_seed_peer(db: &Db, u: &SeedPeerUpdate) -> Result<SeedPeer, DbError> {
    let t = now();
    let kind = if u.kind.is_empty() { "super" } else { &u.kind };
    let r = sqlx::query(&format!(
        "INSERT INTO seed_peers (hostname, type, idc, location, ip, port, download_port, seed_peer_cluster_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
         ON CONFLICT (hostname, ip, seed_peer_cluster_id) DO UPDATE SET \
         type = excluded.type, idc = excluded.idc, location = excluded.location, port = excluded.port, \
         download_port = excluded.download_port, updated_at = excluded.updated_at \
         RETURNING {SEED_PEER_COLUMNS}"
    ))
    .bind(&u.hostname)
    .bind(kind)
    .bind(&u.idc)
    .bind(&u.location)
    .bind(&u.ip)
    .bind(u.port)
    .bind(u.download_port)
    .bind(u.cluster_id)
    .bind(&t)
    .fetch_one(&db.pool)
    .await
    .map_err(DbError::sqlx("record a seed peer"))?;
    read_seed_peer(&r).map_err(DbError::sqlx("read a seed peer"))
}

/// Sets the state of instance (`hostname`, `ip`) of `cluster`; whether it exists.
pub async fn set_state(
    db: &Db,
    kind: Kind,
    hostname: &str,
    ip: &str,
    cluster: i64,
    active: bool,
) -> Result<bool, DbError> {
    let r = sqlx::query(&format!(
        "UPDATE {} SET state = $1, updated_at = $2 WHERE hostname = $3 AND ip = $4 AND {} = $5",
        kind.table(),
        kind.cluster_column()
    ))
    .bind(if active { "active" } else { "inactive" })
    .bind(now())
    .bind(hostname)
    .bind(ip)
    .bind(cluster)
    .execute(&db.pool)
    .await
    .map_err(DbError::sqlx(format!("set the state of a {}", kind.noun())))?;
    Ok(r.rows_affected() > 0)
}

/// Marks every instance inactive: at start, no KeepAlive stream is open yet.
pub async fn all_inactive(db: &Db) -> Result<(), DbError> {
    for kind in [Kind::Scheduler, Kind::SeedPeer] {
        sqlx::query(&format!(
            "UPDATE {} SET state = 'inactive' WHERE state <> 'inactive'",
            kind.table()
        ))
        .execute(&db.pool)
        .await
        .map_err(DbError::sqlx(format!("reset {}", kind.table())))?;
    }
    Ok(())
}

/// Which instances a list shows.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    pub hostname: Option<String>,
    pub ip: Option<String>,
    pub state: Option<String>,
    pub cluster_id: Option<i64>,
}

impl Filter {
    /// `WHERE` with `$1..$4` (unused conditions are always true) and the binds.
    fn clause(&self, kind: Kind) -> (String, [Option<String>; 3], Option<i64>) {
        let c = kind.cluster_column();
        (
            format!(
                "WHERE ($1 IS NULL OR hostname = $1) AND ($2 IS NULL OR ip = $2) \
                 AND ($3 IS NULL OR state = $3) AND ($4 IS NULL OR {c} = $4)"
            ),
            [self.hostname.clone(), self.ip.clone(), self.state.clone()],
            self.cluster_id,
        )
    }
}

/// One page of schedulers matching `f` in id order, and how many match.
pub async fn list_schedulers(
    db: &Db,
    f: &Filter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Scheduler>, i64), DbError> {
    let rows = list(db, Kind::Scheduler, SCHEDULER_COLUMNS, f, limit, offset).await?;
    let list = rows
        .0
        .iter()
        .map(read_scheduler)
        .collect::<Result<_, _>>()
        .map_err(DbError::sqlx("read schedulers"))?;
    Ok((list, rows.1))
}

/// One page of seed peers matching `f` in id order, and how many match.
pub async fn list_seed_peers(
    db: &Db,
    f: &Filter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<SeedPeer>, i64), DbError> {
    let rows = list(db, Kind::SeedPeer, SEED_PEER_COLUMNS, f, limit, offset).await?;
    let list = rows
        .0
        .iter()
        .map(read_seed_peer)
        .collect::<Result<_, _>>()
        .map_err(DbError::sqlx("read seed peers"))?;
    Ok((list, rows.1))
}

async fn list(
    db: &Db,
    kind: Kind,
    columns: &str,
    f: &Filter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<sqlx::any::AnyRow>, i64), DbError> {
    let t = kind.table();
    let (clause, [h, ip, st], cl) = f.clause(kind);
    let total: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {t} {clause}"))
        .bind(h.clone())
        .bind(ip.clone())
        .bind(st.clone())
        .bind(cl)
        .fetch_one(&db.pool)
        .await
        .and_then(|r| r.try_get("n"))
        .map_err(DbError::sqlx(format!("count {t}")))?;
    let rows = sqlx::query(&format!(
        "SELECT {columns} FROM {t} {clause} ORDER BY id LIMIT $5 OFFSET $6"
    ))
    .bind(h)
    .bind(ip)
    .bind(st)
    .bind(cl)
    .bind(limit)
    .bind(offset)
    .fetch_all(&db.pool)
    .await
    .map_err(DbError::sqlx(format!("list {t}")))?;
    Ok((rows, total))
}

/// Scheduler `id`.
pub async fn scheduler(db: &Db, id: i64) -> Result<Option<Scheduler>, DbError> {
    sqlx::query(&format!(
        "SELECT {SCHEDULER_COLUMNS} FROM schedulers WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await
    .map_err(DbError::sqlx("find a scheduler"))?
    .map(|r| read_scheduler(&r))
    .transpose()
    .map_err(DbError::sqlx("read a scheduler"))
}

/// Seed peer `id`.
pub async fn seed_peer(db: &Db, id: i64) -> Result<Option<SeedPeer>, DbError> {
    sqlx::query(&format!(
        "SELECT {SEED_PEER_COLUMNS} FROM seed_peers WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await
    .map_err(DbError::sqlx("find a seed peer"))?
    .map(|r| read_seed_peer(&r))
    .transpose()
    .map_err(DbError::sqlx("read a seed peer"))
}

/// Deletes instance `id`; whether it existed.
pub async fn delete(db: &Db, kind: Kind, id: i64) -> Result<bool, DbError> {
    let r = sqlx::query(&format!("DELETE FROM {} WHERE id = $1", kind.table()))
        .bind(id)
        .execute(&db.pool)
        .await
        .map_err(DbError::sqlx(format!("delete a {}", kind.noun())))?;
    Ok(r.rows_affected() > 0)
}

/// Deletes the seed peer (`hostname`, `ip`) of `cluster`; whether it existed.
pub async fn delete_seed_peer_by_name(
    db: &Db,
    hostname: &str,
    ip: &str,
    cluster: i64,
) -> Result<bool, DbError> {
    let r = sqlx::query(
        "DELETE FROM seed_peers WHERE hostname = $1 AND ip = $2 AND seed_peer_cluster_id = $3",
    )
    .bind(hostname)
    .bind(ip)
    .bind(cluster)
    .execute(&db.pool)
    .await
    .map_err(DbError::sqlx("delete a seed peer"))?;
    Ok(r.rows_affected() > 0)
}

/// The active seed peers of the seed peer clusters serving scheduler cluster `sc`.
pub async fn active_seed_peers_of(db: &Db, sc: i64) -> Result<Vec<SeedPeer>, DbError> {
    let columns: Vec<String> = SEED_PEER_COLUMNS
        .split(", ")
        .map(|c| format!("p.{c} AS {c}"))
        .collect();
    sqlx::query(&format!(
        "SELECT {} FROM seed_peers p JOIN seed_peer_cluster_scheduler_clusters l \
         ON l.seed_peer_cluster_id = p.seed_peer_cluster_id \
         WHERE l.scheduler_cluster_id = $1 AND p.state = 'active' ORDER BY p.id",
        columns.join(", ")
    ))
    .bind(sc)
    .fetch_all(&db.pool)
    .await
    .map_err(DbError::sqlx("list the seed peers of a scheduler cluster"))?
    .iter()
    .map(read_seed_peer)
    .collect::<Result<_, _>>()
    .map_err(DbError::sqlx("read seed peers"))
}

/// Every active scheduler, in id order.
pub async fn active_schedulers(db: &Db) -> Result<Vec<Scheduler>, DbError> {
    Ok(list_schedulers(
        db,
        &Filter {
            state: Some("active".into()),
            ..Default::default()
        },
        i64::MAX,
        0,
    )
    .await?
    .0)
}

/// Who asks `ListSchedulers`: the searcher's inputs.
#[derive(Debug, Clone, Default)]
pub struct Seeker {
    pub hostname: String,
    pub ip: String,
    pub idc: String,
    pub location: String,
    /// Asks for this cluster only (0: let the searcher choose).
    pub cluster_id: i64,
}

/// Score of scheduler cluster `scopes` (and default flag) for `who`, with Dragonfly's weights:
/// 0.3 CIDR, 0.3 hostname regex, 0.25 IDC, 0.14 location prefix, 0.01 default.
pub fn score(scopes: &Scopes, is_default: bool, who: &Seeker) -> f64 {
    let cidr = who.ip.parse::<std::net::IpAddr>().ok().is_some_and(|ip| {
        scopes
            .cidrs
            .iter()
            .filter_map(|c| c.parse::<ipnet::IpNet>().ok())
            .any(|net| net.contains(&ip))
    });
    let hostname = !who.hostname.is_empty()
        && scopes.hostnames.iter().any(|h| {
            regex::RegexBuilder::new(h)
                .size_limit(1 << 20)
                .build()
                .is_ok_and(|r| r.is_match(&who.hostname))
        });
    let idc = !who.idc.is_empty()
        && !scopes.idc.is_empty()
        && (scopes.idc.eq_ignore_ascii_case(&who.idc)
            || scopes
                .idc
                .split('|')
                .any(|i| i.trim().eq_ignore_ascii_case(&who.idc)));
    let location = location_score(&scopes.location, &who.location);
    0.3 * f64::from(u8::from(cidr))
        + 0.3 * f64::from(u8::from(hostname))
        + 0.25 * f64::from(u8::from(idc))
        + 0.14 * location
        + 0.01 * f64::from(u8::from(is_default))
}

/// How much of the `|`-separated location prefix (at most 5 elements) two locations share,
/// from 0 to 1.
fn location_score(cluster: &str, peer: &str) -> f64 {
    const MAX: usize = 5;
    if cluster.is_empty() || peer.is_empty() {
        return 0.0;
    }
    if cluster.eq_ignore_ascii_case(peer) {
        return 1.0;
    }
    let shared = cluster
        .split('|')
        .zip(peer.split('|'))
        .take(MAX)
        .take_while(|(a, b)| a.eq_ignore_ascii_case(b))
        .count();
    shared as f64 / MAX as f64
}

/// The active schedulers with feature `schedule` that `who` should use: those of the asked
/// cluster, or of the clusters ranked by [`score`] (ties by id), best first.
pub async fn search(db: &Db, who: &Seeker) -> Result<Vec<Scheduler>, DbError> {
    let active: Vec<Scheduler> = active_schedulers(db)
        .await?
        .into_iter()
        .filter(|s| s.features.iter().any(|f| f == "schedule"))
        .collect();
    if who.cluster_id != 0 {
        return Ok(active
            .into_iter()
            .filter(|s| s.scheduler_cluster_id == who.cluster_id)
            .collect());
    }
    let mut cluster_ids: Vec<i64> = active.iter().map(|s| s.scheduler_cluster_id).collect();
    cluster_ids.sort_unstable();
    cluster_ids.dedup();
    let mut ranked = Vec::with_capacity(cluster_ids.len());
    for id in cluster_ids {
        if let Some(c) = clusters::scheduler_cluster(db, id).await? {
            ranked.push((score(&c.scopes, c.is_default, who), id));
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut out = Vec::with_capacity(active.len());
    for (_, id) in ranked {
        out.extend(
            active
                .iter()
                .filter(|s| s.scheduler_cluster_id == id)
                .cloned(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_searchers_weights_rank_cidr_and_hostname_above_idc_and_location() {
        let who = Seeker {
            hostname: "node-7".into(),
            ip: "10.1.2.3".into(),
            idc: "idc-a".into(),
            location: "cn|zj|hz".into(),
            cluster_id: 0,
        };
        let cidr = Scopes {
            cidrs: vec!["10.1.0.0/16".into()],
            ..Default::default()
        };
        let host = Scopes {
            hostnames: vec!["^node-[0-9]+$".into()],
            ..Default::default()
        };
        let idc = Scopes {
            idc: "idc-b|idc-a".into(),
            ..Default::default()
        };
        let loc = Scopes {
            location: "cn|zj".into(),
            ..Default::default()
        };
        assert!((score(&cidr, false, &who) - 0.3).abs() < 1e-9);
        assert!((score(&host, false, &who) - 0.3).abs() < 1e-9);
        assert!((score(&idc, false, &who) - 0.25).abs() < 1e-9);
        assert!((score(&loc, false, &who) - 0.14 * 2.0 / 5.0).abs() < 1e-9);
        assert!((score(&Scopes::default(), true, &who) - 0.01).abs() < 1e-9);
        let other = Seeker {
            ip: "192.168.0.1".into(),
            hostname: "db-1".into(),
            ..who.clone()
        };
        assert_eq!(score(&cidr, false, &other), 0.0);
        assert_eq!(score(&host, false, &other), 0.0);
        assert!((location_score("cn|zj|hz", "cn|zj|hz") - 1.0).abs() < 1e-9);
        assert_eq!(location_score("us", "cn|zj"), 0.0);
    }
}
