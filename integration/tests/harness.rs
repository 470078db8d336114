//! The harness itself works end to end against the real components: docker-registry,
//! containerd (CRI pulls, ctr run with runc), skopeo pushes, token auth.

use std::time::Duration;

use integration::image::sha256_digest;
use integration::{
    random_bytes, require_root_and_tools, wait_for, Compression, Containerd, HostsToml, LayerSpec,
    Registry, TestDir,
};

const TOOLS: &[&str] = &[
    "docker-registry",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "skopeo",
    "openssl",
];

/// Waits until the registry's access log shows at least `n` successful GETs of every digest.
async fn wait_blob_gets(registry: &Registry, digests: &[String], n: usize) {
    wait_for(Duration::from_secs(10), "registry access log", || async {
        digests.iter().all(|d| registry.blob_gets(d) >= n)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; log: {:#?}", registry.requests()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pull_fetches_each_blob_once_and_remove_image_sync_forces_a_refetch() {
    require_root_and_tools(TOOLS);
    let dir = TestDir::new("harness").expect("test dir");
    let registry = Registry::start(&dir).await.expect("registry starts");
    let hosts = dir.join("certs.d");
    HostsToml::direct(registry.url())
        .write(&hosts, &registry.addr())
        .expect("hosts.toml");
    let containerd = Containerd::start(&dir, &hosts)
        .await
        .expect("containerd starts");

    let random_len = 3 << 20;
    let image = registry
        .push_image(
            "harness/test",
            "v1",
            &[
                LayerSpec::busybox(Compression::Gzip).expect("busybox layer"),
                LayerSpec::random(42, random_len, Compression::Gzip),
            ],
        )
        .await
        .expect("push image");
    assert_eq!(
        image.reference,
        format!("{}/harness/test:v1", registry.addr())
    );
    assert_eq!(image.layers.len(), 2);
    assert!(
        image.layers[1].1 > random_len,
        "random data must not compress"
    );

    // Pull through the daemon (CRI), which reads hosts.toml: the image ref is the config digest.
    let image_ref = containerd
        .cri_pull(&image.reference)
        .await
        .expect("CRI pull");
    assert_eq!(image_ref, image.config.0);
    let content = containerd.content_digests().await.expect("content ls");
    for d in image.blob_digests().iter().chain([&image.manifest_digest]) {
        assert!(content.contains(d), "{d} not in content store {content:?}");
    }
    let status = containerd
        .cri_image_status(&image.reference)
        .await
        .expect("image status")
        .expect("image present");
    assert_eq!(status.id, image.config.0);

    // Exactly one GET per blob reached the registry.
    let blobs = image.blob_digests();
    wait_blob_gets(&registry, &blobs, 1).await;
    for d in &blobs {
        assert_eq!(
            registry.blob_gets(d),
            1,
            "GETs of {d}: {:#?}",
            registry.blob_requests(d)
        );
    }

    // The image runs, and the random file inside it has the bytes it was built from.
    let out = containerd
        .ctr_run(
            &image.reference,
            &[
                "/bin/busybox",
                "sha256sum",
                "/data/random-42.bin",
                "/etc/hello.txt",
            ],
        )
        .await
        .expect("ctr run");
    let expected = sha256_digest(&random_bytes(42, random_len as usize));
    assert!(
        out.contains(expected.trim_start_matches("sha256:")),
        "container saw different bytes: {out}"
    );

    // Removal leaves nothing of the image behind...
    containerd
        .remove_image_sync(&image.reference)
        .await
        .expect("remove image");
    let content = containerd.content_digests().await.expect("content ls");
    for d in image.blob_digests().iter().chain([&image.manifest_digest]) {
        assert!(!content.contains(d), "{d} still in content store");
    }
    assert!(containerd
        .cri_image_status(&image.reference)
        .await
        .expect("image status")
        .is_none());

    // ... so pulling again fetches every blob from the registry again.
    containerd
        .cri_pull(&image.reference)
        .await
        .expect("CRI re-pull");
    wait_blob_gets(&registry, &blobs, 2).await;
    for d in &blobs {
        assert_eq!(registry.blob_gets(d), 2, "GETs of {d}");
    }

    // The cri-pull tool does the same: remove, pull, report.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cri-pull"))
        .arg("--socket")
        .arg(containerd.socket())
        .arg("--rm")
        .arg(&image.reference)
        .output()
        .await
        .expect("run cri-pull");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cri-pull failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("pulled {} in ", image.reference))
            && stdout.trim_end().ends_with('s'),
        "{stdout}"
    );
    wait_blob_gets(&registry, &blobs, 3).await;
    for d in &blobs {
        assert_eq!(registry.blob_gets(d), 3, "GETs of {d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_registry_serves_only_authenticated_pulls() {
    require_root_and_tools(TOOLS);
    let dir = TestDir::new("harness-token").expect("test dir");
    let registry = Registry::start_with_token_auth(&dir)
        .await
        .expect("token-auth registry starts");
    let (user, password) = registry.credentials().expect("has credentials");
    let (user, password) = (user.to_string(), password.to_string());
    let hosts = dir.join("certs.d");
    HostsToml::direct(registry.url())
        .write(&hosts, &registry.addr())
        .expect("hosts.toml");
    let containerd = Containerd::start(&dir, &hosts)
        .await
        .expect("containerd starts");

    // skopeo pushes through the Bearer flow with the credentials; so does the HTTP client.
    let image = registry
        .push_image(
            "private/app",
            "v1",
            &[LayerSpec::random(7, 100_000, Compression::None)],
        )
        .await
        .expect("push with token auth");
    let extra = registry
        .push_blob("private/app", random_bytes(8, 1000))
        .await
        .expect("push blob with token auth");
    assert_eq!(
        registry
            .client()
            .get_blob("private/app", &extra)
            .await
            .expect("get blob with token"),
        random_bytes(8, 1000)
    );
    let token_server = registry.token_server().expect("token server");
    assert!(token_server.requests().iter().any(|r| r.authenticated));

    // Anonymous access is refused by the registry itself...
    let anon = integration::http_client()
        .get(format!("{}/v2/private/app/manifests/v1", registry.url()))
        .send()
        .await
        .expect("anonymous GET");
    assert_eq!(anon.status(), 401);
    assert!(anon.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .starts_with("Bearer realm="));
    // ... so an anonymous CRI pull fails, and one with credentials succeeds.
    let err = containerd
        .cri_pull(&image.reference)
        .await
        .expect_err("anonymous pull must fail");
    // containerd reports the registry's answer to the token with no access.
    assert!(err.to_string().contains("insufficient_scope"), "{err}");
    containerd
        .cri_pull_with_auth(&image.reference, &user, &password)
        .await
        .expect("authenticated pull");
    wait_blob_gets(&registry, &image.layer_digests(), 1).await;
    assert_eq!(registry.blob_gets(&image.layers[0].0), 1);
}
