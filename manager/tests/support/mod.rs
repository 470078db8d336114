//! A real PostgreSQL server for the manager's tests: `initdb` into a fresh directory owned by
//! the `postgres` user, the server bound to 127.0.0.1 on a free port (its socket in that
//! directory), stopped by PID when dropped. Needs root and Debian's `postgresql` package
//! (`hack/setup.sh` installs it); a test fails with a message saying which is missing.

use std::os::unix::process::CommandExt;
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
