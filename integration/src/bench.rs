//! What the benchmarks share: an image's bootstrap fetched from the registry, the registry
//! floor of a read (the ranged GETs any server that fetches only the bytes read must make,
//! timed one after the other), so a benchmark can tell the registry's time from ours, and a
//! pause of the VM's free page reporting.

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

/// Free page reporting paused while this lives (a VM that hands freed memory back to the
/// hypervisor makes touching it again cost a host page fault per 4 KiB page: page-cache
/// writes of 1.5-4.0 CPU-s per GiB instead of 0.25 on this machine, docs/performance.md).
/// A node's page cache is its own memory, so benchmarks that write gigabytes measure without
/// it: reporting is set to order 11 (no free block is that large) and `warm_mib` MiB of memory
/// is touched once (a file written and deleted in `dir`). The setting is restored on drop.
/// `PAUSE_PAGE_REPORTING=0`, or a machine without the knob, leaves everything as it is.
pub struct PageReportingPause {
    old: Option<String>,
}

const PAGE_REPORTING_ORDER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";

impl PageReportingPause {
    pub fn start(dir: &std::path::Path, warm_mib: usize) -> PageReportingPause {
        let none = PageReportingPause { old: None };
        if std::env::var("PAUSE_PAGE_REPORTING").is_ok_and(|v| v == "0") {
            return none;
        }
        let Ok(old) = std::fs::read_to_string(PAGE_REPORTING_ORDER) else {
            return none;
        };
        if std::fs::write(PAGE_REPORTING_ORDER, "11").is_err() {
            return none;
        }
        let warm = dir.join("page-reporting.warm");
        let touched = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&warm)?;
            let block = vec![0u8; 1 << 20];
            for _ in 0..warm_mib {
                f.write_all(&block)?;
            }
            Ok(())
        })();
        let _ = std::fs::remove_file(&warm);
        eprintln!(
            "free page reporting paused (page_reporting_order {} -> 11){}",
            old.trim(),
            match touched {
                Ok(()) => format!(", {warm_mib} MiB of memory touched beforehand"),
                Err(e) => format!("; touching {warm_mib} MiB failed: {e}"),
            }
        );
        PageReportingPause { old: Some(old) }
    }
}

impl Drop for PageReportingPause {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            let _ = std::fs::write(PAGE_REPORTING_ORDER, old.trim());
        }
    }
}
