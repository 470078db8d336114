//! `nydusify convert --reverse`: Nydus image → OCI image, registry to registry.
//!
//! Each Nydus blob layer carries its own layer bootstrap (read through the blob's TOC, digest
//! checked). That bootstrap holds the layer exactly as its tar held it — whiteouts and opaque
//! markers kept raw (`--whiteout-spec none`), hardlinks as shared inodes — so the layer's tar is
//! written back from it ([`crate::unpack::write_tar`]), file data read from the blobs and each
//! chunk checked, compressed (gzip, zstd or none) and streamed into the target as one OCI layer.
//! The bootstrap layer is dropped; the config gets the new `rootfs.diff_ids` and loses the
//! "Nydus Converter" history entry. The tar depends only on the layer bootstrap, so reversing the
//! same Nydus image twice gives the same layers byte for byte. The target tag is pushed last.
//!
//! Blobs are downloaded to the work directory first (each once, digest checked, removed at the
//! end): a tar is written in the tree's order, not in the blob's, and a local file reads any
//! chunk at any offset.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest};
use oci_client::RegistryOperation;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Mutex, OnceCell};

use super::convert::{
    bad, read_layer_meta, to_json, tokio_stream_from, ConvertError, LayerReport, ManifestReport,
    Platforms,
};
use super::manifest::{self as mf, sha256_digest, LayerCompression};
use super::pipe::UploadWriter;
use super::progress::{LayerProgress, Progress};
use super::registry::{Remote, RemoteOptions, MAX_CONFIG_SIZE};
use crate::image::BlobFile;

/// Options of `convert --reverse`.
#[derive(Debug, Clone)]
pub struct ReverseOptions {
    pub source: String,
    pub target: String,
    pub source_remote: RemoteOptions,
    pub target_remote: RemoteOptions,
    /// Compression of the OCI layers written.
    pub compression: LayerCompression,
    pub platforms: Platforms,
    /// Layers written at once.
    pub concurrency: usize,
    /// Where the Nydus blobs are downloaded to while their layers are written.
    pub work_dir: PathBuf,
}

/// What `convert --reverse` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReverseReport {
    pub source: String,
    pub target: String,
    /// Digest of what the target tag points to.
    pub target_digest: String,
    /// Per manifest; in each layer report, `source_*` is the Nydus blob and `blob_*` the OCI
    /// layer written.
    pub manifests: Vec<ManifestReport>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub seconds: f64,
}

/// An OCI manifest written from a Nydus one (its layers and config are pushed).
struct OciManifest {
    body: Bytes,
    digest: String,
    report: ManifestReport,
}

/// Converts the Nydus image `opts.source` into an OCI image at `opts.target`.
pub async fn reverse(
    opts: &ReverseOptions,
    progress: &Progress,
) -> Result<ReverseReport, ConvertError> {
    let started = Instant::now();
    let source =
        Remote::connect(&opts.source, &opts.source_remote, RegistryOperation::Pull).await?;
    let target =
        Remote::connect(&opts.target, &opts.target_remote, RegistryOperation::Push).await?;
    let (body, src_digest, src_mt) = source
        .manifest(source.reference())
        .await?
        .ok_or_else(|| bad(format!("source {}", opts.source), "no such image"))?;
    tokio::fs::create_dir_all(&opts.work_dir)
        .await
        .map_err(|e| {
            ConvertError::Other(format!(
                "creating work directory {}: {e}",
                opts.work_dir.display()
            ))
        })?;
    // Removed when dropped, whatever happens (an error, a cancelled future).
    let work_dir = tempfile::Builder::new()
        .prefix("reverse-")
        .tempdir_in(&opts.work_dir)
        .map_err(|e| {
            ConvertError::Other(format!(
                "creating a directory in {}: {e}",
                opts.work_dir.display()
            ))
        })?;
    let work = work_dir.path().to_path_buf();
    let ctx = Ctx {
        opts,
        source: &source,
        target: &target,
        progress,
        work: work.clone(),
        blobs: Mutex::default(),
        counters: Arc::default(),
    };
    let result = ctx.run(&body, &src_digest, &src_mt).await;
    drop(work_dir);
    let (tag_body, tag_mt, manifests) = result?;
    target
        .push_manifest(target.reference(), tag_body.clone(), &tag_mt)
        .await?;
    progress.finish();
    Ok(ReverseReport {
        source: opts.source.clone(),
        target: opts.target.clone(),
        target_digest: sha256_digest(&tag_body),
        manifests,
        bytes_read: ctx.counters.0.load(Ordering::Relaxed),
        bytes_written: ctx.counters.1.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    })
}

struct Ctx<'a> {
    opts: &'a ReverseOptions,
    source: &'a Remote,
    target: &'a Remote,
    progress: &'a Progress,
    work: PathBuf,
    /// Downloaded blobs by digest.
    blobs: Mutex<HashMap<String, Arc<OnceCell<PathBuf>>>>,
    counters: Arc<(AtomicU64, AtomicU64)>,
}

impl Ctx<'_> {
    /// Reverses the image (a manifest or an index); returns what the tag gets and the reports.
    async fn run(
        &self,
        body: &[u8],
        digest: &str,
        media_type: &str,
    ) -> Result<(Bytes, String, Vec<ManifestReport>), ConvertError> {
        if !mf::is_index(media_type) {
            let m = self.reverse_manifest(body, digest, "default").await?;
            return Ok((m.body, mf::OCI_MANIFEST.to_string(), vec![m.report]));
        }
        let index = mf::parse_index(body).map_err(|m| bad(format!("index {digest}"), m))?;
        let mut out = Vec::new();
        let mut reports = Vec::new();
        for e in &index.manifests {
            let wanted = match &self.opts.platforms {
                Platforms::All => e.platform.is_some(),
                Platforms::One(p) => mf::platform_matches(e, p),
            };
            if !wanted {
                continue;
            }
            let (mbody, _, _) = self
                .source
                .manifest(&self.source.at(&e.digest))
                .await?
                .ok_or_else(|| {
                    bad(
                        format!("manifest {}", e.digest),
                        "listed in the index but missing",
                    )
                })?;
            // A merged index (--merge-platform) also lists the OCI manifests: only the Nydus
            // ones are reversed.
            if !mf::parse_manifest(&mbody).is_ok_and(|m| mf::is_nydus(&m)) {
                continue;
            }
            let m = self
                .reverse_manifest(&mbody, &e.digest, &mf::platform_string(e))
                .await?;
            self.target
                .push_manifest(&self.target.at(&m.digest), m.body.clone(), mf::OCI_MANIFEST)
                .await?;
            let mut platform = e.platform.clone();
            if let Some(p) = platform.as_mut() {
                if let Some(f) = p.os_features.as_mut() {
                    f.retain(|x| x != mf::OS_FEATURE_NYDUS);
                }
                if p.os_features.as_ref().is_some_and(Vec::is_empty) {
                    p.os_features = None;
                }
            }
            out.push(ImageIndexEntry {
                media_type: mf::OCI_MANIFEST.to_string(),
                digest: m.digest.clone(),
                size: m.body.len() as i64,
                platform,
                annotations: None,
                artifact_type: None,
            });
            reports.push(m.report.clone());
            if matches!(self.opts.platforms, Platforms::One(_)) {
                // One platform: the target is a plain manifest.
                return Ok((m.body, mf::OCI_MANIFEST.to_string(), reports));
            }
        }
        if out.is_empty() {
            return Err(ConvertError::Unsupported(format!(
                "the source index has no Nydus manifest for {:?} (it has: {})",
                self.opts.platforms,
                index
                    .manifests
                    .iter()
                    .map(mf::platform_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let index = OciImageIndex {
            schema_version: 2,
            media_type: Some(mf::OCI_INDEX.to_string()),
            manifests: out,
            artifact_type: None,
            annotations: index.annotations.clone(),
        };
        Ok((to_json(&index)?, mf::OCI_INDEX.to_string(), reports))
    }

    async fn reverse_manifest(
        &self,
        body: &[u8],
        digest: &str,
        platform: &str,
    ) -> Result<OciManifest, ConvertError> {
        let what = format!("manifest {digest}");
        let manifest = mf::parse_manifest(body).map_err(|e| bad(&what, e))?;
        if !mf::is_nydus(&manifest) {
            return Err(ConvertError::Unsupported(format!(
                "{what} is not a Nydus image (its last layer is not a Nydus bootstrap)"
            )));
        }
        let config_bytes = self
            .source
            .blob_bytes(&manifest.config, MAX_CONFIG_SIZE)
            .await?;
        let config: Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| bad(format!("config {}", manifest.config.digest), e.to_string()))?;
        let blob_layers: Vec<&OciDescriptor> = manifest
            .layers
            .iter()
            .filter(|l| mf::is_blob_layer(l))
            .collect();
        // Blob layers built from source layers; others (a chunk dictionary's blobs) only hold
        // data those layers use. Images without the annotation have no dictionary blobs.
        let own: Vec<&OciDescriptor> = if blob_layers
            .iter()
            .any(|l| mf::annotation(l, mf::ANNO_SOURCE_CHAINID).is_some())
        {
            blob_layers
                .iter()
                .copied()
                .filter(|l| mf::annotation(l, mf::ANNO_SOURCE_CHAINID).is_some())
                .collect()
        } else {
            blob_layers.clone()
        };
        if own.is_empty() {
            return Err(bad(&what, "the image has no Nydus blob layers"));
        }
        let jobs = own.iter().enumerate().map(|(i, l)| {
            let all = &blob_layers;
            async move { (i, self.reverse_layer(i, l, all).await) }
        });
        let mut results: Vec<Option<(OciDescriptor, String, LayerReport)>> =
            (0..own.len()).map(|_| None).collect();
        let mut stream =
            futures_util::stream::iter(jobs).buffer_unordered(self.opts.concurrency.max(1));
        while let Some((i, r)) = stream.next().await {
            results[i] = Some(r?);
        }
        drop(stream);
        let mut layers = Vec::with_capacity(own.len());
        let mut diff_ids = Vec::with_capacity(own.len());
        let mut reports = Vec::with_capacity(own.len());
        for (desc, diff_id, report) in results.into_iter().flatten() {
            layers.push(desc);
            diff_ids.push(diff_id);
            reports.push(report);
        }

        let config_bytes = to_json(&oci_config(&config, &diff_ids))?;
        let config_digest = sha256_digest(&config_bytes);
        self.target
            .push_bytes(config_bytes.clone(), &config_digest)
            .await?;
        let out = OciImageManifest {
            schema_version: 2,
            media_type: Some(mf::OCI_MANIFEST.to_string()),
            config: mf::descriptor(
                mf::OCI_CONFIG,
                &config_digest,
                config_bytes.len() as u64,
                BTreeMap::new(),
            ),
            layers,
            subject: None,
            artifact_type: None,
            annotations: manifest.annotations.clone(),
        };
        let out_body = to_json(&out)?;
        let out_digest = sha256_digest(&out_body);
        let boot = manifest.layers.last().expect("is_nydus");
        Ok(OciManifest {
            body: out_body,
            digest: out_digest.clone(),
            report: ManifestReport {
                platform: platform.to_string(),
                source_manifest: digest.to_string(),
                target_manifest: out_digest,
                bootstrap_digest: boot.digest.clone(),
                bootstrap_size: boot.size.max(0) as u64,
                layers: reports,
            },
        })
    }

    /// Writes one Nydus blob layer back as an OCI layer; returns its descriptor and diff ID.
    async fn reverse_layer(
        &self,
        index: usize,
        desc: &OciDescriptor,
        all: &[&OciDescriptor],
    ) -> Result<(OciDescriptor, String, LayerReport), ConvertError> {
        let started = Instant::now();
        let layer_err = |msg: String| ConvertError::Layer {
            digest: desc.digest.clone(),
            msg,
        };
        let short: String = desc
            .digest
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect();
        let mut lp = self
            .progress
            .layer(format!("{index}:{short}"), desc.size.max(0) as u64);
        let (bootstrap, _) = read_layer_meta(self.source, desc).await?;
        let img = crate::image::from_bytes(bootstrap, None, "its layer bootstrap")
            .map_err(|e| layer_err(e.to_string()))?;
        // The blobs its chunks may name: its own (the last of its table, maybe still named by
        // the builder's placeholder) and any other layer's blob (a chunk dictionary's).
        let mut files: Vec<(String, PathBuf, crate::Compressor, crate::Digester)> = Vec::new();
        let n = img.blobs.len();
        for (i, e) in img.blobs.iter().enumerate() {
            if let Some(feature) = e.unsupported_feature() {
                return Err(layer_err(format!(
                    "blob {} uses {feature}, which cannot be reversed",
                    e.id
                )));
            }
            let own = i + 1 == n
                && (e.has_placeholder_id()
                    || e.id.is_empty()
                    || desc.digest.trim_start_matches("sha256:") == e.id);
            let d: &OciDescriptor = if own {
                desc
            } else {
                all.iter()
                    .find(|l| l.digest.trim_start_matches("sha256:") == e.id)
                    .ok_or_else(|| {
                        layer_err(format!(
                            "its bootstrap uses blob {}, which is not a layer of the image",
                            e.id
                        ))
                    })?
            };
            let path = self.download(d, &mut lp).await?;
            files.push((d.digest.clone(), path, e.compressor, e.digester));
        }
        let tree = Arc::new(img.tree);

        let retry = self.target.retry();
        let mut attempt = 0;
        let mut delay = retry.delay;
        let (diff_id, digest, size) = loop {
            match self.write_layer(&tree, &files, &mut lp).await {
                Ok(r) => break r,
                Err((e, transient)) if transient && attempt < retry.count => {
                    attempt += 1;
                    self.progress.println(&format!(
                        "layer {}: {e}; retry {attempt}/{} in {delay:?}",
                        desc.digest, retry.count
                    ));
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                }
                Err((e, _)) => return Err(layer_err(e)),
            }
        };
        lp.done(format!("→ {}", indicatif::HumanBytes(size)));
        let media_type = match self.opts.compression {
            LayerCompression::Gzip => mf::OCI_LAYER_GZIP,
            LayerCompression::Zstd => mf::OCI_LAYER_ZSTD,
            LayerCompression::None => mf::OCI_LAYER_TAR,
        };
        Ok((
            mf::descriptor(media_type, &digest, size, BTreeMap::new()),
            diff_id,
            LayerReport {
                source_digest: desc.digest.clone(),
                source_size: desc.size.max(0) as u64,
                blob_digest: digest,
                blob_size: size,
                chunks: 0,
                reused: false,
                seconds: started.elapsed().as_secs_f64(),
            },
        ))
    }

    /// Downloads blob `desc` into the work directory once; returns its path.
    async fn download(
        &self,
        desc: &OciDescriptor,
        lp: &mut LayerProgress,
    ) -> Result<PathBuf, ConvertError> {
        let cell = self
            .blobs
            .lock()
            .await
            .entry(desc.digest.clone())
            .or_default()
            .clone();
        let read = lp.counters.read.clone();
        cell.get_or_try_init(|| async {
            let path = self.work.join(desc.digest.replace(':', "-"));
            let mut stream = self.source.blob_stream(desc).await?;
            let fail = |e: io::Error| {
                ConvertError::Other(format!("downloading blob {}: {e}", desc.digest))
            };
            let mut f = tokio::fs::File::create(&path).await.map_err(fail)?;
            // The stream fails at its end if the bytes do not match the digest.
            while let Some(b) = stream.next().await {
                let b = b.map_err(fail)?;
                read.fetch_add(b.len() as u64, Ordering::Relaxed);
                self.counters.0.fetch_add(b.len() as u64, Ordering::Relaxed);
                f.write_all(&b).await.map_err(fail)?;
            }
            f.flush().await.map_err(fail)?;
            Ok::<_, ConvertError>(path)
        })
        .await
        .cloned()
    }

    /// Writes the tar of `tree`, compressed, into a chunked upload; returns its diff ID, digest
    /// and size. On failure, says whether trying again may help.
    async fn write_layer(
        &self,
        tree: &Arc<crate::tree::Tree>,
        files: &[(String, PathBuf, crate::Compressor, crate::Digester)],
        lp: &mut LayerProgress,
    ) -> Result<(String, String, u64), (String, bool)> {
        let mut blobs = Vec::with_capacity(files.len());
        for (id, path, compressor, digester) in files {
            blobs.push(
                BlobFile::open_with(id, *compressor, *digester, path)
                    .map_err(|e| (format!("opening blob {id}: {e}"), false))?,
            );
        }
        let (up_tx, up_rx) = mpsc::channel(2);
        let written = lp.counters.written.clone();
        let compression = self.opts.compression;
        let tree = Arc::clone(tree);
        let write = tokio::task::spawn_blocking(move || {
            let mut upload = UploadWriter::new(up_tx, written);
            let r = write_compressed(&tree, &blobs, compression, &mut upload);
            match r {
                Ok(diff_id) => upload.finish().map(|()| diff_id).map_err(|e| e.to_string()),
                Err(e) => {
                    upload.abort(e.to_string());
                    Err(e.to_string())
                }
            }
        });
        let push = self.target.push_stream(tokio_stream_from(up_rx));
        let mut write = std::pin::pin!(write);
        let mut push = std::pin::pin!(push);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let (mut write_out, mut push_out) = (None, None);
        while write_out.is_none() || push_out.is_none() {
            tokio::select! {
                r = &mut write, if write_out.is_none() => write_out = Some(r),
                r = &mut push, if push_out.is_none() => push_out = Some(r),
                _ = tick.tick() => lp.tick(),
            }
        }
        lp.tick();
        let write_out = write_out
            .expect("loop ran")
            .map_err(|e| (format!("writer thread: {e}"), false))?;
        match (write_out, push_out.expect("loop ran")) {
            (Ok(diff_id), Ok((digest, size))) => {
                self.counters.1.fetch_add(size, Ordering::Relaxed);
                Ok((diff_id, digest, size))
            }
            (Err(msg), Err(e)) if msg.contains("the upload stopped") => Err((
                format!("uploading the OCI layer: {e}"),
                super::registry::is_transient(&e),
            )),
            (Err(msg), _) => Err((msg, false)),
            (Ok(_), Err(e)) => Err((
                format!("uploading the OCI layer: {e}"),
                super::registry::is_transient(&e),
            )),
        }
    }
}

/// Writes the tar of `tree` compressed with `compression` to `out`; returns the tar's digest
/// (the layer's diff ID).
fn write_compressed(
    tree: &crate::tree::Tree,
    blobs: &[BlobFile],
    compression: LayerCompression,
    out: &mut dyn Write,
) -> io::Result<String> {
    let mut hash = Sha256::new();
    match compression {
        LayerCompression::None => {
            crate::unpack::write_tar(tree, blobs, Tee(&mut hash, out))?;
        }
        LayerCompression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            crate::unpack::write_tar(tree, blobs, Tee(&mut hash, &mut gz))?;
            gz.finish()?;
        }
        LayerCompression::Zstd => {
            let mut z = zstd::stream::write::Encoder::new(out, 3)?;
            crate::unpack::write_tar(tree, blobs, Tee(&mut hash, &mut z))?;
            z.finish()?;
        }
    }
    Ok(format!("sha256:{}", hex::encode(hash.finalize())))
}

/// Hashes what passes through to the writer.
struct Tee<'a, W: Write>(&'a mut Sha256, W);

impl<W: Write> Write for Tee<'_, W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.1.write(b)?;
        self.0.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.1.flush()
    }
}

/// The OCI config of a reversed image: the new diff IDs, and history without the bootstrap
/// layer's "Nydus Converter" entry.
fn oci_config(config: &Value, diff_ids: &[String]) -> Value {
    let mut c = config.clone();
    if let Some(obj) = c.as_object_mut() {
        obj.insert(
            "rootfs".into(),
            serde_json::json!({"type": "layers", "diff_ids": diff_ids}),
        );
        if let Some(h) = obj.get_mut("history").and_then(Value::as_array_mut) {
            h.retain(|e| {
                e.get("created_by").and_then(Value::as_str) != Some(mf::HISTORY_CREATED_BY)
            });
        }
    }
    c
}
