//! Media types, annotations and the shape of Nydus images in a registry, as nydus-snapshotter's
//! converter writes them (reference/nydus.md §2.1), and reading OCI/Docker manifests and configs.

use std::collections::BTreeMap;

use oci_client::manifest::{ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Media type of a Nydus data blob layer.
pub const NYDUS_BLOB: &str = "application/vnd.oci.image.layer.nydus.blob.v1";
/// Config media type of Nydus manifests merged into an OCI index (`--merge-platform`): unknown
/// to containerd, so plain clients pick the OCI manifest.
pub const NYDUS_CONFIG: &str = "application/vnd.nydus.image.config.v1+json";
/// `platform.os.features` entry of Nydus manifests in a merged index.
pub const OS_FEATURE_NYDUS: &str = "nydus.remoteimage.v1";

pub const ANNO_NYDUS_BLOB: &str = "containerd.io/snapshot/nydus-blob";
pub const ANNO_NYDUS_BOOTSTRAP: &str = "containerd.io/snapshot/nydus-bootstrap";
pub const ANNO_FS_VERSION: &str = "containerd.io/snapshot/nydus-fs-version";
pub const ANNO_NYDUS_REF: &str = "containerd.io/snapshot/nydus-ref";
/// Chain ID of the source OCI layers a Nydus blob layer was built from (as nydus-snapshotter's
/// build cache records it).
pub const ANNO_SOURCE_CHAINID: &str = "containerd.io/snapshot/nydus-source-chainid";
/// The build options a blob layer was made with (ours; lets a later conversion reuse the layer
/// only when the options match).
pub const ANNO_BUILD_OPTIONS: &str = "io.dragonfly-rs.nydusify.build-options";

/// Path of the merged bootstrap inside the bootstrap layer.
pub const BOOTSTRAP_IN_LAYER: &str = "image/image.boot";

/// The `history` entry appended for the bootstrap layer.
pub const HISTORY_CREATED_BY: &str = "Nydus Converter";
pub const HISTORY_COMMENT: &str = "Nydus Bootstrap Layer";

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The media type of a manifest document: its `mediaType`, or (OCI documents may omit it) an
/// index if it has `manifests`, else a manifest.
pub fn media_type_of(body: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
        return Err("schemaVersion is not 2 (schema 1 manifests are not supported)".into());
    }
    if let Some(mt) = v.get("mediaType").and_then(Value::as_str) {
        return Ok(mt.to_string());
    }
    Ok(if v.get("manifests").is_some() {
        OCI_INDEX
    } else {
        OCI_MANIFEST
    }
    .to_string())
}

/// Whether `mt` is an index (OCI index or Docker manifest list).
pub fn is_index(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_MANIFEST_LIST
}

/// Parses an image manifest.
pub fn parse_manifest(body: &[u8]) -> Result<OciImageManifest, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid image manifest: {e}"))
}

/// Parses an index.
pub fn parse_index(body: &[u8]) -> Result<OciImageIndex, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid image index: {e}"))
}

/// Whether a manifest is a Nydus image (its last layer is the bootstrap, as nydus-snapshotter
/// checks).
pub fn is_nydus(m: &OciImageManifest) -> bool {
    m.layers.last().is_some_and(is_bootstrap_layer)
}

/// Whether a layer is a Nydus bootstrap layer.
pub fn is_bootstrap_layer(d: &OciDescriptor) -> bool {
    annotation(d, ANNO_NYDUS_BOOTSTRAP) == Some("true")
}

/// Whether a layer is a Nydus blob layer.
pub fn is_blob_layer(d: &OciDescriptor) -> bool {
    d.media_type == NYDUS_BLOB && annotation(d, ANNO_NYDUS_BLOB) == Some("true")
}

/// An annotation of a descriptor.
pub fn annotation<'a>(d: &'a OciDescriptor, key: &str) -> Option<&'a str> {
    d.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The compression of an OCI/Docker layer, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

/// How an OCI or Docker layer is compressed; `None` for media types that are not tar layers.
pub fn layer_compression(media_type: &str) -> Option<LayerCompression> {
    match media_type {
        OCI_LAYER_TAR | DOCKER_LAYER_TAR => Some(LayerCompression::None),
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Some(LayerCompression::Gzip),
        OCI_LAYER_ZSTD => Some(LayerCompression::Zstd),
        // Non-distributable layers are tars too.
        m if m.starts_with("application/vnd.oci.image.layer.nondistributable.v1.tar")
            || m == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" =>
        {
            Some(if m.ends_with("gzip") {
                LayerCompression::Gzip
            } else if m.ends_with("zstd") {
                LayerCompression::Zstd
            } else {
                LayerCompression::None
            })
        }
        _ => None,
    }
}

/// The gzip layer media type matching a manifest's family (OCI or Docker).
pub fn gzip_layer_type(manifest_media_type: &str) -> &'static str {
    if manifest_media_type == DOCKER_MANIFEST {
        DOCKER_LAYER_GZIP
    } else {
        OCI_LAYER_GZIP
    }
}

/// `rootfs.diff_ids` of an image config.
pub fn diff_ids(config: &Value) -> Result<Vec<String>, String> {
    let ids = config
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .ok_or("the image config has no rootfs.diff_ids")?;
    ids.iter()
        .map(|v| {
            v.as_str()
                .filter(|s| is_sha256_digest(s))
                .map(str::to_string)
                .ok_or_else(|| format!("rootfs.diff_ids holds {v}, not a sha256 digest"))
        })
        .collect()
}

/// Whether `s` is `sha256:` and 64 lowercase hex digits.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Chain IDs of a list of diff IDs (`chain(n) = sha256(chain(n-1) + " " + diff(n))`).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// Rewrites an image config for a converted image: `rootfs.diff_ids` becomes `diff_ids`, and
/// `history` gains `entry` (every other field is kept as it was).
pub fn rewrite_config(config: &Value, new_diff_ids: &[String], history: Value) -> Value {
    let mut c = config.clone();
    if let Some(obj) = c.as_object_mut() {
        let rootfs = obj
            .entry("rootfs")
            .or_insert_with(|| serde_json::json!({"type": "layers"}));
        if let Some(r) = rootfs.as_object_mut() {
            r.insert("diff_ids".into(), serde_json::json!(new_diff_ids));
        }
        match obj.get_mut("history").and_then(Value::as_array_mut) {
            Some(h) => h.push(history),
            None => {
                obj.insert("history".into(), Value::Array(vec![history]));
            }
        }
    }
    c
}

/// A descriptor with the given fields.
pub fn descriptor(
    media_type: &str,
    digest: &str,
    size: u64,
    annotations: BTreeMap<String, String>,
) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.to_string(),
        digest: digest.to_string(),
        size: size as i64,
        urls: None,
        annotations: if annotations.is_empty() {
            None
        } else {
            Some(annotations)
        },
        ..OciDescriptor::default()
    }
}

/// `os/arch[/variant]` of an index entry.
pub fn platform_string(e: &ImageIndexEntry) -> String {
    match &e.platform {
        None => "unknown".into(),
        Some(p) => {
            let mut s = format!("{}/{}", p.os, p.architecture);
            if let Some(v) = &p.variant {
                s.push('/');
                s.push_str(v);
            }
            s
        }
    }
}

/// Whether an index entry matches `os/arch[/variant]`.
pub fn platform_matches(e: &ImageIndexEntry, wanted: &str) -> bool {
    let have = platform_string(e);
    have == wanted || (wanted.matches('/').count() == 1 && have.starts_with(&format!("{wanted}/")))
}

/// This machine's platform as an OCI `os/arch` string.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = "sha256:".to_string() + &"a".repeat(64);
        let b = "sha256:".to_string() + &"b".repeat(64);
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], sha256_digest(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn media_type_is_inferred_for_oci_documents_without_one() {
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            OCI_INDEX
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"layers":[]}"#).unwrap(),
            OCI_MANIFEST
        );
        assert!(media_type_of(br#"{"schemaVersion":1}"#)
            .unwrap_err()
            .contains("schema 1"));
        assert!(media_type_of(b"<html>").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn config_rewrite_keeps_other_fields_and_appends_history() {
        let c = serde_json::json!({"architecture":"amd64","config":{"Env":["A=1"]},
            "rootfs":{"type":"layers","diff_ids":["x"]},"history":[{"created_by":"a"}]});
        let r = rewrite_config(
            &c,
            &["sha256:1".into(), "sha256:2".into()],
            serde_json::json!({"created_by": HISTORY_CREATED_BY}),
        );
        assert_eq!(r["config"], c["config"]);
        assert_eq!(r["rootfs"]["diff_ids"][1], "sha256:2");
        assert_eq!(r["history"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn diff_ids_must_be_digests() {
        let c = serde_json::json!({"rootfs":{"diff_ids":["nope"]}});
        assert!(diff_ids(&c).unwrap_err().contains("not a sha256 digest"));
        assert!(diff_ids(&serde_json::json!({})).is_err());
    }
}
