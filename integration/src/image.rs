//! OCI images built without Docker: deterministic tar layers (gzip or plain), config and manifest
//! written as an OCI image layout that `skopeo copy oci:DIR:TAG ...` can push.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// OCI manifest media type.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI config media type.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI uncompressed layer media type.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip, fastest level (random data does not compress anyway).
    Gzip,
    /// Plain tar.
    None,
}

impl Compression {
    /// The layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => MEDIA_TYPE_LAYER_GZIP,
            Compression::None => MEDIA_TYPE_LAYER_TAR,
        }
    }
}

/// One entry of a layer. Paths are relative to the image root (a leading `/` or `./` is
/// ignored); missing parent directories are added with mode 0755.
#[derive(Debug, Clone)]
pub enum LayerEntry {
    /// A regular file with the given bytes.
    File {
        path: String,
        data: Bytes,
        mode: u32,
    },
    /// A regular file of `len` bytes of [`random_bytes`]`(seed, len)`, generated while the tar is
    /// written (so big layers need no memory).
    RandomFile {
        path: String,
        seed: u64,
        len: u64,
        mode: u32,
    },
    /// A directory.
    Dir { path: String, mode: u32 },
    /// A symbolic link to `target`.
    Symlink { path: String, target: String },
}

impl LayerEntry {
    fn path(&self) -> &str {
        match self {
            LayerEntry::File { path, .. }
            | LayerEntry::RandomFile { path, .. }
            | LayerEntry::Dir { path, .. }
            | LayerEntry::Symlink { path, .. } => path,
        }
    }
}

/// What goes into one layer, and how it is compressed.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    pub entries: Vec<LayerEntry>,
    pub compression: Compression,
}

impl LayerSpec {
    /// An empty layer.
    pub fn new(compression: Compression) -> LayerSpec {
        LayerSpec {
            entries: Vec::new(),
            compression,
        }
    }

    /// Adds a regular file.
    pub fn file(mut self, path: impl Into<String>, data: impl Into<Bytes>, mode: u32) -> Self {
        self.entries.push(LayerEntry::File {
            path: path.into(),
            data: data.into(),
            mode,
        });
        self
    }

    /// Adds a file of `len` deterministic random bytes (mode 0644), see [`random_bytes`].
    pub fn random_file(mut self, path: impl Into<String>, seed: u64, len: u64) -> Self {
        self.entries.push(LayerEntry::RandomFile {
            path: path.into(),
            seed,
            len,
            mode: 0o644,
        });
        self
    }

    /// Adds a directory.
    pub fn dir(mut self, path: impl Into<String>, mode: u32) -> Self {
        self.entries.push(LayerEntry::Dir {
            path: path.into(),
            mode,
        });
        self
    }

    /// Adds a symlink `path -> target`.
    pub fn symlink(mut self, path: impl Into<String>, target: impl Into<String>) -> Self {
        self.entries.push(LayerEntry::Symlink {
            path: path.into(),
            target: target.into(),
        });
        self
    }

    /// A layer that makes an image runnable: `/bin/busybox` (copied from this machine's
    /// statically linked busybox), `/bin/sh -> busybox`, `/etc/hello.txt` ("hello-from-image\n"),
    /// and `/tmp` (1777).
    pub fn busybox(compression: Compression) -> Result<LayerSpec> {
        let path = Path::new("/bin/busybox");
        let data = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        Ok(LayerSpec::new(compression)
            .file("bin/busybox", data, 0o755)
            .symlink("bin/sh", "busybox")
            .file("etc/hello.txt", &b"hello-from-image\n"[..], 0o644)
            .dir("tmp", 0o1777))
    }

    /// A layer with one file `data/random-<seed>.bin` of `len` random bytes.
    pub fn random(seed: u64, len: u64, compression: Compression) -> LayerSpec {
        LayerSpec::new(compression).random_file(format!("data/random-{seed}.bin"), seed, len)
    }
}

/// The image config's runtime part.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    /// `config.Env`.
    pub env: Vec<String>,
    /// `config.Cmd`.
    pub cmd: Vec<String>,
    /// `config.Entrypoint` (omitted when empty).
    pub entrypoint: Vec<String>,
    /// `config.Labels`.
    pub labels: BTreeMap<String, String>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: vec!["/bin/sh".into()],
            entrypoint: Vec::new(),
            labels: BTreeMap::new(),
        }
    }
}

/// A layer as written into the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltLayer {
    pub media_type: String,
    /// `sha256:<hex>` of the blob (compressed bytes).
    pub digest: String,
    /// Blob size in bytes.
    pub size: u64,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
}

/// An OCI image layout on disk.
#[derive(Debug, Clone)]
pub struct OciImage {
    /// The layout directory (`oci-layout`, `index.json`, `blobs/sha256/...`).
    pub dir: PathBuf,
    /// The `org.opencontainers.image.ref.name` of its only manifest.
    pub tag: String,
    pub manifest_digest: String,
    pub manifest_size: u64,
    /// (digest, size) of the config blob.
    pub config: (String, u64),
    pub layers: Vec<BuiltLayer>,
}

impl OciImage {
    /// The file holding blob `digest` (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.dir, digest)
    }
}

/// An image pushed to a registry.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// `127.0.0.1:<port>/<repo>:<tag>`, what containerd pulls.
    pub reference: String,
    /// `127.0.0.1:<port>`.
    pub registry: String,
    pub repo: String,
    pub tag: String,
    pub manifest_digest: String,
    pub manifest_size: u64,
    /// (digest, size) of the config blob.
    pub config: (String, u64),
    /// (digest, size) of each layer blob, bottom first.
    pub layers: Vec<(String, u64)>,
    /// Uncompressed-tar digests of the layers, bottom first.
    pub diff_ids: Vec<String>,
    /// Where the OCI layout that was pushed lives.
    pub oci_dir: PathBuf,
}

impl ImageInfo {
    /// `127.0.0.1:<port>/<repo>@<manifest digest>`.
    pub fn digest_reference(&self) -> String {
        format!("{}/{}@{}", self.registry, self.repo, self.manifest_digest)
    }

    /// Config and layer digests: the blobs a pull fetches with `/v2/<repo>/blobs/<digest>`.
    pub fn blob_digests(&self) -> Vec<String> {
        std::iter::once(self.config.0.clone())
            .chain(self.layers.iter().map(|(d, _)| d.clone()))
            .collect()
    }

    /// The layer digests, bottom first.
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers.iter().map(|(d, _)| d.clone()).collect()
    }

    pub(crate) fn from_oci(registry: &str, repo: &str, tag: &str, img: &OciImage) -> ImageInfo {
        ImageInfo {
            reference: format!("{registry}/{repo}:{tag}"),
            registry: registry.to_string(),
            repo: repo.to_string(),
            tag: tag.to_string(),
            manifest_digest: img.manifest_digest.clone(),
            manifest_size: img.manifest_size,
            config: img.config.clone(),
            layers: img
                .layers
                .iter()
                .map(|l| (l.digest.clone(), l.size))
                .collect(),
            diff_ids: img.layers.iter().map(|l| l.diff_id.clone()).collect(),
            oci_dir: img.dir.clone(),
        }
    }
}

/// `len` bytes of a deterministic, incompressible stream (xoshiro256** seeded through
/// splitmix64). The same `seed` always gives the same bytes, on every machine and version of this
/// crate; `random_bytes(s, n)` is a prefix of `random_bytes(s, n + k)`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    RandomReader::new(seed, len as u64).fill(&mut out);
    out
}

/// A reader of [`random_bytes`]`(seed, len)`, for data too big to hold in memory.
#[derive(Debug, Clone)]
pub struct RandomReader {
    s: [u64; 4],
    remaining: u64,
    /// Bytes of the current 8-byte word not yet handed out.
    word: [u8; 8],
    word_pos: usize,
}

impl RandomReader {
    pub fn new(seed: u64, len: u64) -> RandomReader {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        RandomReader {
            s: [next(), next(), next(), next()],
            remaining: len,
            word: [0; 8],
            word_pos: 8,
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Fills `buf` (up to the bytes remaining); returns how many bytes were written.
    fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let mut i = 0;
        // Drain the partly used word first, then whole words, then a partial word.
        while i < n && self.word_pos < 8 {
            buf[i] = self.word[self.word_pos];
            self.word_pos += 1;
            i += 1;
        }
        while n - i >= 8 {
            buf[i..i + 8].copy_from_slice(&self.next_u64().to_le_bytes());
            i += 8;
        }
        if i < n {
            self.word = self.next_u64().to_le_bytes();
            self.word_pos = 0;
            while i < n {
                buf[i] = self.word[self.word_pos];
                self.word_pos += 1;
                i += 1;
            }
        }
        self.remaining -= n as u64;
        n
    }
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(self.fill(buf))
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    layout.join("blobs").join("sha256").join(hex)
}

/// Writes an OCI image layout for `layers` into `out` (created if needed) with one manifest
/// tagged `tag`. Deterministic: the same inputs give the same digests.
pub fn build_oci_layout(
    out: &Path,
    tag: &str,
    layers: &[LayerSpec],
    config: &ImageConfig,
) -> Result<OciImage> {
    let blobs = out.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| Error::io("create dir", &blobs, e))?;
    write_file(
        &out.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;

    let built: Vec<BuiltLayer> = layers
        .iter()
        .map(|spec| write_layer(out, spec))
        .collect::<Result<_>>()?;

    let mut cfg = json!({
        "Env": config.env,
        "Cmd": config.cmd,
    });
    if !config.entrypoint.is_empty() {
        cfg["Entrypoint"] = json!(config.entrypoint);
    }
    if !config.labels.is_empty() {
        cfg["Labels"] = json!(config.labels);
    }
    let config_doc = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": cfg,
        "rootfs": {
            "type": "layers",
            "diff_ids": built.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>(),
        },
    });
    let (config_digest, config_size) = put_json_blob(out, &config_doc, "image config")?;

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {
            "mediaType": MEDIA_TYPE_CONFIG,
            "digest": config_digest,
            "size": config_size,
        },
        "layers": built.iter().map(|l| json!({
            "mediaType": l.media_type,
            "digest": l.digest,
            "size": l.size,
        })).collect::<Vec<_>>(),
    });
    let (manifest_digest, manifest_size) = put_json_blob(out, &manifest, "manifest")?;

    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    let index_bytes = serde_json::to_vec(&index).map_err(|source| Error::Json {
        what: "index.json".into(),
        source,
    })?;
    write_file(&out.join("index.json"), &index_bytes)?;

    Ok(OciImage {
        dir: out.to_path_buf(),
        tag: tag.to_string(),
        manifest_digest,
        manifest_size,
        config: (config_digest, config_size),
        layers: built,
    })
}

/// The OCI architecture name of this machine.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).map_err(|e| Error::io("write", path, e))
}

fn put_json_blob(layout: &Path, doc: &serde_json::Value, what: &str) -> Result<(String, u64)> {
    let bytes = serde_json::to_vec(doc).map_err(|source| Error::Json {
        what: what.into(),
        source,
    })?;
    let digest = sha256_digest(&bytes);
    write_file(&blob_path(layout, &digest), &bytes)?;
    Ok((digest, bytes.len() as u64))
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn finish(self) -> (String, u64, W) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (digest, self.count, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes one layer blob into the layout at `layout` and returns its descriptor.
fn write_layer(layout: &Path, spec: &LayerSpec) -> Result<BuiltLayer> {
    let entries = normalize_entries(&spec.entries)?;
    let tmp = layout.join("blobs").join("sha256").join(format!(
        "tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let io_err = |e: io::Error| Error::io("write layer", &tmp, e);
    let file = File::create(&tmp).map_err(io_err)?;
    let blob_writer = HashingWriter::new(BufWriter::new(file));
    let (diff_id, digest, size, buffered) = match spec.compression {
        Compression::Gzip => {
            let gz = flate2::write::GzEncoder::new(blob_writer, flate2::Compression::fast());
            let tar_writer = write_tar(HashingWriter::new(gz), &entries).map_err(io_err)?;
            let (diff_id, _, gz) = tar_writer.finish();
            let blob_writer = gz.finish().map_err(io_err)?;
            let (digest, size, buffered) = blob_writer.finish();
            (diff_id, digest, size, buffered)
        }
        Compression::None => {
            let blob_writer = write_tar(blob_writer, &entries).map_err(io_err)?;
            let (digest, size, buffered) = blob_writer.finish();
            (digest.clone(), digest, size, buffered)
        }
    };
    buffered
        .into_inner()
        .map_err(|e| io_err(e.into_error()))?
        .sync_all()
        .map_err(io_err)?;
    let dest = blob_path(layout, &digest);
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io("rename", &dest, e))?;
    Ok(BuiltLayer {
        media_type: spec.compression.media_type().to_string(),
        digest,
        size,
        diff_id,
    })
}

/// Entries keyed by normalised path (sorted, so parents precede children), with missing parent
/// directories added. Duplicate or empty paths are an error.
fn normalize_entries(entries: &[LayerEntry]) -> Result<BTreeMap<String, LayerEntry>> {
    let mut out = BTreeMap::new();
    for e in entries {
        let p = normalize_path(e.path());
        if p.is_empty() || p.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(Error::malformed(
                "layer entry path",
                format!("{:?}", e.path()),
            ));
        }
        if out.insert(p.clone(), e.clone()).is_some() {
            return Err(Error::malformed(
                "layer entry path",
                format!("duplicate {p:?}"),
            ));
        }
    }
    let parents: Vec<String> = out
        .keys()
        .flat_map(|p| {
            p.match_indices('/')
                .map(|(i, _)| p[..i].to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for parent in parents {
        out.entry(parent.clone()).or_insert(LayerEntry::Dir {
            path: parent,
            mode: 0o755,
        });
    }
    Ok(out)
}

fn normalize_path(p: &str) -> String {
    let mut s = p.trim_start_matches('/');
    while let Some(rest) = s.strip_prefix("./") {
        s = rest.trim_start_matches('/');
    }
    s.trim_end_matches('/').to_string()
}

/// Writes `entries` as a tar with fixed owner (0:0), mtime (0) and no user/group names.
fn write_tar<W: Write>(w: W, entries: &BTreeMap<String, LayerEntry>) -> io::Result<W> {
    let mut b = tar::Builder::new(w);
    b.mode(tar::HeaderMode::Deterministic);
    for (path, entry) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match entry {
            LayerEntry::File { data, mode, .. } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, &data[..])?;
            }
            LayerEntry::RandomFile {
                seed, len, mode, ..
            } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(*len);
                b.append_data(&mut h, path, RandomReader::new(*seed, *len))?;
            }
            LayerEntry::Dir { mode, .. } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, path, io::empty())?;
            }
            LayerEntry::Symlink { target, .. } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target)?;
            }
        }
    }
    b.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_are_deterministic_prefix_stable_and_incompressible() {
        let a = random_bytes(7, 100_003);
        assert_eq!(a, random_bytes(7, 100_003));
        assert_ne!(a, random_bytes(8, 100_003));
        assert_eq!(&random_bytes(7, 13)[..], &a[..13]);
        // Reading in odd-sized chunks gives the same stream.
        let mut r = RandomReader::new(7, 100_003);
        let mut b = Vec::new();
        let mut buf = [0u8; 13];
        loop {
            let n = r.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            b.extend_from_slice(&buf[..n]);
        }
        assert_eq!(a, b);
        // gzip must not shrink it meaningfully.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&a).expect("gzip");
        let z = gz.finish().expect("gzip finish");
        assert!(z.len() > a.len() * 99 / 100, "{} vs {}", z.len(), a.len());
    }

    #[test]
    fn paths_are_normalized_and_parents_added() {
        let spec = LayerSpec::new(Compression::None)
            .file("/a/b/c.txt", &b"x"[..], 0o600)
            .symlink("./a/l", "b/c.txt")
            .dir("d/", 0o700);
        let m = normalize_entries(&spec.entries).expect("valid");
        let keys: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(keys, ["a", "a/b", "a/b/c.txt", "a/l", "d"]);
        assert!(matches!(m["d"], LayerEntry::Dir { mode: 0o700, .. }));
        assert!(matches!(m["a"], LayerEntry::Dir { mode: 0o755, .. }));

        let dup = LayerSpec::new(Compression::None)
            .file("x", &b""[..], 0o644)
            .file("/x", &b""[..], 0o644);
        assert!(normalize_entries(&dup.entries).is_err());
        let up = LayerSpec::new(Compression::None).file("../etc/passwd", &b""[..], 0o644);
        assert!(normalize_entries(&up.entries).is_err());
    }

    fn read_json(path: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
    }

    #[test]
    fn layout_digests_are_consistent_and_deterministic() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layers = [
            LayerSpec::new(Compression::Gzip)
                .file("etc/hello.txt", &b"hello\n"[..], 0o644)
                .symlink("bin/sh", "busybox"),
            LayerSpec::random(1, 300_000, Compression::None),
        ];
        let img = build_oci_layout(
            &tmp.path().join("a"),
            "v1",
            &layers,
            &ImageConfig::default(),
        )
        .expect("build");
        let again = build_oci_layout(
            &tmp.path().join("b"),
            "v1",
            &layers,
            &ImageConfig::default(),
        )
        .expect("build again");
        assert_eq!(img.manifest_digest, again.manifest_digest);
        assert_eq!(img.layers, again.layers);

        // Every blob's file name is the sha256 of its content and its size matches.
        for l in &img.layers {
            let data = std::fs::read(img.blob_path(&l.digest)).expect("layer blob");
            assert_eq!(sha256_digest(&data), l.digest);
            assert_eq!(data.len() as u64, l.size);
        }
        // Plain layer: diff_id == digest. Gzip layer: diff_id is the sha256 of the gunzipped tar.
        assert_eq!(img.layers[1].diff_id, img.layers[1].digest);
        assert_eq!(img.layers[1].media_type, MEDIA_TYPE_LAYER_TAR);
        assert_eq!(img.layers[0].media_type, MEDIA_TYPE_LAYER_GZIP);
        let gz = std::fs::read(img.blob_path(&img.layers[0].digest)).expect("gz blob");
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut tar_bytes)
            .expect("gunzip");
        assert_eq!(sha256_digest(&tar_bytes), img.layers[0].diff_id);

        // The tar lists parents first with fixed metadata.
        let mut ar = tar::Archive::new(&tar_bytes[..]);
        let mut names = Vec::new();
        for entry in ar.entries().expect("entries") {
            let entry = entry.expect("entry");
            let h = entry.header();
            assert_eq!(h.mtime().expect("mtime"), 0);
            assert_eq!(h.uid().expect("uid"), 0);
            names.push(entry.path().expect("path").to_string_lossy().into_owned());
        }
        assert_eq!(names, ["bin", "bin/sh", "etc", "etc/hello.txt"]);

        // The random file inside the plain layer holds random_bytes(1, 300000).
        let raw = std::fs::read(img.blob_path(&img.layers[1].digest)).expect("raw blob");
        let mut ar = tar::Archive::new(&raw[..]);
        let mut found = false;
        for entry in ar.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            if entry.path().expect("path").ends_with("random-1.bin") {
                let mut content = Vec::new();
                entry.read_to_end(&mut content).expect("read");
                assert_eq!(content, random_bytes(1, 300_000));
                found = true;
            }
        }
        assert!(found);

        // config, manifest and index agree with each other.
        let manifest = read_json(&img.blob_path(&img.manifest_digest));
        assert_eq!(manifest["mediaType"], MEDIA_TYPE_MANIFEST);
        assert_eq!(manifest["config"]["digest"], img.config.0.as_str());
        assert_eq!(manifest["layers"][1]["size"], img.layers[1].size);
        let config_bytes = std::fs::read(img.blob_path(&img.config.0)).expect("config");
        assert_eq!(sha256_digest(&config_bytes), img.config.0);
        let config: serde_json::Value = serde_json::from_slice(&config_bytes).expect("json");
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            img.layers[0].diff_id.as_str()
        );
        assert_eq!(
            config["rootfs"]["diff_ids"][1],
            img.layers[1].diff_id.as_str()
        );
        let index = read_json(&img.dir.join("index.json"));
        assert_eq!(
            index["manifests"][0]["digest"],
            img.manifest_digest.as_str()
        );
        assert_eq!(
            index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "v1"
        );
        let manifest_len = std::fs::metadata(img.blob_path(&img.manifest_digest))
            .expect("stat")
            .len();
        assert_eq!(manifest_len, img.manifest_size);
        // No temporary files left behind.
        let leftovers: Vec<_> = std::fs::read_dir(img.dir.join("blobs/sha256"))
            .expect("readdir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
