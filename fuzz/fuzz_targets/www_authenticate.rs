//! Registry `WWW-Authenticate` challenges (dfdaemon answers them for its own blob reads).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = dfdaemon::registry_auth::parse_challenge(text);
});
