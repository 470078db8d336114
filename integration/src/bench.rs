//! What the lazy-loading benchmarks share: an image's bootstrap fetched from the registry, and
//! the registry floor of a read (the ranged GETs any server that fetches only the bytes read
//! must make, timed one after the other), so a benchmark can tell the registry's time from
//! ours.

use crate::Registry;
use nydus::image::Image;
use nydus::tree::Kind;
use std::collections::BTreeMap;
use std::time::Instant;

/// The bootstrap of the Nydus image `repo:tag` (its last layer).
pub async fn nydus_bootstrap(reg: &Registry, repo: &str, tag: &str) -> anyhow::Result<Vec<u8>> {
    let (body, _, _) = reg.client().get_manifest(repo, tag).await?;
    let m: serde_json::Value = serde_json::from_slice(&body)?;
    let digest = m["layers"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(|l| l["digest"].as_str())
        .ok_or_else(|| anyhow::anyhow!("{repo}:{tag} has no layers"))?
        .to_string();
    let gz = reg.client().get_blob(repo, &digest).await?;
    nydus::nydusify::convert::bootstrap_from_layer_tar(&gz).map_err(anyhow::Error::msg)
}

/// The registry floor of reading `paths` (absolute paths in `image`) in that order: one ranged
/// GET per file and blob (from its first chunk to the end of its last), one after the other
/// on a kept-alive connection; (seconds, requests).
pub async fn registry_floor<'a>(
    reg: &Registry,
    repo: &str,
    image: &Image,
    paths: impl IntoIterator<Item = &'a str>,
) -> anyhow::Result<(f64, usize)> {
    let client = reqwest::Client::new();
    let t = Instant::now();
    let mut requests = 0;
    for path in paths {
        let Some(id) = image.tree.lookup(path.as_bytes()) else {
            anyhow::bail!("{path} is not in the bootstrap");
        };
        let Kind::File { chunks, .. } = &image.tree.node(id).kind else {
            continue;
        };
        let mut spans: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for c in chunks {
            let e = spans
                .entry(c.blob_index)
                .or_insert((c.compressed_offset, c.compressed_offset));
            e.0 = e.0.min(c.compressed_offset);
            e.1 = e.1.max(c.compressed_offset + u64::from(c.compressed_size));
        }
        for (blob, (start, end)) in spans {
            let url = format!(
                "{}/v2/{repo}/blobs/sha256:{}",
                reg.url(),
                image.blobs[blob as usize].id
            );
            let body = client
                .get(&url)
                .header("Range", format!("bytes={start}-{}", end - 1))
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            anyhow::ensure!(body.len() as u64 == end - start, "short range from {url}");
            requests += 1;
        }
    }
    Ok((t.elapsed().as_secs_f64(), requests))
}
