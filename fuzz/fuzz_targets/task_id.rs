//! URLs from proxy requests and dfget: task IDs and blob digests.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: (&str, Option<&str>, Option<u64>)| {
    let (url, tag, piece_length) = data;
    let filtered = common::id::default_filtered_query_params();
    if let Ok(id) = common::id::url_task_id(&common::id::UrlTaskId {
        url,
        tag,
        application: None,
        piece_length,
        filtered_query_params: &filtered,
    }) {
        assert_eq!(id.len(), 64);
    }
    if let Some(d) = common::id::BlobDigest::from_blob_url(url) {
        assert!(d.encoded.len() == 64 || d.encoded.len() == 128);
    }
});
