//! One module per subcommand, and the flags they share.

pub mod check;
pub mod convert;
pub mod copy;

use std::io::BufRead;
use std::time::Duration;

use anyhow::{bail, Context};
use nydus::nydusify::registry::{Credentials, RemoteOptions, Retry};

/// Registry flags of one side (`--source-*` or `--target-*`).
pub fn remote_options(
    side: &'static str,
    insecure: bool,
    username: Option<String>,
    password: Option<String>,
    retry: Retry,
) -> anyhow::Result<RemoteOptions> {
    let credentials = match (username, password) {
        (Some(username), Some(password)) => Some(Credentials { username, password }),
        (None, None) => None,
        _ => bail!("--{side}-username and --{side}-password go together"),
    };
    Ok(RemoteOptions {
        insecure,
        credentials,
        retry,
        side,
    })
}

/// Retry flags as upstream spells them (`--push-retry-count`, `--push-retry-delay`).
pub fn retry(count: u32, delay: &str) -> anyhow::Result<Retry> {
    let delay: Duration = humantime::parse_duration(delay)
        .with_context(|| format!("--push-retry-delay {delay:?}: not a duration like 5s"))?;
    Ok(Retry { count, delay })
}

/// Paths read from stdin, one per line (`--prefetch-patterns`).
pub fn read_patterns() -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for line in std::io::stdin().lock().split(b'\n') {
        let line = line.context("reading prefetch patterns from stdin")?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line).to_vec();
        if !line.is_empty() {
            out.push(line);
        }
    }
    Ok(out)
}

/// Parses `0x100000` or `1048576`.
pub fn parse_size(s: &str) -> anyhow::Result<u32> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    v.with_context(|| format!("invalid chunk size {s:?}"))
}

/// Writes a JSON document to `path`.
pub fn write_json(path: &std::path::Path, v: &impl serde::Serialize) -> anyhow::Result<()> {
    let s = serde_json::to_string_pretty(v)?;
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}
