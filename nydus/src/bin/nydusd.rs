//! `nydusd`: serves a Nydus (RAFS) image as a read-only FUSE filesystem, reading file data on
//! demand from local blob files or from a registry, every chunk checked before it is served.
//!
//! The command line and the configuration file take Nydus's `nydusd` names where they overlap
//! (`--config`, `--bootstrap`, `--mountpoint`, `--log-level`, `--thread-num`; config v1
//! `device.backend` and v2 `backend` with the `localfs` and `registry` types), so the same
//! image can be served by this one and by Nydus's for a side-by-side comparison. Nydus's keys
//! this tool does not use (caches, prefetch, ...) are accepted with one warning each; a key
//! Nydus does not know either is an error naming it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use clap::Parser;
use fuser::Config;
use nydus::fusefs::RafsFs;
use nydus::image::{self, Image};
use nydus::nydusify::registry::{Credentials, Remote, RemoteOptions, Retry};
use nydus::reader::{ChunkReader, LocalBlobs, RegistryBlobs};
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "nydusd",
    version,
    about = "Serve a Nydus RAFS image as a read-only FUSE filesystem"
)]
struct Cli {
    /// Configuration file (JSON; Nydus's v1 or v2 shape).
    #[arg(long, short = 'C')]
    config: PathBuf,
    /// The image's bootstrap (RAFS v6 or v5), or a blob with it inlined.
    #[arg(long, short = 'B')]
    bootstrap: PathBuf,
    /// Where to mount.
    #[arg(long, short = 'M')]
    mountpoint: PathBuf,
    /// trace, debug, info, warn or error.
    #[arg(long, short = 'l', default_value = "info")]
    log_level: String,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    thread_num: usize,
    /// Accepted for Nydus's command lines; the open-files limit is left as it is.
    #[arg(long)]
    rlimit_nofile: Option<u64>,
}

/// Where blobs are read from.
enum Backend {
    /// `localfs`: `<dir>/<blob id>`, or one `blob_file`.
    Local {
        dir: Option<PathBuf>,
        blob_file: Option<PathBuf>,
    },
    /// `registry`: the image's repository.
    Registry {
        /// `proxy.url`: blob reads go through this HTTP proxy (a dfdaemon), and with
        /// `proxy.fallback` (default true) to the registry directly when it fails.
        proxy: Option<(String, bool)>,
        insecure: bool,
        host: String,
        repo: String,
        credentials: Option<Credentials>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nydusd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let text = std::fs::read(&cli.config)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", cli.config.display()))?;
    let cfg: Value = serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", cli.config.display()))?;
    let backend = backend_of(&cfg).map_err(|e| anyhow::anyhow!("{}: {e}", cli.config.display()))?;
    let img: Image = image::load(&cli.bootstrap)
        .map_err(|e| anyhow::anyhow!("bootstrap {}: {e}", cli.bootstrap.display()))?;
    image::check_chunk_addresses(&img)
        .map_err(|e| anyhow::anyhow!("bootstrap {}: {e}", cli.bootstrap.display()))?;
    for b in &img.blobs {
        if let Some(f) = b.unsupported_feature() {
            anyhow::bail!("blob {} uses {f}, which this nydusd cannot serve", b.id);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let config = nydus::fusefs::mount_config(cli.thread_num, true);
    match backend {
        Backend::Local { dir, blob_file } => {
            let blobs = match (dir, blob_file) {
                (Some(d), _) => LocalBlobs::open_dir(&d, &img.blobs)?,
                (None, Some(f)) => {
                    anyhow::ensure!(
                        img.blobs.len() == 1,
                        "backend localfs: blob_file serves one blob, the image has {}",
                        img.blobs.len()
                    );
                    LocalBlobs::open_files(&[f])?
                }
                (None, None) => anyhow::bail!("backend localfs: give dir or blob_file"),
            };
            serve(img, blobs, &cli.mountpoint, &config)
        }
        Backend::Registry {
            proxy,
            insecure,
            host,
            repo,
            credentials,
        } => {
            let opts = RemoteOptions {
                insecure,
                credentials,
                retry: Retry {
                    count: 3,
                    delay: Duration::from_millis(200),
                },
                side: "source",
                proxy: None,
            };
            let reference = format!("{host}/{repo}:latest");
            let connect = |opts: &RemoteOptions| {
                runtime.block_on(Remote::connect(
                    &reference,
                    opts,
                    oci_client::RegistryOperation::Pull,
                ))
            };
            let direct = connect(&opts)?;
            let blobs = match proxy {
                None => {
                    RegistryBlobs::from_blob_table(direct, runtime.handle().clone(), &img.blobs)
                }
                Some((url, fallback)) => {
                    tracing::info!("blob reads go through the proxy {url}");
                    let through = connect(&RemoteOptions {
                        proxy: Some(url),
                        ..opts
                    })?;
                    let b = RegistryBlobs::from_blob_table(
                        through,
                        runtime.handle().clone(),
                        &img.blobs,
                    );
                    if fallback {
                        b.with_fallback(direct)
                    } else {
                        b
                    }
                }
            };
            serve(img, blobs, &cli.mountpoint, &config)
        }
    }
}

fn serve<R: nydus::reader::BlobReader + 'static>(
    img: Image,
    source: R,
    mountpoint: &Path,
    config: &Config,
) -> anyhow::Result<()> {
    let reader = ChunkReader::new(img.blobs.clone(), source);
    let fs = RafsFs::new(img, reader);
    tracing::info!("serving at {}", mountpoint.display());
    fuser::mount(fs, mountpoint, config)
        .map_err(|e| anyhow::anyhow!("mounting at {}: {e}", mountpoint.display()))
}

/// A proxy URL must be `http(s)://host[:port]`.
fn url_check(u: &str) -> Result<(), String> {
    let (scheme, rest) = u.split_once("://").ok_or("not a URL")?;
    if scheme != "http" && scheme != "https" {
        return Err("not http(s)".into());
    }
    if rest.trim_end_matches('/').is_empty() || rest.contains(char::is_whitespace) {
        return Err("no host".into());
    }
    Ok(())
}

/// Top-level keys of Nydus's v1 and v2 configs that this nydusd accepts without using.
const V1_UNUSED: &[&str] = &[
    "mode",
    "digest_validate",
    "iostats_files",
    "enable_xattr",
    "access_pattern",
    "latest_read_files",
    "fs_prefetch",
    "prefetch_all",
    "amplify_io",
];
const V2_UNUSED: &[&str] = &["id", "cache", "rafs", "overlay", "metadata_path"];

/// Checks the keys of a config: used, accepted with a warning, or an error naming the key.
fn check_keys(cfg: &Value) -> Result<(), String> {
    let Some(obj) = cfg.as_object() else {
        return Err("the config is not a JSON object".into());
    };
    let v2 = cfg.get("version").and_then(Value::as_u64) == Some(2);
    for k in obj.keys() {
        let used = if v2 {
            ["version", "backend"].contains(&k.as_str())
        } else {
            k == "device"
        };
        let unused = if v2 { V2_UNUSED } else { V1_UNUSED };
        if unused.contains(&k.as_str()) {
            tracing::warn!("config key {k:?}: accepted, not used by this nydusd");
        } else if !used {
            return Err(format!("unknown config key {k:?}"));
        }
    }
    if let Some(d) = cfg.get("device").and_then(Value::as_object) {
        for k in d.keys() {
            match k.as_str() {
                "backend" => {}
                "cache" => tracing::warn!(
                    "config key \"device.cache\": accepted, not used by this nydusd (chunks are checked and kept in memory)"
                ),
                other => return Err(format!("unknown config key \"device.{other}\"")),
            }
        }
    }
    Ok(())
}

/// The backend of a Nydus config: v2 (`"version": 2`, `backend`) or v1 (`device.backend`).
fn backend_of(cfg: &Value) -> Result<Backend, String> {
    check_keys(cfg)?;
    let (kind, conf) = if cfg.get("version").and_then(Value::as_u64) == Some(2) {
        let b = cfg.get("backend").ok_or("no backend")?;
        let kind = b
            .get("type")
            .and_then(Value::as_str)
            .ok_or("backend.type missing")?;
        (kind, b.get(kind).cloned().unwrap_or(Value::Null))
    } else {
        let b = cfg
            .get("device")
            .and_then(|d| d.get("backend"))
            .ok_or("no device.backend")?;
        let kind = b
            .get("type")
            .and_then(Value::as_str)
            .ok_or("device.backend.type missing")?;
        (kind, b.get("config").cloned().unwrap_or(Value::Null))
    };
    let s = |k: &str| conf.get(k).and_then(Value::as_str).map(str::to_string);
    match kind {
        "localfs" => Ok(Backend::Local {
            dir: s("dir").map(PathBuf::from),
            blob_file: s("blob_file").map(PathBuf::from),
        }),
        "registry" => {
            let host = s("host").ok_or("backend registry: host missing")?;
            let repo = s("repo").ok_or("backend registry: repo missing")?;
            let insecure = s("scheme").as_deref() == Some("http");
            let credentials = match s("auth").filter(|a| !a.is_empty()) {
                Some(a) => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .map_err(|e| format!("backend registry: auth is not base64: {e}"))?;
                    let raw = String::from_utf8(raw)
                        .map_err(|_| "backend registry: auth is not UTF-8".to_string())?;
                    let (u, p) = raw
                        .split_once(':')
                        .ok_or("backend registry: auth is not base64 of user:password")?;
                    Some(Credentials {
                        username: u.to_string(),
                        password: p.to_string(),
                    })
                }
                None => None,
            };
            let proxy = conf.get("proxy");
            let proxy = match proxy.and_then(|p| p.get("url")).and_then(Value::as_str) {
                Some(u) if !u.is_empty() => {
                    url_check(u).map_err(|e| format!("backend registry: proxy.url {u:?}: {e}"))?;
                    let fallback = proxy
                        .and_then(|p| p.get("fallback"))
                        .and_then(Value::as_bool)
                        .unwrap_or(true);
                    Some((u.to_string(), fallback))
                }
                _ => None,
            };
            Ok(Backend::Registry {
                proxy,
                insecure,
                host,
                repo,
                credentials,
            })
        }
        other => Err(format!(
            "backend type {other:?} is not supported (localfs, registry)"
        )),
    }
}
