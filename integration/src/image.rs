//! OCI images built without Docker: deterministic tar layers (gzip, zstd or plain) holding every
//! kind of filesystem entry (files, directories, symlinks, hardlinks, devices, fifos, sparse
//! files, OCI whiteouts and opaque markers, owners, xattrs), config and manifest written as an OCI
//! image layout that `skopeo copy oci:DIR:TAG ...` can push; multi-platform image indexes; and
//! [`unpack_with_umoci`], an independent oracle of an image's final tree.

use std::collections::{BTreeMap, BTreeSet};
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
/// OCI zstd layer media type.
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI uncompressed layer media type.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI image index media type.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The tar name of an OCI opaque-directory marker, inside the directory it makes opaque.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The prefix of an OCI whiteout file's name (`.wh.<name>` removes `<name>` of lower layers).
pub const WHITEOUT_PREFIX: &str = ".wh.";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip, fastest level (random data does not compress anyway).
    Gzip,
    /// zstd, level 3, single-threaded (so deterministic), with the frame checksum.
    Zstd,
    /// Plain tar.
    None,
}

impl Compression {
    /// The layer media type for this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => MEDIA_TYPE_LAYER_GZIP,
            Compression::Zstd => MEDIA_TYPE_LAYER_ZSTD,
            Compression::None => MEDIA_TYPE_LAYER_TAR,
        }
    }
}

/// One entry of a layer. Paths are relative to the image root (a leading `/` or `./` is
/// ignored); missing parent directories are added with mode 0755, owner 0:0 and no xattrs (so a
/// layer that adds `a/b` also resets the metadata of a lower `a`, as in any OCI layer).
///
/// Every entry is owned by 0:0 and has no xattrs unless [`LayerSpec::owner`] /
/// [`LayerSpec::xattr`] say otherwise; every mtime is 0.
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
    /// A hard link (tar type `1`) named `path` to `target`, an entry of this layer or of a lower
    /// one (OCI image-spec: "extracting a layer with hardlink references to files outside of the
    /// layer may fail"). Written after every other entry of the layer, so the target precedes
    /// it. For a target in this layer the header repeats the target's mode and owner (containerd
    /// chowns and chmods the link, i.e. the shared inode, from the link's header); for a target
    /// in a lower layer it says mode 0644 and owner 0:0 unless [`LayerSpec::owner`] names the link.
    Hardlink { path: String, target: String },
    /// An OCI whiteout: removes `path` (and everything below it) of the lower layers. Written
    /// as an empty regular file `<parent>/.wh.<name>`.
    Whiteout { path: String },
    /// An OCI opaque marker: `dir`'s content from lower layers is hidden, only what this layer
    /// puts in `dir` remains. Written as an empty regular file `<dir>/.wh..wh..opq`, right after
    /// `dir` itself and before anything inside it. `dir` is added as a directory (mode 0755) if
    /// this layer does not list it.
    Opaque { dir: String },
    /// A character device node.
    CharDevice {
        path: String,
        major: u32,
        minor: u32,
        mode: u32,
    },
    /// A block device node.
    BlockDevice {
        path: String,
        major: u32,
        minor: u32,
        mode: u32,
    },
    /// A named pipe.
    Fifo { path: String, mode: u32 },
    /// A regular file of `len` bytes that are zero except `regions` (offset, bytes), written as a
    /// plain tar entry (no GNU sparse headers) whose data is generated while the tar is written:
    /// a 64 MiB sparse file needs a few bytes of memory. See [`SparseReader`].
    SparseFile {
        path: String,
        len: u64,
        regions: Vec<(u64, Bytes)>,
        mode: u32,
    },
}

impl LayerEntry {
    /// The path as given (for [`Opaque`](LayerEntry::Opaque), the directory).
    pub fn path(&self) -> &str {
        match self {
            LayerEntry::File { path, .. }
            | LayerEntry::RandomFile { path, .. }
            | LayerEntry::Dir { path, .. }
            | LayerEntry::Symlink { path, .. }
            | LayerEntry::Hardlink { path, .. }
            | LayerEntry::Whiteout { path }
            | LayerEntry::CharDevice { path, .. }
            | LayerEntry::BlockDevice { path, .. }
            | LayerEntry::Fifo { path, .. }
            | LayerEntry::SparseFile { path, .. } => path,
            LayerEntry::Opaque { dir } => dir,
        }
    }

    /// Whiteouts and opaque markers: names in the tar, not entries of the image.
    fn is_marker(&self) -> bool {
        matches!(
            self,
            LayerEntry::Whiteout { .. } | LayerEntry::Opaque { .. }
        )
    }

    /// The permission bits the tar header carries (0o644 for markers, 0o777 for symlinks).
    fn mode(&self) -> u32 {
        match self {
            LayerEntry::File { mode, .. }
            | LayerEntry::RandomFile { mode, .. }
            | LayerEntry::Dir { mode, .. }
            | LayerEntry::CharDevice { mode, .. }
            | LayerEntry::BlockDevice { mode, .. }
            | LayerEntry::Fifo { mode, .. }
            | LayerEntry::SparseFile { mode, .. } => *mode,
            LayerEntry::Symlink { .. } => 0o777,
            LayerEntry::Hardlink { .. }
            | LayerEntry::Whiteout { .. }
            | LayerEntry::Opaque { .. } => 0o644,
        }
    }
}

/// Owner and extended attributes of one entry of a layer (see [`LayerSpec::owner`] and
/// [`LayerSpec::xattr`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryMeta {
    pub uid: u64,
    pub gid: u64,
    /// Written as PAX `SCHILY.xattr.<name>` records (values are raw bytes, NULs allowed).
    pub xattrs: BTreeMap<String, Bytes>,
}

/// What goes into one layer, and how it is compressed.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    pub entries: Vec<LayerEntry>,
    pub compression: Compression,
    /// Owner and xattrs by normalised path (no leading `/`), for entries of this layer
    /// (including directories added implicitly as parents). Entries not listed: 0:0, no xattrs.
    pub meta: BTreeMap<String, EntryMeta>,
}

impl LayerSpec {
    /// An empty layer.
    pub fn new(compression: Compression) -> LayerSpec {
        LayerSpec {
            entries: Vec::new(),
            compression,
            meta: BTreeMap::new(),
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

    /// Adds a hard link `path` to `target` (a path of this layer or of a lower one), see
    /// [`LayerEntry::Hardlink`].
    pub fn hardlink(mut self, path: impl Into<String>, target: impl Into<String>) -> Self {
        self.entries.push(LayerEntry::Hardlink {
            path: path.into(),
            target: target.into(),
        });
        self
    }

    /// Adds an OCI whiteout of `path` (`<parent>/.wh.<name>`): removes it from the lower layers.
    pub fn whiteout(mut self, path: impl Into<String>) -> Self {
        self.entries
            .push(LayerEntry::Whiteout { path: path.into() });
        self
    }

    /// Makes `dir` opaque (`<dir>/.wh..wh..opq`): its lower-layer content is hidden.
    pub fn opaque(mut self, dir: impl Into<String>) -> Self {
        self.entries.push(LayerEntry::Opaque { dir: dir.into() });
        self
    }

    /// Adds a character device node `major:minor`.
    pub fn char_device(
        mut self,
        path: impl Into<String>,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> Self {
        self.entries.push(LayerEntry::CharDevice {
            path: path.into(),
            major,
            minor,
            mode,
        });
        self
    }

    /// Adds a block device node `major:minor`.
    pub fn block_device(
        mut self,
        path: impl Into<String>,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> Self {
        self.entries.push(LayerEntry::BlockDevice {
            path: path.into(),
            major,
            minor,
            mode,
        });
        self
    }

    /// Adds a named pipe.
    pub fn fifo(mut self, path: impl Into<String>, mode: u32) -> Self {
        self.entries.push(LayerEntry::Fifo {
            path: path.into(),
            mode,
        });
        self
    }

    /// Adds a mostly-zero file of `len` bytes (mode 0644): zeros except `regions` (offset,
    /// bytes), which must lie inside the file and not overlap. See [`LayerEntry::SparseFile`].
    pub fn sparse_file<B: Into<Bytes>>(
        mut self,
        path: impl Into<String>,
        len: u64,
        regions: impl IntoIterator<Item = (u64, B)>,
    ) -> Self {
        self.entries.push(LayerEntry::SparseFile {
            path: path.into(),
            len,
            regions: regions.into_iter().map(|(o, b)| (o, b.into())).collect(),
            mode: 0o644,
        });
        self
    }

    /// Sets the owner of the entry at `path` of this layer (any kind but whiteouts and opaque
    /// markers; also a directory added implicitly as a parent).
    pub fn owner(mut self, path: impl AsRef<str>, uid: u64, gid: u64) -> Self {
        let m = self.meta.entry(normalize_path(path.as_ref())).or_default();
        m.uid = uid;
        m.gid = gid;
        self
    }

    /// Sets extended attribute `name` (e.g. `user.x`, `trusted.x`, `security.capability`) of the
    /// entry at `path` of this layer to `value` (any bytes). Not allowed on hardlinks (they share
    /// their target's xattrs) nor on markers.
    pub fn xattr(
        mut self,
        path: impl AsRef<str>,
        name: impl Into<String>,
        value: impl Into<Bytes>,
    ) -> Self {
        self.meta
            .entry(normalize_path(path.as_ref()))
            .or_default()
            .xattrs
            .insert(name.into(), value.into());
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

/// A `security.capability` xattr value granting `cap_net_bind_service` (bit 10) permitted and
/// effective: `VFS_CAP_REVISION_2` with the effective flag, 20 bytes little-endian.
pub const CAP_NET_BIND_SERVICE_V2: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, // magic_etc: VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
    0x00, 0x04, 0x00, 0x00, // data[0].permitted: 1 << 10
    0x00, 0x00, 0x00, 0x00, // data[0].inheritable
    0x00, 0x00, 0x00, 0x00, // data[1].permitted
    0x00, 0x00, 0x00, 0x00, // data[1].inheritable
];

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

/// A multi-platform image index pushed to a registry.
#[derive(Debug, Clone)]
pub struct IndexInfo {
    /// `127.0.0.1:<port>/<repo>:<tag>`: resolves to the index.
    pub reference: String,
    /// `127.0.0.1:<port>`.
    pub registry: String,
    pub repo: String,
    pub tag: String,
    pub index_digest: String,
    pub index_size: u64,
    /// (platform `os/arch[/variant]`, its image) in the index's order. Each image's `reference`
    /// is its digest reference (`<registry>/<repo>@<manifest digest>`), its `tag` the index's.
    pub manifests: Vec<(String, ImageInfo)>,
    /// Where the OCI layout that was pushed lives.
    pub oci_dir: PathBuf,
}

impl IndexInfo {
    /// `127.0.0.1:<port>/<repo>@<index digest>`.
    pub fn digest_reference(&self) -> String {
        format!("{}/{}@{}", self.registry, self.repo, self.index_digest)
    }

    /// The image of `platform` (`linux/amd64`).
    pub fn platform(&self, platform: &str) -> Option<&ImageInfo> {
        self.manifests
            .iter()
            .find(|(p, _)| p == platform)
            .map(|(_, i)| i)
    }

    pub(crate) fn from_oci(registry: &str, repo: &str, tag: &str, idx: &OciIndex) -> IndexInfo {
        IndexInfo {
            reference: format!("{registry}/{repo}:{tag}"),
            registry: registry.to_string(),
            repo: repo.to_string(),
            tag: tag.to_string(),
            index_digest: idx.index_digest.clone(),
            index_size: idx.index_size,
            manifests: idx
                .images
                .iter()
                .map(|(p, img)| {
                    let mut info = ImageInfo::from_oci(registry, repo, tag, img);
                    info.reference = info.digest_reference();
                    (p.clone(), info)
                })
                .collect(),
            oci_dir: idx.dir.clone(),
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
/// tagged `tag`, for this machine's platform (see [`oci_arch`]). Deterministic: the same inputs
/// give the same digests.
pub fn build_oci_layout(
    out: &Path,
    tag: &str,
    layers: &[LayerSpec],
    config: &ImageConfig,
) -> Result<OciImage> {
    init_layout(out)?;
    let img = write_image(out, tag, "linux", oci_arch(), None, layers, config)?;
    write_index_json(
        out,
        vec![json!({
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": img.manifest_digest,
            "size": img.manifest_size,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        })],
    )?;
    Ok(img)
}

/// One platform's image of a multi-platform image index (see [`build_oci_index`]).
#[derive(Debug, Clone)]
pub struct PlatformImage {
    /// `platform.os` and the config's `os`.
    pub os: String,
    /// `platform.architecture` and the config's `architecture` (OCI names: `amd64`, `arm64`).
    pub architecture: String,
    /// `platform.variant` and the config's `variant` (e.g. `v8`), omitted when `None`.
    pub variant: Option<String>,
    pub layers: Vec<LayerSpec>,
    pub config: ImageConfig,
}

impl PlatformImage {
    /// `linux/<architecture>` with `layers` and the default config.
    pub fn linux(architecture: impl Into<String>, layers: Vec<LayerSpec>) -> PlatformImage {
        PlatformImage {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
            layers,
            config: ImageConfig::default(),
        }
    }

    /// `os/architecture[/variant]`, e.g. `linux/arm64`.
    pub fn platform(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }

    /// The tag of this platform's own manifest in an index layout tagged `index_tag`:
    /// `<index_tag>-<os>-<architecture>[-<variant>]`, e.g. `v1-linux-amd64`.
    pub fn tag_in(&self, index_tag: &str) -> String {
        format!("{index_tag}-{}", self.platform().replace('/', "-"))
    }
}

/// A multi-platform OCI image layout on disk: `index.json` tags an image index (`tag`) and also
/// each platform's manifest alone ([`PlatformImage::tag_in`]), so one platform can be read (e.g.
/// by umoci) without the index.
#[derive(Debug, Clone)]
pub struct OciIndex {
    /// The layout directory.
    pub dir: PathBuf,
    /// The `org.opencontainers.image.ref.name` of the image index.
    pub tag: String,
    pub index_digest: String,
    pub index_size: u64,
    /// (platform `os/arch[/variant]`, its image), in the index's order.
    pub images: Vec<(String, OciImage)>,
}

impl OciIndex {
    /// The image of `platform` (`linux/amd64`).
    pub fn image(&self, platform: &str) -> Option<&OciImage> {
        self.images
            .iter()
            .find(|(p, _)| p == platform)
            .map(|(_, i)| i)
    }
}

/// Writes a multi-platform OCI image layout into `out` (created if needed): one image (config
/// with that platform's `os`/`architecture`, manifest, layers) per entry of `platforms`, an image
/// index referencing their manifests with their `platform`s, tagged `tag` in `index.json`, and
/// each manifest also tagged [`PlatformImage::tag_in`]`(tag)`. Push it with
/// `skopeo copy --all` ([`Registry::push_oci_index`](crate::Registry::push_oci_index)).
/// Deterministic.
pub fn build_oci_index(out: &Path, tag: &str, platforms: &[PlatformImage]) -> Result<OciIndex> {
    if platforms.is_empty() {
        return Err(Error::malformed("image index", "no platforms"));
    }
    init_layout(out)?;
    let mut images = Vec::new();
    let mut descriptors = Vec::new();
    let mut refs = Vec::new();
    let mut seen = BTreeSet::new();
    for p in platforms {
        if !seen.insert(p.platform()) {
            return Err(Error::malformed(
                "image index",
                format!("platform {} twice", p.platform()),
            ));
        }
        let ptag = p.tag_in(tag);
        let img = write_image(
            out,
            &ptag,
            &p.os,
            &p.architecture,
            p.variant.as_deref(),
            &p.layers,
            &p.config,
        )?;
        let mut platform = json!({ "architecture": p.architecture, "os": p.os });
        if let Some(v) = &p.variant {
            platform["variant"] = json!(v);
        }
        descriptors.push(json!({
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": img.manifest_digest,
            "size": img.manifest_size,
            "platform": platform,
        }));
        refs.push(json!({
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": img.manifest_digest,
            "size": img.manifest_size,
            "platform": platform,
            "annotations": { "org.opencontainers.image.ref.name": ptag },
        }));
        images.push((p.platform(), img));
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": descriptors,
    });
    let (index_digest, index_size) = put_json_blob(out, &index, "image index")?;
    let mut entries = vec![json!({
        "mediaType": MEDIA_TYPE_INDEX,
        "digest": index_digest,
        "size": index_size,
        "annotations": { "org.opencontainers.image.ref.name": tag },
    })];
    entries.extend(refs);
    write_index_json(out, entries)?;
    Ok(OciIndex {
        dir: out.to_path_buf(),
        tag: tag.to_string(),
        index_digest,
        index_size,
        images,
    })
}

/// Creates `out/blobs/sha256` and `out/oci-layout`.
fn init_layout(out: &Path) -> Result<()> {
    let blobs = out.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| Error::io("create dir", &blobs, e))?;
    write_file(
        &out.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
}

/// Writes `out/index.json` listing `manifests`.
fn write_index_json(out: &Path, manifests: Vec<serde_json::Value>) -> Result<()> {
    let index = json!({ "schemaVersion": 2, "manifests": manifests });
    let index_bytes = serde_json::to_vec(&index).map_err(|source| Error::Json {
        what: "index.json".into(),
        source,
    })?;
    write_file(&out.join("index.json"), &index_bytes)
}

/// Writes the layers, config and manifest of one image into the layout `out`.
fn write_image(
    out: &Path,
    tag: &str,
    os: &str,
    arch: &str,
    variant: Option<&str>,
    layers: &[LayerSpec],
    config: &ImageConfig,
) -> Result<OciImage> {
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
    let mut config_doc = json!({
        "architecture": arch,
        "os": os,
        "config": cfg,
        "rootfs": {
            "type": "layers",
            "diff_ids": built.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>(),
        },
    });
    if let Some(v) = variant {
        config_doc["variant"] = json!(v);
    }
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
    Ok(OciImage {
        dir: out.to_path_buf(),
        tag: tag.to_string(),
        manifest_digest,
        manifest_size,
        config: (config_digest, config_size),
        layers: built,
    })
}

/// The OCI architecture name of this machine (`amd64`, `arm64`, ...): what containerd and umoci
/// pick from a multi-platform index here.
pub fn oci_arch() -> &'static str {
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

fn tmp_blob_path(layout: &Path) -> PathBuf {
    layout.join("blobs").join("sha256").join(format!(
        "tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Syncs a finished blob written to `tmp` and renames it to its digest's name.
fn commit_blob(layout: &Path, tmp: &Path, buffered: BufWriter<File>, digest: &str) -> Result<()> {
    let io_err = |e: io::Error| Error::io("write blob", tmp, e);
    buffered
        .into_inner()
        .map_err(|e| io_err(e.into_error()))?
        .sync_all()
        .map_err(io_err)?;
    let dest = blob_path(layout, digest);
    std::fs::rename(tmp, &dest).map_err(|e| Error::io("rename", &dest, e))
}

/// Writes one layer blob into the layout at `layout` and returns its descriptor.
fn write_layer(layout: &Path, spec: &LayerSpec) -> Result<BuiltLayer> {
    let items = normalize(spec)?;
    let tmp = tmp_blob_path(layout);
    let io_err = |e: io::Error| Error::io("write layer", &tmp, e);
    let file = File::create(&tmp).map_err(io_err)?;
    let blob_writer = HashingWriter::new(BufWriter::new(file));
    let (diff_id, digest, size, buffered) = match spec.compression {
        Compression::Gzip => {
            let gz = flate2::write::GzEncoder::new(blob_writer, flate2::Compression::fast());
            let tar_writer = write_tar(HashingWriter::new(gz), &items).map_err(io_err)?;
            let (diff_id, _, gz) = tar_writer.finish();
            let blob_writer = gz.finish().map_err(io_err)?;
            let (digest, size, buffered) = blob_writer.finish();
            (diff_id, digest, size, buffered)
        }
        Compression::Zstd => {
            let mut zst = zstd::stream::write::Encoder::new(blob_writer, 3).map_err(io_err)?;
            zst.include_checksum(true).map_err(io_err)?;
            let tar_writer = write_tar(HashingWriter::new(zst), &items).map_err(io_err)?;
            let (diff_id, _, zst) = tar_writer.finish();
            let blob_writer = zst.finish().map_err(io_err)?;
            let (digest, size, buffered) = blob_writer.finish();
            (diff_id, digest, size, buffered)
        }
        Compression::None => {
            let blob_writer = write_tar(blob_writer, &items).map_err(io_err)?;
            let (digest, size, buffered) = blob_writer.finish();
            (digest.clone(), digest, size, buffered)
        }
    };
    commit_blob(layout, &tmp, buffered, &digest)?;
    Ok(BuiltLayer {
        media_type: spec.compression.media_type().to_string(),
        digest,
        size,
        diff_id,
    })
}

/// One tar record of a layer, in write order.
#[derive(Debug, Clone)]
struct TarItem {
    /// The name in the archive (`.wh.` names for markers).
    name: String,
    entry: LayerEntry,
    /// Permission bits for the header.
    mode: u32,
    /// Owner and xattrs for the header.
    meta: EntryMeta,
    /// Hardlinks: the normalised target (chains within the layer resolved).
    link_target: Option<String>,
}

/// The order of records: by name, except that an opaque marker comes right after its
/// directory, before anything inside it.
fn sort_key(name: &str) -> String {
    match name.strip_suffix(OPAQUE_MARKER) {
        Some(dir) if dir.is_empty() || dir.ends_with('/') => format!("{dir}\0"),
        _ => name.to_string(),
    }
}

fn valid_rel_path(p: &str) -> bool {
    !p.is_empty() && !p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
}

fn join_rel(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The records of a layer: entries sorted by name (so parents precede children), missing parent
/// directories added, opaque markers right after their directory, hardlinks last. Duplicate,
/// empty or escaping paths, `.wh.` names that are not markers, non-directory parents, hardlinks to
/// directories or markers, metadata for paths that are not entries of the layer, and sparse
/// regions outside their file or overlapping are errors.
fn normalize(spec: &LayerSpec) -> Result<Vec<TarItem>> {
    let bad = |detail: String| Error::malformed("layer entry", detail);
    // sort key -> (tar name, image path, entry)
    let mut items: BTreeMap<String, (String, String, LayerEntry)> = BTreeMap::new();
    // link path -> target, both normalised
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    let mut names: BTreeSet<String> = BTreeSet::new();
    for e in &spec.entries {
        let p = normalize_path(e.path());
        let root_opaque = matches!(e, LayerEntry::Opaque { .. }) && p.is_empty();
        if !root_opaque && !valid_rel_path(&p) {
            return Err(bad(format!("path {:?}", e.path())));
        }
        let (parent, base) = match p.rsplit_once('/') {
            Some((d, b)) => (d, b),
            None => ("", p.as_str()),
        };
        if base.starts_with(WHITEOUT_PREFIX) {
            return Err(bad(format!(
                "{p:?}: names starting with {WHITEOUT_PREFIX:?} are OCI whiteouts (use whiteout/opaque)"
            )));
        }
        let name = match e {
            LayerEntry::Whiteout { .. } => join_rel(parent, &format!("{WHITEOUT_PREFIX}{base}")),
            LayerEntry::Opaque { .. } => join_rel(&p, OPAQUE_MARKER),
            _ => p.clone(),
        };
        if !names.insert(name.clone()) {
            return Err(bad(format!("duplicate {name:?}")));
        }
        let entry = match e {
            LayerEntry::Hardlink { target, .. } => {
                let t = normalize_path(target);
                if !valid_rel_path(&t) {
                    return Err(bad(format!("hardlink {p:?} target {target:?}")));
                }
                links.insert(p, t);
                continue;
            }
            LayerEntry::SparseFile {
                path,
                len,
                regions,
                mode,
            } => {
                let mut regions = regions.clone();
                regions.sort_by_key(|(o, _)| *o);
                let mut end = 0u64;
                for (o, b) in &regions {
                    if *o < end || o.saturating_add(b.len() as u64) > *len {
                        return Err(bad(format!(
                            "sparse file {p:?}: region at {o} (+{}) overlaps or ends past {len}",
                            b.len()
                        )));
                    }
                    end = o + b.len() as u64;
                }
                LayerEntry::SparseFile {
                    path: path.clone(),
                    len: *len,
                    regions,
                    mode: *mode,
                }
            }
            other => other.clone(),
        };
        items.insert(sort_key(&name), (name, p, entry));
    }
    // Opaque directories must exist in the layer: add them like parents.
    let mut wanted_dirs: Vec<String> = items
        .values()
        .filter(|(_, _, e)| matches!(e, LayerEntry::Opaque { .. }))
        .map(|(_, p, _)| p.clone())
        .filter(|p| !p.is_empty())
        .collect();
    for name in &names {
        wanted_dirs.extend(name.match_indices('/').map(|(i, _)| name[..i].to_string()));
    }
    for dir in wanted_dirs {
        match items.get(&dir) {
            Some((_, _, LayerEntry::Dir { .. })) => {}
            Some(_) => return Err(bad(format!("{dir:?} is a parent but not a directory"))),
            None if links.contains_key(&dir) => {
                return Err(bad(format!("{dir:?} is a parent but a hardlink")))
            }
            None => {
                items.insert(
                    dir.clone(),
                    (
                        dir.clone(),
                        dir.clone(),
                        LayerEntry::Dir {
                            path: dir,
                            mode: 0o755,
                        },
                    ),
                );
            }
        }
    }
    // Metadata must name entries of the layer (hardlinks: owner only, for lower targets).
    for (path, meta) in &spec.meta {
        if links.contains_key(path) {
            if !meta.xattrs.is_empty() {
                return Err(bad(format!(
                    "xattrs on hardlink {path:?}: set them on its target"
                )));
            }
            continue;
        }
        match items.get(path) {
            Some((_, _, e)) if !e.is_marker() => {}
            _ => {
                return Err(bad(format!(
                    "owner/xattrs for {path:?}, which is not an entry of this layer"
                )))
            }
        }
    }
    let mut link_items = Vec::new();
    for (path, target) in &links {
        let mut t = target.clone();
        let mut hops = 0;
        while let Some(next) = links.get(&t) {
            t = next.clone();
            hops += 1;
            if hops > links.len() {
                return Err(bad(format!("hardlink cycle through {path:?}")));
            }
        }
        let (mode, meta) = match items.get(&t) {
            Some((_, _, e)) if e.is_marker() || matches!(e, LayerEntry::Dir { .. }) => {
                return Err(bad(format!(
                    "hardlink {path:?} to {t:?}, a directory or marker"
                )))
            }
            Some((_, _, e)) => {
                if spec.meta.contains_key(path) {
                    return Err(bad(format!(
                        "owner for hardlink {path:?}: it shares {t:?}'s, set it there"
                    )));
                }
                let m = spec.meta.get(&t).cloned().unwrap_or_default();
                (
                    e.mode(),
                    EntryMeta {
                        uid: m.uid,
                        gid: m.gid,
                        xattrs: BTreeMap::new(),
                    },
                )
            }
            None => (0o644, spec.meta.get(path).cloned().unwrap_or_default()),
        };
        link_items.push(TarItem {
            name: path.clone(),
            entry: LayerEntry::Hardlink {
                path: path.clone(),
                target: t.clone(),
            },
            mode,
            meta,
            link_target: Some(t),
        });
    }
    let mut out: Vec<TarItem> = items
        .into_values()
        .map(|(name, path, entry)| TarItem {
            mode: entry.mode(),
            meta: if entry.is_marker() {
                EntryMeta::default()
            } else {
                spec.meta.get(&path).cloned().unwrap_or_default()
            },
            name,
            entry,
            link_target: None,
        })
        .collect();
    out.extend(link_items);
    Ok(out)
}

fn normalize_path(p: &str) -> String {
    let mut s = p.trim_start_matches('/');
    while let Some(rest) = s.strip_prefix("./") {
        s = rest.trim_start_matches('/');
    }
    if s == "." {
        s = "";
    }
    s.trim_end_matches('/').to_string()
}

/// Writes a PAX extended header (`x`) holding `SCHILY.xattr.<name>` records for the entry
/// `name` that follows it. Its own name is `PaxHeaders/<base name>` (as GNU tar does), mtime 0.
fn append_pax_xattrs<W: Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    xattrs: &BTreeMap<String, Bytes>,
) -> io::Result<()> {
    let mut data = Vec::new();
    for (k, v) in xattrs {
        let key = format!("SCHILY.xattr.{k}");
        // "<len> <key>=<value>\n", where <len> counts the whole record including its own digits.
        let rest = key.len() + v.len() + 3;
        let mut digits = 1;
        while (rest + digits).to_string().len() != digits {
            digits += 1;
        }
        data.extend_from_slice(format!("{} {key}=", rest + digits).as_bytes());
        data.extend_from_slice(v);
        data.push(b'\n');
    }
    let base = name.rsplit('/').next().unwrap_or(name);
    let mut cut = base.len().min(80);
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut h = tar::Header::new_ustar();
    h.set_path(format!("PaxHeaders/{}", &base[..cut]))?;
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, &data[..])
}

/// Writes `items` as a tar: GNU headers, mtime 0, no user/group names, owners and xattrs as
/// given (xattrs in a PAX header before the entry).
fn write_tar<W: Write>(w: W, items: &[TarItem]) -> io::Result<W> {
    let mut b = tar::Builder::new(w);
    b.mode(tar::HeaderMode::Deterministic);
    for item in items {
        if !item.meta.xattrs.is_empty() {
            append_pax_xattrs(&mut b, &item.name, &item.meta.xattrs)?;
        }
        let path = &item.name;
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(item.meta.uid);
        h.set_gid(item.meta.gid);
        h.set_mode(item.mode);
        h.set_size(0);
        match &item.entry {
            LayerEntry::File { data, .. } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, &data[..])?;
            }
            LayerEntry::RandomFile { seed, len, .. } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*len);
                b.append_data(&mut h, path, RandomReader::new(*seed, *len))?;
            }
            LayerEntry::SparseFile { len, regions, .. } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*len);
                b.append_data(&mut h, path, SparseReader::new(*len, regions.clone()))?;
            }
            LayerEntry::Dir { .. } => {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, path, io::empty())?;
            }
            LayerEntry::Symlink { target, .. } => {
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, path, target)?;
            }
            LayerEntry::Hardlink { .. } => {
                h.set_entry_type(tar::EntryType::Link);
                let target = item.link_target.as_deref().unwrap_or_default();
                b.append_link(&mut h, path, target)?;
            }
            LayerEntry::Whiteout { .. } | LayerEntry::Opaque { .. } => {
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, path, io::empty())?;
            }
            LayerEntry::CharDevice { major, minor, .. }
            | LayerEntry::BlockDevice { major, minor, .. } => {
                h.set_entry_type(if matches!(item.entry, LayerEntry::CharDevice { .. }) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(*major)?;
                h.set_device_minor(*minor)?;
                b.append_data(&mut h, path, io::empty())?;
            }
            LayerEntry::Fifo { .. } => {
                h.set_entry_type(tar::EntryType::Fifo);
                b.append_data(&mut h, path, io::empty())?;
            }
        }
    }
    b.into_inner()
}

/// A reader of a mostly-zero file: `len` bytes, zero except `regions` (offset, bytes), which are
/// sorted here and must not overlap; bytes of a region past `len` are cut off.
#[derive(Debug, Clone)]
pub struct SparseReader {
    len: u64,
    pos: u64,
    regions: Vec<(u64, Bytes)>,
    next: usize,
}

impl SparseReader {
    pub fn new(len: u64, mut regions: Vec<(u64, Bytes)>) -> SparseReader {
        regions.sort_by_key(|(o, _)| *o);
        SparseReader {
            len,
            pos: 0,
            regions,
            next: 0,
        }
    }
}

impl Read for SparseReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let max = (buf.len() as u64).min(self.len - self.pos);
        while let Some((o, d)) = self.regions.get(self.next) {
            if o + d.len() as u64 <= self.pos {
                self.next += 1;
            } else {
                break;
            }
        }
        let n = match self.regions.get(self.next) {
            Some((o, d)) if *o <= self.pos => {
                let start = (self.pos - o) as usize;
                let n = (max as usize).min(d.len() - start);
                buf[..n].copy_from_slice(&d[start..start + n]);
                n
            }
            Some((o, _)) => {
                let n = max.min(o - self.pos) as usize;
                buf[..n].fill(0);
                n
            }
            None => {
                let n = max as usize;
                buf[..n].fill(0);
                n
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

fn read_json_file(path: &Path, what: &str) -> Result<serde_json::Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        what: format!("{what} ({})", path.display()),
        source,
    })
}

/// Hard-links `src` to `dst`, copying when that fails (e.g. across file systems).
fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    if std::fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    std::fs::copy(src, dst)
        .map(|_| ())
        .map_err(|e| Error::io("copy", dst, e))
}

/// Extracts the tar archive `archive` (plain or compressed) into `dest` (created) with `tar`,
/// keeping modes, owners (numeric) and xattrs: the reference tree a mount is compared with.
pub fn extract_tar(archive: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(|e| Error::io("create", dest, e))?;
    let o = std::process::Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--same-owner",
            "--numeric-owner",
        ])
        .arg("-xpf")
        .arg(archive)
        .arg("-C")
        .arg(dest)
        .output()
        .map_err(|e| Error::io("run tar on", archive, e))?;
    if !o.status.success() {
        return Err(Error::malformed(
            format!("tar -x {}", archive.display()),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ));
    }
    Ok(())
}

/// The final tree of image `tag` of the OCI layout `layout_dir`, unpacked by umoci (`umoci raw
/// unpack --image <layout_dir>:<tag> <dest>`, run as root): an OCI implementation independent of
/// this crate and of the code under test (Go's archive/tar plus umoci's own layer applier), which
/// applies whiteouts and opaque markers. Returns the root of the tree (`dest`, which must not
/// exist yet; its parent must). umoci's warnings, if any, go to stderr.
///
/// What umoci 0.4.7 (Debian 12) does, checked by `tests/image_builder.rs`:
/// - keeps: file bytes, modes (setuid, setgid, sticky), uid/gid (also ids above 2^21, written
///   base-256), symlink targets and owners, hardlinks within a layer and from an upper layer to a
///   lower layer's file (one inode, right link count, also after one name is whited out), char
///   and block device numbers, fifos, mtimes (0 here), and xattrs on files and directories with
///   binary values (NUL, `\n`, `=`, 0xff): `user.*`, `trusted.*`, `security.capability`;
/// - an upper layer's directory entry replaces the lower directory's mode, owner and xattrs
///   (containerd with overlayfs agrees);
/// - drops these xattrs (never set; not an error): any with an empty value (Go's archive/tar
///   treats an empty PAX record as "unset", so `hdr.Xattrs` never has it; containerd, reading
///   `PAXRecords`, would set it), and umoci's `ignoreXattrs`: `security.selinux`,
///   `system.nfs4_acl`, `trusted.overlay.opaque`, `trusted.overlay.redirect`,
///   `trusted.overlay.origin`, `trusted.overlay.impure`, `trusted.overlay.nlink`. (containerd 1.6
///   drops every `trusted.*` xattr: "admin attributes from archive not supported".)
/// - cannot read zstd layers (0.4.7 knows only plain and gzip): this function then unpacks a
///   copy of the layout (`<dest>.umoci-layout`, removed afterwards) whose zstd layers are
///   decompressed to plain tars (digest = the config's diff_id, which umoci verifies), other
///   blobs hard-linked;
/// - does not pick a platform from an image index (the tag resolves to several manifests): when
///   `tag` names an index, the same kind of copy is made of the manifest for linux/[`oci_arch`].
pub fn unpack_with_umoci(layout_dir: &Path, tag: &str, dest: &Path) -> Result<PathBuf> {
    let index = read_json_file(&layout_dir.join("index.json"), "index.json")?;
    let desc = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .cloned()
        .ok_or_else(|| {
            Error::malformed(
                format!("{}/index.json", layout_dir.display()),
                format!("no manifest tagged {tag:?}"),
            )
        })?;
    let digest_of = |d: &serde_json::Value| d["digest"].as_str().unwrap_or_default().to_string();
    let mut manifest_digest = digest_of(&desc);
    let via_index = desc["mediaType"] == MEDIA_TYPE_INDEX;
    if via_index {
        let idx = read_json_file(&blob_path(layout_dir, &manifest_digest), "image index")?;
        manifest_digest = idx["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["platform"]["os"] == "linux" && d["platform"]["architecture"] == oci_arch())
            .map(digest_of)
            .ok_or_else(|| {
                Error::malformed(
                    format!("image index {tag}"),
                    format!("no manifest for linux/{}", oci_arch()),
                )
            })?;
    }
    let manifest = read_json_file(&blob_path(layout_dir, &manifest_digest), "manifest")?;
    let has_zstd = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|l| l["mediaType"] == MEDIA_TYPE_LAYER_ZSTD);
    let mut view = None;
    let (src, src_tag) = if via_index || has_zstd {
        let mut name = dest.file_name().unwrap_or_default().to_os_string();
        name.push(".umoci-layout");
        let dir = dest.with_file_name(name);
        write_umoci_view(layout_dir, &manifest, &dir)?;
        view = Some(dir.clone());
        (dir, "umoci".to_string())
    } else {
        (layout_dir.to_path_buf(), tag.to_string())
    };
    let image = format!("{}:{src_tag}", src.display());
    let out = std::process::Command::new("umoci")
        .args(["raw", "unpack", "--image", &image])
        .arg(dest)
        .output()
        .map_err(|source| Error::Spawn {
            program: "umoci".into(),
            source,
        });
    if let Some(dir) = view {
        let _ = std::fs::remove_dir_all(dir);
    }
    let out = out?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("umoci raw unpack --image {image} {}", dest.display()),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        eprintln!("umoci raw unpack {image}: {stderr}");
    }
    Ok(dest.to_path_buf())
}

/// A layout at `dir` with one manifest (tag `umoci`): `manifest` with its zstd layers replaced
/// by their decompressed tars. Other blobs are hard-linked from `layout`.
fn write_umoci_view(layout: &Path, manifest: &serde_json::Value, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io("remove", dir, e))?;
    }
    init_layout(dir)?;
    let mut manifest = manifest.clone();
    let config = manifest["config"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    link_or_copy(&blob_path(layout, &config), &blob_path(dir, &config))?;
    if let Some(layers) = manifest["layers"].as_array_mut() {
        for l in layers {
            let digest = l["digest"].as_str().unwrap_or_default().to_string();
            let src = blob_path(layout, &digest);
            if l["mediaType"] != MEDIA_TYPE_LAYER_ZSTD {
                link_or_copy(&src, &blob_path(dir, &digest))?;
                continue;
            }
            let tmp = tmp_blob_path(dir);
            let io_err = |e: io::Error| Error::io("decompress zstd layer", &src, e);
            let file = File::open(&src).map_err(io_err)?;
            let mut dec = zstd::stream::read::Decoder::new(file).map_err(io_err)?;
            let out = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
            let mut w = HashingWriter::new(BufWriter::new(out));
            io::copy(&mut dec, &mut w).map_err(io_err)?;
            let (tar_digest, tar_size, buffered) = w.finish();
            commit_blob(dir, &tmp, buffered, &tar_digest)?;
            *l = json!({
                "mediaType": MEDIA_TYPE_LAYER_TAR,
                "digest": tar_digest,
                "size": tar_size,
            });
        }
    }
    let (digest, size) = put_json_blob(dir, &manifest, "manifest")?;
    write_index_json(
        dir,
        vec![json!({
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": digest,
            "size": size,
            "annotations": { "org.opencontainers.image.ref.name": "umoci" },
        })],
    )
}

/// Seed of `/big/random.bin` in [`feature_image_layers`].
pub const FEATURE_BIG_SEED: u64 = 0xB16;
/// Length of `/sparse/64m.img` in [`feature_image_layers`].
pub const FEATURE_SPARSE_LEN: u64 = 64 << 20;

/// The non-zero regions (offset, bytes) of `/sparse/64m.img` in [`feature_image_layers`].
pub fn feature_sparse_regions() -> Vec<(u64, Bytes)> {
    vec![
        (0, Bytes::from_static(b"sparse-head\n")),
        ((4 << 20) + 123, Bytes::from(random_bytes(5, 4096))),
        (32 << 20, Bytes::from_static(b"middle")),
        (FEATURE_SPARSE_LEN - 5, Bytes::from_static(b"tail\n")),
    ]
}

/// What [`feature_image_layers_with`] builds.
#[derive(Debug, Clone, Copy)]
pub struct FeatureImageOptions {
    /// Size of `/big/random.bin`, the only file of layer 5 (0 gives an empty file).
    pub big_layer_bytes: u64,
    /// Whether layer 4 holds `/upper/to-lower`, a hardlink to `/lower/shared.txt` of layer 1.
    pub cross_layer_hardlink: bool,
}

/// [`feature_image_layers_with`] with `big_layer_bytes` and the cross-layer hardlink
/// (`/upper/to-lower`). umoci unpacks it; containerd 1.6 (overlayfs snapshotter) cannot pull it:
/// it extracts each layer into the snapshot's empty upper directory, where the lower target does
/// not exist ("failed to extract layer ...: link ...: no such file or directory"). Use
/// `cross_layer_hardlink: false` for an image containerd must pull.
pub fn feature_image_layers(big_layer_bytes: u64) -> Result<Vec<LayerSpec>> {
    feature_image_layers_with(FeatureImageOptions {
        big_layer_bytes,
        cross_layer_hardlink: true,
    })
}

/// The five layers of an image exercising every filesystem feature an OCI layer can carry.
/// Deterministic (same options, same digests). Every mtime is 0; owner 0:0, directories 0755
/// and files 0644 unless said otherwise. Runnable (`Cmd ["/bin/sh"]`).
///
/// Layer 1 (gzip), base:
/// - `/bin/busybox` (this machine's static busybox, 0755), `/bin/sh -> busybox`,
///   `/etc/hello.txt` ("hello-from-image\n"), `/tmp` (1777), `/etc/empty` (0 bytes);
/// - `/etc/removed.txt` (whited out by layer 3), `/etc/replaced.txt` "v1\n" (replaced by 3);
/// - `/gone/a.txt`, `/gone/sub/b.txt` (the directory `/gone` is whited out by layer 3);
/// - `/opaque/lower-a.txt`, `/opaque/sub/lower-b.txt` (hidden: layer 3 makes `/opaque` opaque);
/// - `/merged/lower.txt` (stays: layer 3 adds `/merged/upper.txt` without an opaque marker);
/// - `/lower/shared.txt` "shared across layers\n" (hard-linked from layer 4);
/// - `/type-change/file-to-dir` (a file; a directory from layer 4),
///   `/type-change/dir-to-symlink/old.txt` (a directory; a symlink from layer 4).
///
/// Layer 2 (zstd), special files and metadata:
/// - `/dev/char-null` char 1:3 (0666), `/dev/block-loop` block 7:300 (0660, 0:6),
///   `/dev/fifo` fifo (0620, 1000:1000);
/// - `/caps/ping` (0755) with `security.capability` = [`CAP_NET_BIND_SERVICE_V2`];
/// - `/xattrs/file.txt` with `user.greeting`="hi", `user.binary`=`00 01 ff fe 3d 0a 00`,
///   `trusted.note`=[`random_bytes`]`(3, 300)` (no empty value: umoci drops those, see
///   [`unpack_with_umoci`]);
///   `/xattrs/dir` (0750, 1000:1000) with `user.dir`="on a directory", `trusted.dir`="t", and
///   `/xattrs/dir/inner.txt`; `/xattrs/replaced-dir` (0700, 1000:1000, `user.lower`="1",
///   replaced by layer 4);
/// - `/owners/user` (0640, 1000:1000), `/owners/nobody` (65534:65534), `/owners/big`
///   (100000:70000), `/owners/huge` (3000000:3000001, base-256 numbers in the GNU header),
///   `/owners/link -> user` (42:43), `/owners/dir` (0700, 1000:1000);
/// - `/links/orig` "shared by five names\n" (0640, 1000:1000, `user.link`="orig") with hardlinks
///   `/links/hl-same-dir`, `/links/sub/hl-other-dir` and `/links/hl-whited-out` (removed by
///   layer 4, so 3 names remain); `/links/a-link` hard-linked to `/links/z-target` ("z\n": the
///   link's name sorts before its target's); symlinks `/links/rel -> orig`,
///   `/links/abs -> /etc/hello.txt`, `/links/dangling -> does/not/exist`,
///   `/links/dir -> ../xattrs/dir`, `/links/long` -> 300 × "t" (GNU long link);
/// - `/modes/setuid` (4755), `/modes/setgid` (2711), `/modes/sticky` (dir, 1777),
///   `/modes/none` (0000), `/modes/all` (0777);
/// - `/sparse/64m.img`: [`FEATURE_SPARSE_LEN`] bytes, zero except [`feature_sparse_regions`];
/// - `/names/` + 255 × "n" (GNU long name) and `/names/ünïcödé-名前.txt`.
///
/// Layer 3 (plain tar), whiteouts:
/// - whiteouts of `/etc/removed.txt`, of the directory `/gone`, and of `/etc/never-existed`
///   (nothing to remove);
/// - `/etc/replaced.txt` "v2, from layer 3\n";
/// - `/opaque` made opaque, with `/opaque/upper.txt` "upper\n" and `/opaque/sub/upper-b.txt`;
/// - `/merged/upper.txt`.
///
/// Layer 4 (gzip), links across layers and type changes:
/// - `/upper/a` "upper pair\n" and its hardlink `/upper/b`;
/// - if `cross_layer_hardlink`: `/upper/to-lower`, a hardlink to `/lower/shared.txt` of layer 1;
/// - a whiteout of `/links/hl-whited-out` (one of the names of `/links/orig`);
/// - `/type-change/file-to-dir/inside.txt` (the file becomes a directory),
///   `/type-change/dir-to-symlink -> file-to-dir` (the directory becomes a symlink);
/// - `/xattrs/replaced-dir` again (0755, 0:0, `user.upper`="2"): an upper directory entry
///   replaces the directory's mode, owner and xattrs (`user.lower` is gone).
///
/// Layer 5 (gzip): `/big/random.bin`, `big_layer_bytes` of
/// [`random_bytes`]`(`[`FEATURE_BIG_SEED`]`, ..)`.
pub fn feature_image_layers_with(opts: FeatureImageOptions) -> Result<Vec<LayerSpec>> {
    let base = LayerSpec::busybox(Compression::Gzip)?
        .file("etc/empty", Bytes::new(), 0o644)
        .file("etc/removed.txt", &b"removed in layer 3\n"[..], 0o644)
        .file("etc/replaced.txt", &b"v1\n"[..], 0o644)
        .file("gone/a.txt", &b"gone a\n"[..], 0o644)
        .file("gone/sub/b.txt", &b"gone b\n"[..], 0o644)
        .file("opaque/lower-a.txt", &b"lower a\n"[..], 0o644)
        .file("opaque/sub/lower-b.txt", &b"lower b\n"[..], 0o644)
        .file("merged/lower.txt", &b"merged lower\n"[..], 0o644)
        .file("lower/shared.txt", &b"shared across layers\n"[..], 0o644)
        .file("type-change/file-to-dir", &b"a file for now\n"[..], 0o644)
        .file("type-change/dir-to-symlink/old.txt", &b"old\n"[..], 0o644);

    let special = LayerSpec::new(Compression::Zstd)
        .char_device("dev/char-null", 1, 3, 0o666)
        .block_device("dev/block-loop", 7, 300, 0o660)
        .owner("dev/block-loop", 0, 6)
        .fifo("dev/fifo", 0o620)
        .owner("dev/fifo", 1000, 1000)
        .file("caps/ping", &b"#!/bin/sh\necho ping\n"[..], 0o755)
        .xattr(
            "caps/ping",
            "security.capability",
            &CAP_NET_BIND_SERVICE_V2[..],
        )
        .file("xattrs/file.txt", &b"has xattrs\n"[..], 0o644)
        .xattr("xattrs/file.txt", "user.greeting", &b"hi"[..])
        .xattr(
            "xattrs/file.txt",
            "user.binary",
            &[0u8, 1, 0xff, 0xfe, b'=', b'\n', 0][..],
        )
        .xattr("xattrs/file.txt", "trusted.note", random_bytes(3, 300))
        .dir("xattrs/dir", 0o750)
        .owner("xattrs/dir", 1000, 1000)
        .xattr("xattrs/dir", "user.dir", &b"on a directory"[..])
        .xattr("xattrs/dir", "trusted.dir", &b"t"[..])
        .file("xattrs/dir/inner.txt", &b"inner\n"[..], 0o644)
        .dir("xattrs/replaced-dir", 0o700)
        .owner("xattrs/replaced-dir", 1000, 1000)
        .xattr("xattrs/replaced-dir", "user.lower", &b"1"[..])
        .file("owners/user", &b"user\n"[..], 0o640)
        .owner("owners/user", 1000, 1000)
        .file("owners/nobody", &b"nobody\n"[..], 0o644)
        .owner("owners/nobody", 65534, 65534)
        .file("owners/big", &b"big ids\n"[..], 0o644)
        .owner("owners/big", 100_000, 70_000)
        .file("owners/huge", &b"huge ids\n"[..], 0o644)
        .owner("owners/huge", 3_000_000, 3_000_001)
        .symlink("owners/link", "user")
        .owner("owners/link", 42, 43)
        .dir("owners/dir", 0o700)
        .owner("owners/dir", 1000, 1000)
        .file("links/orig", &b"shared by five names\n"[..], 0o640)
        .owner("links/orig", 1000, 1000)
        .xattr("links/orig", "user.link", &b"orig"[..])
        .hardlink("links/hl-same-dir", "links/orig")
        .hardlink("links/sub/hl-other-dir", "links/orig")
        .hardlink("links/hl-whited-out", "links/orig")
        .file("links/z-target", &b"z\n"[..], 0o644)
        .hardlink("links/a-link", "links/z-target")
        .symlink("links/rel", "orig")
        .symlink("links/abs", "/etc/hello.txt")
        .symlink("links/dangling", "does/not/exist")
        .symlink("links/dir", "../xattrs/dir")
        .symlink("links/long", "t".repeat(300))
        .file("modes/setuid", &b"setuid\n"[..], 0o4755)
        .file("modes/setgid", &b"setgid\n"[..], 0o2711)
        .dir("modes/sticky", 0o1777)
        .file("modes/none", &b"none\n"[..], 0o000)
        .file("modes/all", &b"all\n"[..], 0o777)
        .sparse_file(
            "sparse/64m.img",
            FEATURE_SPARSE_LEN,
            feature_sparse_regions(),
        )
        .file(
            format!("names/{}", "n".repeat(255)),
            &b"long name\n"[..],
            0o644,
        )
        .file("names/ünïcödé-名前.txt", "utf-8\n", 0o644);

    let whiteouts = LayerSpec::new(Compression::None)
        .whiteout("etc/removed.txt")
        .whiteout("gone")
        .whiteout("etc/never-existed")
        .file("etc/replaced.txt", &b"v2, from layer 3\n"[..], 0o644)
        .opaque("opaque")
        .file("opaque/upper.txt", &b"upper\n"[..], 0o644)
        .file("opaque/sub/upper-b.txt", &b"upper b\n"[..], 0o644)
        .file("merged/upper.txt", &b"merged upper\n"[..], 0o644);

    let mut upper = LayerSpec::new(Compression::Gzip)
        .file("upper/a", &b"upper pair\n"[..], 0o644)
        .hardlink("upper/b", "upper/a")
        .whiteout("links/hl-whited-out")
        .file(
            "type-change/file-to-dir/inside.txt",
            &b"inside\n"[..],
            0o644,
        )
        .symlink("type-change/dir-to-symlink", "file-to-dir")
        .dir("xattrs/replaced-dir", 0o755)
        .xattr("xattrs/replaced-dir", "user.upper", &b"2"[..]);
    if opts.cross_layer_hardlink {
        upper = upper.hardlink("upper/to-lower", "lower/shared.txt");
    }

    let big = LayerSpec::new(Compression::Gzip).random_file(
        "big/random.bin",
        FEATURE_BIG_SEED,
        opts.big_layer_bytes,
    );
    Ok(vec![base, special, whiteouts, upper, big])
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
        let items = normalize(&spec).expect("valid");
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a", "a/b", "a/b/c.txt", "a/l", "d"]);
        assert!(matches!(
            items[4].entry,
            LayerEntry::Dir { mode: 0o700, .. }
        ));
        assert!(matches!(
            items[0].entry,
            LayerEntry::Dir { mode: 0o755, .. }
        ));

        let dup = LayerSpec::new(Compression::None)
            .file("x", &b""[..], 0o644)
            .file("/x", &b""[..], 0o644);
        assert!(normalize(&dup).is_err());
        let up = LayerSpec::new(Compression::None).file("../etc/passwd", &b""[..], 0o644);
        assert!(normalize(&up).is_err());
    }

    #[test]
    fn markers_hardlinks_and_metadata_are_ordered_and_validated() {
        let spec = LayerSpec::new(Compression::None)
            .file("d/-first", &b"1"[..], 0o644)
            .file("d/a", &b"a"[..], 0o644)
            .opaque("d")
            .whiteout("e/gone")
            .hardlink("d/0-link", "d/z")
            .hardlink("d/chain", "d/0-link")
            .file("d/z", &b"z"[..], 0o600)
            .owner("d/z", 7, 8)
            .hardlink("up", "lower/file")
            .owner("up", 5, 6)
            .xattr("d", "user.x", &b"y"[..]);
        let items = normalize(&spec).expect("valid");
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "d",
                "d/.wh..wh..opq",
                "d/-first",
                "d/a",
                "d/z",
                "e",
                "e/.wh.gone",
                "d/0-link",
                "d/chain",
                "up"
            ]
        );
        // Links repeat their in-layer target's mode and owner; chains resolve to the file.
        let chain = &items[8];
        assert_eq!(chain.link_target.as_deref(), Some("d/z"));
        assert_eq!((chain.mode, chain.meta.uid, chain.meta.gid), (0o600, 7, 8));
        let up = &items[9];
        assert_eq!(up.link_target.as_deref(), Some("lower/file"));
        assert_eq!((up.mode, up.meta.uid, up.meta.gid), (0o644, 5, 6));
        assert_eq!(items[0].meta.xattrs["user.x"], &b"y"[..]);

        let bad = [
            LayerSpec::new(Compression::None).file(".wh.x", &b""[..], 0o644),
            LayerSpec::new(Compression::None)
                .dir("d", 0o755)
                .hardlink("l", "d"),
            LayerSpec::new(Compression::None)
                .file("f", &b""[..], 0o644)
                .file("f/g", &b""[..], 0o644),
            LayerSpec::new(Compression::None).owner("nothing", 1, 1),
            LayerSpec::new(Compression::None)
                .whiteout("w")
                .xattr("w", "user.a", &b"b"[..]),
            LayerSpec::new(Compression::None)
                .hardlink("a", "b")
                .hardlink("b", "a"),
            LayerSpec::new(Compression::None)
                .file("t", &b""[..], 0o644)
                .hardlink("l", "t")
                .owner("l", 1, 1),
            LayerSpec::new(Compression::None).sparse_file("s", 10, [(8u64, &b"abc"[..])]),
            LayerSpec::new(Compression::None).sparse_file(
                "s",
                10,
                [(0u64, &b"abc"[..]), (2, &b"x"[..])],
            ),
        ];
        for spec in bad {
            assert!(normalize(&spec).is_err(), "{spec:?}");
        }
    }

    #[test]
    fn sparse_reader_streams_zeros_and_regions() {
        let regions = vec![
            (3u64, Bytes::from_static(b"abc")),
            (0, Bytes::from_static(b"x")),
            (18, Bytes::from_static(b"yz")),
        ];
        let mut r = SparseReader::new(20, regions);
        let mut out = Vec::new();
        let mut buf = [0u8; 4];
        loop {
            let n = r.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let mut want = vec![0u8; 20];
        want[0] = b'x';
        want[3..6].copy_from_slice(b"abc");
        want[18..20].copy_from_slice(b"yz");
        assert_eq!(out, want);
    }

    #[test]
    fn tar_records_carry_types_devices_owners_and_binary_xattrs() {
        let cap = CAP_NET_BIND_SERVICE_V2;
        let spec = LayerSpec::new(Compression::Zstd)
            .file("f", &b"data"[..], 0o644)
            .xattr("f", "security.capability", &CAP_NET_BIND_SERVICE_V2[..])
            .xattr("f", "user.bin", &[0u8, b'\n', b'=', 0xff][..])
            .owner("f", 3_000_000, 70_000)
            .hardlink("a-link", "f")
            .char_device("c", 1, 3, 0o666)
            .block_device("b", 259, 70_000, 0o660)
            .fifo("p", 0o600)
            .whiteout("w")
            .opaque("o")
            .sparse_file("s", 1 << 20, [((1 << 20) - 2, &b"zz"[..])]);
        let tmp = tempfile::tempdir().expect("tempdir");
        let img =
            build_oci_layout(tmp.path(), "t", &[spec], &ImageConfig::default()).expect("build");
        let l = &img.layers[0];
        assert_eq!(l.media_type, MEDIA_TYPE_LAYER_ZSTD);
        let blob = std::fs::read(img.blob_path(&l.digest)).expect("blob");
        let tar_bytes = zstd::stream::decode_all(&blob[..]).expect("unzstd");
        assert_eq!(sha256_digest(&tar_bytes), l.diff_id);
        let mut ar = tar::Archive::new(&tar_bytes[..]);
        let mut seen = Vec::new();
        // Raw entries: PAX headers are parsed here by record length (tar-rs's own PAX iterator
        // splits records at '\n', which breaks on binary values).
        let mut pending: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for entry in ar.entries().expect("entries").raw(true) {
            let mut e = entry.expect("entry");
            if e.header().entry_type() == tar::EntryType::XHeader {
                let mut data = Vec::new();
                e.read_to_end(&mut data).expect("read pax");
                pending = parse_pax(&data);
                continue;
            }
            let xattrs = std::mem::take(&mut pending);
            let name = e.path().expect("path").to_string_lossy().into_owned();
            let h = e.header().clone();
            match name.as_str() {
                "f" => {
                    assert_eq!(h.uid().unwrap(), 3_000_000);
                    assert_eq!(h.gid().unwrap(), 70_000);
                    assert_eq!(xattrs["security.capability"], cap);
                    assert_eq!(xattrs["user.bin"], [0u8, b'\n', b'=', 0xff]);
                }
                "a-link" => {
                    assert_eq!(h.entry_type(), tar::EntryType::Link);
                    assert_eq!(e.link_name().unwrap().unwrap().to_str(), Some("f"));
                    assert_eq!(h.uid().unwrap(), 3_000_000);
                }
                "c" => {
                    assert_eq!(h.entry_type(), tar::EntryType::Char);
                    assert_eq!(h.device_major().unwrap(), Some(1));
                    assert_eq!(h.device_minor().unwrap(), Some(3));
                }
                "b" => {
                    assert_eq!(h.entry_type(), tar::EntryType::Block);
                    assert_eq!(h.device_major().unwrap(), Some(259));
                    assert_eq!(h.device_minor().unwrap(), Some(70_000));
                }
                "p" => assert_eq!(h.entry_type(), tar::EntryType::Fifo),
                ".wh.w" | "o/.wh..wh..opq" => {
                    assert_eq!(h.entry_type(), tar::EntryType::Regular);
                    assert_eq!(h.size().unwrap(), 0);
                }
                "s" => {
                    let mut data = Vec::new();
                    e.read_to_end(&mut data).expect("read");
                    assert_eq!(data.len(), 1 << 20);
                    assert!(data[..(1 << 20) - 2].iter().all(|b| *b == 0));
                    assert_eq!(&data[(1 << 20) - 2..], b"zz");
                }
                _ => {}
            }
            seen.push(name);
        }
        assert_eq!(
            seen,
            [
                ".wh.w",
                "b",
                "c",
                "f",
                "o",
                "o/.wh..wh..opq",
                "p",
                "s",
                "a-link"
            ]
        );
    }

    #[test]
    fn index_layout_tags_the_index_and_each_platform() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layers = vec![LayerSpec::new(Compression::Gzip).file("x", &b"x"[..], 0o644)];
        let mut arm = PlatformImage::linux("arm64", layers.clone());
        arm.variant = Some("v8".into());
        let idx = build_oci_index(
            tmp.path(),
            "multi",
            &[PlatformImage::linux("amd64", layers), arm],
        )
        .expect("build");
        let index = read_json(&idx.dir.join("index.json"));
        let tags: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                d["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(tags, ["multi", "multi-linux-amd64", "multi-linux-arm64-v8"]);
        assert_eq!(index["manifests"][0]["mediaType"], MEDIA_TYPE_INDEX);
        let image_index = read_json(&blob_path(&idx.dir, &idx.index_digest));
        assert_eq!(image_index["manifests"][1]["platform"]["variant"], "v8");
        let arm = idx.image("linux/arm64/v8").expect("arm image");
        let manifest = read_json(&arm.blob_path(&arm.manifest_digest));
        let config = read_json(&arm.blob_path(manifest["config"]["digest"].as_str().unwrap()));
        assert_eq!(config["architecture"], "arm64");
        assert_eq!(config["variant"], "v8");
        // Same layers: the layer blob is shared, the configs differ.
        let amd = idx.image("linux/amd64").expect("amd image");
        assert_eq!(amd.layers, arm.layers);
        assert_ne!(amd.config, arm.config);
    }

    /// `SCHILY.xattr.*` records of a PAX header, parsed by their length prefix.
    fn parse_pax(mut data: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        while !data.is_empty() {
            let sp = data.iter().position(|b| *b == b' ').expect("pax length");
            let len: usize = std::str::from_utf8(&data[..sp]).unwrap().parse().unwrap();
            let record = &data[sp + 1..len - 1];
            assert_eq!(data[len - 1], b'\n');
            let eq = record.iter().position(|b| *b == b'=').expect("pax =");
            let key = std::str::from_utf8(&record[..eq]).unwrap();
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                out.insert(name.to_string(), record[eq + 1..].to_vec());
            }
            data = &data[len..];
        }
        out
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
