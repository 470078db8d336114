//! FUSE sessions that outlive the process serving them.
//!
//! A FUSE mount lives as long as some process holds its `/dev/fuse` descriptor. If the serving
//! process hands a duplicate of that descriptor to another process (a holder, or systemd's file
//! descriptor store) and then dies, the mount stays: requests wait in the kernel, and a new
//! process that receives the descriptor can [`adopt`] it and serve them. Requests the dead
//! process had read but not answered are queued again with [`resend`] (Linux ≥ 6.9), so a reader
//! sees a delay, not an error.
//!
//! `fuser` has no call that serves a connection whose INIT was already negotiated:
//! `Session::from_fd` waits for an INIT request first. [`adopt`] satisfies that handshake from a
//! socket pair holding one synthetic INIT request, then puts the real device under the same
//! descriptor number (`dup3`) before the session's loop reads from it. The kernel's side keeps
//! what was negotiated at mount time; a filesystem whose `init` changes its own state is not
//! supported by this (ours keep none).

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use fuser::Filesystem;

/// `FUSE_INIT`.
const OP_INIT: u32 = 26;
/// `FUSE_NOTIFY_RESEND`.
const NOTIFY_RESEND: i32 = 7;

/// Mounts `fs` at `mountpoint` and serves it in the background, like `fuser::spawn_mount`, and
/// also returns a duplicate of the mount's `/dev/fuse` descriptor (the same open file), to keep
/// the mount alive beyond this process.
///
/// As root the mount is made here with mount(2), so no `fuser` mount guard comes with the
/// session: ending or dropping the session never unmounts (a process that stops leaves its
/// mounts to the next one; unmounting is the caller's business, with [`crate::blobfs::unmount`]).
/// Without the privilege (or with options this does not map), `fuser` mounts it, with its
/// guard.
pub fn mount<FS: Filesystem + Send + 'static>(
    fs: FS,
    mountpoint: &Path,
    config: &fuser::Config,
) -> io::Result<(fuser::BackgroundSession, OwnedFd)> {
    let dev = match kernel_mount(mountpoint, config) {
        Ok(dev) => dev,
        Err(e)
            if e.kind() == io::ErrorKind::PermissionDenied
                || e.kind() == io::ErrorKind::Unsupported =>
        {
            let session = fuser::Session::new(fs, mountpoint, config)?;
            let dev = session.as_fd().try_clone_to_owned()?;
            return Ok((session.spawn()?, dev));
        }
        Err(e) => return Err(e),
    };
    // The kernel queued INIT at mount time: the session's handshake answers it.
    let session = fuser::Session::from_fd(fs, dev.try_clone()?, config.acl, config.clone())
        .and_then(|s| s.spawn());
    match session {
        Ok(session) => Ok((session, dev)),
        Err(e) => {
            let _ = rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH);
            Err(e)
        }
    }
}

/// Opens `/dev/fuse` and mounts a FUSE filesystem on it at `mountpoint` with the options of
/// `config` (those our mounts use: read-only, name, type, default permissions, access by
/// others); the device. `Unsupported` for other options.
fn kernel_mount(mountpoint: &Path, config: &fuser::Config) -> io::Result<OwnedFd> {
    use fuser::MountOption as O;
    use rustix::mount::MountFlags;
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
    let (mut source, mut fstype) = ("fuse".to_string(), "fuse".to_string());
    let mut extra = String::new();
    for o in &config.mount_options {
        match o {
            O::RO => flags |= MountFlags::RDONLY,
            O::FSName(n) => source = n.clone(),
            O::Subtype(t) => fstype = format!("fuse.{t}"),
            O::DefaultPermissions => extra.push_str(",default_permissions"),
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("mount option {other:?}"),
                ))
            }
        }
    }
    match config.acl {
        fuser::SessionACL::All => extra.push_str(",allow_other"),
        fuser::SessionACL::RootAndOwner => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "access for root and owner",
            ))
        }
        _ => {}
    }
    if [&source, &fstype].iter().any(|s| s.contains([',', '\0'])) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("FUSE name {source:?} or type {fstype:?} has a comma or NUL"),
        ));
    }
    let root = rustix::fs::stat(mountpoint).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("{}: {e}", mountpoint.display()),
        )
    })?;
    let dev = rustix::fs::open(
        "/dev/fuse",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("/dev/fuse: {e}")))?;
    let data = format!(
        "fd={},rootmode={:o},user_id={},group_id={}{extra}",
        dev.as_raw_fd(),
        rustix::fs::FileType::from_raw_mode(root.st_mode).as_raw_mode(),
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    let data = std::ffi::CString::new(data).map_err(|_| io::Error::other("NUL in mount data"))?;
    rustix::mount::mount(
        source.as_str(),
        mountpoint,
        fstype.as_str(),
        flags,
        Some(data.as_c_str()),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("mount -t {fstype} on {}: {e}", mountpoint.display()),
        )
    })?;
    Ok(dev)
}

/// Serves `fs` on `dev`, the `/dev/fuse` descriptor of a mount whose INIT was answered by an
/// earlier process. The mount is not unmounted when the returned session ends.
pub fn adopt<FS: Filesystem + Send + 'static>(
    fs: FS,
    dev: OwnedFd,
    config: &fuser::Config,
) -> io::Result<fuser::BackgroundSession> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::io::write(&ours, &init_request())?;
    let number = theirs.as_raw_fd();
    let session = fuser::Session::from_fd(fs, theirs, config.acl, config.clone())?;
    // SAFETY: `number` is the descriptor the session now owns (it was `theirs`); this borrows
    // it as an `OwnedFd` only to replace what it refers to, and never closes it.
    let mut slot = ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(number) });
    rustix::io::dup3(&dev, &mut slot, rustix::io::DupFlags::CLOEXEC)?;
    drop(dev);
    session.spawn()
}

/// Asks the kernel to queue again the requests of this connection that were read but not
/// answered (by a process that died). Linux ≥ 6.9; older kernels answer an error.
pub fn resend(dev: BorrowedFd<'_>) -> io::Result<()> {
    let mut msg = [0u8; 16];
    msg[0..4].copy_from_slice(&16u32.to_ne_bytes());
    msg[4..8].copy_from_slice(&NOTIFY_RESEND.to_ne_bytes());
    // unique = 0: a notification.
    let n = rustix::io::write(dev, &msg)?;
    if n != msg.len() {
        return Err(io::Error::other("short write of FUSE_NOTIFY_RESEND"));
    }
    Ok(())
}

/// Whether `dev` still belongs to a live FUSE connection (not unmounted or aborted).
pub fn is_connected(dev: BorrowedFd<'_>) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(&dev, PollFlags::empty())];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(0) => true,
        Ok(_) => !fds[0]
            .revents()
            .intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL),
        Err(_) => false,
    }
}

/// A FUSE INIT request (header + `fuse_init_in`, ABI 7.31, no capabilities).
fn init_request() -> [u8; 104] {
    let mut m = [0u8; 104];
    let put =
        |m: &mut [u8; 104], at: usize, v: u32| m[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    put(&mut m, 0, 104); // len
    put(&mut m, 4, OP_INIT); // opcode
    m[8..16].copy_from_slice(&1u64.to_ne_bytes()); // unique
                                                   // nodeid, uid, gid, pid, padding: 0
    put(&mut m, 40, 7); // major
    put(&mut m, 44, 31); // minor
    put(&mut m, 48, 128 * 1024); // max_readahead
    m
}
