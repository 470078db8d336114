//! One module per subcommand, and the flags they share.

pub mod check;
pub mod convert;
pub mod copy;

use std::io::BufRead;
use std::time::Duration;

use anyhow::{bail, Context};
use nydus::nydusify::registry::{Credentials, RemoteOptions, Retry};

/// How to reach the source and target registries, flags every command shares.
#[derive(clap::Args, Clone)]
pub struct RegistryArgs {
    /// Use plain HTTP for the source registry.
    #[arg(long)]
    source_insecure: bool,
    /// Use plain HTTP for the target registry.
    #[arg(long)]
    target_insecure: bool,
    /// Source registry user (default: from docker config.json).
    #[arg(long, env = "NYDUSIFY_SOURCE_USERNAME")]
    source_username: Option<String>,
    #[arg(long, env = "NYDUSIFY_SOURCE_PASSWORD", hide_env_values = true)]
    source_password: Option<String>,
    /// Target registry user (default: from docker config.json).
    #[arg(long, env = "NYDUSIFY_TARGET_USERNAME")]
    target_username: Option<String>,
    #[arg(long, env = "NYDUSIFY_TARGET_PASSWORD", hide_env_values = true)]
    target_password: Option<String>,
}

impl RegistryArgs {
    /// The source's and the target's options.
    pub fn sides(self, retry: Retry) -> anyhow::Result<(RemoteOptions, RemoteOptions)> {
        Ok((
            remote_options(
                "source",
                self.source_insecure,
                self.source_username,
                self.source_password,
                retry,
            )?,
            remote_options(
                "target",
                self.target_insecure,
                self.target_username,
                self.target_password,
                retry,
            )?,
        ))
    }
}

/// Retries of pushes, as upstream spells them.
#[derive(clap::Args)]
pub struct RetryArgs {
    /// Retries of a failed push or read.
    #[arg(long, default_value_t = 3)]
    push_retry_count: u32,
    /// Delay before the first retry (doubles each time).
    #[arg(long, default_value = "5s")]
    push_retry_delay: String,
}

impl RetryArgs {
    pub fn retry(&self) -> anyhow::Result<Retry> {
        let delay: Duration =
            humantime::parse_duration(&self.push_retry_delay).with_context(|| {
                format!(
                    "--push-retry-delay {:?}: not a duration like 5s",
                    self.push_retry_delay
                )
            })?;
        Ok(Retry {
            count: self.push_retry_count,
            delay,
        })
    }
}

/// Registry flags of one side (`--source-*` or `--target-*`).
fn remote_options(
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
        proxy: None,
    })
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
