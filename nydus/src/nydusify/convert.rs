//! `nydusify convert`: OCI image → Nydus image, registry to registry.
//!
//! Per layer, the source blob streams through the RAFS builder (as `nydus-image create --type
//! tar-rafs --fs-version 6 --blob-inline-meta --features blob-toc --whiteout-spec none`) straight
//! into a chunked upload of the Nydus blob; layers run in parallel. The layer bootstraps are then
//! merged (OCI whiteouts applied) into the bootstrap layer, a gzip tar of `image/image.boot` and
//! `image/<blob-id>.blob.meta` per blob, and the manifest and config are written as
//! nydus-snapshotter's converter writes them. The target tag is pushed last, so a failed run
//! leaves no tag behind.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest};
use oci_client::RegistryOperation;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::manifest::{self as mf, sha256_digest};
use super::pipe::{self, ChannelReader, UploadWriter};
use super::progress::{LayerProgress, Progress};
use super::registry::{RegistryError, Remote, RemoteOptions, MAX_CONFIG_SIZE};
use crate::build::{self, blob_meta_cache_file, ChunkOptions, CreateOptions, Parent, Source};
use crate::toc::{Toc, TOC_TAIL_SIZE};
use crate::v6::Bootstrap;
use crate::{codec, Compressor};

/// Largest layer bootstrap or blob.meta read back from a converted blob.
const MAX_SECTION: u64 = 512 << 20;

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The source image is not something this tool converts.
    #[error("{0}")]
    Unsupported(String),
    /// The source image is malformed.
    #[error("{what}: {msg}")]
    BadSource { what: String, msg: String },
    /// Building a layer failed.
    #[error("layer {digest}: {msg}")]
    Layer { digest: String, msg: String },
    /// Something else.
    #[error("{0}")]
    Other(String),
}

pub(super) fn bad(what: impl Into<String>, msg: impl Into<String>) -> ConvertError {
    ConvertError::BadSource {
        what: what.into(),
        msg: msg.into(),
    }
}

/// Which platforms of an index to convert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Platforms {
    /// One platform (`os/arch[/variant]`); by default this machine's.
    One(String),
    /// Every platform of the index (`--all-platforms`).
    All,
}

/// Options of `convert`.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub source: String,
    pub target: String,
    pub source_remote: RemoteOptions,
    pub target_remote: RemoteOptions,
    /// Chunking, compression and digests of the blobs.
    pub chunk: ChunkOptions,
    /// RAFS version (only "6" is built).
    pub fs_version: String,
    /// Paths to prefetch (`--prefetch-patterns`).
    pub prefetch: Vec<Vec<u8>>,
    pub platforms: Platforms,
    /// Add the Nydus manifests to the source index instead of writing a Nydus-only image.
    pub merge_platform: bool,
    /// A Nydus image whose chunks new blobs deduplicate against (`--chunk-dict`).
    pub chunk_dict: Option<String>,
    /// Layers converted at once.
    pub concurrency: usize,
    /// Where to keep the merged bootstraps (for inspection).
    pub work_dir: Option<std::path::PathBuf>,
    /// Always write OCI media types (`--oci`), even for Docker sources.
    pub oci: bool,
}

impl ConvertOptions {
    /// A string naming every option that changes a layer's blob, recorded on each blob layer so
    /// a later run reuses the layer only when it would build the same bytes.
    pub fn build_key(&self, dict: Option<&str>) -> String {
        let prefetch: Vec<u8> = self.prefetch.join(&b'\n');
        format!(
            "fs-version={};compressor={:?};digester={:?};chunk-size={:#x};prefetch={};chunk-dict={}",
            self.fs_version,
            self.chunk.compressor,
            self.chunk.digester,
            self.chunk.chunk_size,
            &sha256_digest(&prefetch)[7..23],
            dict.unwrap_or("none")
        )
    }

    fn create_options(&self) -> CreateOptions {
        CreateOptions {
            chunk: self.chunk,
            inline_meta: true,
            toc: true,
            prefetch: self.prefetch.clone(),
            share_xattrs: false,
        }
    }
}

/// What happened to one layer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerReport {
    pub source_digest: String,
    pub source_size: u64,
    pub blob_digest: String,
    pub blob_size: u64,
    /// Chunks stored in the blob.
    pub chunks: u32,
    /// The blob was already in the target, built with the same options: no work done.
    pub reused: bool,
    pub seconds: f64,
}

/// What happened to one platform's manifest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ManifestReport {
    pub platform: String,
    pub source_manifest: String,
    pub target_manifest: String,
    pub bootstrap_digest: String,
    pub bootstrap_size: u64,
    pub layers: Vec<LayerReport>,
}

/// What `convert` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertReport {
    pub source: String,
    pub target: String,
    /// Digest of what the target tag points to.
    pub target_digest: String,
    pub manifests: Vec<ManifestReport>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Layers built in this run (not reused).
    pub layers_built: usize,
    pub seconds: f64,
}

/// A converted image manifest, not pushed yet (its blobs and config are).
struct NydusManifest {
    body: Bytes,
    digest: String,
    media_type: String,
    report: ManifestReport,
}

/// A converted layer.
struct Converted {
    blob: OciDescriptor,
    bootstrap: Vec<u8>,
    blob_meta: Vec<u8>,
    report: LayerReport,
}

/// Converts the image `opts.source` into a Nydus image at `opts.target`.
pub async fn convert(
    opts: &ConvertOptions,
    progress: &Progress,
) -> Result<ConvertReport, ConvertError> {
    let started = Instant::now();
    if opts.fs_version != "6" {
        return Err(ConvertError::Unsupported(format!(
            "--fs-version {}: only RAFS v6 images are built",
            opts.fs_version
        )));
    }
    let source =
        Remote::connect(&opts.source, &opts.source_remote, RegistryOperation::Pull).await?;
    let target =
        Remote::connect(&opts.target, &opts.target_remote, RegistryOperation::Push).await?;
    let (body, src_digest, src_mt) = source
        .manifest(source.reference())
        .await?
        .ok_or_else(|| bad(format!("source {}", opts.source), "no such image"))?;
    let previous = previous_target(&target).await;
    let dict = match &opts.chunk_dict {
        Some(r) => Some(ChunkDict::load(r, &opts.source_remote).await?),
        None => None,
    };
    let ctx = Ctx {
        opts,
        source: &source,
        target: &target,
        progress,
        previous,
        dict: dict.as_ref(),
        counters: Arc::default(),
    };

    let mut reports = Vec::new();
    let (tag_body, tag_mt) = if mf::is_index(&src_mt) {
        let index = mf::parse_index(&body).map_err(|m| bad(format!("index {src_digest}"), m))?;
        let selected: Vec<&ImageIndexEntry> = index
            .manifests
            .iter()
            .filter(|e| match &opts.platforms {
                Platforms::All => {
                    e.platform.is_some() && mf::platform_string(e) != "unknown/unknown"
                }
                Platforms::One(p) => mf::platform_matches(e, p),
            })
            .collect();
        if selected.is_empty() {
            return Err(ConvertError::Unsupported(format!(
                "the source index has no manifest for {:?} (it has: {})",
                opts.platforms,
                index
                    .manifests
                    .iter()
                    .map(mf::platform_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut nydus_entries = Vec::new();
        let mut last = None;
        for e in selected {
            let (mbody, _, mmt) =
                source
                    .manifest(&source.at(&e.digest))
                    .await?
                    .ok_or_else(|| {
                        bad(
                            format!("manifest {}", e.digest),
                            "listed in the index but missing",
                        )
                    })?;
            let n = ctx
                .convert_manifest(&mbody, &e.digest, &mmt, &mf::platform_string(e))
                .await?;
            target
                .push_manifest(&target.at(&n.digest), n.body.clone(), &n.media_type)
                .await?;
            let mut platform = e.platform.clone();
            if opts.merge_platform {
                if let Some(p) = platform.as_mut() {
                    let mut f = p.os_features.clone().unwrap_or_default();
                    f.push(mf::OS_FEATURE_NYDUS.to_string());
                    p.os_features = Some(f);
                }
            }
            nydus_entries.push(ImageIndexEntry {
                media_type: n.media_type.clone(),
                digest: n.digest.clone(),
                size: n.body.len() as i64,
                platform,
                annotations: None,
                artifact_type: None,
            });
            reports.push(n.report.clone());
            last = Some(n);
        }
        if opts.merge_platform {
            // The source manifests stay in the index: they must be in the target repository.
            copy_index_children(&source, &target, &index).await?;
            let mut merged: OciImageIndex = index.clone();
            merged.manifests.extend(nydus_entries);
            (to_json(&merged)?, src_mt.clone())
        } else if let (1, Some(n), false) =
            (nydus_entries.len(), last, opts.platforms == Platforms::All)
        {
            // One platform: the target is a plain manifest (as nydus-snapshotter does).
            (n.body, n.media_type)
        } else {
            let mut out = index.clone();
            out.manifests = nydus_entries;
            (to_json(&out)?, src_mt.clone())
        }
    } else {
        let n = ctx
            .convert_manifest(&body, &src_digest, &src_mt, "default")
            .await?;
        reports.push(n.report.clone());
        if opts.merge_platform {
            let config = source_platform(&source, &body).await?;
            copy_manifest(&source, &target, &body, &src_digest, &src_mt).await?;
            target
                .push_manifest(&target.at(&n.digest), n.body.clone(), &n.media_type)
                .await?;
            let mut nydus_platform = config.clone();
            nydus_platform["os.features"] = json!([mf::OS_FEATURE_NYDUS]);
            let index = json!({
                "schemaVersion": 2,
                "mediaType": mf::OCI_INDEX,
                "manifests": [
                    {"mediaType": src_mt, "digest": src_digest, "size": body.len(), "platform": config},
                    {"mediaType": n.media_type, "digest": n.digest, "size": n.body.len(), "platform": nydus_platform},
                ],
            });
            (to_json(&index)?, mf::OCI_INDEX.to_string())
        } else {
            (n.body, n.media_type)
        }
    };
    let tag_ref = target.reference().clone();
    target
        .push_manifest(&tag_ref, tag_body.clone(), &tag_mt)
        .await?;
    progress.finish();
    let layers_built = reports
        .iter()
        .flat_map(|r| r.layers.iter())
        .filter(|l| !l.reused)
        .count();
    Ok(ConvertReport {
        source: opts.source.clone(),
        target: opts.target.clone(),
        target_digest: sha256_digest(&tag_body),
        manifests: reports,
        bytes_read: ctx.counters.0.load(Ordering::Relaxed),
        bytes_written: ctx.counters.1.load(Ordering::Relaxed),
        layers_built,
        seconds: started.elapsed().as_secs_f64(),
    })
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> Result<Bytes, ConvertError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| ConvertError::Other(format!("encoding JSON: {e}")))
}

/// `{"architecture", "os"}` of a single-manifest image, from its config.
async fn source_platform(source: &Remote, body: &[u8]) -> Result<Value, ConvertError> {
    let m = mf::parse_manifest(body).map_err(|e| bad("source manifest", e))?;
    let config = source.blob_bytes(&m.config, MAX_CONFIG_SIZE).await?;
    let c: Value =
        serde_json::from_slice(&config).map_err(|e| bad("source config", e.to_string()))?;
    Ok(json!({
        "architecture": c.get("architecture").cloned().unwrap_or(json!("amd64")),
        "os": c.get("os").cloned().unwrap_or(json!("linux")),
    }))
}

/// The Nydus manifests already at the target tag (for layer reuse): blob layers by
/// (source chain ID, build options).
async fn previous_target(target: &Remote) -> HashMap<(String, String), OciDescriptor> {
    let mut out = HashMap::new();
    let Ok(Some((body, _, mt))) = target.manifest(target.reference()).await else {
        return out;
    };
    let mut manifests = Vec::new();
    if mf::is_index(&mt) {
        if let Ok(index) = mf::parse_index(&body) {
            for e in index.manifests.iter().take(64) {
                if let Ok(Some((b, _, _))) = target.manifest(&target.at(&e.digest)).await {
                    manifests.push(b);
                }
            }
        }
    } else {
        manifests.push(body);
    }
    for b in manifests {
        let Ok(m) = mf::parse_manifest(&b) else {
            continue;
        };
        if !mf::is_nydus(&m) {
            continue;
        }
        for l in m.layers.iter().filter(|l| mf::is_blob_layer(l)) {
            if let (Some(c), Some(k)) = (
                mf::annotation(l, mf::ANNO_SOURCE_CHAINID),
                mf::annotation(l, mf::ANNO_BUILD_OPTIONS),
            ) {
                out.insert((c.to_string(), k.to_string()), l.clone());
            }
        }
    }
    out
}

/// Another Nydus image's chunks, for deduplication (`--chunk-dict`).
pub struct ChunkDict {
    /// The reference it was loaded from.
    pub reference: String,
    /// Its merged bootstrap.
    pub bootstrap: Vec<u8>,
    /// Its chunks, for the builder.
    pub parent: Parent,
    /// Its blob layers, by blob id (hex).
    pub blobs: HashMap<String, OciDescriptor>,
    /// Where its blobs can be mounted or copied from.
    remote: Remote,
}

impl ChunkDict {
    async fn load(reference: &str, remote_opts: &RemoteOptions) -> Result<ChunkDict, ConvertError> {
        let remote = Remote::connect(reference, remote_opts, RegistryOperation::Pull).await?;
        let (body, digest, mt) = remote
            .manifest(remote.reference())
            .await?
            .ok_or_else(|| bad(format!("--chunk-dict {reference}"), "no such image"))?;
        let body = if mf::is_index(&mt) {
            let index = mf::parse_index(&body).map_err(|e| bad("chunk dict index", e))?;
            let host = mf::host_platform();
            let e = index
                .manifests
                .iter()
                .find(|e| {
                    mf::platform_matches(e, &host)
                        && e.platform
                            .as_ref()
                            .and_then(|p| p.os_features.as_ref())
                            .is_some_and(|f| f.iter().any(|f| f == mf::OS_FEATURE_NYDUS))
                })
                .or_else(|| {
                    index
                        .manifests
                        .iter()
                        .find(|e| mf::platform_matches(e, &host))
                })
                .ok_or_else(|| bad("chunk dict index", format!("no manifest for {host}")))?;
            remote
                .manifest(&remote.at(&e.digest))
                .await?
                .ok_or_else(|| bad("chunk dict", "manifest missing"))?
                .0
        } else {
            body
        };
        let m = mf::parse_manifest(&body).map_err(|e| bad("chunk dict manifest", e))?;
        if !mf::is_nydus(&m) {
            return Err(bad(
                format!("--chunk-dict {reference} ({digest})"),
                "is not a Nydus image",
            ));
        }
        let boot = read_bootstrap_layer(&remote, m.layers.last().expect("is_nydus")).await?;
        let parent =
            Parent::chunk_dict(&boot).map_err(|e| bad("chunk dict bootstrap", e.to_string()))?;
        let blobs = m
            .layers
            .iter()
            .filter(|l| mf::is_blob_layer(l))
            .map(|l| {
                (
                    l.digest.trim_start_matches("sha256:").to_string(),
                    l.clone(),
                )
            })
            .collect();
        Ok(ChunkDict {
            reference: reference.to_string(),
            bootstrap: boot,
            parent,
            blobs,
            remote,
        })
    }
}

/// Reads `image/image.boot` out of a bootstrap layer (a gzip or plain tar).
pub async fn read_bootstrap_layer(
    remote: &Remote,
    desc: &OciDescriptor,
) -> Result<Vec<u8>, ConvertError> {
    let gz = remote.blob_bytes(desc, MAX_SECTION as usize).await?;
    tokio::task::spawn_blocking(move || bootstrap_from_layer_tar(&gz))
        .await
        .map_err(|e| ConvertError::Other(e.to_string()))?
        .map_err(|e| bad(format!("bootstrap layer {}", "image/image.boot"), e))
}

/// `image/image.boot` of a bootstrap layer's bytes (gzip, zstd or plain tar).
pub fn bootstrap_from_layer_tar(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let reader = crate::build::source::decompressed(bytes).map_err(|e| e.to_string())?;
    let mut ar = tar::Archive::new(reader);
    for entry in ar.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        let p = path.to_string_lossy();
        if p.trim_start_matches("./").trim_start_matches('/') == mf::BOOTSTRAP_IN_LAYER {
            if entry.size() > MAX_SECTION {
                return Err(format!("{p} is {} bytes, over the limit", entry.size()));
            }
            let mut out = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut out).map_err(|e| e.to_string())?;
            return Ok(out);
        }
    }
    Err(format!("no {} in the layer", mf::BOOTSTRAP_IN_LAYER))
}

struct Ctx<'a> {
    opts: &'a ConvertOptions,
    source: &'a Remote,
    target: &'a Remote,
    progress: &'a Progress,
    previous: HashMap<(String, String), OciDescriptor>,
    dict: Option<&'a ChunkDict>,
    counters: Arc<(AtomicU64, AtomicU64)>,
}

impl Ctx<'_> {
    /// Converts one image manifest; pushes its blobs and config (not the manifest) and returns
    /// the Nydus manifest and its digest.
    async fn convert_manifest(
        &self,
        body: &[u8],
        digest: &str,
        media_type: &str,
        platform: &str,
    ) -> Result<NydusManifest, ConvertError> {
        let what = format!("manifest {digest}");
        if media_type != mf::OCI_MANIFEST && media_type != mf::DOCKER_MANIFEST {
            return Err(ConvertError::Unsupported(format!(
                "{what}: media type {media_type} is not an image manifest"
            )));
        }
        let manifest = mf::parse_manifest(body).map_err(|e| bad(&what, e))?;
        if mf::is_nydus(&manifest) {
            return Err(ConvertError::Unsupported(format!(
                "{what} is already a Nydus image"
            )));
        }
        for l in &manifest.layers {
            if mf::layer_compression(&l.media_type).is_none() {
                return Err(ConvertError::Unsupported(format!(
                    "layer {} has media type {}, which is not a tar layer",
                    l.digest, l.media_type
                )));
            }
        }
        let config_bytes = self
            .source
            .blob_bytes(&manifest.config, MAX_CONFIG_SIZE)
            .await?;
        let config: Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| bad(format!("config {}", manifest.config.digest), e.to_string()))?;
        let diff_ids = mf::diff_ids(&config)
            .map_err(|e| bad(format!("config {}", manifest.config.digest), e))?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(bad(
                &what,
                format!(
                    "{} layers but {} rootfs.diff_ids in the config",
                    manifest.layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        let chain_ids = mf::chain_ids(&diff_ids);
        let key = self.opts.build_key(self.dict.map(|d| d.reference.as_str()));

        // Layers, in parallel, results in order.
        let jobs = manifest.layers.iter().enumerate().map(|(i, l)| {
            let chain = chain_ids[i].clone();
            let key = key.clone();
            async move { self.convert_layer(i, l, chain, key).await }
        });
        let mut results: Vec<Option<Converted>> =
            (0..manifest.layers.len()).map(|_| None).collect();
        let mut stream =
            futures_util::stream::iter(jobs.enumerate().map(|(i, f)| async move { (i, f.await) }))
                .buffer_unordered(self.opts.concurrency.max(1));
        while let Some((i, r)) = stream.next().await {
            results[i] = Some(r?);
        }
        drop(stream);
        let layers: Vec<Converted> = results
            .into_iter()
            .map(|r| r.expect("every layer ran"))
            .collect();

        // Merge the layer bootstraps; each layer's own blob is named by its digest.
        let mut merge_layers = Vec::with_capacity(layers.len());
        for l in &layers {
            let hex_id = l.blob.digest.trim_start_matches("sha256:");
            let digest = hex::decode(hex_id)
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| ConvertError::Other(format!("blob digest {}", l.blob.digest)))?;
            merge_layers.push(build::MergeLayer {
                name: l.report.source_digest.clone(),
                bootstrap: &l.bootstrap,
                blob: build::LayerBlob {
                    digest: Some(digest),
                    ..build::LayerBlob::default()
                },
            });
        }
        let merge_opts = build::MergeOptions {
            chunk_dict: self.dict.map(|d| d.bootstrap.as_slice()),
            prefetch: self.opts.prefetch.clone(),
            ..build::MergeOptions::default()
        };
        let build::Merged {
            bootstrap: merged,
            blob_ids: merged_blobs,
            ..
        } = tokio::task::block_in_place(|| build::merge(&merge_layers, &merge_opts))
            .map_err(|e| ConvertError::Other(format!("merging the layer bootstraps: {e}")))?;
        if let Some(dir) = &self.opts.work_dir {
            let d = dir.join(platform.replace('/', "-"));
            if std::fs::create_dir_all(&d).is_ok() {
                let _ = std::fs::write(d.join("image.boot"), &merged);
            }
        }

        // Blob layers: one per source layer, then dictionary blobs the image uses.
        let mut blob_layers: Vec<OciDescriptor> = layers.iter().map(|l| l.blob.clone()).collect();
        let mut metas: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for l in &layers {
            let id = l.blob.digest.trim_start_matches("sha256:").to_string();
            if merged_blobs.contains(&id) {
                metas.insert(id, l.blob_meta.clone());
            }
        }
        if let Some(dict) = self.dict {
            for id in &merged_blobs {
                if metas.contains_key(id) {
                    continue;
                }
                let d = dict.blobs.get(id).ok_or_else(|| {
                    ConvertError::Other(format!("blob {id} of the merged bootstrap is in no layer"))
                })?;
                copy_blob(&dict.remote, self.target, d).await?;
                let (_, meta) = read_layer_meta(&dict.remote, d).await?;
                metas.insert(id.clone(), meta);
                let mut d = d.clone();
                d.annotations = Some(BTreeMap::from([(
                    mf::ANNO_NYDUS_BLOB.to_string(),
                    "true".to_string(),
                )]));
                blob_layers.push(d);
            }
        }

        // The bootstrap layer.
        let (layer_gz, layer_diff) = bootstrap_layer(&merged, &metas)
            .map_err(|e| ConvertError::Other(format!("writing the bootstrap layer: {e}")))?;
        let layer_digest = sha256_digest(&layer_gz);
        let layer_size = layer_gz.len() as u64;
        self.target
            .push_bytes(Bytes::from(layer_gz), &layer_digest)
            .await?;
        let layer_mt = if self.opts.oci {
            mf::OCI_LAYER_GZIP
        } else {
            mf::gzip_layer_type(media_type)
        };
        let bootstrap_desc = mf::descriptor(
            layer_mt,
            &layer_digest,
            layer_size,
            BTreeMap::from([
                (
                    mf::ANNO_FS_VERSION.to_string(),
                    self.opts.fs_version.clone(),
                ),
                (mf::ANNO_NYDUS_BOOTSTRAP.to_string(), "true".to_string()),
            ]),
        );

        // Config and manifest.
        let mut new_diff_ids: Vec<String> = blob_layers.iter().map(|l| l.digest.clone()).collect();
        new_diff_ids.push(layer_diff);
        let new_config = mf::rewrite_config(
            &config,
            &new_diff_ids,
            json!({"created_by": mf::HISTORY_CREATED_BY, "comment": mf::HISTORY_COMMENT}),
        );
        let config_bytes = to_json(&new_config)?;
        let config_digest = sha256_digest(&config_bytes);
        self.target
            .push_bytes(config_bytes.clone(), &config_digest)
            .await?;
        let config_mt = if self.opts.merge_platform {
            mf::NYDUS_CONFIG.to_string()
        } else if self.opts.oci {
            mf::OCI_CONFIG.to_string()
        } else {
            manifest.config.media_type.clone()
        };
        let mut layers_out = blob_layers;
        layers_out.push(bootstrap_desc);
        let out_mt = if self.opts.oci {
            mf::OCI_MANIFEST
        } else {
            media_type
        };
        let out = OciImageManifest {
            schema_version: 2,
            media_type: Some(out_mt.to_string()),
            config: mf::descriptor(
                &config_mt,
                &config_digest,
                config_bytes.len() as u64,
                BTreeMap::new(),
            ),
            layers: layers_out,
            subject: None,
            artifact_type: None,
            annotations: manifest.annotations.clone(),
        };
        let out_bytes = to_json(&out)?;
        let out_digest = sha256_digest(&out_bytes);
        let report = ManifestReport {
            platform: platform.to_string(),
            source_manifest: digest.to_string(),
            target_manifest: out_digest.clone(),
            bootstrap_digest: layer_digest,
            bootstrap_size: layer_size,
            layers: layers.into_iter().map(|l| l.report).collect(),
        };
        Ok(NydusManifest {
            body: out_bytes,
            digest: out_digest,
            media_type: out_mt.to_string(),
            report,
        })
    }

    async fn convert_layer(
        &self,
        index: usize,
        desc: &OciDescriptor,
        chain_id: String,
        key: String,
    ) -> Result<Converted, ConvertError> {
        let started = Instant::now();
        let short = desc
            .digest
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect::<String>();
        let mut lp = self
            .progress
            .layer(format!("{index}:{short}"), desc.size.max(0) as u64);
        let annotations = BTreeMap::from([
            (mf::ANNO_NYDUS_BLOB.to_string(), "true".to_string()),
            (mf::ANNO_SOURCE_CHAINID.to_string(), chain_id.clone()),
            (mf::ANNO_BUILD_OPTIONS.to_string(), key.clone()),
        ]);
        if let Some(prev) = self.previous.get(&(chain_id.clone(), key.clone())) {
            if self.target.blob_exists(&prev.digest).await? {
                match read_layer_meta(self.target, prev).await {
                    Ok((bootstrap, blob_meta)) => {
                        let chunks = own_chunk_count(&bootstrap);
                        lp.done("reused".into());
                        return Ok(Converted {
                            blob: mf::descriptor(
                                mf::NYDUS_BLOB,
                                &prev.digest,
                                prev.size.max(0) as u64,
                                annotations,
                            ),
                            bootstrap,
                            blob_meta,
                            report: LayerReport {
                                source_digest: desc.digest.clone(),
                                source_size: desc.size.max(0) as u64,
                                blob_digest: prev.digest.clone(),
                                blob_size: prev.size.max(0) as u64,
                                chunks,
                                reused: true,
                                seconds: started.elapsed().as_secs_f64(),
                            },
                        });
                    }
                    Err(e) => {
                        tracing::warn!("layer {}: cannot reuse {}: {e}", desc.digest, prev.digest)
                    }
                }
            }
        }
        let retry = self.target.retry();
        let mut attempt = 0;
        let mut delay = retry.delay;
        let built = loop {
            match self.build_and_push(desc, &mut lp).await {
                Ok(b) => break b,
                Err((e, transient)) if transient && attempt < retry.count => {
                    attempt += 1;
                    self.progress.println(&format!(
                        "layer {}: {e}; retry {attempt}/{} in {delay:?}",
                        desc.digest, retry.count
                    ));
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                }
                Err((e, _)) => return Err(e),
            }
        };
        let (bootstrap, blob_meta, digest, size, chunks) = built;
        lp.done(format!(
            "→ {} ({chunks} chunks)",
            indicatif::HumanBytes(size)
        ));
        Ok(Converted {
            blob: mf::descriptor(mf::NYDUS_BLOB, &digest, size, annotations),
            bootstrap,
            blob_meta,
            report: LayerReport {
                source_digest: desc.digest.clone(),
                source_size: desc.size.max(0) as u64,
                blob_digest: digest,
                blob_size: size,
                chunks,
                reused: false,
                seconds: started.elapsed().as_secs_f64(),
            },
        })
    }

    /// Streams one source layer through the builder into the target. On failure, says whether
    /// trying again may help (the upload failed for a transient reason).
    #[allow(clippy::type_complexity)]
    async fn build_and_push(
        &self,
        desc: &OciDescriptor,
        lp: &mut LayerProgress,
    ) -> Result<(Vec<u8>, Vec<u8>, String, u64, u32), (ConvertError, bool)> {
        let layer_err = |msg: String| ConvertError::Layer {
            digest: desc.digest.clone(),
            msg,
        };
        let stream = self
            .source
            .blob_stream(desc)
            .await
            .map_err(|e| (e.into(), false))?;
        let read = lp.counters.read.clone();
        let written = lp.counters.written.clone();
        let (src_tx, src_rx) = mpsc::channel(8);
        let pump = tokio::spawn(pipe::pump(stream, src_tx, read.clone()));
        let (up_tx, up_rx) = mpsc::channel(2);
        let opts = self.opts.create_options();
        let parent = self.dict.map(|d| d.parent.clone());
        let build = tokio::task::spawn_blocking(move || {
            let mut reader = ChannelReader::new(src_rx);
            let writer = UploadWriter::new(up_tx, written);
            let created =
                match build::create(Source::Tar(Box::new(&mut reader)), &opts, parent, writer) {
                    Ok(c) => c,
                    Err(e) => {
                        // Bytes that do not match the layer's digest are the likelier cause of
                        // a broken tar: read the rest of the stream to tell (not when the upload
                        // stopped: the layer is built again from a new stream).
                        let upload_stopped = e.to_string().contains("the upload stopped");
                        if let (false, Err(d)) =
                            (upload_stopped, io::copy(&mut reader, &mut io::sink()))
                        {
                            return Err(format!("{d} (the builder stopped first: {e})"));
                        }
                        return Err(e.to_string());
                    }
                };
            // Read the source to its end so its digest is checked before the blob is committed.
            if let Err(e) = io::copy(&mut reader, &mut io::sink()) {
                created.blob.abort(e.to_string());
                return Err(e.to_string());
            }
            let blob_id = created.blob_id.clone();
            created.blob.finish().map_err(|e| e.to_string())?;
            Ok((created.bootstrap, created.blob_meta, blob_id))
        });
        let up_stream = tokio_stream_from(up_rx);
        let push = self.target.push_stream(up_stream);
        let mut build = std::pin::pin!(build);
        let mut push = std::pin::pin!(push);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut build_out = None;
        let mut push_out = None;
        while build_out.is_none() || push_out.is_none() {
            tokio::select! {
                r = &mut build, if build_out.is_none() => build_out = Some(r),
                r = &mut push, if push_out.is_none() => push_out = Some(r),
                _ = tick.tick() => lp.tick(),
            }
        }
        pump.abort();
        lp.tick();
        self.counters
            .0
            .fetch_add(read.load(Ordering::Relaxed), Ordering::Relaxed);
        let build_out = build_out
            .expect("loop ran")
            .map_err(|e| (layer_err(format!("builder thread: {e}")), false))?;
        let push_out = push_out.expect("loop ran");
        let ((bootstrap, blob_meta, blob_id), (digest, size)) = match (build_out, push_out) {
            (Ok(b), Ok(p)) => (b, p),
            (Err(msg), Err(e)) if msg.contains("the upload stopped") => {
                let transient = super::registry::is_transient(&e);
                return Err((
                    layer_err(format!("uploading the Nydus blob: {e}")),
                    transient,
                ));
            }
            (Err(msg), _) => return Err((layer_err(msg), false)),
            (Ok(_), Err(e)) => {
                let transient = super::registry::is_transient(&e);
                return Err((
                    layer_err(format!("uploading the Nydus blob: {e}")),
                    transient,
                ));
            }
        };
        self.counters.1.fetch_add(size, Ordering::Relaxed);
        let (Some(blob_id), Some(blob_meta)) = (blob_id, blob_meta) else {
            return Err((layer_err("the builder wrote no blob".into()), false));
        };
        if digest != format!("sha256:{blob_id}") {
            return Err((
                layer_err(format!(
                    "the registry stored the blob as {digest}, the builder made {blob_id}"
                )),
                false,
            ));
        }
        let chunks = own_chunk_count(&bootstrap);
        Ok((bootstrap, blob_meta, digest, size, chunks))
    }
}

pub(super) fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Bytes, oci_client::errors::OciDistributionError>>,
) -> impl futures_util::Stream<Item = Result<Bytes, oci_client::errors::OciDistributionError>>
       + Send
       + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Chunks of a layer bootstrap's own blob (the last of its table).
fn own_chunk_count(bootstrap: &[u8]) -> u32 {
    Bootstrap::parse(bootstrap)
        .ok()
        .and_then(|b| b.blobs().last().map(|e| e.chunk_count))
        .unwrap_or(0)
}

/// Reads a converted blob's layer bootstrap and blob.meta (cache-file form) back from the
/// registry, through its TOC, checking each section's digest.
pub async fn read_layer_meta(
    remote: &Remote,
    desc: &OciDescriptor,
) -> Result<(Vec<u8>, Vec<u8>), ConvertError> {
    let what = format!("Nydus blob {}", desc.digest);
    let size = desc.size.max(0) as u64;
    let tail_len = size.min(TOC_TAIL_SIZE as u64);
    let tail = remote
        .blob_range(desc, size - tail_len, tail_len, tail_len)
        .await?;
    let toc = Toc::parse_from_tail(&tail).map_err(|e| bad(&what, format!("TOC: {e}")))?;
    let section = |name: &str| -> Result<crate::toc::TocEntry, ConvertError> {
        toc.find(name)
            .copied()
            .ok_or_else(|| bad(&what, format!("its TOC has no {name}")))
    };
    let read = |e: crate::toc::TocEntry| {
        let what = what.clone();
        async move {
            if e.uncompressed_size > MAX_SECTION {
                return Err(bad(&what, "a section is too large"));
            }
            let raw = remote
                .blob_range(desc, e.compressed_offset, e.compressed_size, MAX_SECTION)
                .await?;
            let c = e.compressor().map_err(|x| bad(&what, x.to_string()))?;
            let out = if c == Compressor::None {
                raw.to_vec()
            } else {
                let mut out = Vec::new();
                codec::decompress_bounded(c, &raw, e.uncompressed_size as usize, &mut out)
                    .map_err(|x| bad(&what, x.to_string()))?;
                out
            };
            use sha2::Digest as _;
            if <[u8; 32]>::from(sha2::Sha256::digest(&out)) != e.uncompressed_digest {
                return Err(bad(
                    &what,
                    format!(
                        "section {} does not match its digest",
                        e.name().unwrap_or("?")
                    ),
                ));
            }
            Ok::<_, ConvertError>(out)
        }
    };
    let bootstrap = read(section(crate::toc::TOC_ENTRY_BOOTSTRAP)?).await?;
    let ci = read(section(crate::toc::TOC_ENTRY_BLOB_META)?).await?;
    let header = read(section(crate::toc::TOC_ENTRY_BLOB_META_HEADER)?).await?;
    let header: [u8; 4096] = header
        .try_into()
        .map_err(|_| bad(&what, "blob.meta.header is not 4096 bytes"))?;
    Ok((bootstrap, blob_meta_cache_file(&ci, &header)))
}

/// The bootstrap layer: a gzip tar of `image/`, `image/image.boot` and
/// `image/<blob-id>.blob.meta` per blob; returns the gzip bytes and the tar's digest (diff ID).
pub fn bootstrap_layer(
    bootstrap: &[u8],
    metas: &BTreeMap<String, Vec<u8>>,
) -> io::Result<(Vec<u8>, String)> {
    let mut tar_bytes = Vec::new();
    {
        let mut ar = tar::Builder::new(&mut tar_bytes);
        ar.mode(tar::HeaderMode::Deterministic);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        ar.append_data(&mut h, "image/", io::empty())?;
        let mut add = |name: &str, data: &[u8]| -> io::Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_mtime(0);
            ar.append_data(&mut h, name, data)
        };
        add(mf::BOOTSTRAP_IN_LAYER, bootstrap)?;
        for (id, meta) in metas {
            add(&format!("image/{id}.blob.meta"), meta)?;
        }
        ar.finish()?;
    }
    let diff_id = sha256_digest(&tar_bytes);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    io::Write::write_all(&mut gz, &tar_bytes)?;
    Ok((gz.finish()?, diff_id))
}

/// Makes blob `desc` of `from` present in `to`: nothing, a mount, or a streamed copy.
pub async fn copy_blob(
    from: &Remote,
    to: &Remote,
    desc: &OciDescriptor,
) -> Result<(), ConvertError> {
    if to
        .ensure_by_mount(&desc.digest, Some(from.reference()))
        .await?
    {
        return Ok(());
    }
    let retry = to.retry();
    let mut attempt = 0;
    let mut delay = retry.delay;
    loop {
        let stream = from.blob_stream(desc).await?;
        let stream = stream.map(|r| r.map_err(oci_client::errors::OciDistributionError::IoError));
        match to.push_stream(stream).await {
            Ok((digest, _)) if digest == desc.digest => return Ok(()),
            Ok((digest, _)) => {
                return Err(ConvertError::Other(format!(
                    "copying blob {}: the target stored {digest}",
                    desc.digest
                )))
            }
            Err(e) if attempt < retry.count && super::registry::is_transient(&e) => {
                attempt += 1;
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
            Err(e) => {
                return Err(ConvertError::Other(format!(
                    "copying blob {}: {e}",
                    desc.digest
                )))
            }
        }
    }
}

/// Copies an image manifest's blobs, then the manifest itself (by digest).
pub async fn copy_manifest(
    from: &Remote,
    to: &Remote,
    body: &[u8],
    digest: &str,
    media_type: &str,
) -> Result<(), ConvertError> {
    let m = mf::parse_manifest(body).map_err(|e| bad(format!("manifest {digest}"), e))?;
    copy_blob(from, to, &m.config).await?;
    for l in &m.layers {
        copy_blob(from, to, l).await?;
    }
    to.push_manifest(&to.at(digest), Bytes::copy_from_slice(body), media_type)
        .await?;
    Ok(())
}

/// Copies every manifest an index lists (and their blobs) into `to`.
pub async fn copy_index_children(
    from: &Remote,
    to: &Remote,
    index: &OciImageIndex,
) -> Result<(), ConvertError> {
    for e in &index.manifests {
        let (body, digest, mt) = from.manifest(&from.at(&e.digest)).await?.ok_or_else(|| {
            bad(
                format!("manifest {}", e.digest),
                "listed in the index but missing",
            )
        })?;
        if mf::is_index(&mt) {
            return Err(ConvertError::Unsupported(format!(
                "manifest {digest}: nested indexes are not supported"
            )));
        }
        copy_manifest(from, to, &body, &digest, &mt).await?;
    }
    Ok(())
}
