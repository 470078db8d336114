//! `manager.yaml`: Dragonfly's key names where the concept is the same (`server.rest.addr`,
//! `server.grpc.port.start`, `database.type`, `database.postgres.*`, `auth.jwt.*`). Unknown keys
//! are an error naming the key.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Keys of Dragonfly's `manager.yaml` this manager accepts and ignores, with why.
pub const IGNORED: &[common::upstream_keys::Ignored] = &[
    ("console", "logs always go to stderr"),
    ("verbose", "set RUST_LOG"),
    ("pprofPort", "no pprof endpoint"),
    ("tracing", "no OpenTelemetry exporter"),
    ("server.name", "not used"),
    ("server.logDir", "logs go to stderr"),
    ("server.logLevel", "set RUST_LOG"),
    ("server.logMaxSize", "logs go to stderr"),
    ("server.logMaxAge", "logs go to stderr"),
    ("server.logMaxBackups", "logs go to stderr"),
    ("server.pluginDir", "no searcher plugins: the searcher is built in"),
    ("server.cacheDir", "no disk cache is needed"),
    ("server.grpc.requestRateLimit", "no gRPC request rate limit"),
    (
        "auth.jwt.key",
        "session keys are generated and kept in <server.workHome>/jwt.key (a key from a config file, often the chart's public default, would let anyone sign sessions)",
    ),
    ("auth.jwt.maxRefresh", "sessions are not refreshed; sign in again after auth.jwt.timeout"),
    (
        "database.mysql",
        "MySQL is not supported: the manager uses database.type (sqlite, the default, or postgres)",
    ),
    (
        "database.polardb",
        "PolarDB is not supported: the manager uses database.type (sqlite, the default, or postgres)",
    ),
    ("database.redis", "no Redis is needed: jobs run in the manager and state is in its database"),
    ("database.postgres.preferSimpleProtocol", "not needed by this driver"),
    ("cache", "no Redis or local answer cache is needed"),
    ("job.rateLimit", "removed upstream: each cluster's job_rate_limit applies"),
    ("job.gc", "removed upstream"),
    ("job.syncPeers", "hosts are known live from the schedulers"),
    ("job.preheat.registryTimeout", "registry requests time out after 10 s each"),
    ("objectStorage", "removed upstream"),
    ("security", "removed upstream"),
    ("network.enableIPv6", "the listen addresses decide the IP family"),
];

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ManagerConfig {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub metrics: MetricsConfig,
    pub job: JobConfig,
}

/// `job`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct JobConfig {
    pub preheat: PreheatConfig,
}

/// `job.preheat`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PreheatConfig {
    /// The registries and file hosts preheat jobs may fetch from: `host`, `host:port`, or
    /// `*.domain`. Empty (the default): every preheat job is refused, so the Open API cannot
    /// make peers fetch internal URLs until an operator names the registries.
    pub allowed_hosts: Vec<String>,
    /// How the manager reaches registries to resolve images.
    pub tls: PreheatTls,
    /// Platform preheated from a multi-platform image when the job names none. Default: this
    /// machine's (`linux/amd64` on x86-64), as Dragonfly does.
    pub platform: Option<String>,
}

/// `job.preheat.tls`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PreheatTls {
    /// A PEM file of CA certificates trusted for registries, besides the system's.
    pub ca_cert: Option<PathBuf>,
    /// Skip certificate verification of registries (never in production). Default: false.
    pub insecure_skip_verify: bool,
}

/// `metrics`: Prometheus metrics are always on the REST listener at `/metrics`; with `enable`
/// they are also served on `addr` (Dragonfly's separate metrics port).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsConfig {
    /// Serve `/metrics` on `addr` too. Default: false.
    pub enable: bool,
    /// Default: `:8000`.
    pub addr: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enable: false,
            addr: ":8000".into(),
        }
    }
}

/// `server`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerConfig {
    /// Where the manager keeps its files (SQLite database, JWT key, initial root password).
    /// Default: /var/lib/dragonfly/manager.
    pub work_home: PathBuf,
    pub rest: RestConfig,
    pub grpc: GrpcConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            work_home: PathBuf::from("/var/lib/dragonfly/manager"),
            rest: RestConfig::default(),
            grpc: GrpcConfig::default(),
        }
    }
}

/// `server.grpc`: the `manager.v2.Manager` service for schedulers and peers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcConfig {
    /// Listen address. Default: 0.0.0.0.
    #[serde(rename = "listenIP")]
    pub listen_ip: std::net::IpAddr,
    /// The address others are told to use. Default: the listen address. Accepted for
    /// Dragonfly's configs; the manager announces itself to no one.
    #[serde(rename = "advertiseIP")]
    pub advertise_ip: Option<std::net::IpAddr>,
    /// The first free port of `start..=end` is used. Default: 65003..=65003.
    pub port: PortRange,
    /// Mutual TLS (`caCert`, `cert`, `key`): callers must show a certificate issued by
    /// `caCert`, and the manager shows `cert` to the schedulers it calls for jobs (so it must
    /// allow client authentication too). Default: none (plain gRPC).
    pub tls: Option<common::tls::TlsFiles>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            listen_ip: std::net::IpAddr::from([0, 0, 0, 0]),
            advertise_ip: None,
            port: PortRange {
                start: 65003,
                end: 65003,
            },
            tls: None,
        }
    }
}

/// A port range (`start`, `end`; an `end` of 0 means `start`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    /// The ports to try, in order.
    pub fn ports(&self) -> std::ops::RangeInclusive<u16> {
        self.start..=self.end.max(self.start)
    }
}

/// `server.rest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RestConfig {
    /// Listen address of the REST API, the Open API and the console. Default: `:8080`.
    pub addr: String,
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig {
            addr: ":8080".into(),
        }
    }
}

/// `database`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DatabaseConfig {
    /// `sqlite` (default: a file under `server.workHome`, nothing to run) or `postgres`.
    #[serde(rename = "type")]
    pub kind: DatabaseKind,
    pub sqlite: SqliteConfig,
    pub postgres: PostgresConfig,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            kind: DatabaseKind::Sqlite,
            sqlite: SqliteConfig::default(),
            postgres: PostgresConfig::default(),
        }
    }
}

/// Which database holds the manager's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

/// `database.sqlite`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SqliteConfig {
    /// The database file. Default: `<server.workHome>/manager.db`.
    pub path: Option<PathBuf>,
}

/// `database.postgres` (Dragonfly's keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct PostgresConfig {
    pub user: String,
    pub password: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    /// `disable` (default), `prefer`, `require`, ...: libpq's `sslmode`.
    pub ssl_mode: String,
    /// Accepted for Dragonfly's configs; timestamps are stored in UTC.
    pub timezone: String,
    /// Run the migrations at start. Default: true.
    pub migrate: bool,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            user: String::new(),
            password: String::new(),
            host: "127.0.0.1".into(),
            port: 5432,
            dbname: "manager".into(),
            ssl_mode: "disable".into(),
            timezone: "UTC".into(),
            migrate: true,
        }
    }
}

impl PostgresConfig {
    /// The connection URL (user and password percent-encoded).
    pub fn url(&self) -> String {
        fn enc(s: &str) -> String {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect()
        }
        let auth = match (self.user.is_empty(), self.password.is_empty()) {
            (true, _) => String::new(),
            (false, true) => format!("{}@", enc(&self.user)),
            (false, false) => format!("{}:{}@", enc(&self.user), enc(&self.password)),
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "postgres://{auth}{host}:{}/{}?sslmode={}",
            self.port,
            enc(&self.dbname),
            enc(&self.ssl_mode)
        )
    }
}

/// `auth`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthConfig {
    pub jwt: JwtConfig,
}

/// `auth.jwt`. There is no `key`: the signing key is generated on first start and kept in
/// `<server.workHome>/jwt.key` (mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtConfig {
    /// Accepted for upstream's configs; not used yet. Default: Dragonfly.
    pub realm: String,
    /// How long a console session lasts. Default: 14 days (Dragonfly's).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            realm: "Dragonfly".into(),
            timeout: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

/// Errors of reading the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {}", problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl ManagerConfig {
    /// Reads and checks `path`.
    pub fn load(path: &std::path::Path) -> Result<ManagerConfig, ConfigError> {
        Self::load_with_warnings(path).map(|(c, _)| c)
    }

    /// Reads and checks `path`; also a warning per upstream key ignored ([`IGNORED`]).
    pub fn load_with_warnings(
        path: &std::path::Path,
    ) -> Result<(ManagerConfig, Vec<String>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_with_warnings(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            ConfigError::Invalid { problems, .. } => ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            },
            e => e,
        })
    }

    /// Parses and checks YAML text (an empty text is the defaults).
    pub fn parse(text: &str) -> Result<ManagerConfig, ConfigError> {
        Self::parse_with_warnings(text).map(|(c, _)| c)
    }

    /// [`ManagerConfig::parse`], with a warning per upstream key ignored.
    pub fn parse_with_warnings(text: &str) -> Result<(ManagerConfig, Vec<String>), ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: PathBuf::new(),
            message,
        };
        let (c, warnings): (ManagerConfig, _) =
            common::upstream_keys::parse(text, IGNORED).map_err(parse_err)?;
        let problems = c.validate();
        if problems.is_empty() {
            Ok((c, warnings))
        } else {
            Err(ConfigError::Invalid {
                path: PathBuf::new(),
                problems,
            })
        }
    }

    /// Every problem, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if rest_addr(&self.server.rest.addr).is_err() {
            p.push(format!(
                "server.rest.addr: {:?} is not an address like :8080 or 127.0.0.1:8080",
                self.server.rest.addr
            ));
        }
        if self.metrics.enable && rest_addr(&self.metrics.addr).is_err() {
            p.push(format!(
                "metrics.addr: {:?} is not an address like :8000 or 127.0.0.1:8000",
                self.metrics.addr
            ));
        }
        if let Some(platform) = &self.job.preheat.platform {
            if let Err(e) = crate::resolve::parse_platform(platform) {
                p.push(format!("job.preheat.{e}"));
            }
        }
        if let Some(ca) = &self.job.preheat.tls.ca_cert {
            if !ca.is_file() {
                p.push(format!(
                    "job.preheat.tls.caCert: {} is not a file",
                    ca.display()
                ));
            }
        }
        if let Some(files) = &self.server.grpc.tls {
            if let Err(e) = files.load("server.grpc.tls") {
                p.push(e);
            }
        }
        if self.server.grpc.port.start == 0 {
            p.push("server.grpc.port.start: must be a port (1-65535)".into());
        }
        if self.database.kind == DatabaseKind::Postgres && self.database.postgres.user.is_empty() {
            p.push("database.postgres.user: needed with database.type postgres".into());
        }
        if self.auth.jwt.timeout.is_zero() {
            p.push("auth.jwt.timeout: must be more than 0".into());
        }
        p
    }

    /// Where the SQLite database lives.
    pub fn sqlite_path(&self) -> PathBuf {
        self.database
            .sqlite
            .path
            .clone()
            .unwrap_or_else(|| self.server.work_home.join("manager.db"))
    }
}

/// `:8080` (every address) or `host:port`.
pub fn rest_addr(addr: &str) -> Result<std::net::SocketAddr, String> {
    let full = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    };
    full.parse().map_err(|e| format!("{addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = ManagerConfig::parse("").unwrap();
        assert_eq!(c.database.kind, DatabaseKind::Sqlite);
        assert_eq!(c.server.rest.addr, ":8080");
        assert_eq!(
            c.sqlite_path(),
            PathBuf::from("/var/lib/dragonfly/manager/manager.db")
        );
        assert_eq!(c.auth.jwt.timeout, Duration::from_secs(14 * 24 * 3600));
    }

    #[test]
    fn postgres_keys_make_a_url() {
        let c = ManagerConfig::parse(
            "database:\n  type: postgres\n  postgres:\n    user: dragon fly\n    password: 'p@ss:w/rd'\n    host: 127.0.0.1\n    port: 5433\n    dbname: manager\n    sslMode: disable\n    timezone: UTC\n",
        )
        .unwrap();
        assert_eq!(
            c.database.postgres.url(),
            "postgres://dragon%20fly:p%40ss%3Aw%2Frd@127.0.0.1:5433/manager?sslmode=disable"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = ManagerConfig::parse("server:\n  rest:\n    adr: ':8080'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `adr`"), "{e}");
        let e = ManagerConfig::parse("server:\n  rest:\n    addr: 'nowhere'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.rest.addr"), "{e}");
        let e = ManagerConfig::parse("database:\n  type: postgres\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("database.postgres.user"), "{e}");
        let e = ManagerConfig::parse("auth:\n  jwt:\n    timeout: soon\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.jwt.timeout"), "{e}");
        let c = ManagerConfig::parse("auth:\n  jwt:\n    timeout: 1h30m\n").unwrap();
        assert_eq!(c.auth.jwt.timeout, Duration::from_secs(5400));
    }
}
