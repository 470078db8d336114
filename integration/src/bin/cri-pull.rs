//! `cri-pull --socket SOCK [--rm] IMAGE...`: pulls images through containerd's CRI
//! `ImageService/PullImage` (the daemon-side path that reads hosts.toml) and prints
//! `pulled <image> in <secs>s` for each. With `--rm`, first removes the image and its blobs and
//! layer snapshots, so the pull really fetches.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use integration::ContainerdClient;

#[derive(Parser, Debug)]
#[command(about = "Pull images through containerd's CRI ImageService")]
struct Args {
    /// containerd's gRPC socket.
    #[arg(long, env = "CONTAINERD_ADDRESS")]
    socket: PathBuf,
    /// Remove each image (all references, its blobs and snapshots) before pulling it.
    #[arg(long)]
    rm: bool,
    /// The snapshotter CRI unpacks with (for --rm's snapshot clean-up).
    #[arg(long, default_value = "overlayfs")]
    snapshotter: String,
    /// Registry user, for registries with auth (password from --password).
    #[arg(long, requires = "password")]
    user: Option<String>,
    /// Registry password.
    #[arg(long, env = "CRI_PULL_PASSWORD", requires = "user")]
    password: Option<String>,
    /// Images, e.g. 127.0.0.1:5000/test:latest.
    #[arg(required = true)]
    images: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = ContainerdClient::connect(&args.socket, &args.snapshotter)
        .with_context(|| format!("connecting to {}", args.socket.display()))?;
    for image in &args.images {
        if args.rm {
            client
                .remove_image_sync(image)
                .await
                .with_context(|| format!("removing {image}"))?;
        }
        let started = Instant::now();
        let auth = args.user.as_deref().zip(args.password.as_deref());
        client
            .cri()
            .pull(image, auth)
            .await
            .with_context(|| format!("pulling {image}"))?;
        println!("pulled {image} in {:.2}s", started.elapsed().as_secs_f64());
    }
    Ok(())
}
