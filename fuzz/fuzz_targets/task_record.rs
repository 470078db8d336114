//! Task records read back from the metadata database (a file on disk).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = serde_json::from_slice::<dfdaemon::storage::TaskMeta>(bytes);
});
