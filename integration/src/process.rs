//! Daemons started by a test: own session, log file, PID kept, stopped on drop.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, kill_process_group, waitid, Pid, WaitId, WaitIdOptions};

pub use rustix::process::Signal;

use crate::{Error, Result, TestDir};

/// How long [`ChildProcess`]'s drop (and [`ChildProcess::stop`]) waits after SIGTERM before
/// SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

const POLL: Duration = Duration::from_millis(20);

/// A process started by the harness in its own session (`setsid`), with stdin from /dev/null and
/// stdout + stderr appended to a log file.
///
/// Drop sends SIGTERM, waits up to [`STOP_GRACE`], then SIGKILLs it; any process left in its
/// process group (helpers it forked without a new session) is SIGKILLed before the leader is
/// reaped. If the test is panicking, the tail of the log is printed to stderr, so a failed test
/// shows what the daemon said.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    started: Instant,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    /// Spawns `cmd` with its output in `<dir>/logs/<name>.log`.
    pub fn spawn(dir: &TestDir, name: &str, cmd: Command) -> Result<ChildProcess> {
        Self::spawn_with_log(name, cmd, &dir.logs_dir().join(format!("{name}.log")))
    }

    /// Spawns `cmd` with its output appended to `log_path`.
    pub fn spawn_with_log(name: &str, mut cmd: Command, log_path: &Path) -> Result<ChildProcess> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| Error::io("open log", log_path, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io("dup log fd", log_path, e))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        // SAFETY: the closure runs in the forked child before exec and only makes the setsid
        // system call, which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| rustix::process::setsid().map(drop).map_err(Into::into));
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .spawn()
            .map_err(|source| Error::Spawn { program, source })?;
        Ok(ChildProcess {
            name: name.to_string(),
            child,
            log_path: log_path.to_path_buf(),
            started: Instant::now(),
            status: None,
        })
    }

    /// The name given at spawn (used in messages and the log file name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process ID (also its session and process-group ID).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When it was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far (lossy UTF-8; empty if it cannot be read).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// Sends `sig` to the process. Fails if it has already been reaped (its PID may be reused).
    pub fn kill(&self, sig: Signal) -> std::io::Result<()> {
        let pid = self.live_pid()?;
        kill_process(pid, sig).map_err(Into::into)
    }

    /// Sends `sig` to the process's whole process group.
    pub fn kill_group(&self, sig: Signal) -> std::io::Result<()> {
        let pid = self.live_pid()?;
        kill_process_group(pid, sig).map_err(Into::into)
    }

    /// SIGKILL to the process (a crash, as far as the daemon is concerned).
    pub fn kill9(&self) -> std::io::Result<()> {
        self.kill(Signal::KILL)
    }

    /// Its exit status, if it has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
            }
        }
        self.status
    }

    /// True while it has not exited.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits up to `timeout` for it to exit; its status, or `None` if still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL; returns the exit status. Same as drop,
    /// but async and callable mid-test (e.g. to restart a daemon).
    pub async fn stop(&mut self) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let _ = self.kill(Signal::TERM);
        let deadline = Instant::now() + STOP_GRACE;
        while !self.exited_unreaped() && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        self.finish_blocking()
    }

    /// If it has exited: an [`Error::DaemonExited`] saying so, with `context` and the log tail.
    pub fn exited_error(&mut self, context: &str) -> Option<Error> {
        let status = self.try_wait()?;
        Some(Error::DaemonExited {
            name: self.name.clone(),
            status,
            context: context.to_string(),
            log: self.log_path.clone(),
            tail: self.log_tail(30),
        })
    }

    fn live_pid(&self) -> std::io::Result<Pid> {
        if self.status.is_some() {
            return Err(std::io::Error::other(format!(
                "{} (pid {}) has already exited",
                self.name,
                self.child.id()
            )));
        }
        pid_of(self.child.id())
    }

    /// True if the process has exited, without reaping it (so its PID stays ours).
    fn exited_unreaped(&self) -> bool {
        let Ok(pid) = pid_of(self.child.id()) else {
            return true;
        };
        let opts = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        !matches!(waitid(WaitId::Pid(pid), opts), Ok(None))
    }

    /// SIGKILL if still running, SIGKILL what is left of its group, reap. Blocks at most a few
    /// seconds (SIGKILL is not ignorable).
    fn finish_blocking(&mut self) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let pid = pid_of(self.child.id()).ok()?;
        if !self.exited_unreaped() {
            let _ = kill_process(pid, Signal::KILL);
            let deadline = Instant::now() + STOP_GRACE;
            while !self.exited_unreaped() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
        }
        // The leader is a zombie now (not reaped), so its PID, which is also the group ID,
        // cannot have been reused: the group holds only processes it started.
        let _ = kill_process_group(pid, Signal::KILL);
        self.status = self.child.wait().ok();
        self.status
    }

    fn stop_blocking(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        let _ = self.kill(Signal::TERM);
        let deadline = Instant::now() + STOP_GRACE;
        while !self.exited_unreaped() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        self.finish_blocking();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop_blocking();
        if std::thread::panicking() {
            eprintln!(
                "---- {} (pid {}) log tail, {} ----\n{}",
                self.name,
                self.child.id(),
                self.log_path.display(),
                self.log_tail(40)
            );
        }
    }
}

fn pid_of(raw: u32) -> std::io::Result<Pid> {
    i32::try_from(raw)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("invalid pid {raw}")))
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[tokio::test]
    async fn spawn_log_stop_and_group_kill() {
        let dir = TestDir::new("unit-process").expect("test dir");
        // The shell forks a background sleep into the same group; stop must take it down too.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; sleep 300 & echo $! > bg.pid; wait"])
            .current_dir(dir.path());
        let mut p = ChildProcess::spawn(&dir, "sh", cmd).expect("spawn");
        // The shell creates bg.pid before it writes the PID: wait for the whole line.
        crate::wait_for(Duration::from_secs(5), "bg.pid", || async {
            std::fs::read_to_string(dir.join("bg.pid")).is_ok_and(|s| s.ends_with('\n'))
                && p.log().contains("started")
        })
        .await
        .expect("child ran");
        let bg: i32 = std::fs::read_to_string(dir.join("bg.pid"))
            .expect("bg pid")
            .trim()
            .parse()
            .expect("numeric pid");
        assert!(p.is_running());
        let st = p.stop().await.expect("exit status");
        assert!(!st.success());
        // The background sleep was in the group: it must be gone (or a zombie of init).
        crate::wait_for(Duration::from_secs(5), "group member gone", || async {
            let stat = std::fs::read_to_string(format!("/proc/{bg}/stat")).unwrap_or_default();
            stat.is_empty() || stat.contains(") Z")
        })
        .await
        .expect("group member killed");
        assert!(p.kill(Signal::TERM).is_err(), "kill after reap must fail");
    }

    #[tokio::test]
    async fn wait_exit_reports_status() {
        let dir = TestDir::new("unit-process-exit").expect("test dir");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo bye >&2; exit 3"]);
        let mut p = ChildProcess::spawn(&dir, "exit3", cmd).expect("spawn");
        let st = p.wait_exit(Duration::from_secs(5)).await.expect("exits");
        assert_eq!(st.code(), Some(3));
        let err = p.exited_error("during test").expect("exited");
        assert!(err.to_string().contains("bye"), "{err}");
    }
}
