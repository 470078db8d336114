//! A registry's manifest or index body, as the manager reads it to preheat an image: errors,
//! never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let platform = ("linux".to_string(), "amd64".to_string(), None);
    let _ = manager::resolve::parse_manifest(data, "application/vnd.oci.image.index.v1+json", &platform);
    let _ = manager::resolve::parse_manifest(data, "", &platform);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = manager::resolve::ManifestUrl::parse(s);
        let _ = manager::resolve::parse_platform(s);
        let _ = manager::resolve::url_host(s);
    }
});
