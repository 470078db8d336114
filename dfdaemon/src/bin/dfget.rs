//! dfget: download a URL through the local dfdaemon.

use anyhow::{bail, Context};
use clap::Parser;
use dfdaemon::dfget::{connect, parse_header};
use dragonfly_api::common::v2::Download;
use dragonfly_api::dfdaemon::v2::{download_task_response, DownloadTaskRequest};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "dfget",
    version,
    about = "Download a URL through the local dfdaemon (cache, P2P, back-to-source)"
)]
struct Args {
    /// URL to download (http or https).
    url: String,
    /// Where to write the file.
    #[arg(short = 'O', long = "output")]
    output: PathBuf,
    /// Request header for the origin, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Expected digest, sha256:<hex> or sha512:<hex>; dfdaemon verifies the content against it
    /// before it writes the output.
    #[arg(long)]
    digest: Option<String>,
    /// Tag: part of the task ID, so the same URL with different tags is different content.
    #[arg(long)]
    tag: Option<String>,
    /// Application name: part of the task ID.
    #[arg(long)]
    application: Option<String>,
    /// Piece length in bytes (4194304 to 1073741824); part of the task ID.
    #[arg(long)]
    piece_length: Option<u64>,
    /// Query parameter dropped from the task ID (repeatable; default: signatures of presigned URLs).
    #[arg(long = "filtered-query-param")]
    filtered_query_params: Vec<String>,
    /// Fail instead of fetching from the origin when neither the cache nor a peer has it.
    #[arg(long)]
    disable_back_to_source: bool,
    /// Replace an existing output file.
    #[arg(long)]
    overwrite: bool,
    /// Fail unless the output can be hard-linked from the store.
    #[arg(long)]
    force_hard_link: bool,
    /// Give up after this long.
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// dfdaemon's download API socket.
    #[arg(short = 'e', long, default_value = "/var/run/dragonfly/dfdaemon.sock")]
    endpoint: PathBuf,
    /// Do not show a progress bar.
    #[arg(
        long,
        env = "DFGET_NO_PROGRESS",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value = "false"
    )]
    no_progress: bool,
}

fn temp_path(out: &Path) -> anyhow::Result<PathBuf> {
    let name = out
        .file_name()
        .with_context(|| format!("output {} has no file name", out.display()))?;
    let dir = out.parent().unwrap_or(Path::new("."));
    Ok(dir.join(format!(
        ".{}.dfget-{:016x}",
        name.to_string_lossy(),
        rand::random::<u64>()
    )))
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    let dir = p.parent().unwrap_or(Path::new("/"));
    let dir = dir
        .canonicalize()
        .with_context(|| format!("output directory {} does not exist", dir.display()))?;
    Ok(dir.join(p.file_name().context("output has no file name")?))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let url = url::Url::parse(&args.url).with_context(|| format!("invalid URL {:?}", args.url))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        bail!(
            "unsupported URL scheme {:?}: use http or https",
            url.scheme()
        );
    }
    let digest = match &args.digest {
        Some(d) => Some(common::id::BlobDigest::parse(d).with_context(|| {
            format!("--digest {d:?} must be sha256:<64 hex> or sha512:<128 hex>")
        })?),
        None => None,
    };
    let output = absolute(&args.output)?;
    if output.exists() && !args.overwrite {
        bail!("{} already exists (use --overwrite)", output.display());
    }
    let tmp = temp_path(&output)?;
    let mut client = connect(&args.endpoint).await?;
    let request = DownloadTaskRequest {
        download: Some(Download {
            url: args.url.clone(),
            digest: digest.as_ref().map(|d| d.to_string()),
            tag: args.tag.clone(),
            application: args.application.clone(),
            piece_length: args.piece_length,
            filtered_query_params: args.filtered_query_params.clone(),
            request_header: args.headers.iter().cloned().collect::<HashMap<_, _>>(),
            output_path: Some(tmp.display().to_string()),
            disable_back_to_source: args.disable_back_to_source,
            force_hard_link: args.force_hard_link,
            overwrite: true,
            timeout: None,
            ..Default::default()
        }),
    };
    let started = Instant::now();
    let result = tokio::time::timeout(args.timeout, async {
        let mut stream = client
            .download_task(request)
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        let mut bar: Option<ProgressBar> = None;
        let mut total = 0u64;
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        {
            match msg.response {
                Some(download_task_response::Response::DownloadTaskStartedResponse(s)) => {
                    total = s.content_length;
                    if !args.no_progress {
                        let b = ProgressBar::new(total);
                        b.set_style(
                            ProgressStyle::with_template(
                                "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                        );
                        b.inc(s.pieces.iter().map(|p| p.length).sum());
                        bar = Some(b);
                    }
                }
                Some(download_task_response::Response::DownloadPieceFinishedResponse(p)) => {
                    if let (Some(b), Some(piece)) = (&bar, p.piece) {
                        b.inc(piece.length);
                    }
                }
                None => {}
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        Ok::<u64, anyhow::Error>(total)
    })
    .await;
    let total = match result {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Err(_) => {
            let _ = std::fs::remove_file(&tmp);
            bail!(
                "timed out after {}",
                humantime::format_duration(args.timeout)
            );
        }
    };
    if !tmp.exists() {
        bail!("dfdaemon finished but did not write {}", tmp.display());
    }
    // dfdaemon verified the content against --digest (as the bytes arrived, or the stored
    // content before it wrote the temporary file); hashing the output again would cost a full
    // read and hash of the file after the download.
    std::fs::rename(&tmp, &output)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), output.display()))?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "dfget: {} -> {} ({} bytes in {:.2}s)",
        args.url,
        output.display(),
        total,
        secs
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dfget: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfget: {e:#}");
            ExitCode::FAILURE
        }
    }
}
