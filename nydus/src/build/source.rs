//! Reading a layer's files into a [`Tree`] and its data into a blob: from a directory on disk or
//! from an OCI layer tar stream (plain, gzip or zstd), without extracting anything to disk.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::blob::BlobWriter;
use super::tarstream::TarStream;
use super::BuildError;
use crate::tree::{display, Kind, Meta, Node, Tree, LOWER_HARDLINK_XATTR};

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
    let xattrs = xattrs_of(path)?;
    if xattrs.contains_key(LOWER_HARDLINK_XATTR) {
        return Err(reserved_xattr(&path.display().to_string()));
    }
    Ok(Meta {
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime().max(0) as u64,
        mtime_nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
        xattrs,
    })
}

/// The error for a source entry carrying the xattr this builder reserves for lower-layer
/// hardlink placeholders (accepting it would turn the file into a hardlink at merge).
fn reserved_xattr(what: &str) -> BuildError {
    BuildError::Invalid(format!(
        "{what}: xattr {} is reserved for hardlinks to lower layers",
        display(LOWER_HARDLINK_XATTR)
    ))
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
                // Not following links and not blocking on a fifo: if the name was swapped
                // since it was examined, the open fails or the identity check below does.
                let mut f = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(
                        (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
                    )
                    .open(&path)
                    .map_err(io_err(format!("opening {}", path.display())))?;
                let now = f
                    .metadata()
                    .map_err(io_err(format!("reading {}", path.display())))?;
                if (now.dev(), now.ino()) != (md.dev(), md.ino()) || !now.file_type().is_file() {
                    return Err(BuildError::Invalid(format!(
                        "{} was replaced while the layer was being built",
                        path.display()
                    )));
                }
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
pub fn decompressed<'r>(reader: impl Read + 'r) -> Result<Box<dyn Read + 'r>, BuildError> {
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

/// Adds the entries of an OCI layer tar stream (plain, gzip or zstd) to `tree`, file data to
/// `blob`. Whiteout files (`.wh.name`, `.wh..wh..opq`) are kept as entries, as Nydus keeps them
/// in a layer's bootstrap; [`Tree::apply_layer`] interprets them. Entries are applied in stream
/// order (a later entry replaces an earlier one at the same path); a hardlink names an entry that
/// came earlier in the same layer, or else a file of a lower layer, kept as a
/// [`LOWER_HARDLINK_XATTR`] placeholder that the merge resolves.
pub fn from_tar<W: Write>(
    reader: impl Read,
    tree: &mut Tree,
    blob: &mut BlobWriter<W>,
) -> Result<(), BuildError> {
    let mut stream = TarStream::new(decompressed(reader)?);
    let read_err = |source| BuildError::Io {
        what: "reading the layer tar".into(),
        source,
    };
    while let Some(h) = stream.next_header().map_err(read_err)? {
        let path = h.path.clone();
        let bad =
            |what: &str| BuildError::Invalid(format!("tar entry {:?}: {what}", display(&path)));
        if h.xattrs.contains_key(LOWER_HARDLINK_XATTR) {
            return Err(reserved_xattr(&format!("tar entry {:?}", display(&path))));
        }
        let meta = Meta {
            perm: h.mode & 0o7777,
            uid: u32::try_from(h.uid).map_err(|_| bad("uid above 2^32"))?,
            gid: u32::try_from(h.gid).map_err(|_| bad("gid above 2^32"))?,
            mtime: h.mtime.0,
            mtime_nsec: h.mtime.1,
            xattrs: h.xattrs.clone(),
        };
        let dev = || -> Result<u32, BuildError> {
            let (major, minor) = h.dev;
            if major > 0xfff || minor > 0xfffff {
                return Err(bad("device number out of range"));
            }
            Ok(encode_dev(major, minor))
        };
        let kind = match h.typeflag {
            b'0' | 0 | b'7' => Kind::File {
                size: h.size,
                chunks: Vec::new(),
            },
            b'5' => Kind::Dir(BTreeMap::new()),
            b'2' => {
                if h.link.is_empty() {
                    return Err(bad("symlink without a target"));
                }
                Kind::Symlink(h.link.clone())
            }
            b'3' => Kind::CharDev(dev()?),
            b'4' => Kind::BlockDev(dev()?),
            b'6' => Kind::Fifo,
            b'1' => {
                if tree.lookup(&h.link).is_some() {
                    tree.link(&path, &h.link)?;
                } else {
                    // A hardlink to a file of a lower layer: a placeholder the merge resolves.
                    let mut meta = meta;
                    meta.xattrs
                        .insert(LOWER_HARDLINK_XATTR.to_vec(), h.link.clone());
                    tree.insert(
                        &path,
                        Node {
                            meta,
                            kind: Kind::File {
                                size: 0,
                                chunks: Vec::new(),
                            },
                        },
                    )?;
                }
                continue;
            }
            other => {
                return Err(bad(&format!(
                    "unsupported entry type {:?}",
                    char::from(other)
                )))
            }
        };
        let size = match kind {
            Kind::File { size, .. } => Some(size),
            _ => None,
        };
        let id = tree.insert(&path, Node { meta, kind })?;
        if let Some(size) = size.filter(|s| *s > 0) {
            blob.add_file(tree, id, size, &mut stream.data())
                .map_err(io_err(format!("reading {} from the tar", display(&path))))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::ChunkOptions;
    use crate::{Compressor, Digester};
    use proptest::prelude::*;

    fn sample_tar() -> Vec<u8> {
        let mut ar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        ar.append_data(&mut h, "d/", std::io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(9000);
        h.set_mode(0o644);
        ar.append_pax_extensions([("SCHILY.xattr.user.k", &b"v\n"[..])])
            .unwrap();
        ar.append_data(&mut h, "d/f", &vec![7u8; 9000][..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        ar.append_link(&mut h, "d/g", "d/f").unwrap();
        ar.into_inner().unwrap()
    }

    fn build(bytes: &[u8]) -> Result<Tree, BuildError> {
        let opts = ChunkOptions {
            chunk_size: 0x1000,
            compressor: Compressor::Lz4Block,
            digester: Digester::Blake3,
            threads: 1,
        };
        let mut tree = Tree::default();
        let mut blob = BlobWriter::new(Vec::new(), 0, opts, HashMap::new());
        from_tar(bytes, &mut tree, &mut blob)?;
        blob.finish_data(&mut tree)
            .map_err(|source| BuildError::Io {
                what: "blob".into(),
                source,
            })?;
        Ok(tree)
    }

    #[test]
    fn a_layer_tar_builds_files_links_and_xattrs() {
        let tree = build(&sample_tar()).unwrap();
        let f = tree.lookup(b"d/f").unwrap();
        assert_eq!(tree.lookup(b"d/g"), Some(f));
        assert_eq!(tree.node(f).meta.xattrs[&b"user.k"[..]], b"v\n");
        let Kind::File { size, chunks } = &tree.node(f).kind else {
            panic!()
        };
        assert_eq!((*size, chunks.len()), (9000, 3));
        // A hardlink to an entry the layer does not have is a placeholder naming the target.
        let mut ar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        ar.append_link(&mut h, "x", "lower/y").unwrap();
        let t = build(&ar.into_inner().unwrap()).unwrap();
        let x = t.lookup(b"x").unwrap();
        assert_eq!(t.lower_hardlink(x), Some(&b"lower/y"[..]));
        // The placeholder's xattr cannot come from a tar.
        let mut ar = tar::Builder::new(Vec::new());
        ar.append_pax_extensions([(
            "SCHILY.xattr.trusted.dragonfly-rs.lower-hardlink",
            &b"/etc/passwd"[..],
        )])
        .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        ar.append_data(&mut h, "f", &b"x"[..]).unwrap();
        let err = build(&ar.into_inner().unwrap()).unwrap_err().to_string();
        assert!(err.contains("is reserved"), "{err}");
        // Paths never leave the tree's root.
        let mut ar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.as_old_mut().name[..7].copy_from_slice(b"../evil");
        h.set_cksum();
        ar.append(&h, &b"x"[..]).unwrap();
        let err = build(&ar.into_inner().unwrap()).unwrap_err().to_string();
        assert!(err.contains("'..' is not allowed"), "{err}");
    }

    proptest! {
        #[test]
        fn mutated_layer_tars_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = sample_tar();
            for (at, v) in flips {
                let n = bytes.len();
                bytes[at % n] = v;
            }
            let _ = build(&bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = build(&bytes);
        }
    }

    #[test]
    fn device_numbers_encode_like_linux() {
        assert_eq!(encode_dev(1, 3), 0x103);
        assert_eq!(encode_dev(259, 0x12345), 0x1231_0345);
        for (ma, mi) in [(0, 0), (1, 3), (8, 1), (259, 0x12345), (0xfff, 0xfffff)] {
            assert_eq!(decode_dev(encode_dev(ma, mi)), (ma, mi));
        }
    }
}
