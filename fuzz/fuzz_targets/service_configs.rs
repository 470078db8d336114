//! The manager's and the scheduler's YAML configs (upstream keys taken out first): errors,
//! never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = manager::config::ManagerConfig::parse_with_warnings(text);
        let _ = scheduler::file_config::FileConfig::parse(text);
    }
});
