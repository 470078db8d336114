//! `nydusify copy`: a Nydus image (manifests, config, bootstrap layer, blobs) from one registry
//! or repository to another. Blobs are mounted when both sides are repositories of one
//! registry, else streamed (verified against their digest); the target tag is written last.

use bytes::Bytes;
use oci_client::RegistryOperation;

use super::convert::{copy_manifest, ConvertError};
use super::manifest as mf;
use super::registry::{Remote, RemoteOptions};

/// Options of `copy`.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    pub source: String,
    pub target: String,
    pub source_remote: RemoteOptions,
    pub target_remote: RemoteOptions,
    /// Copy every manifest of an index; otherwise only the one for `platform` (and the target
    /// is then that manifest).
    pub all_platforms: bool,
    /// `os/arch` to copy from an index without `all_platforms`.
    pub platform: String,
}

/// What `copy` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CopyReport {
    pub target_digest: String,
    pub manifests: usize,
}

/// Copies the image.
pub async fn copy(opts: &CopyOptions) -> Result<CopyReport, ConvertError> {
    let source =
        Remote::connect(&opts.source, &opts.source_remote, RegistryOperation::Pull).await?;
    let target =
        Remote::connect(&opts.target, &opts.target_remote, RegistryOperation::Push).await?;
    let (body, digest, mt) =
        source
            .manifest(source.reference())
            .await?
            .ok_or_else(|| ConvertError::BadSource {
                what: opts.source.clone(),
                msg: "no such image".into(),
            })?;
    let (tag_body, tag_mt, count) = if mf::is_index(&mt) {
        let index = mf::parse_index(&body).map_err(ConvertError::Other)?;
        if opts.all_platforms {
            super::convert::copy_index_children(&source, &target, &index).await?;
            (body, mt, index.manifests.len())
        } else {
            let e = index
                .manifests
                .iter()
                .filter(|e| mf::platform_matches(e, &opts.platform))
                .max_by_key(|e| {
                    e.platform
                        .as_ref()
                        .and_then(|p| p.os_features.as_ref())
                        .is_some_and(|f| f.iter().any(|f| f == mf::OS_FEATURE_NYDUS))
                })
                .ok_or_else(|| ConvertError::BadSource {
                    what: opts.source.clone(),
                    msg: format!("the index has no manifest for {}", opts.platform),
                })?;
            let (b, d, m) = source
                .manifest(&source.at(&e.digest))
                .await?
                .ok_or_else(|| ConvertError::BadSource {
                    what: opts.source.clone(),
                    msg: format!("manifest {} is missing", e.digest),
                })?;
            copy_manifest(&source, &target, &b, &d, &m).await?;
            (b, m, 1)
        }
    } else {
        copy_manifest(&source, &target, &body, &digest, &mt).await?;
        (body, mt, 1)
    };
    target
        .push_manifest(target.reference(), Bytes::clone(&tag_body), &tag_mt)
        .await?;
    Ok(CopyReport {
        target_digest: mf::sha256_digest(&tag_body),
        manifests: count,
    })
}
