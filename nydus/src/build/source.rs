//! Reading a layer's files into a [`Tree`] and its data into a blob: from a directory on disk or
//! from an OCI layer tar stream (plain, gzip or zstd), without extracting anything to disk.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::blob::BlobWriter;
use super::BuildError;
use crate::tree::{display, Kind, Meta, Node, Tree};

/// Largest xattr list or value read from disk (the Linux limit is 64 KiB).
const XATTR_MAX: usize = 64 * 1024;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BuildError {
    let what = what.into();
    move |source| BuildError::Io { what, source }
}

/// Linux `new_encode_dev`, the device number form EROFS stores.
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Major and minor of an encoded device number.
pub fn decode_dev(dev: u32) -> (u32, u32) {
    ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

fn xattrs_of(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, BuildError> {
    let mut out = BTreeMap::new();
    let mut list = vec![0u8; XATTR_MAX];
    let n = match rustix::fs::llistxattr(path, &mut list[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(out),
        Err(e) => {
            return Err(io_err(format!("listing xattrs of {}", path.display()))(
                e.into(),
            ))
        }
    };
    let mut value = vec![0u8; XATTR_MAX];
    for name in list[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name_os = std::ffi::OsStr::from_bytes(name);
        match rustix::fs::lgetxattr(path, name_os, &mut value[..]) {
            Ok(len) => {
                out.insert(name.to_vec(), value[..len].to_vec());
            }
            // Removed between list and get.
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) => {
                return Err(io_err(format!(
                    "reading xattr {} of {}",
                    display(name),
                    path.display()
                ))(e.into()))
            }
        }
    }
    Ok(out)
}

fn meta_of(path: &Path, md: &fs::Metadata) -> Result<Meta, BuildError> {
    Ok(Meta {
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime().max(0) as u64,
        mtime_nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
        xattrs: xattrs_of(path)?,
    })
}

/// Adds everything under directory `root` (not following symlinks) to `tree`, file data to
/// `blob`. Hardlinked files (same device and inode) become hardlinks.
pub fn from_dir<W: Write>(
    root: &Path,
    tree: &mut Tree,
    blob: &mut BlobWriter<W>,
) -> Result<(), BuildError> {
    let md = fs::symlink_metadata(root).map_err(io_err(format!("reading {}", root.display())))?;
    if !md.is_dir() {
        return Err(BuildError::Invalid(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    tree.node_mut(Tree::ROOT).meta = meta_of(root, &md)?;
    let mut seen: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut stack: Vec<(std::path::PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(&dir)
            .map_err(io_err(format!("listing {}", dir.display())))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err(format!("listing {}", dir.display())))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let path = dir.join(&name);
            let mut rel_path = rel.clone();
            rel_path.push(b'/');
            rel_path.extend_from_slice(name.as_bytes());
            let md = fs::symlink_metadata(&path)
                .map_err(io_err(format!("reading {}", path.display())))?;
            let ft = md.file_type();
            if !ft.is_dir() && md.nlink() > 1 {
                if let Some(first) = seen.get(&(md.dev(), md.ino())) {
                    tree.link(&rel_path, first)?;
                    continue;
                }
                seen.insert((md.dev(), md.ino()), rel_path.clone());
            }
            let meta = meta_of(&path, &md)?;
            let rdev = || {
                let d = md.rdev();
                encode_dev(rustix::fs::major(d), rustix::fs::minor(d))
            };
            let kind = if ft.is_dir() {
                Kind::Dir(BTreeMap::new())
            } else if ft.is_file() {
                Kind::File {
                    size: md.len(),
                    chunks: Vec::new(),
                }
            } else if ft.is_symlink() {
                let target = fs::read_link(&path)
                    .map_err(io_err(format!("reading link {}", path.display())))?;
                Kind::Symlink(target.as_os_str().as_bytes().to_vec())
            } else if ft.is_char_device() {
                Kind::CharDev(rdev())
            } else if ft.is_block_device() {
                Kind::BlockDev(rdev())
            } else if ft.is_fifo() {
                Kind::Fifo
            } else {
                Kind::Socket
            };
            let is_file = matches!(kind, Kind::File { .. });
            let id = tree.insert(&rel_path, Node { meta, kind })?;
            if is_file && md.len() > 0 {
                let mut f =
                    fs::File::open(&path).map_err(io_err(format!("opening {}", path.display())))?;
                blob.add_file(tree, id, md.len(), &mut f)
                    .map_err(io_err(format!("reading {}", path.display())))?;
            }
            if ft.is_dir() {
                subdirs.push((path, rel_path));
            }
        }
        // Pre-order, sorted: push in reverse so the first name is expanded first.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// Compression of a layer stream, from its first bytes.
fn decompressed<'r>(reader: impl Read + 'r) -> Result<Box<dyn Read + 'r>, BuildError> {
    let mut r = BufReader::with_capacity(1 << 20, reader);
    let head = r.fill_buf().map_err(io_err("reading the layer"))?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(r).map_err(io_err("starting zstd"))?)
    } else {
        Box::new(r)
    })
}

/// Parses a PAX `mtime` value ("seconds[.fraction]") into seconds and nanoseconds.
fn pax_time(v: &[u8]) -> Option<(u64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut nsec = 0u32;
    for (i, c) in frac.bytes().take(9).enumerate() {
        if !c.is_ascii_digit() {
            return None;
        }
        nsec += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
    }
    Some((sec.max(0) as u64, nsec))
}

/// Adds the entries of an OCI layer tar stream (plain, gzip or zstd) to `tree`, file data to
/// `blob`. Whiteout files (`.wh.name`, `.wh..wh..opq`) are kept as entries, as Nydus keeps them
/// in a layer's bootstrap; [`Tree::apply_layer`] interprets them. Entries are applied in stream
/// order (a later entry replaces an earlier one at the same path); hardlinks must name an entry
/// that came earlier in the same layer.
pub fn from_tar<W: Write>(
    reader: impl Read,
    tree: &mut Tree,
    blob: &mut BlobWriter<W>,
) -> Result<(), BuildError> {
    let mut archive = tar::Archive::new(decompressed(reader)?);
    let entries = archive.entries().map_err(io_err("reading the layer tar"))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("reading the layer tar"))?;
        let path = entry.path_bytes().into_owned();
        let bad =
            |what: &str| BuildError::Invalid(format!("tar entry {:?}: {what}", display(&path)));
        let header = entry.header();
        let et = header.entry_type();
        let mut meta = Meta {
            perm: header.mode().map_err(|_| bad("invalid mode"))? & 0o7777,
            uid: u32::try_from(header.uid().map_err(|_| bad("invalid uid"))?)
                .map_err(|_| bad("uid above 2^32"))?,
            gid: u32::try_from(header.gid().map_err(|_| bad("invalid gid"))?)
                .map_err(|_| bad("gid above 2^32"))?,
            mtime: header.mtime().map_err(|_| bad("invalid mtime"))?,
            mtime_nsec: 0,
            xattrs: BTreeMap::new(),
        };
        let dev = || -> Result<u32, BuildError> {
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            if major > 0xfff || minor > 0xfffff {
                return Err(bad("device number out of range"));
            }
            Ok(encode_dev(major, minor))
        };
        let kind = match et {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                Kind::File {
                    size: entry.size(),
                    chunks: Vec::new(),
                }
            }
            tar::EntryType::Directory => Kind::Dir(BTreeMap::new()),
            tar::EntryType::Symlink => Kind::Symlink(
                entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("symlink without a target"))?
                    .into_owned(),
            ),
            tar::EntryType::Char => Kind::CharDev(dev()?),
            tar::EntryType::Block => Kind::BlockDev(dev()?),
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("hardlink without a target"))?
                    .into_owned();
                tree.link(&path, &target)?;
                continue;
            }
            // PAX and GNU long-name records are folded into entries by the tar crate.
            tar::EntryType::XGlobalHeader => continue,
            other => return Err(bad(&format!("unsupported entry type {other:?}"))),
        };
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(io_err("reading PAX headers"))?
        {
            for ext in exts {
                let ext = ext.map_err(io_err("reading PAX headers"))?;
                let key = ext.key_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    meta.xattrs
                        .insert(name.to_vec(), ext.value_bytes().to_vec());
                } else if key == b"mtime" {
                    if let Some((s, ns)) = pax_time(ext.value_bytes()) {
                        meta.mtime = s;
                        meta.mtime_nsec = ns;
                    }
                }
            }
        }
        let size = match kind {
            Kind::File { size, .. } => Some(size),
            _ => None,
        };
        let id = tree.insert(&path, Node { meta, kind })?;
        if let Some(size) = size.filter(|s| *s > 0) {
            blob.add_file(tree, id, size, &mut entry)
                .map_err(io_err(format!("reading {} from the tar", display(&path))))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_encode_like_linux() {
        assert_eq!(encode_dev(1, 3), 0x103);
        assert_eq!(encode_dev(259, 0x12345), 0x1231_0345);
        for (ma, mi) in [(0, 0), (1, 3), (8, 1), (259, 0x12345), (0xfff, 0xfffff)] {
            assert_eq!(decode_dev(encode_dev(ma, mi)), (ma, mi));
        }
    }

    #[test]
    fn pax_times_parse_with_fractions() {
        assert_eq!(
            pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(pax_time(b"12"), Some((12, 0)));
        assert_eq!(pax_time(b"-5.1"), Some((0, 100_000_000)));
        assert_eq!(pax_time(b"x"), None);
    }
}
