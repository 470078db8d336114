//! `nydusify check`: the rules a Nydus image in a registry must follow, and a comparison of its
//! files with the source OCI image, read through the library (no mount).
//!
//! - manifest: the last layer is the bootstrap layer, the others are Nydus blob layers, the
//!   config has one diff ID per layer, and the runtime config equals the source's;
//! - bootstrap: it parses, and every blob of its blob table is a layer of the manifest;
//! - filesystem (with a source): the source layers applied with overlay rules (an independent
//!   implementation of OCI whiteouts, not the builder's) against the merged bootstrap, comparing
//!   paths, types, sizes, modes, owners, device numbers, symlink targets, xattrs and the SHA-256
//!   of every file's bytes (each chunk CRC32C-checked as it is read).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read};

use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::RegistryOperation;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::convert::{read_bootstrap_layer, ConvertError};
use super::manifest as mf;
use super::pipe::{self, ChannelReader};
use super::registry::{Remote, RemoteOptions, MAX_CONFIG_SIZE};
use crate::build::source::{decode_dev, decompressed};
use crate::build::tarstream::TarStream;
use crate::tree::{Kind, Tree};
use crate::v6::Bootstrap;
use crate::{codec, Compressor, Digester};

/// At most this many differences are reported.
pub const MAX_PROBLEMS: usize = 50;

/// Options of `check`.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub target: String,
    pub source: Option<String>,
    pub target_remote: RemoteOptions,
    pub source_remote: RemoteOptions,
    /// `os/arch` to pick from an index.
    pub platform: String,
}

/// What `check` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    pub target_manifest: String,
    /// Rule violations and differences, first ones first (empty: the image is good).
    pub problems: Vec<String>,
    /// Entries compared with the source (0 without a source).
    pub entries_compared: usize,
    /// Bytes of file data read from the Nydus blobs.
    pub bytes_checked: u64,
}

/// One filesystem entry as both sides describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: char,
    perm: u32,
    uid: u32,
    gid: u32,
    size: u64,
    rdev: (u32, u32),
    link: Vec<u8>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    sha256: Option<[u8; 32]>,
}

/// Checks the Nydus image `opts.target`.
pub async fn check(opts: &CheckOptions) -> Result<CheckReport, ConvertError> {
    let target =
        Remote::connect(&opts.target, &opts.target_remote, RegistryOperation::Pull).await?;
    let mut report = CheckReport::default();
    let (manifest, digest, config) = pick_manifest(&target, &opts.platform, true).await?;
    report.target_manifest = digest.clone();
    let p = &mut report.problems;

    // Manifest rules.
    if !mf::is_nydus(&manifest) {
        p.push(format!(
            "manifest {digest}: the last layer is not a Nydus bootstrap layer (annotation {}=true)",
            mf::ANNO_NYDUS_BOOTSTRAP
        ));
        return Ok(report);
    }
    let n = manifest.layers.len();
    for l in &manifest.layers[..n - 1] {
        if !mf::is_blob_layer(l) {
            p.push(format!(
                "layer {}: media type {} / annotations {:?}, not a Nydus blob layer",
                l.digest, l.media_type, l.annotations
            ));
        }
    }
    match mf::diff_ids(&config) {
        Ok(ids) if ids.len() != n => p.push(format!(
            "config: {} rootfs.diff_ids for {n} layers",
            ids.len()
        )),
        Ok(ids) => {
            for (l, d) in manifest.layers[..n - 1].iter().zip(&ids) {
                if &l.digest != d {
                    p.push(format!(
                        "config: diff ID {d} of blob layer {} is not its digest (Nydus blobs are stored uncompressed)",
                        l.digest
                    ));
                }
            }
        }
        Err(e) => p.push(format!("config: {e}")),
    }

    // Bootstrap rules.
    let boot = read_bootstrap_layer(&target, &manifest.layers[n - 1]).await?;
    let b = match Bootstrap::parse(&boot) {
        Ok(b) => b,
        Err(e) => {
            p.push(format!("bootstrap: {e}"));
            return Ok(report);
        }
    };
    let layer_ids: BTreeSet<String> = manifest.layers[..n - 1]
        .iter()
        .map(|l| l.digest.trim_start_matches("sha256:").to_string())
        .collect();
    let mut blobs: Vec<(OciDescriptor, Compressor)> = Vec::new();
    for e in b.blobs() {
        let id = e.blob_id().unwrap_or_default().to_string();
        if !layer_ids.contains(&id) {
            p.push(format!(
                "bootstrap: blob {id} of its blob table is not a layer of the manifest"
            ));
        }
        let desc = manifest.layers[..n - 1]
            .iter()
            .find(|l| l.digest.trim_start_matches("sha256:") == id)
            .cloned()
            .unwrap_or_else(|| {
                mf::descriptor(mf::NYDUS_BLOB, &format!("sha256:{id}"), 0, BTreeMap::new())
            });
        let c = e.compressor().unwrap_or(Compressor::Zstd);
        blobs.push((desc, c));
    }
    let digester = b
        .ext_superblock()
        .flags
        .digester()
        .unwrap_or(Digester::Blake3);
    let tree = match b.to_tree() {
        Ok(t) => t,
        Err(e) => {
            p.push(format!("bootstrap: {e}"));
            return Ok(report);
        }
    };
    if !p.is_empty() {
        return Ok(report);
    }

    // Filesystem comparison.
    let Some(source_ref) = &opts.source else {
        return Ok(report);
    };
    let source = Remote::connect(source_ref, &opts.source_remote, RegistryOperation::Pull).await?;
    let (smanifest, _, sconfig) = pick_manifest(&source, &opts.platform, false).await?;
    if sconfig.get("config") != config.get("config") {
        p.push(
            "config: the runtime config (Env, Cmd, Entrypoint, ...) differs from the source's"
                .into(),
        );
    }
    let expected = oci_view(&source, &smanifest).await?;
    let (actual, bytes) = nydus_view(&target, tree, blobs, digester).await?;
    report.bytes_checked = bytes;
    report.entries_compared = expected.len().max(actual.len());
    compare(&expected, &actual, &mut report.problems);
    Ok(report)
}

/// The image manifest of `remote` (the `platform` entry of an index, preferring Nydus entries
/// when `nydus`), its digest and config.
pub async fn pick_manifest(
    remote: &Remote,
    platform: &str,
    nydus: bool,
) -> Result<(OciImageManifest, String, Value), ConvertError> {
    let what = remote.reference().to_string();
    let (body, digest, mt) =
        remote
            .manifest(remote.reference())
            .await?
            .ok_or_else(|| ConvertError::BadSource {
                what: what.clone(),
                msg: "no such image".into(),
            })?;
    let (body, digest) = if mf::is_index(&mt) {
        let index = mf::parse_index(&body).map_err(ConvertError::Other)?;
        let is_nydus_entry = |e: &&oci_client::manifest::ImageIndexEntry| {
            e.platform
                .as_ref()
                .and_then(|p| p.os_features.as_ref())
                .is_some_and(|f| f.iter().any(|f| f == mf::OS_FEATURE_NYDUS))
        };
        let candidates: Vec<_> = index
            .manifests
            .iter()
            .filter(|e| mf::platform_matches(e, platform))
            .collect();
        let e = candidates
            .iter()
            .find(|e| is_nydus_entry(e) == nydus)
            .or(candidates.first())
            .ok_or_else(|| ConvertError::BadSource {
                what: what.clone(),
                msg: format!("the index has no manifest for {platform}"),
            })?;
        let (b, d, _) = remote
            .manifest(&remote.at(&e.digest))
            .await?
            .ok_or_else(|| ConvertError::BadSource {
                what: what.clone(),
                msg: format!("manifest {} is missing", e.digest),
            })?;
        (b, d)
    } else {
        (body, digest)
    };
    let m = mf::parse_manifest(&body).map_err(|e| ConvertError::BadSource {
        what: format!("manifest {digest}"),
        msg: e,
    })?;
    let config = remote.blob_bytes(&m.config, MAX_CONFIG_SIZE).await?;
    let config: Value = serde_json::from_slice(&config).map_err(|e| ConvertError::BadSource {
        what: format!("config {}", m.config.digest),
        msg: e.to_string(),
    })?;
    Ok((m, digest, config))
}

/// Normalised path of a tar entry (`./a/b/` → `a/b`).
fn clean(path: &[u8]) -> Vec<u8> {
    let mut p = path;
    loop {
        if let Some(r) = p.strip_prefix(b"./") {
            p = r;
        } else if let Some(r) = p.strip_prefix(b"/") {
            p = r;
        } else {
            break;
        }
    }
    let p = p.strip_suffix(b"/").unwrap_or(p);
    if p == b"." {
        Vec::new()
    } else {
        p.to_vec()
    }
}

fn parent_of(path: &[u8]) -> Option<&[u8]> {
    path.iter().rposition(|b| *b == b'/').map(|i| &path[..i])
}

fn under(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || (path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/')
}

fn implied_dir() -> Entry {
    Entry {
        kind: 'd',
        perm: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        rdev: (0, 0),
        link: Vec::new(),
        xattrs: BTreeMap::new(),
        sha256: None,
    }
}

/// The source image's final tree: its layers applied in order with OCI whiteout rules.
async fn oci_view(
    source: &Remote,
    m: &OciImageManifest,
) -> Result<BTreeMap<Vec<u8>, Entry>, ConvertError> {
    let mut view: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
    for l in &m.layers {
        let stream = source.blob_stream(l).await?;
        let (tx, rx) = mpsc::channel(8);
        let pump = tokio::spawn(pipe::pump(stream, tx, Default::default()));
        let before = std::mem::take(&mut view);
        let digest = l.digest.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut raw = ChannelReader::new(rx);
            let mut view = before;
            apply_oci_layer(&mut raw, &mut view)?;
            io::copy(&mut raw, &mut io::sink())?;
            Ok::<_, io::Error>(view)
        })
        .await
        .map_err(|e| ConvertError::Other(e.to_string()))?;
        pump.abort();
        view = r.map_err(|e| ConvertError::BadSource {
            what: format!("source layer {digest}"),
            msg: e.to_string(),
        })?;
    }
    Ok(view)
}

/// Applies one layer tar to `view`.
fn apply_oci_layer(raw: &mut dyn Read, view: &mut BTreeMap<Vec<u8>, Entry>) -> io::Result<()> {
    let r =
        decompressed(raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let mut tar = TarStream::new(r);
    let mut this_layer: BTreeSet<Vec<u8>> = BTreeSet::new();
    while let Some(h) = tar.next_header()? {
        let path = clean(&h.path);
        let name = path.rsplit(|b| *b == b'/').next().unwrap_or(&path).to_vec();
        let dir = parent_of(&path).unwrap_or(b"").to_vec();
        if name == crate::tree::OPAQUE_MARKER {
            // Everything below `dir` that came from lower layers goes.
            let gone: Vec<Vec<u8>> = view
                .keys()
                .filter(|k| under(k, &dir) && !this_layer.contains(*k))
                .cloned()
                .collect();
            for k in gone {
                view.remove(&k);
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(crate::tree::WHITEOUT_PREFIX) {
            let mut target = dir.clone();
            if !target.is_empty() {
                target.push(b'/');
            }
            target.extend_from_slice(hidden);
            let gone: Vec<Vec<u8>> = view
                .keys()
                .filter(|k| **k == target || under(k, &target))
                .cloned()
                .collect();
            for k in gone {
                view.remove(&k);
            }
            continue;
        }
        if path.is_empty() {
            continue; // the root's own metadata is not compared
        }
        // Implied parents.
        let mut p = parent_of(&path);
        while let Some(d) = p {
            if d.is_empty() {
                break;
            }
            view.entry(d.to_vec()).or_insert_with(implied_dir);
            p = parent_of(d);
        }
        let mut e = Entry {
            kind: '?',
            perm: h.mode & 0o7777,
            uid: h.uid as u32,
            gid: h.gid as u32,
            size: 0,
            rdev: (0, 0),
            link: Vec::new(),
            xattrs: h.xattrs.clone(),
            sha256: None,
        };
        match h.typeflag {
            b'0' | 0 | b'7' => {
                let mut hasher = Sha256::new();
                let n = io::copy(&mut tar.data(), &mut HashWriter(&mut hasher))?;
                e.kind = 'f';
                e.size = n;
                e.sha256 = Some(hasher.finalize().into());
            }
            b'1' => {
                let t = clean(&h.link);
                let target = view.get(&t).cloned().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "hardlink {} to missing {}",
                            crate::tree::display(&path),
                            crate::tree::display(&t)
                        ),
                    )
                })?;
                view.insert(path.clone(), target);
                this_layer.insert(path);
                continue;
            }
            b'2' => {
                e.kind = 'l';
                e.link = h.link.clone();
                e.size = h.link.len() as u64;
            }
            b'3' => {
                e.kind = 'c';
                e.rdev = h.dev;
            }
            b'4' => {
                e.kind = 'b';
                e.rdev = h.dev;
            }
            b'5' => e.kind = 'd',
            b'6' => e.kind = 'p',
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "entry {} has tar type {:?}",
                        crate::tree::display(&path),
                        other as char
                    ),
                ))
            }
        }
        // A non-directory replaces whatever was there, with its subtree.
        if e.kind != 'd' {
            let gone: Vec<Vec<u8>> = view.keys().filter(|k| under(k, &path)).cloned().collect();
            for k in gone {
                view.remove(&k);
            }
        } else if let Some(old) = view.get(&path) {
            if old.kind != 'd' {
                view.remove(&path);
            }
        }
        view.insert(path.clone(), e);
        this_layer.insert(path);
    }
    Ok(())
}

struct HashWriter<'a>(&'a mut Sha256);

impl io::Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The Nydus image's tree, every file's bytes read from the blobs in the registry.
async fn nydus_view(
    target: &Remote,
    tree: Tree,
    blobs: Vec<(OciDescriptor, Compressor)>,
    digester: Digester,
) -> Result<(BTreeMap<Vec<u8>, Entry>, u64), ConvertError> {
    let mut out = BTreeMap::new();
    let mut hashed: HashMap<usize, [u8; 32]> = HashMap::new();
    let mut bytes = 0u64;
    let paths: Vec<(Vec<u8>, usize)> = tree.walk().collect();
    for (path, id) in paths {
        let path = clean(&path);
        if path.is_empty() {
            continue;
        }
        let node = tree.node(id);
        let mut e = Entry {
            kind: '?',
            perm: node.meta.perm & 0o7777,
            uid: node.meta.uid,
            gid: node.meta.gid,
            size: 0,
            rdev: (0, 0),
            link: Vec::new(),
            xattrs: node.meta.xattrs.clone(),
            sha256: None,
        };
        match &node.kind {
            Kind::Dir(_) => e.kind = 'd',
            Kind::Symlink(t) => {
                e.kind = 'l';
                e.link = t.clone();
                e.size = t.len() as u64;
            }
            Kind::CharDev(d) => {
                e.kind = 'c';
                e.rdev = decode_dev(*d);
            }
            Kind::BlockDev(d) => {
                e.kind = 'b';
                e.rdev = decode_dev(*d);
            }
            Kind::Fifo => e.kind = 'p',
            Kind::Socket => e.kind = 's',
            Kind::File { size, chunks } => {
                e.kind = 'f';
                e.size = *size;
                let sum = match hashed.get(&id) {
                    Some(s) => *s,
                    None => {
                        let mut h = Sha256::new();
                        let mut n = 0u64;
                        for c in chunks {
                            let (desc, comp) =
                                blobs.get(c.blob_index as usize).ok_or_else(|| {
                                    ConvertError::Other(format!(
                                        "{}: chunk in blob {} which the blob table lacks",
                                        crate::tree::display(&path),
                                        c.blob_index
                                    ))
                                })?;
                            if c.compressed_size > crate::chunk::RAFS_MAX_CHUNK_SIZE
                                || c.uncompressed_size > crate::chunk::RAFS_MAX_CHUNK_SIZE
                            {
                                return Err(ConvertError::Other(format!(
                                    "{}: a chunk is over 16 MiB",
                                    crate::tree::display(&path)
                                )));
                            }
                            let raw = target
                                .blob_range(
                                    desc,
                                    c.compressed_offset,
                                    u64::from(c.compressed_size),
                                    16 << 20,
                                )
                                .await?;
                            let algo = if c.is_compressed() {
                                *comp
                            } else {
                                Compressor::None
                            };
                            let mut data = Vec::with_capacity(c.uncompressed_size as usize);
                            codec::decompress(algo, &raw, c.uncompressed_size as usize, &mut data)
                                .map_err(|e| {
                                    ConvertError::Other(format!(
                                        "{}: {e}",
                                        crate::tree::display(&path)
                                    ))
                                })?;
                            crate::image::check_chunk(&desc.digest, digester, c, &data).map_err(
                                |e| {
                                    ConvertError::Other(format!(
                                        "{}: {e}",
                                        crate::tree::display(&path)
                                    ))
                                },
                            )?;
                            h.update(&data);
                            n += data.len() as u64;
                        }
                        // Holes (no chunk) read as zeros.
                        if n < *size {
                            let zeros = vec![0u8; 1 << 16];
                            let mut left = *size - n;
                            while left > 0 {
                                let k = left.min(zeros.len() as u64) as usize;
                                h.update(&zeros[..k]);
                                left -= k as u64;
                            }
                        }
                        bytes += n;
                        let s: [u8; 32] = h.finalize().into();
                        hashed.insert(id, s);
                        s
                    }
                };
                e.sha256 = Some(sum);
            }
        }
        out.insert(path, e);
    }
    Ok((out, bytes))
}

fn compare(
    expected: &BTreeMap<Vec<u8>, Entry>,
    actual: &BTreeMap<Vec<u8>, Entry>,
    p: &mut Vec<String>,
) {
    let show = |k: &[u8]| format!("/{}", crate::tree::display(k));
    for (k, e) in expected {
        if p.len() >= MAX_PROBLEMS {
            return;
        }
        match actual.get(k) {
            None => p.push(format!(
                "{}: in the source image, missing from the Nydus image",
                show(k)
            )),
            Some(a) if a != e => {
                let mut d = Vec::new();
                if a.kind != e.kind {
                    d.push(format!("type {} vs {}", e.kind, a.kind));
                }
                if a.perm != e.perm {
                    d.push(format!("mode {:o} vs {:o}", e.perm, a.perm));
                }
                if (a.uid, a.gid) != (e.uid, e.gid) {
                    d.push(format!("owner {}:{} vs {}:{}", e.uid, e.gid, a.uid, a.gid));
                }
                if a.size != e.size {
                    d.push(format!("size {} vs {}", e.size, a.size));
                }
                if a.rdev != e.rdev {
                    d.push(format!("rdev {:?} vs {:?}", e.rdev, a.rdev));
                }
                if a.link != e.link {
                    d.push(format!(
                        "symlink target {:?} vs {:?}",
                        crate::tree::display(&e.link),
                        crate::tree::display(&a.link)
                    ));
                }
                if a.xattrs != e.xattrs {
                    let names = |x: &BTreeMap<Vec<u8>, Vec<u8>>| {
                        x.keys()
                            .map(|k| crate::tree::display(k))
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    d.push(format!(
                        "xattrs [{}] vs [{}] (or their values)",
                        names(&e.xattrs),
                        names(&a.xattrs)
                    ));
                }
                if a.sha256 != e.sha256 && a.size == e.size {
                    d.push("content differs".into());
                }
                p.push(format!("{}: {} (source vs Nydus)", show(k), d.join(", ")));
            }
            Some(_) => {}
        }
    }
    for k in actual.keys() {
        if p.len() >= MAX_PROBLEMS {
            return;
        }
        if !expected.contains_key(k) {
            p.push(format!(
                "{}: in the Nydus image, not in the source image",
                show(k)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, u8, &[u8], &str)]) -> Vec<u8> {
        let mut ar = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::new(*kind));
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            ar.append_data(&mut h, path, *data).unwrap();
        }
        ar.into_inner().unwrap()
    }

    #[test]
    fn overlay_rules_whiteouts_opaque_dirs_and_hardlinks() {
        let mut view = BTreeMap::new();
        let l1 = layer(&[
            ("a/x", b'0', b"1", ""),
            ("a/y", b'0', b"2", ""),
            ("b/z", b'0', b"3", ""),
            ("c", b'0', b"4", ""),
        ]);
        apply_oci_layer(&mut &l1[..], &mut view).unwrap();
        let l2 = layer(&[
            ("a/.wh..wh..opq", b'0', b"", ""),
            ("a/new", b'0', b"5", ""),
            ("b/.wh.z", b'0', b"", ""),
            ("d", b'1', b"", "c"),
        ]);
        apply_oci_layer(&mut &l2[..], &mut view).unwrap();
        let keys: Vec<String> = view
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(keys, ["a", "a/new", "b", "c", "d"]);
        assert_eq!(view[b"d".as_slice()].sha256, view[b"c".as_slice()].sha256);
    }

    #[test]
    fn differences_are_named() {
        let mut a = BTreeMap::new();
        let mut e = implied_dir();
        a.insert(b"x".to_vec(), e.clone());
        let mut b = a.clone();
        e.uid = 7;
        b.insert(b"x".to_vec(), e);
        b.insert(b"y".to_vec(), implied_dir());
        let mut p = Vec::new();
        compare(&a, &b, &mut p);
        assert_eq!(p.len(), 2);
        assert!(p[0].contains("/x: owner 0:0 vs 7:0"), "{p:?}");
        assert!(p[1].contains("/y: in the Nydus image"), "{p:?}");
    }
}
