//! dfdaemon's lazy-loading runtime against a real docker-registry and real FUSE mounts: Nydus
//! images converted by our `nydusify` are mounted through the Runtime gRPC service and read on
//! demand through the piece store.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dfdaemon::runtime::grpc::proto::{ListMountsRequest, MountRequest, UnmountRequest};
use integration::agent::{bin, Agent};
use integration::cluster::{peer_yaml, Scheduler};
use integration::fstree::{assert_same_tree, Compare};
use integration::{
    feature_image_layers_with, require_root_and_tools, Compression, FeatureImageOptions, LayerSpec,
    Registry, TestDir,
};
use nydus::image::Image;
use nydus::tree::Kind;

const MIB: u64 = 1 << 20;

/// Every property but the root directory's own metadata (layers do not agree on it).
const ALL_BUT_ROOT: Compare = Compare {
    root_meta: false,
    ..Compare::ALL
};

/// A Nydus image in the registry, its bootstrap on disk and the source's tree.
struct Fixture {
    repo: &'static str,
    boot: PathBuf,
    image: Image,
    oci_root: PathBuf,
}

/// The feature image (big layer of `big` bytes) converted to Nydus as `nydus/app:v1`.
async fn fixture(dir: &TestDir, reg: &Registry, big: u64) -> Fixture {
    fixture_with(dir, reg, big, None).await
}

/// [`fixture`] with `prefetch` (paths, one per line) given to `nydusify --prefetch-patterns`.
async fn fixture_with(dir: &TestDir, reg: &Registry, big: u64, prefetch: Option<&str>) -> Fixture {
    fixture_args(dir, reg, big, prefetch, &[]).await
}

/// [`fixture_with`], `extra` given to `nydusify convert`.
async fn fixture_args(
    dir: &TestDir,
    reg: &Registry,
    big: u64,
    prefetch: Option<&str>,
    extra: &[&str],
) -> Fixture {
    let layers = feature_image_layers_with(FeatureImageOptions {
        big_layer_bytes: big,
        cross_layer_hardlink: true,
    })
    .expect("layers");
    let img = reg.push_image("src/app", "v1", &layers).await.unwrap();
    let (boot, image) = convert(dir, reg, &img.reference, "nydus/app", prefetch, extra).await;
    let oci_root = integration::unpack_with_umoci(&img.oci_dir, "v1", &dir.join("umoci"))
        .expect("umoci unpack");
    Fixture {
        repo: "nydus/app",
        boot,
        image,
        oci_root,
    }
}

/// Converts `src` with our `nydusify` to `<repo>:v1` in `reg` (`prefetch`: paths, one per line,
/// given to `--prefetch-patterns`; `extra`: more arguments); its bootstrap, written to
/// `<dir>/image.boot`, and the image it holds.
async fn convert(
    dir: &TestDir,
    reg: &Registry,
    src: &str,
    repo: &str,
    prefetch: Option<&str>,
    extra: &[&str],
) -> (PathBuf, Image) {
    let dst = format!("{}/{repo}:v1", reg.addr());
    let mut cmd = Command::new(bin("nydusify"));
    cmd.args(["convert", "--no-progress", "--source", src])
        .args(["--target", &dst, "--source-insecure", "--target-insecure"])
        .arg("--work-dir")
        .arg(dir.join("work"))
        .args(extra)
        .env("DOCKER_CONFIG", "/nonexistent-docker-config")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if prefetch.is_some() {
        cmd.arg("--prefetch-patterns")
            .stdin(std::process::Stdio::piped());
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(p) = prefetch {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(p.as_bytes()).unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "nydusify: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (body, _, _) = reg.client().get_manifest(repo, "v1").await.unwrap();
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let boot_digest = m["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let gz = reg.client().get_blob(repo, &boot_digest).await.unwrap();
    let bytes = nydus::nydusify::convert::bootstrap_from_layer_tar(&gz).unwrap();
    let boot = dir.join("image.boot");
    std::fs::write(&boot, &bytes).unwrap();
    let image = nydus::image::from_bytes(bytes, None, "bootstrap").unwrap();
    (boot, image)
}

impl Fixture {
    /// (blob index, compressed byte ranges) of the chunks of `path`.
    fn chunks(&self, path: &str) -> (u32, Vec<(u64, u64)>) {
        let id = self.image.tree.lookup(path.as_bytes()).expect(path);
        let Kind::File { chunks, .. } = &self.image.tree.node(id).kind else {
            panic!("{path} is not a file");
        };
        let blob = chunks[0].blob_index;
        let ranges = chunks
            .iter()
            .map(|c| {
                (
                    c.compressed_offset,
                    c.compressed_offset + u64::from(c.compressed_size),
                )
            })
            .collect();
        (blob, ranges)
    }

    /// Index of the first chunk of `path`.
    fn first_chunk(&self, path: &str) -> u32 {
        let id = self.image.tree.lookup(path.as_bytes()).expect(path);
        let Kind::File { chunks, .. } = &self.image.tree.node(id).kind else {
            panic!("{path} is not a file");
        };
        chunks[0].index
    }

    fn blob_digest(&self, blob: u32) -> String {
        format!("sha256:{}", self.image.blobs[blob as usize].id)
    }
}

fn mount_request(f: &Fixture, reg: &Registry, mnt: &Path) -> MountRequest {
    MountRequest {
        bootstrap_path: f.boot.display().to_string(),
        mountpoint: mnt.display().to_string(),
        repository: format!("{}/{}", reg.addr(), f.repo),
        scheme: "http".into(),
        ..Default::default()
    }
}

/// Mounts `f` at `mnt` through `agent`'s runtime in `mode`; the mount is served that way.
async fn mount_in(agent: &Agent, f: &Fixture, reg: &Registry, mnt: &Path, mode: &str) {
    let r = agent
        .runtime()
        .mount(MountRequest {
            mode: mode.into(),
            ..mount_request(f, reg, mnt)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.mode, mode);
}

/// Successful GETs of `digest` the registry logged, and their bytes.
fn served(reg: &Registry, digest: &str) -> (usize, u64) {
    let gets: Vec<_> = reg
        .blob_requests(digest)
        .into_iter()
        .filter(|r| r.method == "GET" && (200..300).contains(&r.status))
        .collect();
    (gets.len(), gets.iter().map(|r| r.bytes.unwrap_or(0)).sum())
}

/// Unmounts `mnt` through `agent`'s runtime; it is gone from the mount table after.
async fn unmount(agent: &Agent, mnt: &Path) {
    agent
        .runtime()
        .unmount(UnmountRequest {
            mountpoint: mnt.display().to_string(),
        })
        .await
        .unwrap();
    assert!(!is_mounted(mnt));
}

fn is_mounted(p: &Path) -> bool {
    fstype(p).is_some()
}

/// The filesystem type of the mount at `p` (from /proc/self/mountinfo).
fn fstype(p: &Path) -> Option<String> {
    let m = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = p.display().to_string();
    m.lines()
        .find(|l| l.split(' ').nth(4) == Some(p.as_str()))
        .and_then(|l| l.split(" - ").nth(1))
        .and_then(|t| t.split(' ').next())
        .map(str::to_string)
}

fn read_at(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// Mount, read one small file (no other blob fetched), read part of the big file (only its
/// chunks fetched, by ranges), then pull the big blob through the mirror: only the pieces the
/// lazy reads did not complete come from the registry, and the blob is intact. The whole mount
/// then equals the source's tree; unmount removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dfdaemon_mounts_lazily_and_a_mirror_pull_fetches_only_missing_pieces() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "fusermount3"]);
    let dir = TestDir::new("lazy-runtime").unwrap();
    let reg = Registry::start(&dir).await.unwrap();
    let f = fixture(&dir, &reg, 24 * MIB).await;
    // No read-ahead: the reads below fetch exactly their chunks, so the pieces they complete
    // are known (read-ahead has its own test).
    let agent = Agent::start(
        &dir,
        "agent",
        &format!(
            "runtime:\n  mountRoot: {}\n  readAhead: 0\n",
            dir.join("mounts").display()
        ),
    )
    .await
    .unwrap();
    let mut rt = agent.runtime();
    let mnt = dir.join("mnt");
    let before: Vec<(usize, u64)> = (0..f.image.blobs.len() as u32)
        .map(|b| served(&reg, &f.blob_digest(b)))
        .collect();

    // Bad requests name what is wrong.
    let mut bad = mount_request(&f, &reg, &mnt);
    bad.repository = "no-name".into();
    let e = rt.mount(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("repository"), "{e}");
    let mut bad = mount_request(&f, &reg, &mnt);
    bad.bootstrap_path = dir.join("nope.boot").display().to_string();
    let e = rt.mount(bad).await.unwrap_err();
    assert!(e.message().contains("nope.boot"), "{e}");

    let mut req = mount_request(&f, &reg, &mnt);
    req.mode = "fuse".into();
    let r = rt.mount(req.clone()).await.unwrap().into_inner();
    assert_eq!(r.mode, "fuse");
    assert!(
        fstype(&mnt).is_some_and(|t| t.starts_with("fuse")),
        "{:?}",
        fstype(&mnt)
    );
    assert_eq!(r.blob_ids.len(), f.image.blobs.len());
    assert!(is_mounted(&mnt));
    // Mounting it again returns the same mount.
    let again = rt.mount(req).await.unwrap().into_inner();
    assert_eq!(again.mountpoint, r.mountpoint);

    let text = std::fs::read_to_string(mnt.join("etc/replaced.txt")).unwrap();
    assert_eq!(text, "v2, from layer 3\n");
    let (small_blob, small_chunks) = f.chunks("etc/replaced.txt");
    let (big_blob, _) = f.chunks("big/random.bin");
    let small_digest = f.blob_digest(small_blob);
    integration::wait_for(Duration::from_secs(10), "the small read's GET", || async {
        served(&reg, &small_digest).0 > before[small_blob as usize].0
    })
    .await
    .unwrap();
    for b in 0..f.image.blobs.len() as u32 {
        let now = served(&reg, &f.blob_digest(b));
        let was = before[b as usize];
        if b == small_blob {
            // The probe of the blob's length (1 byte) and the chunk's bytes.
            let chunk: u64 = small_chunks.iter().map(|(s, e)| e - s).sum();
            assert_eq!(now.1 - was.1, 1 + chunk, "bytes of blob {b}");
        } else {
            assert_eq!(
                now, was,
                "blob {b} was fetched for a file of blob {small_blob}"
            );
        }
    }

    // 9 MiB of the big file: only its chunks, by ranges.
    let expected = std::fs::read(f.oci_root.join("big/random.bin")).unwrap();
    let got = read_at(&mnt.join("big/random.bin"), 0, 9 * MIB as usize).unwrap();
    assert!(
        got == expected[..9 * MIB as usize],
        "big/random.bin differs"
    );
    let big_digest = f.blob_digest(big_blob);
    let blob_size = f.image.blobs[big_blob as usize].compressed_size;
    integration::wait_for(Duration::from_secs(10), "the big reads' GETs", || async {
        served(&reg, &big_digest).1 >= before[big_blob as usize].1 + 9 * MIB
    })
    .await
    .unwrap();
    let lazily = served(&reg, &big_digest).1 - before[big_blob as usize].1;
    assert!(
        lazily < 11 * MIB,
        "reading 9 MiB fetched {lazily} bytes of the {blob_size}-byte blob"
    );

    // The mirror pull of the blob: the two pieces (4 MiB each) the lazy reads completed are
    // not fetched again, every other piece is, whole. (The kernel's readahead may still fetch a
    // chunk lazily meanwhile: those GETs are chunk-sized, never a whole piece.)
    let piece = 4 * MIB;
    let gets_before_pull = reg.blob_requests(&big_digest).len();
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(agent.proxy_url()).unwrap())
        .build()
        .unwrap();
    let url = format!("{}/v2/{}/blobs/{big_digest}", reg.url(), f.repo);
    let body = client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        integration::sha256_digest(&body),
        big_digest,
        "blob through the mirror"
    );
    let whole = blob_size / piece;
    integration::wait_for(Duration::from_secs(10), "the pull's GETs", || async {
        reg.blob_requests(&big_digest)[gets_before_pull..]
            .iter()
            .filter(|r| r.method == "GET" && r.bytes == Some(piece))
            .count() as u64
            >= whole - 2
    })
    .await
    .unwrap();
    let pull: Vec<u64> = reg.blob_requests(&big_digest)[gets_before_pull..]
        .iter()
        .filter(|r| r.method == "GET" && (200..300).contains(&r.status))
        .map(|r| r.bytes.unwrap_or(0))
        .collect();
    assert_eq!(
        pull.iter().filter(|b| **b == piece).count() as u64,
        whole - 2,
        "pieces fetched by the pull (GET sizes {pull:?}): the {whole} whole pieces but the two stored"
    );
    assert!(
        pull.iter().sum::<u64>() < blob_size - 2 * piece + 2 * MIB,
        "the pull fetched {pull:?}"
    );

    // Everything, compared with the source (reads every file).
    let mnt2 = mnt.clone();
    let root = f.oci_root.clone();
    tokio::task::spawn_blocking(move || assert_same_tree(&root, &mnt2, ALL_BUT_ROOT))
        .await
        .unwrap();
    let list = rt
        .list_mounts(ListMountsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.mounts.len(), 1);
    let m = &list.mounts[0];
    assert!(m.read_bytes >= expected.len() as u64, "{m:?}");
    assert!(m.origin_bytes > 0 && m.parent_bytes == 0, "{m:?}");
    assert_eq!(m.chunk_check_failures, 0, "{m:?}");
    let text = agent.metrics_text().await.unwrap();
    let fuse_reads = |text: &str| {
        integration::agent::sum_metric(
            text,
            "dragonfly_dfdaemon_fuse_request_duration_seconds_count{op=\"read\",mode=\"fuse\"}",
        )
    };
    let reads = fuse_reads(&text);
    assert!(reads > 0.0, "no FUSE read observed:\n{text}");
    // Every file again: the kernel kept their page cache across opens, dfdaemon sees no read.
    let mnt2 = mnt.clone();
    let root = f.oci_root.clone();
    tokio::task::spawn_blocking(move || assert_same_tree(&root, &mnt2, ALL_BUT_ROOT))
        .await
        .unwrap();
    let again = agent.metrics_text().await.unwrap();
    assert_eq!(
        fuse_reads(&again),
        reads,
        "a second read of every file reached dfdaemon"
    );
    let image = integration::agent::sum_metric(
        &text,
        &format!(
            "dragonfly_dfdaemon_image_read_bytes_total{{image=\"{}/{}\"}}",
            reg.addr(),
            f.repo
        ),
    );
    assert_eq!(image, m.read_bytes as f64, "{text}");

    rt.unmount(UnmountRequest {
        mountpoint: mnt.display().to_string(),
    })
    .await
    .unwrap();
    assert!(!is_mounted(&mnt));
    let e = rt
        .unmount(UnmountRequest {
            mountpoint: mnt.display().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
}

/// The budget: reading one 1 MiB file of a 300 MB image fetches from the registry the
/// chunks that cover it and nothing else (read-ahead stays inside the file; no prefetch is
/// configured), in FUSE mode and in EROFS mode (where the kernel's readahead of the blob view
/// may add at most one neighbouring chunk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_file_of_a_300_mb_image_costs_its_chunks_and_nothing_more() {
    require_root_and_tools(&["docker-registry", "skopeo", "fusermount3"]);
    let dir = TestDir::new("lazy-300mb").unwrap();
    let reg = Registry::start(&dir).await.unwrap();
    let tool = integration::random_bytes(7, MIB as usize);
    let mut data = LayerSpec::new(Compression::Gzip);
    for i in 0..9u64 {
        data = data.random_file(format!("data/part{i}.bin"), 100 + i, 32 * MIB);
    }
    let app = LayerSpec::new(Compression::Gzip)
        .file("app/bin/tool", tool.clone(), 0o755)
        .file("app/etc/tool.conf", b"verbose = false\n".to_vec(), 0o644);
    let img = reg.push_image("src/big", "v1", &[data, app]).await.unwrap();
    let (boot, image) = convert(&dir, &reg, &img.reference, "nydus/big", None, &[]).await;
    let total: u64 = image.blobs.iter().map(|b| b.compressed_size).sum();
    assert!(total > 300_000_000, "the image's blobs hold {total} bytes");
    let id = image.tree.lookup(b"app/bin/tool").unwrap();
    let Kind::File { chunks, .. } = &image.tree.node(id).kind else {
        panic!("app/bin/tool is not a file");
    };
    let tool_blob = chunks[0].blob_index;
    assert!(chunks.iter().all(|c| c.blob_index == tool_blob));
    let chunk_bytes: u64 = chunks.iter().map(|c| u64::from(c.compressed_size)).sum();
    // The largest chunk of the tool's blob that is not the tool's (what the kernel's readahead
    // of a blob view may add in EROFS mode).
    let neighbour = {
        let mut max = 0u64;
        for n in image.tree.bfs().ids() {
            if let Kind::File { chunks: cs, .. } = &image.tree.node(n).kind {
                if n != id {
                    for c in cs.iter().filter(|c| c.blob_index == tool_blob) {
                        max = max.max(u64::from(c.compressed_size));
                    }
                }
            }
        }
        max
    };
    let digests: Vec<String> = image
        .blobs
        .iter()
        .map(|b| format!("sha256:{}", b.id))
        .collect();
    let blob_gets =
        |reg: &Registry| -> Vec<(usize, u64)> { digests.iter().map(|d| served(reg, d)).collect() };

    for (n, mode) in ["fuse", "erofs"].into_iter().enumerate() {
        let agent = Agent::start(
            &dir,
            &format!("agent-{mode}"),
            &format!(
                "runtime:\n  mountRoot: {}\n",
                dir.join(format!("mounts-{mode}")).display()
            ),
        )
        .await
        .unwrap();
        let before = blob_gets(&reg);
        let mnt = dir.join(format!("mnt-{mode}"));
        let r = agent
            .runtime()
            .mount(MountRequest {
                bootstrap_path: boot.display().to_string(),
                mountpoint: mnt.display().to_string(),
                repository: format!("{}/nydus/big", reg.addr()),
                scheme: "http".into(),
                mode: mode.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.mode, mode);
        let path = mnt.join("app/bin/tool");
        let got = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .unwrap()
            .unwrap();
        assert!(got == tool, "app/bin/tool read back differs ({mode} mode)");
        // The read's GETs are logged as they complete; then a request of our own, logged after
        // them: by then nothing else may have been fetched.
        integration::wait_for(Duration::from_secs(10), "the read's GETs", || async {
            served(&reg, &digests[tool_blob as usize]).1
                >= before[tool_blob as usize].1 + chunk_bytes
        })
        .await
        .unwrap();
        let marker = format!("marker-{n}");
        let _ = reg.client().get_manifest("nydus/big", &marker).await;
        integration::wait_for(Duration::from_secs(10), "the marker request", || async {
            reg.requests().iter().any(|r| r.path.ends_with(&marker))
        })
        .await
        .unwrap();
        let after = blob_gets(&reg);
        for (b, (now, was)) in after.iter().zip(&before).enumerate() {
            if b as u32 != tool_blob {
                assert_eq!(now, was, "blob {b} was fetched in {mode} mode");
                continue;
            }
            // The probe of the blob's length (1 byte), then the chunks.
            let fetched = now.1 - was.1 - 1;
            if mode == "fuse" {
                assert_eq!(
                    fetched, chunk_bytes,
                    "bytes of the tool's blob in FUSE mode"
                );
            } else {
                assert!(
                    (chunk_bytes..=chunk_bytes + neighbour).contains(&fetched),
                    "{fetched} bytes of the tool's blob in EROFS mode, its chunks are {chunk_bytes}"
                );
            }
        }
        if mode == "fuse" {
            // A 32 MiB file read sequentially: its chunks, each once, nothing past the file,
            // in at most half as many GETs as chunks (read-ahead windows of up to 4 MiB; the
            // kernel's requests arrive a little out of order, so not always the fewest).
            let id = image.tree.lookup(b"data/part0.bin").unwrap();
            let Kind::File { chunks, .. } = &image.tree.node(id).kind else {
                panic!("data/part0.bin is not a file");
            };
            let blob = chunks[0].blob_index as usize;
            let bytes: u64 = chunks.iter().map(|c| u64::from(c.compressed_size)).sum();
            let was = served(&reg, &digests[blob]);
            let path = mnt.join("data/part0.bin");
            let got = tokio::task::spawn_blocking(move || std::fs::read(path))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.len() as u64, 32 * MIB);
            integration::wait_for(Duration::from_secs(10), "the big read's GETs", || async {
                served(&reg, &digests[blob]).1 >= was.1 + 1 + bytes
            })
            .await
            .unwrap();
            let now = served(&reg, &digests[blob]);
            assert_eq!(
                now.1 - was.1,
                1 + bytes,
                "probe and the file's chunks, once"
            );
            assert!(
                now.0 - was.0 <= 1 + chunks.len() / 2,
                "{} GETs for {} chunks",
                now.0 - was.0,
                chunks.len()
            );
        }
        unmount(&agent, &mnt).await;
    }
}

/// Kernel EROFS mode (the default for v6 images): the kernel mounts the bootstrap and reads
/// file data from the blobs' uncompressed views, served over FUSE through the piece store.
/// Reading a small file fetches only its blob; the whole mount equals the source's tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erofs_mode_mounts_the_bootstrap_in_the_kernel() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "fusermount3"]);
    let dir = TestDir::new("lazy-erofs").unwrap();
    let reg = Registry::start(&dir).await.unwrap();
    let f = fixture(&dir, &reg, 8 * MIB).await;
    let agent = Agent::start(&dir, "agent", "").await.unwrap();
    let mut rt = agent.runtime();
    let mnt = dir.join("mnt");
    let before: Vec<(usize, u64)> = (0..f.image.blobs.len() as u32)
        .map(|b| served(&reg, &f.blob_digest(b)))
        .collect();
    let r = rt
        .mount(mount_request(&f, &reg, &mnt))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.mode, "erofs", "auto picks kernel EROFS for a v6 image");
    assert_eq!(fstype(&mnt).as_deref(), Some("erofs"));
    // Listing the whole tree reads only the bootstrap: no blob is fetched.
    let n = walkdir_count(&mnt);
    assert!(n > 20, "{n} entries");
    for b in 0..f.image.blobs.len() as u32 {
        assert_eq!(
            served(&reg, &f.blob_digest(b)),
            before[b as usize],
            "blob {b} after a walk"
        );
    }
    let text = std::fs::read_to_string(mnt.join("etc/replaced.txt")).unwrap();
    assert_eq!(text, "v2, from layer 3\n");
    let (small_blob, _) = f.chunks("etc/replaced.txt");
    let small_digest = f.blob_digest(small_blob);
    integration::wait_for(Duration::from_secs(10), "the small read's GET", || async {
        served(&reg, &small_digest).0 > before[small_blob as usize].0
    })
    .await
    .unwrap();
    let (big_blob, _) = f.chunks("big/random.bin");
    assert_eq!(
        served(&reg, &f.blob_digest(big_blob)),
        before[big_blob as usize],
        "the big blob was fetched for a small file"
    );
    let mnt2 = mnt.clone();
    let root = f.oci_root.clone();
    tokio::task::spawn_blocking(move || assert_same_tree(&root, &mnt2, ALL_BUT_ROOT))
        .await
        .unwrap();
    let reads = agent
        .metric(
            "dragonfly_dfdaemon_fuse_request_duration_seconds_count{op=\"read\",mode=\"erofs\"}",
        )
        .await
        .unwrap();
    assert!(reads > 0.0, "the blob views served no read");
    rt.unmount(UnmountRequest {
        mountpoint: mnt.display().to_string(),
    })
    .await
    .unwrap();
    assert!(!is_mounted(&mnt));
    let blob_views = dir.join("agent-mounts/.blobs");
    let left: Vec<_> = std::fs::read_dir(&blob_views)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|p| !is_mounted(p)),
        "blob views still mounted: {left:?}"
    );
}

fn walkdir_count(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            n += 1;
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    n
}

/// Prefetch: the files of the image's prefetch table are fetched right after mounting (and
/// nothing else); with `prefetch.all` every blob is then fetched whole, completes as a task
/// (digest checked), and reading the whole mount afterwards fetches nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_fetches_the_table_then_everything() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "fusermount3"]);
    let dir = TestDir::new("lazy-prefetch").unwrap();
    let reg = Registry::start(&dir).await.unwrap();
    let f = fixture_with(&dir, &reg, 6 * MIB, Some("/etc/replaced.txt\n")).await;
    let blobs = f.image.blobs.len() as u32;
    let (small_blob, small_chunks) = f.chunks("etc/replaced.txt");
    let before: Vec<(usize, u64)> = (0..blobs)
        .map(|b| served(&reg, &f.blob_digest(b)))
        .collect();

    // The table only.
    let a = Agent::start(&dir, "table", "").await.unwrap();
    let mnt = dir.join("mnt-table");
    // FUSE mode: the read below asks for the file's bytes only (in EROFS mode the kernel reads
    // the blob view by pages and reads ahead).
    let mut req = mount_request(&f, &reg, &mnt);
    req.mode = "fuse".into();
    a.runtime().mount(req).await.unwrap();
    let chunk: u64 = small_chunks.iter().map(|(s, e)| e - s).sum();
    integration::wait_for(Duration::from_secs(20), "the prefetch GET", || async {
        served(&reg, &f.blob_digest(small_blob)).1 >= before[small_blob as usize].1 + 1 + chunk
    })
    .await
    .unwrap();
    let text = std::fs::read_to_string(mnt.join("etc/replaced.txt")).unwrap();
    assert_eq!(text, "v2, from layer 3\n");
    for b in 0..blobs {
        let (now, was) = (served(&reg, &f.blob_digest(b)), before[b as usize]);
        if b == small_blob {
            assert_eq!(
                now.1 - was.1,
                1 + chunk,
                "blob {b}: the probe and the prefetched chunk"
            );
        } else {
            assert_eq!(now, was, "blob {b} was fetched");
        }
    }
    drop(a);

    // Everything.
    let before: Vec<(usize, u64)> = (0..blobs)
        .map(|b| served(&reg, &f.blob_digest(b)))
        .collect();
    let all = Agent::start(&dir, "all", "runtime:\n  prefetch:\n    all: true\n")
        .await
        .unwrap();
    let mnt = dir.join("mnt-all");
    all.runtime()
        .mount(mount_request(&f, &reg, &mnt))
        .await
        .unwrap();
    integration::wait_for(Duration::from_secs(60), "every blob complete", || async {
        all.metric("dragonfly_dfdaemon_tasks{state=\"succeeded\"}")
            .await
            .unwrap_or(0.0)
            == f64::from(blobs)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", all.log_tail(30)));
    let fetched: Vec<(usize, u64)> = (0..blobs)
        .map(|b| served(&reg, &f.blob_digest(b)))
        .collect();
    for b in 0..blobs as usize {
        let size = f.image.blobs[b].compressed_size;
        assert!(
            fetched[b].1 - before[b].1 >= size,
            "blob {b}: {} of {size} bytes fetched",
            fetched[b].1 - before[b].1
        );
    }
    let mnt2 = mnt.clone();
    let root = f.oci_root.clone();
    tokio::task::spawn_blocking(move || assert_same_tree(&root, &mnt2, ALL_BUT_ROOT))
        .await
        .unwrap();
    for b in 0..blobs {
        assert_eq!(
            served(&reg, &f.blob_digest(b)),
            fetched[b as usize],
            "blob {b} was fetched again after the prefetch"
        );
    }
}

/// Our `nydusd` with Nydus's `proxy.url` reads blobs through a dfdaemon: a small file costs
/// the registry exactly its chunk (the dfdaemon's proxy answers Range requests with range reads,
/// not whole-blob downloads), and a second nydusd reading the same file is served from the
/// dfdaemon's store with no registry GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nydusd_reads_through_a_dfdaemon_proxy() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "fusermount3"]);
    let dir = TestDir::new("lazy-nydusd-proxy").unwrap();
    let reg = Registry::start(&dir).await.unwrap();
    let f = fixture(&dir, &reg, 8 * MIB).await;
    let agent = Agent::start(&dir, "agent", "").await.unwrap();
    let (blob, chunks) = f.chunks("etc/replaced.txt");
    let digest = f.blob_digest(blob);
    let chunk: u64 = chunks.iter().map(|(s, e)| e - s).sum();
    let before: Vec<(usize, u64)> = (0..f.image.blobs.len() as u32)
        .map(|b| served(&reg, &f.blob_digest(b)))
        .collect();
    for (i, expect_registry) in [(0, 1 + chunk), (1, 0)] {
        let mnt = dir.join(format!("mnt-{i}"));
        std::fs::create_dir_all(&mnt).unwrap();
        let cfg = dir.join(format!("nydusd-{i}.json"));
        std::fs::write(
            &cfg,
            serde_json::json!({"device": {"backend": {"type": "registry", "config": {
                "scheme": "http", "host": reg.addr(), "repo": f.repo,
                "proxy": {"url": agent.proxy_url(), "fallback": false},
            }}}})
            .to_string(),
        )
        .unwrap();
        let mut cmd = Command::new(bin("nydusd"));
        cmd.arg("--config")
            .arg(&cfg)
            .arg("--bootstrap")
            .arg(&f.boot)
            .arg("--mountpoint")
            .arg(&mnt);
        let _nydusd = integration::ChildProcess::spawn(&dir, &format!("nydusd-{i}"), cmd).unwrap();
        let m = mnt.clone();
        integration::wait_for(Duration::from_secs(20), "nydusd's mount", || {
            let m = m.clone();
            async move { is_mounted(&m) }
        })
        .await
        .unwrap();
        let was = served(&reg, &digest);
        let text = std::fs::read_to_string(mnt.join("etc/replaced.txt")).unwrap();
        assert_eq!(text, "v2, from layer 3\n");
        if expect_registry > 0 {
            integration::wait_for(Duration::from_secs(10), "the chunk's GET", || async {
                served(&reg, &digest).1 >= was.1 + expect_registry
            })
            .await
            .unwrap();
        }
        // The read is complete, its bytes were in hand: anything it fetched is logged.
        assert_eq!(
            served(&reg, &digest).1 - was.1,
            expect_registry,
            "nydusd {i}: registry bytes of the small file's blob"
        );
        let _ = Command::new("umount").arg(&mnt).status();
    }
    for b in 0..f.image.blobs.len() as u32 {
        if b != blob {
            assert_eq!(
                served(&reg, &f.blob_digest(b)),
                before[b as usize],
                "blob {b}"
            );
        }
    }
    assert!(
        agent
            .metric("dragonfly_dfdaemon_proxy_requests_total{outcome=\"range_read\"}")
            .await
            .unwrap()
            >= 1.0
    );
}

/// Hostile bootstraps are refused with an error naming the file and what is wrong: cut short,
/// a directory that contains itself, a chunk past the end of its blob (as the blob table gives
/// it). Nothing is mounted and the daemon keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bootstraps_are_refused() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "fusermount3"]);
    let dir = TestDir::new("lazy-hostile").unwrap();
    let reg = Registry::start(&dir).await.unwrap();
    let f = fixture(&dir, &reg, 0).await;
    let agent = Agent::start(&dir, "agent", "").await.unwrap();
    let mut rt = agent.runtime();
    let good = std::fs::read(&f.boot).unwrap();

    let truncated = good[..good.len() / 2].to_vec();

    // The root's entry "etc" points at the root itself: the dirents holding /etc's nid.
    let boot = nydus::v6::Bootstrap::parse(&good).unwrap();
    let etc = boot.lookup(b"/etc").unwrap().unwrap().nid.to_le_bytes();
    let root = boot.root_nid().to_le_bytes();
    let at: Vec<usize> = (0..good.len() - 12)
        .filter(|p| good[*p..*p + 8] == etc && good[p + 10] == 2 && good[p + 11] == 0)
        .collect();
    // The root's "etc" and /etc's own "." (which walks skip): point both at the root.
    assert_eq!(at.len(), 2, "the dirents of /etc");
    let mut cyclic = good.clone();
    for p in at {
        cyclic[p..p + 8].copy_from_slice(&root);
    }

    // The blob table says the blob of /etc/hello.txt is 100 bytes long.
    let (blob, _) = f.chunks("etc/hello.txt");
    let table = u64::from_le_bytes(good[1152 + 8..1152 + 16].try_into().unwrap()) as usize;
    let mut short = good.clone();
    let size_at = table + blob as usize * 256 + 88;
    short[size_at..size_at + 8].copy_from_slice(&100u64.to_le_bytes());

    for (name, bytes, says) in [
        ("truncated.boot", truncated, "truncated.boot"),
        ("cyclic.boot", cyclic, "reached again"),
        ("short.boot", short, "lies beyond the 100-byte blob"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, &bytes).unwrap();
        let mnt = dir.join(format!("mnt-{name}"));
        let mut req = mount_request(&f, &reg, &mnt);
        req.bootstrap_path = path.display().to_string();
        let e = rt.mount(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{name}: {e}");
        assert!(e.message().contains(says), "{name}: {}", e.message());
        assert!(e.message().contains(name), "{name}: {}", e.message());
        assert!(!is_mounted(&mnt), "{name} was mounted");
    }
    let list = rt
        .list_mounts(ListMountsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.mounts.is_empty());
    // The good one still mounts.
    rt.mount(mount_request(&f, &reg, &dir.join("mnt")))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("mnt/etc/hello.txt")).unwrap(),
        "hello-from-image\n"
    );
}

/// A byte of a chunk flipped at the registry: the read fails with EIO and nothing wrong is
/// returned; the log names the chunk. Once the registry is fixed, the same read succeeds on the
/// same mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_corrupted_at_the_registry_is_eio_until_fixed() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "fusermount3"]);
    let dir = TestDir::new("lazy-corrupt").unwrap();
    let reg = Registry::start(&dir).await.unwrap();
    let f = fixture(&dir, &reg, 0).await;
    let agent = Agent::start(&dir, "agent", "").await.unwrap();
    let mut rt = agent.runtime();
    let mnt = dir.join("mnt");
    rt.mount(mount_request(&f, &reg, &mnt)).await.unwrap();

    let (blob, chunks) = f.chunks("etc/hello.txt");
    let hex = &f.image.blobs[blob as usize].id;
    let data = reg.blob_data_path(hex);
    let good = std::fs::read(&data).unwrap();
    let mut bad = good.clone();
    bad[((chunks[0].0 + chunks[0].1) / 2) as usize] ^= 0x5a;
    std::fs::write(&data, &bad).unwrap();

    let path = mnt.join("etc/hello.txt");
    let err = std::fs::read(&path).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_eio()), "{err}");
    let chunk = format!("chunk {}", f.first_chunk("etc/hello.txt"));
    assert!(
        agent.log().contains(&chunk),
        "the log does not name {chunk}:\n{}",
        agent.log_tail(30)
    );
    std::fs::write(&data, &good).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, "hello-from-image\n");
    let list = rt
        .list_mounts(ListMountsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        list.mounts[0].chunk_check_failures >= 2,
        "{:?}",
        list.mounts
    );
    assert!(
        agent
            .metric("dragonfly_dfdaemon_chunk_check_failures_total")
            .await
            .unwrap()
            >= 2.0
    );
    rt.unmount(UnmountRequest {
        mountpoint: mnt.display().to_string(),
    })
    .await
    .unwrap();
}

fn libc_eio() -> i32 {
    5
}

/// Two nodes with a scheduler: node A reads files lazily (and completes the pieces it touched,
/// so peers can fetch them); node B reading the same files gets every chunk from A: the
/// registry sees no GET of those blobs from B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_reads_lazily_from_the_first() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "fusermount3"]);
    let dir = TestDir::new("lazy-p2p").unwrap();
    let reg = Registry::start(&dir).await.unwrap();
    let f = fixture(&dir, &reg, 12 * MIB).await;
    let sched = Scheduler::start(&dir, "scheduler").unwrap();
    let a = Agent::start(&dir, "node-a", &peer_yaml("node-a", sched.port, false))
        .await
        .unwrap();
    let b = Agent::start(&dir, "node-b", &peer_yaml("node-b", sched.port, false))
        .await
        .unwrap();
    sched.wait_hosts(2).await.unwrap();
    let files = ["etc/hello.txt", "etc/replaced.txt", "big/random.bin"];

    let mnt_a = dir.join("mnt-a");
    let mut rt_a = a.runtime();
    rt_a.mount(mount_request(&f, &reg, &mnt_a)).await.unwrap();
    for p in files {
        let got = std::fs::read(mnt_a.join(p)).unwrap();
        assert!(
            got == std::fs::read(f.oci_root.join(p)).unwrap(),
            "{p} on A"
        );
    }
    // Wait until A announces every piece holding those files (it completes them in the
    // background), watched through A's SyncPieces as a child would.
    for p in files {
        let (blob, ranges) = f.chunks(p);
        let task_id = f.image.blobs[blob as usize].id.clone();
        let pieces: std::collections::BTreeSet<u32> = ranges
            .iter()
            .flat_map(|(s, e)| (s / (4 * MIB)) as u32..=((e - 1) / (4 * MIB)) as u32)
            .collect();
        a.wait_pieces(
            &task_id,
            &pieces.into_iter().collect::<Vec<_>>(),
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("{p}: {e}\n{}", a.log_tail(30)));
    }
    let before: Vec<(usize, u64)> = (0..f.image.blobs.len() as u32)
        .map(|b| served(&reg, &f.blob_digest(b)))
        .collect();

    let mnt_b = dir.join("mnt-b");
    let mut rt_b = b.runtime();
    rt_b.mount(mount_request(&f, &reg, &mnt_b)).await.unwrap();
    for p in files {
        let got = std::fs::read(mnt_b.join(p)).unwrap();
        assert!(
            got == std::fs::read(f.oci_root.join(p)).unwrap(),
            "{p} on B"
        );
    }
    let list = rt_b
        .list_mounts(ListMountsRequest {})
        .await
        .unwrap()
        .into_inner();
    let m = &list.mounts[0];
    assert!(m.parent_bytes > 0, "{m:?}");
    assert_eq!(m.origin_bytes, 0, "B fetched from the registry: {m:?}");
    let lazy = |source: &str| {
        format!("dragonfly_dfdaemon_lazy_traffic_bytes_total{{source=\"{source}\"}}")
    };
    assert_eq!(b.metric(&lazy("origin")).await.unwrap(), 0.0);
    assert_eq!(
        b.metric(&lazy("parent")).await.unwrap(),
        m.parent_bytes as f64
    );
    assert!(b.metric(&lazy("local")).await.unwrap() > 0.0);
    // B's reads are done (their bytes are in hand); the registry logged nothing more.
    for (blob, was) in before.iter().enumerate() {
        assert_eq!(
            served(&reg, &f.blob_digest(blob as u32)),
            *was,
            "blob {blob} was fetched from the registry while B read\n{}",
            b.log_tail(30)
        );
    }
    rt_b.unmount(UnmountRequest {
        mountpoint: mnt_b.display().to_string(),
    })
    .await
    .unwrap();
    rt_a.unmount(UnmountRequest {
        mountpoint: mnt_a.display().to_string(),
    })
    .await
    .unwrap();
}

/// A blob shorter than the bootstrap says (cut at the registry): the files whose chunks lie past
/// its end fail with EIO, with no foreign byte handed out, the others read, and the daemon
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_cut_short_at_the_registry_gives_eio_past_its_end() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "fusermount3"]);
    let dir = TestDir::new("lazy-short").unwrap();
    let reg = Registry::start(&dir).await.unwrap();
    let f = fixture(&dir, &reg, 8 * MIB).await;
    let agent = Agent::start(&dir, "agent", "").await.unwrap();
    let mut rt = agent.runtime();
    let (blob, chunks) = f.chunks("big/random.bin");
    let hex = &f.image.blobs[blob as usize].id;
    let data = reg.blob_data_path(hex);
    // Cut the blob in the middle of the big file's data.
    let cut = chunks[chunks.len() / 2].0;
    let f2 = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    f2.set_len(cut).unwrap();
    drop(f2);
    let mnt = dir.join("mnt");
    let mut req = mount_request(&f, &reg, &mnt);
    req.mode = "fuse".into();
    rt.mount(req).await.unwrap();
    let expected = std::fs::read(f.oci_root.join("big/random.bin")).unwrap();
    // The first half reads; past the cut is EIO.
    let first = read_at(&mnt.join("big/random.bin"), 0, MIB as usize).unwrap();
    assert!(first == expected[..MIB as usize]);
    let err = read_at(
        &mnt.join("big/random.bin"),
        expected.len() as u64 - MIB,
        MIB as usize,
    )
    .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_eio()), "{err}");
    // Other files and the daemon are fine.
    assert_eq!(
        std::fs::read_to_string(mnt.join("etc/hello.txt")).unwrap(),
        "hello-from-image\n"
    );
    let list = rt
        .list_mounts(ListMountsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.mounts.len(), 1);
    assert!(
        agent.log().contains("lie beyond"),
        "the log names the short blob:\n{}",
        agent.log_tail(20)
    );
}

/// Regular files of `root` (relative path, content), largest first.
fn regular_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
                out.push((rel, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort_by_key(|(p, b)| (std::cmp::Reverse(b.len()), p.clone()));
    out
}

/// Drops the page cache of every file below `dir` (so the next read reaches the FUSE server).
fn drop_page_cache(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    }
}

/// What a reader loop saw.
#[derive(Default)]
struct ReaderLog {
    passes: std::sync::atomic::AtomicU64,
    reads: std::sync::atomic::AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

/// Reads every file of `files` under `mnt` again and again (each time with its page cache, and
/// those of the files in `also_drop`, dropped first), comparing the bytes, until `stop`.
fn reader_loop(
    mnt: PathBuf,
    files: Vec<(PathBuf, Vec<u8>)>,
    also_drop: PathBuf,
    log: std::sync::Arc<ReaderLog>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    while !stop.load(Ordering::Relaxed) {
        for (rel, want) in &files {
            let path = mnt.join(rel);
            drop_page_cache(&path);
            if let Ok(d) = std::fs::read_dir(&also_drop) {
                for e in d.flatten() {
                    if let Ok(inner) = std::fs::read_dir(e.path()) {
                        for b in inner.flatten() {
                            drop_page_cache(&b.path());
                        }
                    }
                }
            }
            match std::fs::read(&path) {
                Ok(got) if got == *want => {}
                Ok(got) => log.errors.lock().unwrap().push(format!(
                    "{}: {} bytes differ from the source's {}",
                    rel.display(),
                    got.len(),
                    want.len()
                )),
                Err(e) => log
                    .errors
                    .lock()
                    .unwrap()
                    .push(format!("{}: {e}", rel.display())),
            }
            log.reads.fetch_add(1, Ordering::Relaxed);
        }
        log.passes.fetch_add(1, Ordering::Relaxed);
    }
}

/// dfdaemon is SIGKILLed while a loop reads every file of the mount (page caches dropped, so
/// reads reach the FUSE server), and started again: the mount stays (its FUSE descriptor was
/// kept by the holder process), the new dfdaemon takes it over, requests in flight are resent,
/// and the loop goes on with every read returning the source's bytes.
/// Who keeps the mounts' descriptors while dfdaemon is down.
#[derive(Clone, Copy, PartialEq)]
enum Keeper {
    /// The holder process dfdaemon starts.
    Holder,
    /// systemd's descriptor store (a stand-in speaking its protocol).
    Systemd,
}

async fn survives_kill9(mode: &str, keeper: Keeper) {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "fusermount3"]);
    use std::sync::atomic::Ordering;
    let dir = TestDir::new(&format!("lazy-kill9-{mode}")).unwrap();
    let reg = Registry::start(&dir).await.unwrap();
    let f = fixture(&dir, &reg, 8 * MIB).await;
    let store = match keeper {
        Keeper::Systemd => {
            Some(integration::systemd::FdStore::bind(&dir.join("notify.sock")).unwrap())
        }
        Keeper::Holder => None,
    };
    let mut agent = match &store {
        Some(st) => {
            let socket = st.path().display().to_string();
            let env = [("NOTIFY_SOCKET", socket.as_str()), ("FDSTORE", "16")];
            Agent::start_with_env(&dir, "agent", "", &env)
                .await
                .unwrap()
        }
        None => Agent::start(&dir, "agent", "").await.unwrap(),
    };
    let mnt = dir.join("mnt");
    mount_in(&agent, &f, &reg, &mnt, mode).await;
    let files = regular_files(&f.oci_root);
    assert!(files.len() > 10, "{} files", files.len());
    let log = std::sync::Arc::new(ReaderLog::default());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (mnt, log, stop) = (mnt.clone(), log.clone(), stop.clone());
        let blob_views = agent.mount_root.join(".blobs");
        std::thread::spawn(move || reader_loop(mnt, files, blob_views, log, stop))
    };
    integration::wait_for(
        Duration::from_secs(60),
        "a first pass of the reader",
        || {
            let log = log.clone();
            async move { log.passes.load(Ordering::Relaxed) >= 1 }
        },
    )
    .await
    .unwrap();
    let holder = agent.holder_pid();
    match &store {
        None => assert!(
            holder.is_some(),
            "a holder process keeps the mount's descriptor"
        ),
        Some(st) => {
            assert_eq!(holder, None, "a holder process under systemd");
            assert!(!st.names().is_empty(), "no descriptor in systemd's store");
        }
    }

    agent.kill9().await;
    assert!(is_mounted(&mnt), "the mount went with the killed dfdaemon");
    let reads_at_kill = log.reads.load(Ordering::Relaxed);
    match &store {
        None => agent.restart().await.unwrap(),
        Some(st) => agent
            .restart_with_fds(st.descriptors().unwrap())
            .await
            .unwrap(),
    }
    assert_eq!(
        agent.holder_pid(),
        holder,
        "the restarted dfdaemon uses the same keeper"
    );
    let passes_at_restart = log.passes.load(Ordering::Relaxed);
    integration::wait_for(
        Duration::from_secs(120),
        "two more passes of the reader",
        || {
            let log = log.clone();
            async move { log.passes.load(Ordering::Relaxed) >= passes_at_restart + 2 }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log_tail(30)));
    stop.store(true, Ordering::Relaxed);
    tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let errors = log.errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} reads failed, the first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(log.reads.load(Ordering::Relaxed) > reads_at_kill);
    assert!(
        agent.log().contains("image mount taken over"),
        "{}",
        agent.log_tail(30)
    );
    // The new dfdaemon served the reads since its start.
    let served_reads = agent
        .metric(&format!(
            "dragonfly_dfdaemon_fuse_request_duration_seconds_count{{op=\"read\",mode=\"{mode}\"}}"
        ))
        .await
        .unwrap();
    assert!(served_reads > 0.0, "the new dfdaemon served no read");
    let listed = agent
        .runtime()
        .list_mounts(ListMountsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.mounts.len(), 1);
    assert_eq!(listed.mounts[0].mountpoint, mnt.display().to_string());
    unmount(&agent, &mnt).await;
    if let Some(st) = &store {
        // Unmounting took the descriptors out of the store (the answer to the unmount came
        // after dfdaemon sent that).
        integration::wait_for(Duration::from_secs(10), "an empty store", || async {
            st.names().is_empty()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", st.names()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuse_mounts_survive_kill9_of_dfdaemon() {
    survives_kill9("fuse", Keeper::Holder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erofs_mounts_survive_kill9_of_dfdaemon() {
    survives_kill9("erofs", Keeper::Holder).await;
}

/// As [`fuse_mounts_survive_kill9_of_dfdaemon`], dfdaemon started the way systemd starts it
/// with a descriptor store (`NOTIFY_SOCKET`, `FDSTORE`; a stand-in speaking systemd's protocol,
/// these machines run no systemd): the descriptors go to the store, not to a holder process,
/// and come back to the restarted dfdaemon in `LISTEN_FDS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuse_mounts_survive_kill9_under_systemds_descriptor_store() {
    survives_kill9("fuse", Keeper::Systemd).await;
}

/// A graceful stop (SIGTERM, as `systemctl restart` sends) under the default `failover` policy
/// leaves idle mounts in place too: nothing holds them busy, yet the stopping dfdaemon must not
/// unmount them. The next dfdaemon serves them, and reads work without a new mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_mounts_stay_across_a_graceful_restart() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "fusermount3"]);
    let dir = TestDir::new("lazy-sigterm").unwrap();
    let reg = Registry::start(&dir).await.unwrap();
    let f = fixture(&dir, &reg, MIB).await;
    let mut agent = Agent::start(&dir, "agent", "").await.unwrap();
    let mounts: Vec<PathBuf> = ["fuse", "erofs"]
        .into_iter()
        .map(|mode| dir.join(format!("mnt-{mode}")))
        .collect();
    for (mnt, mode) in mounts.iter().zip(["fuse", "erofs"]) {
        mount_in(&agent, &f, &reg, mnt, mode).await;
        assert_eq!(
            std::fs::read_to_string(mnt.join("etc/hello.txt")).unwrap(),
            std::fs::read_to_string(f.oci_root.join("etc/hello.txt")).unwrap()
        );
    }
    agent.restart().await.unwrap();
    assert!(
        agent
            .log()
            .contains("leaving the image mounts to the next dfdaemon"),
        "{}",
        agent.log_tail(20)
    );
    for mnt in &mounts {
        assert!(
            is_mounted(mnt),
            "{} was unmounted by the graceful stop: {}",
            mnt.display(),
            agent.log_tail(20)
        );
        assert_eq!(
            std::fs::read_to_string(mnt.join("etc/replaced.txt")).unwrap(),
            "v2, from layer 3\n"
        );
    }
    let listed = agent
        .runtime()
        .list_mounts(ListMountsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.mounts.len(), 2, "{}", agent.log_tail(20));
    // The same mounts, taken over: not mounted again, and no unmount was tried.
    let log = agent.log();
    assert_eq!(
        log.matches("image mount taken over").count(),
        2,
        "{}",
        agent.log_tail(30)
    );
    assert!(
        !log.contains("image mounted again") && !log.contains("Unmount failed"),
        "{}",
        agent.log_tail(30)
    );
}

/// With `recoverPolicy: restart`, a mount whose dfdaemon was SIGKILLed is mounted again by the
/// next dfdaemon at the same path (what was left there is detached), and reads work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_restart_mounts_again_after_kill9() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "fusermount3"]);
    let dir = TestDir::new("lazy-kill9-restart").unwrap();
    let reg = Registry::start(&dir).await.unwrap();
    let f = fixture(&dir, &reg, MIB).await;
    let mut agent = Agent::start(&dir, "agent", "runtime: {recoverPolicy: restart}")
        .await
        .unwrap();
    let mnt = dir.join("mnt");
    agent
        .runtime()
        .mount(mount_request(&f, &reg, &mnt))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(mnt.join("etc/hello.txt")).unwrap(),
        std::fs::read_to_string(f.oci_root.join("etc/hello.txt")).unwrap()
    );
    assert_eq!(
        agent.holder_pid(),
        None,
        "policy restart keeps no descriptors"
    );
    agent.kill9().await;
    // The mount is left without a server (EROFS: its blob device answers EIO; FUSE: ENOTCONN).
    let dead = std::fs::read_to_string(mnt.join("etc/replaced.txt")).unwrap_err();
    assert!(matches!(dead.raw_os_error(), Some(5 | 107)), "{dead}");
    agent.restart().await.unwrap();
    let listed = agent
        .runtime()
        .list_mounts(ListMountsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.mounts.len(), 1, "{}", agent.log_tail(20));
    assert_eq!(
        std::fs::read_to_string(mnt.join("etc/replaced.txt")).unwrap(),
        "v2, from layer 3\n"
    );
    assert!(agent.log().contains("image mounted again"));
}

/// An uncompressed image (`--compressor none`: our builder lays every chunk at its uncompressed
/// offset) whose blobs are complete in the store is mounted in EROFS mode with the store's own
/// files as its devices: the whole mount equals umoci's tree, no read goes through the blob
/// views' FUSE filesystem, and the registry serves nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erofs_mode_reads_complete_uncompressed_blobs_from_the_store_files() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "fusermount3"]);
    let dir = TestDir::new("lazy-erofs-store").unwrap();
    let reg = Registry::start(&dir).await.unwrap();
    let f = fixture_args(&dir, &reg, 4 * MIB, None, &["--compressor", "none"]).await;
    let agent = Agent::start(&dir, "agent", "runtime: {prefetch: {all: true}}")
        .await
        .unwrap();
    let mnt = dir.join("mnt");
    mount_in(&agent, &f, &reg, &mnt, "erofs").await;
    // Prefetch (all) completes every blob in the store.
    integration::wait_for(Duration::from_secs(60), "prefetch of every blob", || {
        let log = agent.log();
        async move { log.contains("prefetch done") }
    })
    .await
    .unwrap();
    agent
        .runtime()
        .unmount(UnmountRequest {
            mountpoint: mnt.display().to_string(),
        })
        .await
        .unwrap();
    assert!(
        !agent
            .log()
            .contains("blob device: the store's complete file"),
        "the blobs were not in the store at the first mount"
    );
    // Mounted again, the blobs complete in the store.
    let before: Vec<(usize, u64)> = (0..f.image.blobs.len() as u32)
        .map(|b| served(&reg, &f.blob_digest(b)))
        .collect();
    mount_in(&agent, &f, &reg, &mnt, "erofs").await;
    let from_store = agent
        .log()
        .matches("blob device: the store's complete file")
        .count();
    assert_eq!(from_store, f.image.blobs.len(), "{}", agent.log_tail(20));
    let mnt2 = mnt.clone();
    let root = f.oci_root.clone();
    tokio::task::spawn_blocking(move || assert_same_tree(&root, &mnt2, ALL_BUT_ROOT))
        .await
        .unwrap();
    let fuse_reads = agent
        .metric(
            "dragonfly_dfdaemon_fuse_request_duration_seconds_count{op=\"read\",mode=\"erofs\"}",
        )
        .await
        .unwrap();
    assert_eq!(fuse_reads, 0.0, "reads went through the blob views");
    for b in 0..f.image.blobs.len() as u32 {
        assert_eq!(
            served(&reg, &f.blob_digest(b)),
            before[b as usize],
            "blob {b}"
        );
    }
    unmount(&agent, &mnt).await;
}

/// `download.backgroundRateLimit` paces prefetch but never on-demand reads: with a limit of one
/// byte per second (a 64 KiB burst), `prefetch.all` fetches blobs until it has used the burst
/// and then waits; a read of a file in a later blob is answered meanwhile, and the blobs after
/// the stall that nobody read are not fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_fetches_keep_to_their_rate_limit_and_reads_do_not_wait() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "fusermount3"]);
    let dir = TestDir::new("lazy-bg-limit").unwrap();
    let reg = Registry::start(&dir).await.unwrap();
    let f = fixture(&dir, &reg, 6 * MIB).await;
    let blobs = f.image.blobs.len();
    // Prefetch takes blobs in table order; it stalls after the first that crosses the burst.
    let mut total = 0;
    let stall = (0..blobs)
        .find(|&b| {
            total += f.image.blobs[b].compressed_size;
            total > 64 * 1024
        })
        .expect("the image is larger than the burst");
    let (read_blob, _) = f.chunks("etc/replaced.txt");
    let untouched: Vec<usize> = (stall + 1..blobs)
        .filter(|&b| b != read_blob as usize)
        .collect();
    assert!(
        read_blob as usize > stall && !untouched.is_empty(),
        "fixture: blob sizes {:?}, the small file in blob {read_blob}",
        f.image
            .blobs
            .iter()
            .map(|b| b.compressed_size)
            .collect::<Vec<_>>()
    );
    let before: Vec<(usize, u64)> = (0..blobs as u32)
        .map(|b| served(&reg, &f.blob_digest(b)))
        .collect();
    let agent = Agent::start(
        &dir,
        "agent",
        "download: {backgroundRateLimit: 1B}\nruntime: {prefetch: {all: true}}",
    )
    .await
    .unwrap();
    let mnt = dir.join("mnt");
    let mut req = mount_request(&f, &reg, &mnt);
    req.mode = "fuse".into();
    agent.runtime().mount(req).await.unwrap();
    let stall_size = f.image.blobs[stall].compressed_size;
    integration::wait_for(
        Duration::from_secs(30),
        "prefetch up to the stall",
        || async { served(&reg, &f.blob_digest(stall as u32)).1 >= before[stall].1 + stall_size },
    )
    .await
    .unwrap();
    let text = std::fs::read_to_string(mnt.join("etc/replaced.txt")).unwrap();
    assert_eq!(text, "v2, from layer 3\n");
    for b in untouched {
        assert_eq!(
            served(&reg, &f.blob_digest(b as u32)),
            before[b],
            "blob {b} was prefetched beyond the rate limit"
        );
    }
}

/// A second dfdaemon given the mount root of a running one leaves its mounts alone: it starts
/// and serves, and its mount requests answer UNAVAILABLE saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_dfdaemon_on_the_same_mount_root_keeps_its_runtime_off() {
    require_root_and_tools(&["fusermount3"]);
    let dir = TestDir::new("lazy-two-roots").unwrap();
    let first = Agent::start(&dir, "first", "").await.unwrap();
    assert!(first.holder_pid().is_some());
    let second = Agent::start(
        &dir,
        "second",
        &format!("runtime: {{mountRoot: {}}}", first.mount_root.display()),
    )
    .await
    .unwrap();
    let e = second
        .runtime()
        .mount(MountRequest {
            bootstrap_path: "/nonexistent/image.boot".into(),
            repository: "127.0.0.1:1/x/y".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    assert!(e.message().contains("another dfdaemon"), "{e}");
    assert!(second.log().contains("the image runtime is off"));
    // The first one's runtime still answers (here: the bootstrap is missing).
    let e = first
        .runtime()
        .mount(MountRequest {
            bootstrap_path: "/nonexistent/image.boot".into(),
            repository: "127.0.0.1:1/x/y".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
}

/// Images made by Nydus 2.4.4's own nydus-image, their blobs in the registry, mounted by
/// dfdaemon's runtime: the RAFS v5 one in FUSE mode (`auto` picks it for v5), the v6 ones in
/// kernel EROFS mode; each mount shows the tree the images were made from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nydus_made_v5_and_v6_images_mount_through_the_runtime() {
    require_root_and_tools(&["docker-registry", "fusermount3", "tar"]);
    let dir = TestDir::new("lazy-nydus-fixtures").unwrap();
    let reg = Registry::start(&dir).await.unwrap();
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../nydus/tests/fixtures/nydus-2.4.4");
    let src = dir.join("src");
    integration::extract_tar(&fixtures.join("source.tar.gz"), &src).unwrap();
    let agent = Agent::start(&dir, "agent", "").await.unwrap();
    for (case, mode) in [
        ("v5-zstd-blake3", "fuse"),
        ("v6-zstd-blake3", "erofs"),
        ("v6-lz4_block-sha256", "erofs"),
    ] {
        let fx = fixtures.join(case);
        for b in std::fs::read_dir(fx.join("blobs")).unwrap().flatten() {
            let digest = reg
                .push_blob("fixtures/app", std::fs::read(b.path()).unwrap())
                .await
                .unwrap();
            assert_eq!(
                digest,
                format!("sha256:{}", b.file_name().to_string_lossy()),
                "{case}"
            );
        }
        let mnt = dir.join(format!("mnt-{case}"));
        let r = agent
            .runtime()
            .mount(MountRequest {
                bootstrap_path: fx.join("bootstrap").display().to_string(),
                mountpoint: mnt.display().to_string(),
                repository: format!("{}/fixtures/app", reg.addr()),
                scheme: "http".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"))
            .into_inner();
        assert_eq!(r.mode, mode, "{case}");
        let (root, m) = (src.clone(), mnt.clone());
        tokio::task::spawn_blocking(move || assert_same_tree(&root, &m, ALL_BUT_ROOT))
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        unmount(&agent, &mnt).await;
    }
}
