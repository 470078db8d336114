//! hack/nydus-compat.sh, step 5: Nydus's own tools accept what our `nydusify convert` writes.
//! Nydus's `nydus-image check` passes the merged bootstrap, and Nydus's `nydusd` mounts the
//! image with its registry backend (chunks fetched from the registry by range) and shows the
//! OCI image's tree (umoci's unpack). Needs Nydus's binaries in `NYDUS_BIN_DIR`, which this
//! project neither builds nor ships; exits non-zero on the first difference.

use std::path::PathBuf;
use std::process::Command;

use integration::agent::bin;
use integration::fstree::Compare;
use integration::{
    feature_image_layers_with, require_root_and_tools, FeatureImageOptions, Registry, TestDir,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let bin_dir = PathBuf::from(std::env::var("NYDUS_BIN_DIR").map_err(|_| {
        anyhow::anyhow!("set NYDUS_BIN_DIR to a directory with Nydus's nydus-image and nydusd")
    })?);
    let (ni, nd) = (bin_dir.join("nydus-image"), bin_dir.join("nydusd"));
    anyhow::ensure!(
        ni.is_file() && nd.is_file(),
        "no nydus-image and nydusd in {}",
        bin_dir.display()
    );
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "tar"]);
    let dir = TestDir::new("nydusify-upstream")?;
    let reg = Registry::start(&dir).await?;
    let layers = feature_image_layers_with(FeatureImageOptions {
        big_layer_bytes: 24 << 20,
        cross_layer_hardlink: false,
    })?;
    let img = reg.push_image("src/up", "v1", &layers).await?;
    let dst = format!("{}/nydus/up:v1", reg.addr());
    let o = Command::new(bin("nydusify"))
        .args([
            "convert",
            "--no-progress",
            "--source",
            &img.reference,
            "--target",
            &dst,
        ])
        .args(["--source-insecure", "--target-insecure", "--work-dir"])
        .arg(dir.join("work"))
        .env("DOCKER_CONFIG", "/nonexistent-docker-config")
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "nydusify convert: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The merged bootstrap, out of the bootstrap layer (the manifest's last).
    let (body, _, _) = reg.client().get_manifest("nydus/up", "v1").await?;
    let m: serde_json::Value = serde_json::from_slice(&body)?;
    let last = m["layers"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(|l| l["digest"].as_str())
        .ok_or_else(|| anyhow::anyhow!("no layers in {m}"))?;
    let gz = dir.join("bootstrap-layer.tar.gz");
    std::fs::write(&gz, reg.client().get_blob("nydus/up", last).await?)?;
    let o = Command::new("tar")
        .arg("-xzf")
        .arg(&gz)
        .arg("-C")
        .arg(dir.path())
        .arg("image/image.boot")
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let boot = dir.join("image/image.boot");

    // Nydus's check.
    let o = Command::new(&ni)
        .args(["check", "--bootstrap"])
        .arg(&boot)
        .arg("-J")
        .arg(dir.join("check.json"))
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "Nydus's nydus-image check: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Nydus's nydusd, registry backend. mtimes aside: for compact inodes (mtime 0, as these
    // layers have) nydusd reports the time it mounted, where the kernel's EROFS reports 0.
    let oci_root = integration::unpack_with_umoci(&img.oci_dir, "v1", &dir.join("umoci"))?;
    let cmp = Compare {
        root_meta: false,
        mtime: false,
        ..Compare::ALL
    };
    integration::nydusd::serve_and_compare(
        &dir,
        &reg,
        &nd,
        "nydus/up",
        &boot,
        &oci_root,
        cmp,
        |_| {},
    )
    .await;
    println!("Nydus's nydus-image check and nydusd (registry backend) accept the converted image");
    Ok(())
}
