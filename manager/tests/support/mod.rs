//! A real PostgreSQL server for the manager's tests: `initdb` into a fresh directory owned by
//! the `postgres` user, the server bound to 127.0.0.1 on a free port (its socket in that
//! directory), stopped by PID when dropped. Needs root and Debian's `postgresql` package
//! (`hack/setup.sh` installs it); a test fails with a message saying which is missing.

#![allow(dead_code)]

use manager::config::ManagerConfig;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    pub port: u16,
    pub user: String,
    child: Child,
    _dir: tempfile::TempDir,
}

/// The newest installed PostgreSQL's binaries.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .unwrap_or_else(|| panic!("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run hack/setup.sh as root"))
}

/// uid and gid of the `postgres` user.
fn postgres_user() -> (u32, u32) {
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .expect("run id");
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    let out = Command::new("id")
        .args(["-g", "postgres"])
        .output()
        .expect("run id");
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    match (uid, gid) {
        (Some(u), Some(g)) => (u, g),
        _ => panic!("no postgres user: install Debian's postgresql package (hack/setup.sh)"),
    }
}

impl Postgres {
    pub fn start() -> Postgres {
        assert!(
            rustix::process::geteuid().is_root(),
            "the PostgreSQL tests start a server as the postgres user: run them as root"
        );
        let bin = bin_dir();
        let (uid, gid) = postgres_user();
        let dir = tempfile::Builder::new()
            .prefix("dfrs-pg-")
            .tempdir()
            .unwrap();
        rustix::fs::chown(
            dir.path(),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .unwrap();
        let data = dir.path().join("data");
        let user = "dfrs".to_string();
        let out = Command::new(bin.join("initdb"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                &user,
                "--auth=trust",
                "-E",
                "UTF8",
            ])
            .uid(uid)
            .gid(gid)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).unwrap();
        let child = Command::new(bin.join("postgres"))
            .args(["-D", data.to_str().unwrap(), "-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(["-k", dir.path().to_str().unwrap(), "-c", "fsync=off"])
            .uid(uid)
            .gid(gid)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pg = Postgres {
            port,
            user,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let log = pg._dir.path().join("postgres.log");
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready to accept connections")
        {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start on 127.0.0.1:{port}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pg
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown.
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `$name(backend)` as two tests: `$name::sqlite` and `$name::postgres`.
/// Runs `$name(backend)` as two tests: `$name::sqlite` and `$name::postgres`. It names the
/// test crate's own `support` module (each test binary includes it).
#[macro_export]
#[allow(clippy::crate_in_macro_def)]
macro_rules! on_both {
    ($module:ident: $name:ident) => {
        mod $module {
            #[tokio::test]
            async fn sqlite() {
                super::$name(crate::support::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                let pg = crate::support::Postgres::start();
                super::$name(crate::support::Backend::Postgres(&pg)).await
            }
        }
    };
}

pub struct Manager {
    pub url: String,
    pub grpc: String,
    pub state: std::sync::Arc<manager::rest::AppState>,
    pub work: tempfile::TempDir,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Manager {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Which database a test runs on.
#[derive(Clone, Copy)]
pub enum Backend<'a> {
    Sqlite,
    Postgres(&'a Postgres),
}

pub fn config(work: &Path, b: Backend) -> ManagerConfig {
    let mut c = ManagerConfig::default();
    c.server.work_home = work.to_path_buf();
    if let Backend::Postgres(pg) = b {
        c.database.kind = manager::config::DatabaseKind::Postgres;
        c.database.postgres.user = pg.user.clone();
        c.database.postgres.port = pg.port;
        c.database.postgres.dbname = "postgres".into();
    }
    c
}

pub async fn start_in(work: tempfile::TempDir, b: Backend<'_>) -> Manager {
    start_with(work, b, |_| {}).await
}

/// A manager whose config `edit` changed.
pub async fn start_with(
    work: tempfile::TempDir,
    b: Backend<'_>,
    edit: impl FnOnce(&mut ManagerConfig),
) -> Manager {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = config(work.path(), b);
    edit(&mut cfg);
    let state = manager::prepare(&cfg).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stop_rx_oneshot) = tokio::sync::oneshot::channel::<()>();
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = format!("http://{}", grpc_listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(manager::serve_grpc(state.clone(), grpc_listener, stopped()));
    let rest_stopped = stopped();
    tokio::spawn(async move {
        let _ = stop_rx_oneshot.await;
        let _ = stop_tx.send(true);
    });
    tokio::spawn(manager::serve(state.clone(), listener, rest_stopped));
    Manager {
        url,
        grpc,
        state,
        work,
        stop: Some(stop),
    }
}

pub async fn start(b: Backend<'_>) -> Manager {
    start_in(tempfile::tempdir().unwrap(), b).await
}

pub fn root_password(work: &Path) -> String {
    std::fs::read_to_string(work.join("initial-root-password"))
        .unwrap()
        .trim()
        .to_string()
}

pub async fn signin(m: &Manager, name: &str, password: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/api/v1/users/signin", m.url))
        .json(&serde_json::json!({ "name": name, "password": password }))
        .send()
        .await
        .unwrap()
}

pub async fn root_session(m: &Manager) -> String {
    let r = signin(m, "root", &root_password(m.work.path())).await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    body["token"].as_str().unwrap().to_string()
}
