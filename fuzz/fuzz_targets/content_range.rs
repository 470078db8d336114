//! `Content-Range` response headers from origins.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|v: &str| {
    if let Some((Some((a, b)), total)) = dfdaemon::backend::parse_content_range(v) {
        assert!(a <= b && b < total);
    }
});
