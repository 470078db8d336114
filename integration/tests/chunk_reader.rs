//! `nydus::reader` against a real docker-registry: files of a Nydus image converted by our
//! `nydusify` are read on demand by HTTP range requests, fetching only the chunks that cover
//! what is read, and a chunk whose bytes were corrupted at the registry is never handed out.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration::agent::bin;
use integration::{
    random_bytes, require_root_and_tools, Compression, LayerSpec, Registry, TestDir,
};
use nydus::image::Image;
use nydus::nydusify::registry::{Remote, RemoteOptions, Retry};
use nydus::reader::{ChunkReader, RegistryBlobs};
use nydus::tree::Kind;
use oci_client::RegistryOperation;

const MIB: u64 = 1 << 20;

fn convert(src: &str, dst: &str, work: &Path) {
    let o = Command::new(bin("nydusify"))
        .args(["convert", "--no-progress", "--source", src, "--target", dst])
        .args(["--source-insecure", "--target-insecure", "--work-dir"])
        .arg(work)
        .env("DOCKER_CONFIG", "/nonexistent-docker-config")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "nydusify: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// (chunks, size) of `path` in the image.
fn file(img: &Image, path: &str) -> (Vec<nydus::ChunkInfo>, u64) {
    let id = img.tree.lookup(path.as_bytes()).expect(path);
    match &img.tree.node(id).kind {
        Kind::File { size, chunks } => (chunks.clone(), *size),
        _ => panic!("{path} is not a file"),
    }
}

/// Bytes of successful GETs of `digest` the registry logged.
fn served(reg: &Registry, digest: &str) -> (usize, u64) {
    let gets: Vec<_> = reg
        .blob_requests(digest)
        .into_iter()
        .filter(|r| r.method == "GET" && (200..300).contains(&r.status))
        .collect();
    (gets.len(), gets.iter().map(|r| r.bytes.unwrap_or(0)).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_read_on_demand_fetch_only_their_chunks_and_corruption_is_never_returned() {
    require_root_and_tools(&["docker-registry", "skopeo"]);
    let dir = TestDir::new("chunk-reader").unwrap();
    let reg = Registry::start(&dir).await.unwrap();
    let one: Vec<u8> = random_bytes(2, MIB as usize);
    let text: Vec<u8> = b"a line of text that compresses well\n".repeat(2000);
    let img = reg
        .push_image(
            "src/lazy",
            "v1",
            &[LayerSpec::new(Compression::Gzip)
                .random_file("data/big.bin", 1, 48 * MIB)
                .file("data/one.bin", one.clone(), 0o644)
                .file("etc/text.txt", text.clone(), 0o644)],
        )
        .await
        .unwrap();
    let dst = format!("{}/nydus/lazy:v1", reg.addr());
    convert(&img.reference, &dst, &dir.join("work"));

    let remote = Remote::connect(
        &dst,
        &RemoteOptions {
            insecure: true,
            credentials: None,
            retry: Retry {
                count: 0,
                delay: Duration::from_millis(10),
            },
            side: "source",
            proxy: None,
        },
        RegistryOperation::Pull,
    )
    .await
    .unwrap();
    let (body, _, _) = remote.manifest(remote.reference()).await.unwrap().unwrap();
    let manifest = nydus::nydusify::manifest::parse_manifest(&body).unwrap();
    let boot_layer = manifest.layers.last().unwrap().clone();
    let boot = nydus::nydusify::convert::read_bootstrap_layer(&remote, &boot_layer)
        .await
        .unwrap();
    let image = nydus::image::from_bytes(boot, None, "bootstrap").unwrap();
    assert_eq!(image.blobs.len(), 1);
    let blob_digest = format!("sha256:{}", image.blobs[0].id);
    let (gets_before, bytes_before) = served(&reg, &blob_digest);

    // Read data/one.bin as FUSE would, 128 KiB at a time.
    let reader = ChunkReader::new(
        image.blobs.clone(),
        RegistryBlobs::new(
            remote,
            tokio::runtime::Handle::current(),
            &image.blobs,
            &manifest,
        )
        .unwrap(),
    );
    let (chunks, size) = file(&image, "data/one.bin");
    let expected: u64 = chunks.iter().map(|c| u64::from(c.compressed_size)).sum();
    let (reader, back) = tokio::task::spawn_blocking(move || {
        let mut back = Vec::new();
        for off in (0..size).step_by(128 << 10) {
            back.extend(reader.read(&chunks, size, off, 128 << 10).unwrap());
        }
        (reader, back)
    })
    .await
    .unwrap();
    assert!(back == one, "data/one.bin read back differs");
    // The registry served exactly the chunks of the file, once (the access log is written as
    // each response completes: wait for our reads to show, then nothing more may be there).
    integration::wait_for(Duration::from_secs(10), "registry access log", || async {
        served(&reg, &blob_digest).1 >= bytes_before + expected
    })
    .await
    .unwrap();
    let (gets, bytes) = served(&reg, &blob_digest);
    assert_eq!(
        bytes - bytes_before,
        expected,
        "bytes beyond the file's chunks"
    );
    assert_eq!(
        gets - gets_before,
        1,
        "one range read for the file's chunks"
    );
    assert!(
        expected < 2 * MIB,
        "the file's chunks are about its size, the blob is {} bytes",
        image.blobs[0].compressed_size
    );

    // Corrupt one byte of etc/text.txt's chunk in the registry's storage: the read fails naming
    // the chunk and returns nothing; once the registry is fixed the same reader reads it.
    let (tchunks, tsize) = file(&image, "etc/text.txt");
    let hex = &image.blobs[0].id;
    let data = reg.blob_data_path(hex);
    let good = std::fs::read(&data).unwrap();
    let at = tchunks[0].compressed_offset as usize + tchunks[0].compressed_size as usize / 2;
    let mut bad = good.clone();
    bad[at] ^= 0xff;
    std::fs::write(&data, &bad).unwrap();
    let (reader, tchunks, err) = tokio::task::spawn_blocking(move || {
        let err = reader.read(&tchunks, tsize, 0, tsize as usize).unwrap_err();
        (reader, tchunks, err)
    })
    .await
    .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("chunk {}", tchunks[0].index)),
        "{err}"
    );
    assert_eq!(
        reader
            .stats
            .check_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        2,
        "checked, read fresh, checked again"
    );
    std::fs::write(&data, &good).unwrap();
    let back = tokio::task::spawn_blocking(move || reader.read(&tchunks, tsize, 0, tsize as usize))
        .await
        .unwrap()
        .unwrap();
    assert!(back == text, "etc/text.txt read back differs");
}
