//! Keeps the `/dev/fuse` descriptors of image mounts while dfdaemon is down, so a mount survives
//! a crash, `kill -9` or an upgrade of dfdaemon (see [`nydus::takeover`]).
//!
//! Two keepers:
//! - **systemd's file descriptor store**, when dfdaemon runs under systemd with `NOTIFY_SOCKET`
//!   and `FDSTORE` set (systemd ≥ 254, a unit with `FileDescriptorStoreMax=` and
//!   `NotifyAccess=main`): descriptors are stored with
//!   `FDSTORE=1`/`FDNAME=` and come back at the next start in `LISTEN_FDS`/`LISTEN_FDNAMES`.
//! - **a holder process** otherwise: `dfdaemon --fd-holder`, started by dfdaemon on a unix
//!   socket (SOCK_SEQPACKET, mode 0600) under `runtime.mountRoot`. It only keeps descriptors.
//!   It greets a connection with `HELLO` (or `BUSY`), then answers `PUT <name>` with one
//!   descriptor, `DEL <name>`, `LIST` (answered by `FD <name>` with each
//!   descriptor, then `END`). It serves one dfdaemon at a time (others get `BUSY`) and exits when
//!   its dfdaemon disconnects holding nothing.

use std::collections::BTreeMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Largest message of the holder protocol.
const MAX_MESSAGE: usize = 4096;

/// Where descriptors are kept.
pub enum Keeper {
    Holder(HolderClient),
    Systemd(SystemdStore),
}

impl Keeper {
    /// The keeper for this process, and the descriptors it kept from an earlier dfdaemon, by
    /// name. Under systemd with a descriptor store, the store; else the holder process at
    /// `<mount_root>/.fd-holder.sock`, started if none runs.
    pub fn open(mount_root: &Path) -> io::Result<(Keeper, BTreeMap<String, OwnedFd>)> {
        // systemd sets FDSTORE (≥ 254) when the unit has FileDescriptorStoreMax > 0.
        let store_max = std::env::var("FDSTORE")
            .ok()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0);
        if let (Some(socket), true) = (std::env::var_os("NOTIFY_SOCKET"), store_max > 0) {
            let (store, fds) = SystemdStore::open(socket.into())?;
            return Ok((Keeper::Systemd(store), fds));
        }
        let (client, fds) = HolderClient::connect_or_start(mount_root)?;
        Ok((Keeper::Holder(client), fds))
    }

    /// Keeps `fd` under `name` (replacing what was kept under it).
    pub fn put(&self, name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        match self {
            Keeper::Holder(h) => h.request(&format!("PUT {name}"), Some(fd)),
            Keeper::Systemd(s) => s.notify(&format!("FDSTORE=1\nFDNAME={name}"), Some(fd)),
        }
    }

    /// Forgets (closes) what was kept under `name`.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match self {
            Keeper::Holder(h) => h.request(&format!("DEL {name}"), None),
            Keeper::Systemd(s) => s.notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), None),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Keeper::Holder(h) => format!("holder process {} ({})", h.pid, h.socket.display()),
            Keeper::Systemd(_) => "systemd's file descriptor store".into(),
        }
    }
}

/// Sends `text` (and `fd`) as one message.
fn send(sock: BorrowedFd<'_>, text: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    rustix::net::sendmsg(
        sock,
        &[IoSlice::new(text.as_bytes())],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Receives one message and the descriptors sent with it; `None` at end of stream.
fn recv(sock: BorrowedFd<'_>) -> io::Result<Option<(String, Vec<OwnedFd>)>> {
    let mut buf = [0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let r = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(got) = m {
            fds.extend(got);
        }
    }
    if r.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    let text = std::str::from_utf8(&buf[..r.bytes])
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "message is not UTF-8"))?;
    Ok(Some((text.to_string(), fds)))
}

fn seqpacket() -> io::Result<OwnedFd> {
    use rustix::net::{socket_with, AddressFamily, SocketFlags, SocketType};
    Ok(socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// dfdaemon's connection to its holder process.
pub struct HolderClient {
    conn: Mutex<OwnedFd>,
    pid: u32,
    socket: PathBuf,
}

impl HolderClient {
    /// Connects to the holder at `<mount_root>/.fd-holder.sock` and takes the list of what it
    /// keeps, or starts a holder (`dfdaemon --fd-holder`, pid in `.fd-holder.pid`).
    pub fn connect_or_start(mount_root: &Path) -> io::Result<(Self, BTreeMap<String, OwnedFd>)> {
        std::fs::create_dir_all(mount_root)?;
        let socket = mount_root.join(".fd-holder.sock");
        let pid_file = mount_root.join(".fd-holder.pid");
        let addr = rustix::net::SocketAddrUnix::new(&socket)?;
        let conn = seqpacket()?;
        let pid = match rustix::net::connect(&conn, &addr) {
            Ok(()) => std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
            Err(rustix::io::Errno::CONNREFUSED | rustix::io::Errno::NOENT) => {
                let _ = std::fs::remove_file(&socket);
                let listener = seqpacket()?;
                rustix::net::bind(&listener, &addr)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
                rustix::net::listen(&listener, 4)?;
                let exe = std::env::current_exe()?;
                // Its own process group: a stop that signals dfdaemon's group (a terminal, an
                // init script) leaves it, and the mounts with it.
                use std::os::unix::process::CommandExt;
                let mut child = std::process::Command::new(exe)
                    .arg("--fd-holder")
                    .process_group(0)
                    .stdin(std::process::Stdio::from(listener))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .current_dir("/")
                    .spawn()?;
                let pid = child.id();
                std::fs::write(&pid_file, format!("{pid}\n"))?;
                // Reap it if it exits while we run.
                std::thread::Builder::new()
                    .name("fd-holder-wait".into())
                    .spawn(move || {
                        let _ = child.wait();
                    })?;
                rustix::net::connect(&conn, &addr)?;
                pid
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", socket.display()),
                ))
            }
        };
        let client = HolderClient {
            conn: Mutex::new(conn),
            pid,
            socket,
        };
        let fds = client.list()?;
        Ok((client, fds))
    }

    fn list(&self) -> io::Result<BTreeMap<String, OwnedFd>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        // The holder speaks first: HELLO, or BUSY when it serves another dfdaemon.
        match recv(conn.as_fd())? {
            Some((text, _)) if text == "HELLO" => {}
            Some((text, _)) if text == "BUSY" => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another dfdaemon serves the mounts under {} (its holder {} is busy)",
                        self.socket.parent().unwrap_or(Path::new("/")).display(),
                        self.socket.display()
                    ),
                ));
            }
            Some((text, _)) => return Err(self.protocol(&text)),
            None => return Err(self.closed()),
        }
        send(conn.as_fd(), "LIST", None)?;
        let mut out = BTreeMap::new();
        loop {
            let Some((text, mut fds)) = recv(conn.as_fd())? else {
                return Err(self.closed());
            };
            if text == "END" {
                return Ok(out);
            }
            match (text.strip_prefix("FD "), fds.pop()) {
                (Some(name), Some(fd)) if fds.is_empty() => {
                    out.insert(name.to_string(), fd);
                }
                _ => return Err(self.protocol(&text)),
            }
        }
    }

    fn request(&self, text: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        send(conn.as_fd(), text, fd)?;
        match recv(conn.as_fd())? {
            Some((answer, _)) if answer == "OK" => Ok(()),
            Some((answer, _)) => Err(self.protocol(&answer)),
            None => Err(self.closed()),
        }
    }

    fn closed(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            format!("the fd holder at {} went away", self.socket.display()),
        )
    }

    fn protocol(&self, answer: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the fd holder at {} answered {answer:?}",
                self.socket.display()
            ),
        )
    }
}

/// The holder process: serves the listening socket it got as stdin until its dfdaemon
/// disconnects while it holds nothing.
pub fn serve_holder() -> io::Result<()> {
    use rustix::event::{poll, PollFd, PollFlags};
    // SAFETY: dfdaemon starts the holder with its listening socket as stdin, which nothing
    // else in this process uses.
    let listener = unsafe { OwnedFd::from_raw_fd(0) };
    let mut held: BTreeMap<String, OwnedFd> = BTreeMap::new();
    let mut client: Option<OwnedFd> = None;
    loop {
        let (listen_ready, client_ready) = {
            let mut fds = vec![PollFd::new(&listener, PollFlags::IN)];
            if let Some(c) = &client {
                fds.push(PollFd::new(c, PollFlags::IN));
            }
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            (
                !fds[0].revents().is_empty(),
                fds.get(1).is_some_and(|f| !f.revents().is_empty()),
            )
        };
        if client_ready {
            let c = client.take().expect("polled a client");
            // End of stream or an error: the client is gone.
            if let Ok(Some((text, fds))) = recv(c.as_fd()) {
                if answer(c.as_fd(), &mut held, &text, fds).is_ok() {
                    client = Some(c);
                }
            }
            if client.is_none() && held.is_empty() {
                return Ok(());
            }
        }
        if listen_ready {
            match rustix::net::accept_with(&listener, rustix::net::SocketFlags::CLOEXEC) {
                Ok(c) if client.is_some() => {
                    let _ = send(c.as_fd(), "BUSY", None);
                }
                Ok(c) => {
                    if send(c.as_fd(), "HELLO", None).is_ok() {
                        client = Some(c);
                    }
                }
                Err(_) => {}
            }
        }
    }
}

/// Answers one request of the holder protocol.
fn answer(
    c: BorrowedFd<'_>,
    held: &mut BTreeMap<String, OwnedFd>,
    text: &str,
    mut fds: Vec<OwnedFd>,
) -> io::Result<()> {
    if let Some(name) = text.strip_prefix("PUT ") {
        match (fds.pop(), fds.is_empty()) {
            (Some(fd), true) => {
                held.insert(name.to_string(), fd);
                send(c, "OK", None)
            }
            _ => send(c, "ERR PUT needs exactly one descriptor", None),
        }
    } else if let Some(name) = text.strip_prefix("DEL ") {
        held.remove(name);
        send(c, "OK", None)
    } else if text == "LIST" {
        // Connections that ended (unmounted meanwhile) are dropped.
        held.retain(|_, fd| nydus::takeover::is_connected(fd.as_fd()));
        for (name, fd) in held.iter() {
            send(c, &format!("FD {name}"), Some(fd.as_fd()))?;
        }
        send(c, "END", None)
    } else {
        send(c, "ERR unknown request", None)
    }
}

/// systemd's file descriptor store.
pub struct SystemdStore {
    socket: PathBuf,
}

impl SystemdStore {
    /// The store at `NOTIFY_SOCKET`, and the descriptors systemd passed to this process
    /// (`LISTEN_FDS` from fd 3, named by `LISTEN_FDNAMES`, for `LISTEN_PID`).
    fn open(socket: PathBuf) -> io::Result<(Self, BTreeMap<String, OwnedFd>)> {
        let mut fds = BTreeMap::new();
        let ours = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            == Some(std::process::id());
        let count: i32 = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if ours && (0..=1024).contains(&count) {
            let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
            let names: Vec<&str> = names.split(':').collect();
            for i in 0..count {
                // SAFETY: systemd passes `count` descriptors from 3 on to this process (LISTEN_PID
                // is ours); nothing else in it has used them.
                let fd = unsafe { OwnedFd::from_raw_fd(3 + i) };
                rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
                let name = names.get(i as usize).copied().unwrap_or("unknown");
                fds.insert(name.to_string(), fd);
            }
        }
        Ok((SystemdStore { socket }, fds))
    }

    fn notify(&self, text: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        use rustix::net::{socket_with, AddressFamily, SocketFlags, SocketType};
        let sock = socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        let path = self.socket.as_os_str().as_encoded_bytes();
        let addr = match path.strip_prefix(b"@") {
            Some(abstract_name) => rustix::net::SocketAddrUnix::new_abstract_name(abstract_name)?,
            None => rustix::net::SocketAddrUnix::new(&self.socket)?,
        };
        rustix::net::connect(&sock, &addr)?;
        send(sock.as_fd(), text, fd)
    }
}
