//! `nydusify` against real docker-registry instances on loopback: convert, check, reuse, bad
//! input. Images are built by the harness and pushed with skopeo; nothing comes from the
//! internet.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration::agent::bin;
use integration::containerd::HostsToml;
use integration::fstree::{assert_same_tree, Compare};
use integration::{
    feature_image_layers_with, require_root_and_tools, Compression, Containerd,
    FeatureImageOptions, LayerSpec, Registry, TestDir,
};
use serde_json::{json, Value};

fn nydusify(args: &[&str]) -> Output {
    Command::new(bin("nydusify"))
        .args(args)
        .env("DOCKER_CONFIG", "/nonexistent-docker-config")
        .output()
        .expect("running nydusify")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "nydusify failed:\n{}", text(&o));
    o
}

fn convert(src: &str, dst: &str, dir: &Path, extra: &[&str]) -> Output {
    let work = dir.join("work");
    let mut args = vec![
        "convert",
        "--no-progress",
        "--source",
        src,
        "--target",
        dst,
        "--source-insecure",
        "--target-insecure",
        "--work-dir",
        work.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    nydusify(&args)
}

fn check(target: &str, source: Option<&str>) -> Output {
    let mut args = vec!["check", "--target", target, "--target-insecure"];
    if let Some(s) = source {
        args.extend_from_slice(&["--source", s, "--source-insecure"]);
    }
    nydusify(&args)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).expect("reading JSON")).expect("JSON")
}

async fn manifest_exists(reg: &Registry, repo: &str, tag: &str) -> bool {
    reg.client()
        .head_manifest(repo, tag)
        .await
        .expect("HEAD manifest")
        .is_some()
}

/// Uploads requests (`POST /v2/<repo>/blobs/uploads/`) the registry answered.
fn upload_starts(reg: &Registry, repo: &str) -> usize {
    reg.requests()
        .iter()
        .filter(|e| e.method == "POST" && e.path.starts_with(&format!("/v2/{repo}/blobs/uploads")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_layer_image_converts_checks_matches_its_oci_tree_and_reverses() {
    require_root_and_tools(&[
        "docker-registry",
        "skopeo",
        "umoci",
        "tar",
        "containerd",
        "ctr",
        "runc",
    ]);
    let dir = TestDir::new("nydusify-features").expect("test dir");
    let reg = Registry::start(&dir).await.expect("registry");
    let layers = feature_image_layers_with(FeatureImageOptions {
        big_layer_bytes: 300 << 20,
        cross_layer_hardlink: false,
    })
    .expect("layers");
    let img = reg
        .push_image("src/app", "v1", &layers)
        .await
        .expect("push");
    let dst = format!("{}/nydus/app:v1", reg.addr());
    let report = dir.path().join("convert.json");
    ok(convert(
        &img.reference,
        &dst,
        dir.path(),
        &["--output-json", report.to_str().unwrap()],
    ));

    // The manifest has the shape nydus-snapshotter reads.
    let (body, _, _) = reg
        .client()
        .get_manifest("nydus/app", "v1")
        .await
        .expect("manifest");
    let m: Value = serde_json::from_slice(&body).unwrap();
    let ls = m["layers"].as_array().unwrap();
    assert_eq!(
        ls.len(),
        layers.len() + 1,
        "one blob layer per source layer + bootstrap"
    );
    for l in &ls[..ls.len() - 1] {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.nydus.blob.v1"
        );
        assert_eq!(
            l["annotations"]["containerd.io/snapshot/nydus-blob"],
            "true"
        );
    }
    let boot = ls.last().unwrap();
    assert_eq!(
        boot["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(
        boot["annotations"]["containerd.io/snapshot/nydus-bootstrap"],
        "true"
    );
    assert_eq!(
        boot["annotations"]["containerd.io/snapshot/nydus-fs-version"],
        "6"
    );
    let config = reg
        .client()
        .get_blob("nydus/app", m["config"]["digest"].as_str().unwrap())
        .await
        .unwrap();
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        ls.len()
    );
    let history = config["history"].as_array().unwrap();
    assert_eq!(history.last().unwrap()["created_by"], "Nydus Converter");

    // check: manifest and bootstrap rules, and every file against the OCI image.
    let out = ok(check(&dst, Some(&img.reference)));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(": ok;"), "{stdout}");

    // The per-layer report names sizes and times.
    let r = read_json(&report);
    let rl = r["manifests"][0]["layers"].as_array().unwrap();
    assert_eq!(rl.len(), layers.len());
    assert!(rl
        .iter()
        .all(|l| l["reused"] == false && l["blob_size"].as_u64().unwrap() > 0));
    assert_eq!(r["layers_built"], layers.len());

    // An independent oracle: umoci's tree of the OCI image against our unpack of the Nydus image.
    let oci_root = integration::unpack_with_umoci(&img.oci_dir, "v1", &dir.path().join("umoci"))
        .expect("umoci unpack");
    let nydus_root = unpack_nydus(&reg, "nydus/app", &m, &dir.path().join("nydus-unpack")).await;
    assert_same_tree(&oci_root, &nydus_root, ALL_BUT_ROOT);

    reverse_round_trip(&dir, &reg, &dst, &oci_root).await;
}

/// `convert --reverse` of the converted feature image (`nydus`): the OCI image it writes has the
/// original's tree (umoci and containerd agree), runs on containerd, and reversing and
/// converting are deterministic.
async fn reverse_round_trip(dir: &TestDir, reg: &Registry, nydus: &str, oci_root: &Path) {
    let rev = format!("{}/reversed/app:v1", reg.addr());
    let report = dir.path().join("reverse.json");
    ok(reverse(
        nydus,
        &rev,
        dir.path(),
        &["--output-json", report.to_str().unwrap()],
    ));
    let r = read_json(&report);
    assert_eq!(r["manifests"][0]["layers"].as_array().unwrap().len(), 5);

    // An OCI image: gzip layers, one per Nydus blob layer, no bootstrap, no Nydus history.
    let (body, _, _) = reg
        .client()
        .get_manifest("reversed/app", "v1")
        .await
        .expect("reversed manifest");
    let m: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let ls = m["layers"].as_array().unwrap();
    assert_eq!(ls.len(), 5, "{m}");
    assert!(ls.iter().all(
        |l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
            && l.get("annotations").is_none()
    ));
    let config: Value = serde_json::from_slice(
        &reg.client()
            .get_blob("reversed/app", m["config"]["digest"].as_str().unwrap())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 5);
    assert!(config["history"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["created_by"] != "Nydus Converter"));

    // check compares the Nydus image with the reversed one file by file.
    ok(check(nydus, Some(&rev)));

    // umoci unpacks the reversed image into the original's tree, mtimes included.
    let rev_root = umoci_tree(&rev, &dir.join("reversed"));
    assert_same_tree(oci_root, &rev_root, ALL_BUT_ROOT);

    // containerd pulls it (CRI), runs it, and its rootfs is the original's.
    let hosts = dir.join("certs.d");
    HostsToml::direct(reg.url())
        .write(&hosts, &reg.addr())
        .unwrap();
    let containerd = Containerd::start(dir, &hosts).await.expect("containerd");
    containerd.cri_pull(&rev).await.expect("CRI PullImage");
    let out = containerd
        .ctr_run(&rev, &["/bin/busybox", "cat", "/etc/replaced.txt"])
        .await
        .expect("ctr run");
    assert_eq!(out, "v2, from layer 3\n");
    let mnt = dir.join("ctr-mount");
    std::fs::create_dir_all(&mnt).unwrap();
    containerd
        .ctr_ok(&["images", "mount", &rev, mnt.to_str().unwrap()])
        .await
        .unwrap();
    let (a, b) = (oci_root.to_path_buf(), mnt.clone());
    let compared = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(|| {
            assert_same_tree(
                &a,
                &b,
                Compare {
                    mtime: false,
                    root_meta: false,
                    skip_trusted_xattrs: true,
                    ..Compare::ALL
                },
            )
        })
    })
    .await
    .unwrap();
    containerd
        .ctr_ok(&["images", "unmount", mnt.to_str().unwrap()])
        .await
        .unwrap();
    if let Err(e) = compared {
        std::panic::resume_unwind(e);
    }

    // Deterministic: two conversions of the reversed image give the same bootstrap, and
    // reversing that again gives the reversed image's layers byte for byte.
    let again = [
        format!("{}/again/app:a", reg.addr()),
        format!("{}/again/app:b", reg.addr()),
    ];
    for t in &again {
        ok(convert(&rev, t, dir.path(), &[]));
    }
    let boot = |tag: &'static str| async move {
        let (body, _, _) = reg.client().get_manifest("again/app", tag).await.unwrap();
        let m: Value = serde_json::from_slice(&body).unwrap();
        m["layers"].as_array().unwrap().last().unwrap()["digest"].clone()
    };
    assert_eq!(boot("a").await, boot("b").await);
    let rev2 = format!("{}/reversed/app:v2", reg.addr());
    ok(reverse(&again[0], &rev2, dir.path(), &[]));
    let (body2, _, _) = reg
        .client()
        .get_manifest("reversed/app", "v2")
        .await
        .unwrap();
    let m2: Value = serde_json::from_slice(&body2).unwrap();
    assert_eq!(m2["layers"], m["layers"], "reversing is not deterministic");
}

fn reverse(src: &str, dst: &str, dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--reverse"];
    args.extend_from_slice(extra);
    convert(src, dst, dir, &args)
}

/// Every property but the root directory's own metadata (layers do not agree on it).
const ALL_BUT_ROOT: Compare = Compare {
    root_meta: false,
    ..Compare::ALL
};

/// The tree of registry image `reference` as umoci unpacks it (copied to an OCI layout under
/// `at` with skopeo first).
fn umoci_tree(reference: &str, at: &Path) -> PathBuf {
    std::fs::create_dir_all(at).unwrap();
    let layout = at.join("layout");
    let o = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:v1", layout.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "skopeo: {}", text(&o));
    integration::unpack_with_umoci(&layout, "v1", &at.join("rootfs"))
        .unwrap_or_else(|e| panic!("umoci unpack of {reference}: {e}"))
}

/// Downloads a Nydus image's bootstrap and blobs and unpacks it with `nydus-image unpack` and
/// GNU tar; returns the root.
async fn unpack_nydus(reg: &Registry, repo: &str, m: &Value, at: &Path) -> PathBuf {
    let blobs = at.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let ls = m["layers"].as_array().unwrap();
    for l in &ls[..ls.len() - 1] {
        let d = l["digest"].as_str().unwrap();
        let data = reg.client().get_blob(repo, d).await.unwrap();
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), &data).unwrap();
    }
    let gz = reg
        .client()
        .get_blob(repo, ls.last().unwrap()["digest"].as_str().unwrap())
        .await
        .unwrap();
    let boot = nydus::nydusify::convert::bootstrap_from_layer_tar(&gz).expect("bootstrap layer");
    let boot_path = at.join("image.boot");
    std::fs::write(&boot_path, boot).unwrap();
    let tar = at.join("image.tar");
    let o = Command::new(bin("nydus-image"))
        .args(["unpack", "--bootstrap"])
        .arg(&boot_path)
        .arg("--blob-dir")
        .arg(&blobs)
        .arg("--output")
        .arg(&tar)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "unpack: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let root = at.join("rootfs");
    integration::extract_tar(&tar, &root).unwrap();
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_convert_of_the_same_source_builds_and_uploads_no_layer() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "tar"]);
    let dir = TestDir::new("nydusify-reuse").expect("test dir");
    let reg = Registry::start(&dir).await.expect("registry");
    let layers = vec![
        LayerSpec::busybox(Compression::Gzip).unwrap(),
        LayerSpec::random(7, 3 << 20, Compression::Gzip),
        LayerSpec::new(Compression::None).dir("empty-layer-dir", 0o700),
    ];
    let img = reg
        .push_image("src/reuse", "v1", &layers)
        .await
        .expect("push");
    let dst = format!("{}/nydus/reuse:v1", reg.addr());
    let first = dir.path().join("first.json");
    ok(convert(
        &img.reference,
        &dst,
        dir.path(),
        &["--output-json", first.to_str().unwrap()],
    ));
    assert_eq!(read_json(&first)["layers_built"], 3);
    let before = upload_starts(&reg, "nydus/reuse");
    let gets_before: usize = img.layer_digests().iter().map(|d| reg.blob_gets(d)).sum();

    let second = dir.path().join("second.json");
    ok(convert(
        &img.reference,
        &dst,
        dir.path(),
        &["--output-json", second.to_str().unwrap()],
    ));
    let r = read_json(&second);
    assert_eq!(r["layers_built"], 0, "{r}");
    assert!(r["manifests"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["reused"] == true));
    // The bootstrap layer and config are already there too: no upload session at all.
    assert_eq!(
        upload_starts(&reg, "nydus/reuse"),
        before,
        "uploads in the second run"
    );
    let gets_after: usize = img.layer_digests().iter().map(|d| reg.blob_gets(d)).sum();
    assert_eq!(gets_after, gets_before, "the second run read source layers");
    ok(check(&dst, Some(&img.reference)));

    // Other options mean other blobs: the layers are built again.
    let third = dir.path().join("third.json");
    ok(convert(
        &img.reference,
        &dst,
        dir.path(),
        &[
            "--compressor",
            "lz4_block",
            "--output-json",
            third.to_str().unwrap(),
        ],
    ));
    assert_eq!(read_json(&third)["layers_built"], 3);
    ok(check(&dst, Some(&img.reference)));
}

/// Pushes an image whose single layer is `layer` (declared as gzip) with a matching config.
async fn push_raw_image(
    reg: &Registry,
    repo: &str,
    layer: Vec<u8>,
    declared_digest: Option<String>,
) {
    let digest = reg.push_blob(repo, layer.clone()).await.expect("push blob");
    let layer_digest = declared_digest.unwrap_or(digest);
    let config = json!({
        "architecture": integration::oci_arch(), "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "0".repeat(64))]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let cdigest = reg.push_blob(repo, config.clone()).await.unwrap();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}],
    });
    reg.client()
        .put_manifest(
            repo,
            "v1",
            "application/vnd.oci.image.manifest.v1+json",
            serde_json::to_vec(&manifest).unwrap(),
        )
        .await
        .expect("put manifest");
}

fn assert_fails_with(o: &Output, needle: &str) {
    assert!(!o.status.success(), "expected a failure:\n{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(needle),
        "stderr should name {needle:?}:\n{}",
        text(o)
    );
    assert!(!err.contains("panicked"), "{}", text(o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sources_fail_clearly_and_push_no_target_tag() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "tar"]);
    let dir = TestDir::new("nydusify-bad").expect("test dir");
    let reg = Registry::start(&dir).await.expect("registry");

    // A layer that is not a tar.
    let junk = integration::random_bytes(3, 100_000);
    push_raw_image(&reg, "bad/notar", junk, None).await;
    let dst = format!("{}/out/notar:v1", reg.addr());
    let o = convert(
        &format!("{}/bad/notar:v1", reg.addr()),
        &dst,
        dir.path(),
        &[],
    );
    assert_fails_with(&o, "reading the layer tar");
    assert!(!manifest_exists(&reg, "out/notar", "v1").await);

    // A source blob whose bytes do not match its digest (flipped in the registry's storage).
    let img = reg
        .push_image(
            "bad/flipped",
            "v1",
            &[LayerSpec::random(9, 1 << 20, Compression::Gzip)],
        )
        .await
        .unwrap();
    let hex = img.layers[0].0.trim_start_matches("sha256:").to_string();
    let data = reg.blob_data_path(&hex);
    let mut bytes = std::fs::read(&data).expect("the registry's blob file");
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let dst = format!("{}/out/flipped:v1", reg.addr());
    let o = convert(
        &img.reference,
        &dst,
        dir.path(),
        &["--push-retry-count", "0"],
    );
    assert_fails_with(&o, "Invalid digest. Expected sha256:");
    assert!(!manifest_exists(&reg, "out/flipped", "v1").await);

    // A manifest over 4 MiB.
    let config = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}});
    let config = serde_json::to_vec(&config).unwrap();
    let cdigest = reg.push_blob("bad/huge", config.clone()).await.unwrap();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": config.len()},
        "layers": [],
        "annotations": {"padding": "x".repeat(5 << 20)},
    });
    // distribution refuses to store a manifest over 4 MiB, so a proxy in front of it serves one.
    let body = serde_json::to_vec(&manifest).unwrap();
    let proxy =
        FaultProxy::start(reg.addr(), None, Some(("/v2/bad/huge/manifests/v1", body))).await;
    let o = convert(
        &format!("{}/bad/huge:v1", proxy.addr),
        &format!("{}/out/huge:v1", proxy.addr),
        dir.path(),
        &[],
    );
    assert_fails_with(&o, "over the 4194304-byte limit");
    assert!(!manifest_exists(&reg, "out/huge", "v1").await);

    // A registry that answers 500 to every upload after two blobs were stored.
    let img = reg
        .push_image(
            "src/many",
            "v1",
            &(1..=4)
                .map(|i| LayerSpec::random(100 + i, 2 << 20, Compression::Gzip))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    let proxy = FaultProxy::start(reg.addr(), Some(2), None).await;
    let src = img.reference.replace(&reg.addr(), &proxy.addr);
    let o = convert(
        &src,
        &format!("{}/out/many:v1", proxy.addr),
        dir.path(),
        &[
            "--concurrency",
            "1",
            "--push-retry-count",
            "1",
            "--push-retry-delay",
            "10ms",
        ],
    );
    assert_fails_with(&o, "500");
    assert!(proxy.refused() > 0, "the proxy refused no upload");
    assert!(!manifest_exists(&reg, "out/many", "v1").await);
}

/// An HTTP proxy in front of a registry that can refuse uploads after `uploads_ok` committed
/// blobs and serve a fixed body for one path.
struct FaultProxy {
    addr: String,
    state: std::sync::Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    upstream: String,
    uploads_ok: Option<usize>,
    committed: std::sync::atomic::AtomicUsize,
    refused: std::sync::atomic::AtomicUsize,
    fixed: Option<(String, Vec<u8>)>,
    client: reqwest::Client,
}

impl FaultProxy {
    async fn start(
        upstream: String,
        uploads_ok: Option<usize>,
        fixed: Option<(&str, Vec<u8>)>,
    ) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = std::sync::Arc::new(ProxyState {
            upstream,
            uploads_ok,
            committed: Default::default(),
            refused: Default::default(),
            fixed: fixed.map(|(p, b)| (p.to_string(), b)),
            client: integration::http_client(),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| proxy_one(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FaultProxy { addr, state, task }
    }

    fn refused(&self) -> usize {
        self.state.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy_one(
    st: std::sync::Arc<ProxyState>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    use std::sync::atomic::Ordering::SeqCst;
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let reply = |status: u16, body: Vec<u8>, headers: Vec<(String, String)>| {
        let mut r = http::Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        Ok(r.body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap())
    };
    if let Some((p, body)) = &st.fixed {
        if &path == p && req.method() == http::Method::GET {
            return reply(
                200,
                body.clone(),
                vec![(
                    "Content-Type".into(),
                    "application/vnd.oci.image.manifest.v1+json".into(),
                )],
            );
        }
    }
    let is_upload = path.contains("/blobs/uploads");
    if is_upload {
        if let Some(n) = st.uploads_ok {
            if st.committed.load(SeqCst) >= n {
                st.refused.fetch_add(1, SeqCst);
                return reply(
                    500,
                    b"{\"errors\":[{\"code\":\"UNKNOWN\",\"message\":\"injected failure\"}]}"
                        .to_vec(),
                    vec![],
                );
            }
        }
    }
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut fwd = st
        .client
        .request(method.clone(), format!("http://{}{path_q}", st.upstream));
    for (k, v) in headers.iter() {
        // Host stays the proxy's, so the registry's Location headers point back at the proxy.
        if k != http::header::CONTENT_LENGTH {
            fwd = fwd.header(k, v);
        }
    }
    let resp = match fwd.body(body).send().await {
        Ok(r) => r,
        Err(e) => return reply(502, e.to_string().into_bytes(), vec![]),
    };
    let status = resp.status().as_u16();
    if is_upload && method == http::Method::PUT && status == 201 {
        st.committed.fetch_add(1, SeqCst);
    }
    let mut out_headers = Vec::new();
    for (k, v) in resp.headers() {
        if k != http::header::CONTENT_LENGTH && k != http::header::TRANSFER_ENCODING {
            out_headers.push((k.to_string(), v.to_str().unwrap_or_default().to_string()));
        }
    }
    let body = resp.bytes().await.unwrap_or_default().to_vec();
    reply(status, body, out_headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_named_and_push_nothing() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "tar"]);
    let dir = TestDir::new("nydusify-auth").expect("test dir");
    let reg = Registry::start_with_token_auth(&dir)
        .await
        .expect("registry");
    let img = reg
        .push_image(
            "src/auth",
            "v1",
            &[LayerSpec::random(5, 1 << 20, Compression::Gzip)],
        )
        .await
        .unwrap();
    let (user, pass) = reg.credentials().unwrap();
    let dst = format!("{}/out/auth:v1", reg.addr());
    let o = nydusify(&[
        "convert",
        "--source",
        &img.reference,
        "--target",
        &dst,
        "--source-insecure",
        "--target-insecure",
        "--source-username",
        user,
        "--source-password",
        "wrong",
        "--target-username",
        user,
        "--target-password",
        pass,
        "--work-dir",
        dir.path().join("work").to_str().unwrap(),
    ]);
    assert_fails_with(&o, "authentication failed");
    assert!(!manifest_exists(&reg, "out/auth", "v1").await);

    // With the right credentials (here from a docker config.json) it converts and checks.
    let cfg = dir.path().join("docker");
    std::fs::create_dir_all(&cfg).unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    std::fs::write(
        cfg.join("config.json"),
        serde_json::to_vec(&json!({"auths": {reg.addr(): {"auth": auth}}})).unwrap(),
    )
    .unwrap();
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
        .arg(dir.path().join("work"))
        .env("DOCKER_CONFIG", &cfg)
        .output()
        .unwrap();
    ok(o);
    let o = Command::new(bin("nydusify"))
        .args(["check", "--target", &dst, "--source", &img.reference])
        .args(["--source-insecure", "--target-insecure"])
        .env("DOCKER_CONFIG", &cfg)
        .output()
        .unwrap();
    ok(o);
}

/// The manifest (or index) at `<repo>:<tag>` as JSON.
async fn manifest_json(reg: &Registry, repo: &str, tag: &str) -> Value {
    let (body, _, _) = reg
        .client()
        .get_manifest(repo, tag)
        .await
        .unwrap_or_else(|e| panic!("manifest {repo}:{tag}: {e}"));
    serde_json::from_slice(&body).unwrap()
}

fn other_arch() -> &'static str {
    if integration::oci_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_platform_index_merges_converts_every_platform_and_copies() {
    require_root_and_tools(&[
        "docker-registry",
        "skopeo",
        "umoci",
        "containerd",
        "ctr",
        "runc",
    ]);
    let dir = TestDir::new("nydusify-platforms").expect("test dir");
    let reg = Registry::start(&dir).await.expect("registry");
    let host = format!("linux/{}", integration::oci_arch());
    let other = format!("linux/{}", other_arch());
    let idx = reg
        .push_image_index(
            "src/multi",
            "v1",
            &[
                integration::PlatformImage::linux(
                    integration::oci_arch(),
                    vec![
                        LayerSpec::busybox(Compression::Gzip).unwrap(),
                        LayerSpec::new(Compression::Gzip).file(
                            "etc/platform",
                            host.clone().into_bytes(),
                            0o644,
                        ),
                    ],
                ),
                integration::PlatformImage::linux(
                    other_arch(),
                    vec![
                        LayerSpec::random(21, 2 << 20, Compression::Gzip),
                        LayerSpec::new(Compression::Zstd).file(
                            "etc/platform",
                            other.clone().into_bytes(),
                            0o644,
                        ),
                    ],
                ),
            ],
        )
        .await
        .expect("push index");

    // --merge-platform: the source index plus a Nydus manifest for this machine's platform.
    let merged = format!("{}/merged/multi:v1", reg.addr());
    ok(convert(
        &idx.reference,
        &merged,
        dir.path(),
        &["--merge-platform"],
    ));
    let m = manifest_json(&reg, "merged/multi", "v1").await;
    let entries = m["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{m}");
    for (i, (platform, info)) in idx.manifests.iter().enumerate() {
        assert_eq!(entries[i]["digest"], info.manifest_digest.as_str());
        assert!(
            entries[i]["platform"].get("os.features").is_none(),
            "{platform}: {m}"
        );
    }
    let n = &entries[2];
    assert_eq!(n["platform"]["architecture"], integration::oci_arch());
    assert_eq!(
        n["platform"]["os.features"],
        json!(["nydus.remoteimage.v1"])
    );
    let nm = manifest_json(&reg, "merged/multi", n["digest"].as_str().unwrap()).await;
    assert_eq!(
        nm["config"]["mediaType"],
        "application/vnd.nydus.image.config.v1+json"
    );
    ok(check(&merged, Some(&idx.reference)));

    // containerd still resolves the OCI manifest of this platform from the merged index.
    let hosts = dir.join("certs.d");
    HostsToml::direct(reg.url())
        .write(&hosts, &reg.addr())
        .unwrap();
    let containerd = Containerd::start(&dir, &hosts).await.expect("containerd");
    let image_ref = containerd.cri_pull(&merged).await.expect("CRI PullImage");
    let host_info = &idx.manifests.iter().find(|(p, _)| *p == host).unwrap().1;
    assert_eq!(image_ref, host_info.config.0);
    let out = containerd
        .ctr_run(&merged, &["/bin/busybox", "cat", "/etc/platform"])
        .await
        .expect("ctr run");
    assert_eq!(out, host);

    // --all-platforms: a Nydus-only index with one manifest per platform, each checked.
    let all = format!("{}/nydus/multi:v1", reg.addr());
    ok(convert(
        &idx.reference,
        &all,
        dir.path(),
        &["--all-platforms"],
    ));
    let m = manifest_json(&reg, "nydus/multi", "v1").await;
    let entries = m["manifests"].as_array().unwrap();
    let platforms: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["platform"]["os"].as_str().unwrap(),
                e["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, [host.clone(), other.clone()]);
    for p in [&host, &other] {
        ok(nydusify(&[
            "check",
            "--target",
            &all,
            "--target-insecure",
            "--source",
            &idx.reference,
            "--source-insecure",
            "--platform",
            p,
        ]));
    }

    // copy --all-platforms to another registry: the same index, every platform checks there.
    let reg2 = Registry::start(&dir).await.expect("second registry");
    let copied = format!("{}/copied/multi:v1", reg2.addr());
    ok(nydusify(&[
        "copy",
        "--source",
        &all,
        "--source-insecure",
        "--target",
        &copied,
        "--target-insecure",
        "--all-platforms",
    ]));
    assert_eq!(manifest_json(&reg2, "copied/multi", "v1").await, m);
    for p in [&host, &other] {
        ok(nydusify(&[
            "check",
            "--target",
            &copied,
            "--target-insecure",
            "--source",
            &idx.reference,
            "--source-insecure",
            "--platform",
            p,
        ]));
    }
    // Without --all-platforms, copy takes one platform: the target is its manifest.
    let one = format!("{}/copied/one:v1", reg2.addr());
    ok(nydusify(&[
        "copy",
        "--source",
        &all,
        "--source-insecure",
        "--target",
        &one,
        "--target-insecure",
        "--platform",
        &other,
    ]));
    let om = manifest_json(&reg2, "copied/one", "v1").await;
    assert_eq!(om["layers"].as_array().unwrap().len(), 3, "{om}");
    ok(nydusify(&[
        "check",
        "--target",
        &one,
        "--target-insecure",
        "--source",
        &idx.reference,
        "--source-insecure",
        "--platform",
        &other,
    ]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_dict_conversion_stores_only_new_chunks_and_reverses() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci"]);
    let dir = TestDir::new("nydusify-chunk-dict").expect("test dir");
    let reg = Registry::start(&dir).await.expect("registry");
    const SHARED: u64 = 8 << 20;
    let base = reg
        .push_image(
            "src/base",
            "v1",
            &[LayerSpec::random(31, SHARED, Compression::Gzip)],
        )
        .await
        .expect("push base");
    let dict = format!("{}/nydus/base:v1", reg.addr());
    ok(convert(&base.reference, &dict, dir.path(), &[]));

    // The app has the same 8 MiB file in its own layer, plus small new files; its second layer
    // removes one of them and hardlinks another (whiteouts and lower-layer hardlinks must
    // survive building against a dictionary).
    let app = reg
        .push_image(
            "src/app",
            "v1",
            &[
                LayerSpec::random(31, SHARED, Compression::Zstd)
                    .file("etc/new.txt", &b"only in the app\n"[..], 0o644)
                    .file("etc/gone.txt", &b"removed above\n"[..], 0o644),
                LayerSpec::new(Compression::Gzip)
                    .whiteout("etc/gone.txt")
                    .hardlink("etc/link-to-new", "etc/new.txt"),
            ],
        )
        .await
        .expect("push app");
    let dst = format!("{}/nydus/app:v1", reg.addr());
    let report = dir.path().join("dict.json");
    ok(convert(
        &app.reference,
        &dst,
        dir.path(),
        &[
            "--chunk-dict",
            &format!("bootstrap:registry:{dict}"),
            "--output-json",
            report.to_str().unwrap(),
        ],
    ));
    let r = read_json(&report);
    let own = r["manifests"][0]["layers"][0]["blob_size"]
        .as_u64()
        .unwrap();
    assert!(
        own < SHARED / 8,
        "the app's blob should hold only the new chunks, it is {own} bytes"
    );
    // The dictionary's blob is a layer of the app's image (nydusd fetches chunks from it).
    let m = manifest_json(&reg, "nydus/app", "v1").await;
    let dm = manifest_json(&reg, "nydus/base", "v1").await;
    let ls = m["layers"].as_array().unwrap();
    assert_eq!(
        ls.len(),
        4,
        "two own blobs, dictionary blob, bootstrap: {m}"
    );
    assert_eq!(ls[2]["digest"], dm["layers"][0]["digest"]);
    ok(check(&dst, Some(&app.reference)));
    let app_root = integration::unpack_with_umoci(&app.oci_dir, "v1", &dir.join("umoci-app"))
        .expect("umoci unpack");
    assert!(!app_root.join("etc/gone.txt").exists());
    let nydus_root = unpack_nydus(&reg, "nydus/app", &m, &dir.join("nydus-unpack")).await;
    assert_same_tree(&app_root, &nydus_root, ALL_BUT_ROOT);

    // Reversing reads the shared chunks from the dictionary's blob: one layer, the app's files.
    let rev = format!("{}/reversed/app:v1", reg.addr());
    ok(reverse(&dst, &rev, dir.path(), &["--compressor", "zstd"]));
    let rm = manifest_json(&reg, "reversed/app", "v1").await;
    let rl = rm["layers"].as_array().unwrap();
    assert_eq!(rl.len(), 2, "{rm}");
    assert_eq!(
        rl[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    ok(check(&dst, Some(&rev)));
    assert_same_tree(
        &app_root,
        &umoci_tree(&rev, &dir.join("reversed")),
        ALL_BUT_ROOT,
    );
}

/// Our `nydusd` serves a converted image from the registry (Nydus's config and command line):
/// before anything is read only the bootstrap is local, reading one small file fetches its
/// chunk and not the big layer, and the mount shows umoci's tree of the source exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_nydusd_serves_a_converted_image_lazily_from_the_registry() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "fusermount3"]);
    let dir = TestDir::new("nydusd-registry").expect("test dir");
    let reg = Registry::start(&dir).await.expect("registry");
    let layers = feature_image_layers_with(FeatureImageOptions {
        big_layer_bytes: 24 << 20,
        cross_layer_hardlink: false,
    })
    .expect("layers");
    let img = reg
        .push_image("src/lazy", "v1", &layers)
        .await
        .expect("push");
    let dst = format!("{}/nydus/lazy:v1", reg.addr());
    ok(convert(&img.reference, &dst, dir.path(), &[]));
    let m = manifest_json(&reg, "nydus/lazy", "v1").await;
    let ls = m["layers"].as_array().unwrap();
    let gz = reg
        .client()
        .get_blob("nydus/lazy", ls.last().unwrap()["digest"].as_str().unwrap())
        .await
        .unwrap();
    let boot = dir.join("image.boot");
    std::fs::write(
        &boot,
        nydus::nydusify::convert::bootstrap_from_layer_tar(&gz).unwrap(),
    )
    .unwrap();
    // The big layer's blob (the 5th layer): not read until /big/random.bin is.
    let big = ls[4]["digest"].as_str().unwrap().to_string();
    let gets = |reg: &Registry, d: &str| {
        reg.blob_requests(d)
            .iter()
            .filter(|r| r.method == "GET" && (200..300).contains(&r.status))
            .count()
    };
    let big_before = gets(&reg, &big);
    let oci_root = integration::unpack_with_umoci(&img.oci_dir, "v1", &dir.join("umoci"))
        .expect("umoci unpack");
    // Reading /etc/replaced.txt fetches from the blob of layer 3 and not from the big one.
    let small = ls[2]["digest"].as_str().unwrap().to_string();
    let small_before = gets(&reg, &small);
    let log_path = reg.log_path().to_path_buf();
    let seen = std::sync::Arc::new(std::sync::Mutex::new((String::new(), usize::MAX)));
    let s2 = seen.clone();
    let big2 = big.clone();
    integration::nydusd::serve_and_compare(
        &dir,
        &reg,
        &bin("nydusd"),
        "nydus/lazy",
        &boot,
        &oci_root,
        ALL_BUT_ROOT,
        move |mnt| {
            let text = std::fs::read_to_string(mnt.join("etc/replaced.txt")).unwrap();
            let count = |d: &str| {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                integration::registry::parse_access_log(&log)
                    .iter()
                    .filter(|r| {
                        r.method == "GET" && r.path.ends_with(d) && (200..300).contains(&r.status)
                    })
                    .count()
            };
            // Wait for the small read's GET to be logged, then count the big blob's.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while count(&small) <= small_before && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            assert!(
                count(&small) > small_before,
                "the small file's blob was never read"
            );
            *s2.lock().unwrap() = (text, count(&big2));
        },
    )
    .await;
    let (text, big_after_small) = seen.lock().unwrap().clone();
    assert_eq!(text, "v2, from layer 3\n");
    assert_eq!(
        big_after_small, big_before,
        "reading a small file fetched the big blob"
    );
    assert!(
        gets(&reg, &big) > big_before,
        "the tree comparison never read the big file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardlinks_across_layers_convert_check_and_reverse_exactly() {
    require_root_and_tools(&["docker-registry", "skopeo", "umoci", "tar"]);
    let dir = TestDir::new("nydusify-cross-links").expect("test dir");
    let reg = Registry::start(&dir).await.expect("registry");
    // Layer 4 holds /upper/to-lower, a hardlink to /lower/shared.txt of layer 1.
    let layers = feature_image_layers_with(FeatureImageOptions {
        big_layer_bytes: 1 << 20,
        cross_layer_hardlink: true,
    })
    .expect("layers");
    let img = reg
        .push_image("src/links", "v1", &layers)
        .await
        .expect("push");
    let dst = format!("{}/nydus/links:v1", reg.addr());
    ok(convert(&img.reference, &dst, dir.path(), &[]));
    ok(check(&dst, Some(&img.reference)));

    // umoci links the two names; so does the Nydus image (one inode, same bytes).
    let oci_root = integration::unpack_with_umoci(&img.oci_dir, "v1", &dir.join("umoci"))
        .expect("umoci unpack");
    let m = manifest_json(&reg, "nydus/links", "v1").await;
    let nydus_root = unpack_nydus(&reg, "nydus/links", &m, &dir.join("nydus-unpack")).await;
    use std::os::unix::fs::MetadataExt;
    let ino = |root: &Path, p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
    assert_eq!(
        ino(&nydus_root, "upper/to-lower"),
        ino(&nydus_root, "lower/shared.txt")
    );
    assert_same_tree(&oci_root, &nydus_root, ALL_BUT_ROOT);

    // Reversing an image that is not a Nydus image says so and writes nothing.
    let not_nydus = format!("{}/reversed/oci:v1", reg.addr());
    let o = reverse(&img.reference, &not_nydus, dir.path(), &[]);
    assert_fails_with(&o, "is not a Nydus image");
    assert!(!manifest_exists(&reg, "reversed/oci", "v1").await);

    // Reversed, layer 4 holds the hardlink to the lower file again: umoci unpacks the original.
    let rev = format!("{}/reversed/links:v1", reg.addr());
    ok(reverse(&dst, &rev, dir.path(), &[]));
    ok(check(&dst, Some(&rev)));
    let rev_root = umoci_tree(&rev, &dir.join("reversed"));
    assert_same_tree(&oci_root, &rev_root, ALL_BUT_ROOT);
}
