//! Merging layer bootstraps into one image bootstrap, as Nydus's `Merger` does: on top of a
//! parent image if given, each layer stacked with the OCI whiteout rules; each layer's own blob
//! (the one blob of its table not from the chunk dictionary) named and described from what the
//! caller knows about it; then only the blobs some file still uses are kept, numbered in the
//! order a breadth-first walk of the files first uses them.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use super::{bootstrap_for, finish, BuildError, ChunkOptions};
use crate::tree::{Kind, Tree};
use crate::v6::{BlobEntry, Bootstrap};
use crate::{BlobFeatures, Compressor, Digester, FormatError};

/// What the caller knows of one layer's own blob (`nydus-image merge --original-blob-ids
/// --blob-digests --blob-sizes --blob-toc-digests --blob-toc-sizes`).
#[derive(Debug, Clone, Default)]
pub struct LayerBlob {
    /// The blob id to write (for a ZRAN blob, the OCI layer's).
    pub original_id: Option<String>,
    /// The blob's digest: its id, or for a separate meta blob (ZRAN) the meta blob's digest.
    pub digest: Option<[u8; 32]>,
    /// The blob's size (for a separate meta blob, the meta blob's).
    pub size: Option<u64>,
    pub toc_digest: Option<[u8; 32]>,
    pub toc_size: Option<u32>,
    /// The id an inline bootstrap's placeholder id becomes when nothing above names the blob
    /// (`nydus-image` takes it from the bootstrap's file name).
    pub placeholder_id: Option<String>,
}

/// One layer to merge.
#[derive(Debug, Clone)]
pub struct MergeLayer<'a> {
    /// How messages name the layer (a path, a digest).
    pub name: String,
    /// The layer's bootstrap.
    pub bootstrap: &'a [u8],
    /// What to set on its own blob.
    pub blob: LayerBlob,
}

/// How to merge.
#[derive(Debug, Clone, Default)]
pub struct MergeOptions<'a> {
    /// The image the layers go on top of (`--parent-bootstrap`).
    pub parent: Option<&'a [u8]>,
    /// The chunk dictionary the layers were built against (`--chunk-dict`): its blobs in a
    /// layer's table are shared, not the layer's own.
    pub chunk_dict: Option<&'a [u8]>,
    /// Paths for the prefetch table.
    pub prefetch: Vec<Vec<u8>>,
    /// Store xattrs several inodes share once.
    pub share_xattrs: bool,
}

/// A merged image.
#[derive(Debug, Clone)]
pub struct Merged {
    pub bootstrap: Vec<u8>,
    /// Ids of the blob table, in order.
    pub blob_ids: Vec<String>,
    /// The first layer's compressor (what Nydus reports).
    pub first_compressor: Option<Compressor>,
}

fn invalid(msg: String) -> BuildError {
    BuildError::Invalid(msg)
}

impl LayerBlob {
    /// Names and describes layer `name`'s own blob `e`.
    fn apply(&self, name: &str, e: &mut BlobEntry) -> Result<(), BuildError> {
        let layer = |err: FormatError| invalid(format!("layer {name}: {err}"));
        // A separate meta blob (ZRAN): the digest and size describe the meta blob, the id stays
        // the OCI layer's.
        let separate = e.features.contains(BlobFeatures::SEPARATE);
        if let Some(id) = &self.original_id {
            e.set_blob_id(id).map_err(layer)?;
        } else if e.blob_id().map_err(layer)? == finish::PLACEHOLDER_BLOB_ID {
            if let Some(id) = &self.placeholder_id {
                e.set_blob_id(id).map_err(layer)?;
            }
        }
        if let Some(d) = self.digest {
            if separate {
                e.blob_meta_digest = d;
            } else {
                e.set_blob_id(&super::blob::hex(&d)).map_err(layer)?;
            }
        }
        if let Some(size) = self.size {
            if separate {
                e.blob_meta_size = size;
            } else {
                e.compressed_size = size;
            }
        }
        if let Some(d) = self.toc_digest {
            e.blob_toc_digest = d;
        }
        if let Some(size) = self.toc_size {
            e.blob_toc_size = size;
        }
        Ok(())
    }
}

/// The chunk size and digester of the first bootstrap read, which all others must share.
#[derive(Default)]
struct Shape {
    first: Option<(u32, Option<Digester>, String)>,
}

impl Shape {
    /// Checks `b` (named `name`) against the first; returns its compressor.
    fn check(&mut self, b: &Bootstrap, name: &str) -> Result<Option<Compressor>, BuildError> {
        let ext = b.ext_superblock();
        let this = (ext.chunk_size, ext.flags.digester());
        match &self.first {
            Some((size, digester, first)) if (*size, *digester) != this => Err(invalid(format!(
                "{name}: chunk size {:#x} / digester {:?} differ from {first} ({size:#x} / {digester:?})",
                this.0, this.1
            ))),
            Some(_) => Ok(ext.flags.compressor()),
            None => {
                self.first = Some((this.0, this.1, name.to_string()));
                Ok(ext.flags.compressor())
            }
        }
    }
}

/// Merges `layers` (bottom first); see the module comment.
pub fn merge(layers: &[MergeLayer<'_>], opts: &MergeOptions<'_>) -> Result<Merged, BuildError> {
    let dict_ids: HashSet<[u8; 64]> = match opts.chunk_dict {
        Some(bytes) => Bootstrap::parse(bytes)
            .map_err(|e| invalid(format!("chunk dictionary: {e}")))?
            .blobs()
            .iter()
            .map(|e| e.blob_id)
            .collect(),
        None => HashSet::new(),
    };
    let mut tree = Tree::default();
    let mut blobs: Vec<BlobEntry> = Vec::new();
    // Chunk size and digester every part must share; the compressor of the last layer, as Nydus.
    let mut shape = Shape::default();
    let mut compressor = None;
    let mut first_compressor = None;
    if let Some(bytes) = opts.parent {
        let b = Bootstrap::parse(bytes).map_err(|e| invalid(format!("parent bootstrap: {e}")))?;
        compressor = shape.check(&b, "the parent bootstrap")?;
        tree = b
            .to_tree()
            .map_err(|e| invalid(format!("parent bootstrap: {e}")))?;
        blobs = b.blobs().to_vec();
    }
    for (n, l) in layers.iter().enumerate() {
        let name = &l.name;
        let layer_err = |e: FormatError| invalid(format!("layer {name}: {e}"));
        let b = Bootstrap::parse(l.bootstrap).map_err(layer_err)?;
        compressor = shape.check(&b, &format!("layer {name}"))?;
        if n == 0 {
            first_compressor = compressor;
        }
        let own: Vec<usize> = (0..b.blobs().len())
            .filter(|&k| !dict_ids.contains(&b.blobs()[k].blob_id))
            .collect();
        if own.len() > 1 {
            return Err(invalid(format!(
                "layer {name}: {} blobs of its table are not in the chunk dictionary, but a layer has one blob of its own (give the dictionary with --chunk-dict, a lower image with --parent-bootstrap)",
                own.len()
            )));
        }
        let mut layer = b.to_tree().map_err(layer_err)?;
        let mut map = Vec::with_capacity(b.blobs().len());
        for (k, entry) in b.blobs().iter().enumerate() {
            let mut entry = *entry;
            if own.first() == Some(&k) {
                l.blob.apply(name, &mut entry)?;
            }
            // In a merged image no blob holds *this* bootstrap: Nydus clears the flag (nydusd
            // would otherwise name the blob after the bootstrap's file).
            entry.features.remove(BlobFeatures::INLINED_FS_META);
            if entry.blob_id().map_err(layer_err)? == finish::PLACEHOLDER_BLOB_ID {
                return Err(invalid(format!(
                    "layer {name}: blob {k} of its table has the placeholder id of an inline bootstrap, and nothing names it: give the blobs' digests (--blob-digests) or ids (--original-blob-ids), or name the bootstrap file by the blob id"
                )));
            }
            // A blob several layers list (a dictionary's, or the same layer twice) is kept once.
            let pos = match blobs.iter().position(|e| e.blob_id == entry.blob_id) {
                Some(p) => p,
                None => {
                    blobs.push(entry);
                    blobs.len() - 1
                }
            };
            map.push(pos as u32);
        }
        // An index the layer's table lacks stays unknown: the renumbering below reports it.
        layer.map_blob_indexes(|i| map.get(i as usize).copied().unwrap_or(u32::MAX));
        tree.apply_layer(&layer)
            .map_err(|e| invalid(format!("layer {name}: {e}")))?;
    }
    let (chunk_size, digester) = shape
        .first
        .map(|(s, d, _)| (s, d))
        .ok_or_else(|| invalid("no layers to merge".into()))?;
    // Keep the blobs files still use, in the order a breadth-first walk first meets them.
    let mut renumber: HashMap<u32, u32> = HashMap::new();
    let mut used: Vec<BlobEntry> = Vec::new();
    for id in tree.bfs().ids() {
        if let Kind::File { chunks, .. } = &tree.node(id).kind {
            for c in chunks {
                if let Entry::Vacant(slot) = renumber.entry(c.blob_index) {
                    let mut e = *blobs.get(c.blob_index as usize).ok_or_else(|| {
                        invalid(format!(
                            "a chunk names blob {}, which is missing",
                            c.blob_index
                        ))
                    })?;
                    e.blob_index = used.len() as u32;
                    slot.insert(e.blob_index);
                    used.push(e);
                }
            }
        }
    }
    tree.map_blob_indexes(|i| renumber.get(&i).copied().unwrap_or(i));
    let chunk = ChunkOptions {
        chunk_size,
        compressor: compressor.unwrap_or(Compressor::Zstd),
        digester: digester.unwrap_or(Digester::Blake3),
        threads: 1,
    };
    let bootstrap = bootstrap_for(&tree, &used, &chunk, &opts.prefetch, opts.share_xattrs)?;
    let blob_ids = used
        .iter()
        .map(|e| e.blob_id().map(str::to_string))
        .collect::<Result<_, _>>()?;
    Ok(Merged {
        bootstrap,
        blob_ids,
        first_compressor,
    })
}
