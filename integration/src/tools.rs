//! Small helpers the tests, the demo and the benchmarks share: our `nydusify` run against the
//! test registry, and a deterministic generator.

use std::path::Path;
use std::process::Output;

/// Runs our `nydusify convert` from `source` to `target` (both in plain-HTTP registries, no
/// docker config), its work files under `work`, `extra` arguments appended.
pub fn nydusify_convert(
    source: &str,
    target: &str,
    work: &Path,
    extra: &[&str],
) -> std::io::Result<Output> {
    std::process::Command::new(crate::agent::bin("nydusify"))
        .args(["convert", "--no-progress", "--source", source])
        .args(["--target", target, "--source-insecure", "--target-insecure"])
        .arg("--work-dir")
        .arg(work)
        .args(extra)
        .env("DOCKER_CONFIG", "/nonexistent-docker-config")
        .output()
}

/// A tiny deterministic generator (xorshift), for sizes and samples.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
