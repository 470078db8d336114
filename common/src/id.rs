//! Task, host and peer IDs, byte for byte as Dragonfly computes them.

use sha2::{Digest, Sha256};
use url::Url;

/// Query parameters Dragonfly removes before hashing a URL (presigned-URL
/// signatures of S3, GCS, OSS, OBS, COS, and containerd's `ns`).
pub const DEFAULT_FILTERED_QUERY_PARAMS: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
    "X-Amz-User-Agent",
    "X-Goog-Algorithm",
    "X-Goog-Credential",
    "X-Goog-Date",
    "X-Goog-Expires",
    "X-Goog-SignedHeaders",
    "X-Goog-Signature",
    "OSSAccessKeyId",
    "Expires",
    "Signature",
    "SecurityToken",
    "AccessKeyId",
    "X-Obs-Date",
    "X-Obs-Security-Token",
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
    "x-cos-security-token",
    "ns",
];

/// Errors computing an ID.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("invalid URL {url:?}: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("URL {0:?} is not a registry blob URL (…/v2/<name>/blobs/<algorithm>:<hex>)")]
    NotABlobUrl(String),
}

/// Inputs of the URL-based task ID.
#[derive(Debug, Clone, Default)]
pub struct UrlTaskId<'a> {
    pub url: &'a str,
    pub tag: Option<&'a str>,
    pub application: Option<&'a str>,
    /// A user-supplied piece length (a computed one is not part of the ID).
    pub piece_length: Option<u64>,
    /// Query keys to drop before hashing.
    pub filtered_query_params: &'a [String],
}

/// Go's `url.QueryEscape`: everything but `[A-Za-z0-9-_.~]` is %XX, space is `+`.
fn go_query_escape(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push_str(&format!("{b:02X}"));
            }
        }
    }
}

/// The URL as Dragonfly hashes it: filtered query params removed, the remaining
/// ones sorted by key and re-encoded as Go's `url.Values.Encode` does, the query
/// dropped when empty, and the trailing `/` of a bare root path trimmed.
pub fn filtered_url(url: &str, filtered: &[String]) -> Result<String, IdError> {
    let mut parsed = Url::parse(url).map_err(|source| IdError::InvalidUrl {
        url: url.to_string(),
        source,
    })?;
    let mut pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| !filtered.iter().any(|f| f == k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if pairs.is_empty() {
        parsed.set_query(None);
    } else {
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut q = String::new();
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                q.push('&');
            }
            go_query_escape(k, &mut q);
            q.push('=');
            go_query_escape(v, &mut q);
        }
        parsed.set_query(Some(&q));
    }
    let s = parsed.to_string();
    if parsed.path() == "/" && s.ends_with('/') {
        Ok(s.trim_end_matches('/').to_string())
    } else {
        Ok(s)
    }
}

/// Dragonfly's URL-based task ID:
/// `sha256(filtered_url ‖ tag? ‖ application? ‖ piece_length? ‖ "STANDARD")`.
pub fn url_task_id(p: &UrlTaskId<'_>) -> Result<String, IdError> {
    let url = filtered_url(p.url, p.filtered_query_params)?;
    let mut h = Sha256::new();
    h.update(url.as_bytes());
    if let Some(tag) = p.tag {
        h.update(tag.as_bytes());
    }
    if let Some(app) = p.application {
        h.update(app.as_bytes());
    }
    if let Some(pl) = p.piece_length {
        h.update(pl.to_string().as_bytes());
    }
    h.update(b"STANDARD");
    Ok(hex::encode(h.finalize()))
}

/// The default filtered query params as owned strings.
pub fn default_filtered_query_params() -> Vec<String> {
    DEFAULT_FILTERED_QUERY_PARAMS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A content digest (`<algorithm>:<hex>`) as found in registry blob URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobDigest {
    pub algorithm: String,
    pub encoded: String,
}

impl BlobDigest {
    /// Parses `sha256:<64 hex>` or `sha512:<128 hex>`; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let (algorithm, encoded) = s.split_once(':')?;
        let want = match algorithm {
            "sha256" => 64,
            "sha512" => 128,
            _ => return None,
        };
        if encoded.len() != want || !encoded.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(BlobDigest {
            algorithm: algorithm.to_string(),
            encoded: encoded.to_ascii_lowercase(),
        })
    }

    /// Extracts the digest from a URL or path matching `…/v2/<name>/blobs/<digest>[?query]`.
    pub fn from_blob_url(url: &str) -> Option<Self> {
        let no_query = url.split(['?', '#']).next()?;
        let idx = no_query.find("/v2/")?;
        let rest = &no_query[idx + 4..];
        let (name, digest) = rest.rsplit_once("/blobs/")?;
        if name.is_empty() {
            return None;
        }
        Self::parse(digest)
    }
}

impl std::fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.encoded)
    }
}

/// Blob-digest task ID: the encoded digest itself, so one blob is one task
/// whichever registry served it.
pub fn blob_task_id(url: &str) -> Result<String, IdError> {
    BlobDigest::from_blob_url(url)
        .map(|d| d.encoded)
        .ok_or_else(|| IdError::NotABlobUrl(url.to_string()))
}

/// Host ID: `{ip}-{hostname}` (`-seed` appended for seed peers).
pub fn host_id(ip: &str, hostname: &str, seed: bool) -> String {
    if seed {
        format!("{ip}-{hostname}-seed")
    } else {
        format!("{ip}-{hostname}")
    }
}

/// A version 4 (random) UUID, RFC 4122 variant, made of `random`.
pub fn uuid_v4(random: u128) -> String {
    let v = (random & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62);
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Peer ID of a download by host `host_id` (`{ip}-{hostname}[-seed]`): `{ip}-{hostname}-{uuid}`
/// (`-seed` kept last), the UUID a version 4 one made of `random`.
pub fn peer_id(host_id: &str, random: u128) -> String {
    let uuid = uuid_v4(random);
    match host_id.strip_suffix("-seed") {
        Some(base) => format!("{base}-{uuid}-seed"),
        None => format!("{host_id}-{uuid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_are_the_host_id_and_a_v4_uuid_with_seed_last() {
        let id = peer_id("10.0.0.1-node-a", u128::MAX);
        assert_eq!(id, "10.0.0.1-node-a-ffffffff-ffff-4fff-bfff-ffffffffffff");
        let id = peer_id("10.0.0.1-node-a-seed", 0);
        assert_eq!(
            id,
            "10.0.0.1-node-a-00000000-0000-4000-8000-000000000000-seed"
        );
    }

    #[test]
    fn url_task_id_matches_dragonfly_test_vector() {
        let id = url_task_id(&UrlTaskId {
            url: "https://example.com",
            tag: Some("foo"),
            application: Some("bar"),
            piece_length: None,
            filtered_query_params: &[],
        })
        .unwrap();
        assert_eq!(
            id,
            "06408fbf247ddaca478f8cb9565fe5591c28efd0994b8fea80a6a87d3203c5ca"
        );
    }

    #[test]
    fn filtered_params_are_removed_and_rest_sorted_go_style() {
        let f = default_filtered_query_params();
        assert_eq!(
            filtered_url("http://h/x?ns=docker.io&b=2&a=hello world&Signature=s", &f).unwrap(),
            "http://h/x?a=hello+world&b=2"
        );
        assert_eq!(
            filtered_url("http://h/x?ns=docker.io", &f).unwrap(),
            "http://h/x"
        );
        // Presigned URLs that differ only in their signature are one task.
        let a = url_task_id(&UrlTaskId {
            url: "https://s3/b/k?X-Amz-Signature=1&X-Amz-Date=2",
            filtered_query_params: &f,
            ..Default::default()
        })
        .unwrap();
        let b = url_task_id(&UrlTaskId {
            url: "https://s3/b/k?X-Amz-Signature=9&X-Amz-Date=8",
            filtered_query_params: &f,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn piece_length_changes_the_id() {
        let base = UrlTaskId {
            url: "https://example.com/file",
            ..Default::default()
        };
        let with = UrlTaskId {
            piece_length: Some(4194304),
            ..base.clone()
        };
        assert_ne!(url_task_id(&base).unwrap(), url_task_id(&with).unwrap());
    }

    #[test]
    fn blob_digest_task_id() {
        let hex = "a".repeat(64);
        let url = format!("http://127.0.0.1:5000/v2/library/busybox/blobs/sha256:{hex}?ns=x");
        assert_eq!(blob_task_id(&url).unwrap(), hex);
        let path = format!("/v2/a/b/c/blobs/sha256:{hex}");
        assert_eq!(BlobDigest::from_blob_url(&path).unwrap().encoded, hex);
        assert!(blob_task_id("http://h/v2/x/blobs/sha256:zz").is_err());
        assert!(blob_task_id("http://h/v2/x/manifests/latest").is_err());
        assert!(BlobDigest::parse("md5:abc").is_none());
    }

    #[test]
    fn invalid_url_is_an_error() {
        assert!(url_task_id(&UrlTaskId {
            url: "not a url",
            ..Default::default()
        })
        .is_err());
    }
}
