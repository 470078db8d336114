//! Filesystem trees for image tests: generate a tree with every kind of entry and metadata, and
//! compare two trees on disk (content, metadata, xattrs, link structure) through plain syscalls,
//! independently of the code under test.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{mknodat, FileType, Mode, Timestamps, CWD};
use sha2::{Digest, Sha256};

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn set_times(path: &Path, sec: i64, nsec: i64) {
    let ts = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: ts,
            last_modification: ts,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
}

fn write(path: &Path, data: &[u8]) {
    fs::File::create(path)
        .and_then(|mut f| f.write_all(data))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// What [`generate`] should put in the tree.
#[derive(Debug, Clone, Copy)]
pub struct TreeSpec {
    /// Entries in the big directory.
    pub big_dir_entries: usize,
    /// Size of the large file (pseudo-random with a repeated second half).
    pub large_file: usize,
    /// Depth of the deep path.
    pub depth: usize,
}

impl Default for TreeSpec {
    fn default() -> Self {
        TreeSpec {
            big_dir_entries: 10_000,
            large_file: 24 << 20,
            depth: 40,
        }
    }
}

/// Fills `root` (created if missing) with regular, empty, sparse and large files, a big
/// directory, a deep path, long names, symlinks, hardlinks, device nodes, fifos, xattrs
/// (`user.`, `trusted.`, `security.capability`), odd modes, large ids and sub-second mtimes.
/// Needs root (devices, ownership, trusted xattrs).
pub fn generate(root: &Path, spec: TreeSpec) {
    fs::create_dir_all(root).unwrap();
    let p = |rel: &str| root.join(rel);
    write(&p("hello.txt"), b"hello, world\n");
    write(&p("empty"), b"");
    // Sparse: holes around a little data.
    {
        let f = fs::File::create(p("sparse")).unwrap();
        f.set_len(9 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"data in the middle", 4 << 20).unwrap();
    }
    // Large: random first half, the second half repeats the first (dedup within a file).
    let half = pseudo_random(7, spec.large_file / 2);
    let mut large = half.clone();
    large.extend_from_slice(&half);
    large.extend_from_slice(b"odd tail");
    write(&p("large.bin"), &large);
    // A copy under another name (dedup across files) and a file of one repeated byte.
    write(&p("large-copy.bin"), &large);
    write(&p("zeros"), &vec![0u8; 3 << 20]);
    // Big directory.
    fs::create_dir(p("many")).unwrap();
    for i in 0..spec.big_dir_entries {
        write(
            &root.join(format!("many/f{i:05}")),
            format!("{i}\n").as_bytes(),
        );
    }
    // Deep path.
    let mut deep = p("deep");
    for i in 0..spec.depth {
        deep.push(format!("d{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    write(&deep.join("bottom.txt"), b"bottom\n");
    // Long names (255 bytes, and multi-byte UTF-8).
    let long = "n".repeat(255);
    write(&root.join(&long), b"long name\n");
    write(&p("ünïcödé-名前.txt"), "utf-8\n".as_bytes());
    // Symlinks: relative, absolute, dangling, long target, to a directory.
    symlink("hello.txt", p("link-rel")).unwrap();
    symlink("/etc/passwd", p("link-abs")).unwrap();
    symlink("does/not/exist", p("link-dangling")).unwrap();
    symlink("t".repeat(3000), p("link-long")).unwrap();
    symlink("many", p("link-dir")).unwrap();
    // Hardlinks (three names, one in another directory).
    write(&p("hl-a"), b"shared by three names\n");
    fs::hard_link(p("hl-a"), p("hl-b")).unwrap();
    fs::create_dir(p("hl-dir")).unwrap();
    fs::hard_link(p("hl-a"), p("hl-dir/hl-c")).unwrap();
    // Devices and a fifo.
    fs::create_dir(p("dev")).unwrap();
    mknodat(
        CWD,
        p("dev/null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .expect("mknod char device (needs root)");
    mknodat(
        CWD,
        p("dev/loopish"),
        FileType::BlockDevice,
        Mode::from_raw_mode(0o660),
        rustix::fs::makedev(7, 300),
    )
    .expect("mknod block device");
    mknodat(
        CWD,
        p("dev/fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    // Xattrs.
    set_xattr(&p("hello.txt"), "user.greeting", b"hi");
    set_xattr(&p("hello.txt"), "user.empty", b"");
    set_xattr(&p("large.bin"), "trusted.note", &pseudo_random(3, 300));
    // security.capability: cap_net_bind_service+ep (VFS_CAP_REVISION_2).
    let cap = [0u8, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    set_xattr(&p("hl-a"), "security.capability", &cap);
    set_xattr(&p("many"), "user.dir", b"on a directory");
    // Odd modes and ids.
    for (name, mode) in [
        ("setuid", 0o4755),
        ("sticky-dir", 0o1777),
        ("nothing", 0o000),
        ("all", 0o777),
        ("setgid", 0o2711),
    ] {
        let path = p(name);
        if name.ends_with("dir") {
            fs::create_dir(&path).unwrap();
        } else {
            write(&path, name.as_bytes());
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
    rustix::fs::chownat(
        CWD,
        p("hello.txt"),
        Some(rustix::process::Uid::from_raw(100_000)),
        Some(rustix::process::Gid::from_raw(70_000)),
        rustix::fs::AtFlags::empty(),
    )
    .unwrap();
    rustix::fs::chownat(
        CWD,
        p("link-rel"),
        Some(rustix::process::Uid::from_raw(42)),
        Some(rustix::process::Gid::from_raw(43)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    // Times: set last, deepest first so directories keep theirs.
    let mut all: Vec<PathBuf> = Vec::new();
    collect(root, &mut all);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, path) in all.iter().enumerate() {
        set_times(
            path,
            1_600_000_000 + i as i64,
            (i as i64 * 7_919) % 1_000_000_000,
        );
    }
    set_times(root, 1_500_000_000, 5);
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let is_dir = fs::symlink_metadata(&path).unwrap().is_dir();
        out.push(path.clone());
        if is_dir {
            collect(&path, out);
        }
    }
}

/// What to compare besides names, types and contents.
#[derive(Debug, Clone, Copy)]
pub struct Compare {
    /// Mode, uid and gid.
    pub ownership: bool,
    /// Modification times (seconds and nanoseconds) of everything but the root.
    pub mtime: bool,
    /// Extended attributes.
    pub xattrs: bool,
    /// Which names are hardlinks of each other.
    pub hardlinks: bool,
    /// Metadata of the root directory itself.
    pub root_meta: bool,
    /// Leave `trusted.*` xattrs out (containerd 1.6 refuses them from layers: "admin attributes
    /// from archive not supported").
    pub skip_trusted_xattrs: bool,
}

impl Compare {
    /// Everything.
    pub const ALL: Compare = Compare {
        ownership: true,
        mtime: true,
        xattrs: true,
        hardlinks: true,
        root_meta: true,
        skip_trusted_xattrs: false,
    };
}

fn xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut list = vec![0u8; 65536];
    let n = match rustix::fs::llistxattr(path, &mut list[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return out,
        Err(e) => panic!("listxattr {}: {e}", path.display()),
    };
    for name in list[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let mut v = vec![0u8; 65536];
        let len = rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut v[..])
            .unwrap_or_else(|e| panic!("getxattr {}: {e}", path.display()));
        out.insert(name.to_vec(), v[..len].to_vec());
    }
    out
}

/// One line per entry describing it; two trees are equal when their lines are.
fn describe(root: &Path, cmp: Compare) -> (BTreeMap<String, String>, BTreeSet<Vec<String>>) {
    let mut lines = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let md =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        let name = format!("/{}", rel.display());
        let is_root = rel.as_os_str().is_empty();
        let ft = md.file_type();
        let mut d = String::new();
        use std::fmt::Write as _;
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let _ = write!(d, "{kind}");
        if cmp.ownership && (!is_root || cmp.root_meta) {
            let _ = write!(
                d,
                " mode={:o} uid={} gid={}",
                md.mode() & 0o7777,
                md.uid(),
                md.gid()
            );
        }
        if cmp.mtime && !is_root && !ft.is_symlink() {
            let _ = write!(d, " mtime={}.{:09}", md.mtime(), md.mtime_nsec());
        }
        if ft.is_file() {
            let data = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            let _ = write!(d, " size={} sha256={:x}", data.len(), Sha256::digest(&data));
            if md.nlink() > 1 {
                inodes
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .push(name.clone());
            }
        }
        if ft.is_symlink() {
            let t = fs::read_link(&path).unwrap();
            let _ = write!(d, " -> {}", t.display());
        }
        if ft.is_char_device() || ft.is_block_device() {
            let _ = write!(
                d,
                " rdev={}:{}",
                rustix::fs::major(md.rdev()),
                rustix::fs::minor(md.rdev())
            );
        }
        if cmp.xattrs && (!is_root || cmp.root_meta) {
            for (k, v) in xattrs(&path) {
                if cmp.skip_trusted_xattrs && k.starts_with(b"trusted.") {
                    continue;
                }
                let _ = write!(
                    d,
                    " xattr[{}]={:x}",
                    String::from_utf8_lossy(&k),
                    Sha256::digest(&v)
                );
            }
        }
        lines.insert(name, d);
        if ft.is_dir() {
            for e in fs::read_dir(&path).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
    }
    let groups = if cmp.hardlinks {
        inodes
            .into_values()
            .map(|mut v| {
                v.sort();
                v
            })
            .collect()
    } else {
        BTreeSet::new()
    };
    (lines, groups)
}

/// Compares two trees; on a difference, panics listing (up to 20 of) the differing entries.
pub fn assert_same_tree(expected: &Path, actual: &Path, cmp: Compare) {
    let (a, ga) = describe(expected, cmp);
    let (b, gb) = describe(actual, cmp);
    let mut diffs = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None => diffs.push(format!("missing {k}: {v}")),
            Some(w) if w != v => diffs.push(format!("{k}:\n    expected {v}\n    actual   {w}")),
            _ => {}
        }
    }
    for (k, v) in &b {
        if !a.contains_key(k) {
            diffs.push(format!("unexpected {k}: {v}"));
        }
    }
    if ga != gb {
        diffs.push(format!(
            "hardlink groups differ: expected {ga:?}, actual {gb:?}"
        ));
    }
    if !diffs.is_empty() {
        let n = diffs.len();
        diffs.truncate(20);
        panic!(
            "{} and {} differ in {n} entries:\n{}",
            expected.display(),
            actual.display(),
            diffs.join("\n")
        );
    }
}
