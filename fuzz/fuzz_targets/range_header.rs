//! `Range` request headers from clients of the proxy.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: (&str, u64)| {
    let (header, len) = data;
    if let Ok(r) = dfdaemon::proxy::range::parse(header) {
        if let Ok((a, b)) = r.resolve(len, header) {
            assert!(a < b && b <= len);
        }
    }
});
