//! A `POST /oapi/v1/jobs` body from the network, checked as the manager checks it before it
//! acts: errors, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = manager::jobs::check_request(data);
});
