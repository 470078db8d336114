//! dfdaemon config files.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = dfdaemon::config::Config::parse(text, std::path::Path::new("fuzz.yaml"));
});
