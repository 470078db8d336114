//! Property tests of every parser of untrusted input (the same functions the
//! fuzz targets in fuzz/ drive): no panics, results within bounds.

use common::id::{self, BlobDigest};
use dfdaemon::backend::parse_content_range;
use dfdaemon::config::Config;
use dfdaemon::proxy::range;
use proptest::prelude::*;
use std::path::Path;

proptest! {
    #[test]
    fn range_header_never_panics_and_stays_in_bounds(s in ".{0,64}", len in 0u64..1 << 40) {
        if let Ok(r) = range::parse(&s) {
            if let Ok((a, b)) = r.resolve(len, &s) {
                prop_assert!(a < b && b <= len);
            }
        }
    }

    #[test]
    fn valid_ranges_resolve_exactly(a in 0u64..1 << 40, span in 0u64..1 << 20, extra in 1u64..1 << 20) {
        let b = a + span;
        let len = b + extra;
        let h = format!("bytes={a}-{b}");
        prop_assert_eq!(range::parse(&h).unwrap().resolve(len, &h).unwrap(), (a, b + 1));
        let h = format!("bytes=-{}", span + 1);
        let (x, y) = range::parse(&h).unwrap().resolve(len, &h).unwrap();
        prop_assert_eq!((x, y), (len - (span + 1).min(len), len));
    }

    #[test]
    fn content_range_parses_what_servers_send(a in 0u64..1 << 40, span in 0u64..1 << 30, extra in 1u64..1 << 30) {
        let b = a + span;
        let total = b + extra;
        prop_assert_eq!(
            parse_content_range(&format!("bytes {a}-{b}/{total}")),
            Some((Some((a, b)), total))
        );
    }

    #[test]
    fn content_range_never_panics(s in ".{0,64}") {
        if let Some((Some((a, b)), t)) = parse_content_range(&s) {
            prop_assert!(a <= b && b < t);
        }
    }

    #[test]
    fn config_parser_never_panics(s in "[a-zA-Z:\\- \\n\\[\\]{}0-9.%]{0,200}") {
        let _ = Config::parse(&s, Path::new("prop.yaml"));
    }

    #[test]
    fn unknown_config_keys_are_named(key in "[a-z]{3,12}") {
        prop_assume!(!["host", "download", "upload", "storage", "gc", "proxy", "backend", "metrics", "scheduler", "manager"].contains(&key.as_str()));
        let err = Config::parse(&format!("{key}: 1\n"), Path::new("c.yaml")).unwrap_err().to_string();
        prop_assert!(err.contains(&key), "{}", err);
    }

    #[test]
    fn task_ids_are_64_hex_or_an_error(url in "(https?://[a-z0-9.]{1,20}(:[0-9]{1,5})?)?/[ -~]{0,60}", tag in proptest::option::of("[a-z]{0,8}")) {
        let filtered = id::default_filtered_query_params();
        if let Ok(t) = id::url_task_id(&id::UrlTaskId {
            url: &url,
            tag: tag.as_deref(),
            application: None,
            piece_length: None,
            filtered_query_params: &filtered,
        }) {
            prop_assert_eq!(t.len(), 64);
            prop_assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn blob_urls_yield_their_digest(repo in "[a-z0-9]{1,10}(/[a-z0-9]{1,10}){0,2}", hex in "[0-9a-f]{64}", q in proptest::option::of("[a-z=&]{0,20}")) {
        let mut url = format!("http://r:5000/v2/{repo}/blobs/sha256:{hex}");
        if let Some(q) = q {
            url.push('?');
            url.push_str(&q);
        }
        prop_assert_eq!(BlobDigest::from_blob_url(&url).unwrap().encoded, hex.clone());
        prop_assert_eq!(id::blob_task_id(&url).unwrap(), hex);
    }

    #[test]
    fn task_records_from_disk_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<dfdaemon::storage::TaskMeta>(&bytes);
    }
}
