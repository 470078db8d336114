//! systemd's file descriptor store as a service's process meets it, for tests on machines
//! without systemd as init: a datagram socket (the service's `NOTIFY_SOCKET`) that takes
//! sd_notify messages, keeping the descriptors sent with `FDSTORE=1` under their `FDNAME=` and
//! dropping those named by `FDSTOREREMOVE=1`; the next process of the service gets them as
//! systemd passes them ([`crate::agent::Agent::restart_with_fds`]: from fd 3 on, with
//! `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID`).

use std::collections::BTreeMap;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use crate::{Error, Result};

/// The descriptor store of one service.
pub struct FdStore {
    path: PathBuf,
    fds: Arc<Mutex<BTreeMap<String, OwnedFd>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FdStore {
    /// Listens at `path` (the `NOTIFY_SOCKET` to give the service).
    pub fn bind(path: &Path) -> Result<FdStore> {
        let sock = UnixDatagram::bind(path).map_err(|e| Error::io("bind", path, e))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| Error::io("set timeout", path, e))?;
        let fds: Arc<Mutex<BTreeMap<String, OwnedFd>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (fds2, stop2) = (fds.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                if let Some((text, got)) = receive(&sock) {
                    apply(
                        &text,
                        got,
                        &mut fds2.lock().unwrap_or_else(|e| e.into_inner()),
                    );
                }
            }
        });
        Ok(FdStore {
            path: path.to_path_buf(),
            fds,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of the descriptors held.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Copies of the descriptors held, by name (systemd keeps its own).
    pub fn descriptors(&self) -> Result<Vec<(String, OwnedFd)>> {
        self.lock()
            .iter()
            .map(|(n, fd)| {
                fd.try_clone()
                    .map(|fd| (n.clone(), fd))
                    .map_err(|e| Error::io("dup", &self.path, e))
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, OwnedFd>> {
        self.fds.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FdStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One message and its descriptors, or `None` when none came in time.
fn receive(sock: &UnixDatagram) -> Option<(String, Vec<OwnedFd>)> {
    let mut buf = [0u8; 4096];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let r = rustix::net::recvmsg(
        sock.as_fd(),
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .ok()?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(got) = m {
            fds.extend(got);
        }
    }
    Some((String::from_utf8_lossy(&buf[..r.bytes]).into_owned(), fds))
}

/// Applies an sd_notify message to the store, as systemd does.
fn apply(text: &str, fds: Vec<OwnedFd>, store: &mut BTreeMap<String, OwnedFd>) {
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            vars.insert(k, v);
        }
    }
    let name = vars.get("FDNAME").copied().unwrap_or("stored").to_string();
    if vars.get("FDSTORE") == Some(&"1") {
        if let Some(fd) = fds.into_iter().next() {
            store.insert(name, fd);
        }
    } else if vars.get("FDSTOREREMOVE") == Some(&"1") {
        store.remove(&name);
    }
}
