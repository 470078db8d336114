//! The registry mirror / proxy against a real HTTP origin: single flight,
//! ranges, digest verification, pass-through of errors, bad input.

use futures_util::StreamExt;
use integration::agent::Agent;
use integration::image::sha256_digest;
use integration::{random_bytes, ObjectOptions, TestDir, TestOrigin};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::Duration;

const MIB: u64 = 1024 * 1024;
const PIECE: u64 = 4 * MIB;

fn blob_path(data: &[u8]) -> (String, String) {
    let d = sha256_digest(data);
    (format!("/v2/test/blobs/{d}"), d)
}

/// Piece ranges as the engine asks for them (`bytes=a-b`).
fn piece_ranges(len: u64) -> BTreeSet<String> {
    (0..len.div_ceil(PIECE))
        .map(|i| {
            let a = i * PIECE;
            let b = ((i + 1) * PIECE).min(len) - 1;
            format!("bytes={a}-{b}")
        })
        .collect()
}

async fn setup(name: &str, extra: &str) -> (TestDir, TestOrigin, Agent) {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new(name).unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let agent = Agent::start(&dir, "dfdaemon", extra).await.unwrap();
    (dir, origin, agent)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// GET through the mirror with the upstream named by X-Dragonfly-Registry.
async fn mirror_get(
    agent: &Agent,
    origin: &TestOrigin,
    path: &str,
    range: Option<&str>,
) -> reqwest::Response {
    let mut rb = client()
        .get(format!("{}{path}", agent.proxy_url()))
        .header("X-Dragonfly-Registry", origin.base_url());
    if let Some(r) = range {
        rb = rb.header("Range", r);
    }
    rb.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_gets_of_one_blob_reach_the_origin_once() {
    let (_dir, origin, agent) = setup("proxy-single-flight", "").await;
    let data = random_bytes(1, 100_000_000);
    let (path, digest) = blob_path(&data);
    origin.put(&path, data.clone());
    let want = hex::encode(Sha256::digest(&data));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = format!("{}{path}", agent.proxy_url());
        let registry = origin.base_url();
        tasks.push(tokio::spawn(async move {
            let resp = client()
                .get(url)
                .header("X-Dragonfly-Registry", registry)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let mut h = Sha256::new();
            let mut s = resp.bytes_stream();
            let mut n = 0u64;
            while let Some(c) = s.next().await {
                let c = c.unwrap();
                n += c.len() as u64;
                h.update(&c);
            }
            (n, hex::encode(h.finalize()))
        }));
    }
    for t in tasks {
        let (n, sum) = t.await.unwrap();
        assert_eq!(n, 100_000_000);
        assert_eq!(sum, want, "a body differs from the blob");
    }
    // One download for all twenty readers: the origin streamed the blob once.
    let ranges: Vec<Option<String>> = origin.ranges_for(&path);
    assert_eq!(
        ranges,
        vec![Some("bytes=0-".to_string())],
        "the origin must send the blob once, as one stream"
    );
    assert!(digest.starts_with("sha256:"));
}

async fn check_range(
    agent: &Agent,
    origin: &TestOrigin,
    path: &str,
    data: &[u8],
    range: Option<&str>,
) {
    let resp = mirror_get(agent, origin, path, range).await;
    let len = data.len() as u64;
    let (status, a, b) = match range {
        None => (200, 0, len),
        Some("bytes=0-0") => (206, 0, 1),
        Some("bytes=-100") => (206, len - 100, len),
        Some(r) => {
            let (a, b) = r.trim_start_matches("bytes=").split_once('-').unwrap();
            (206, a.parse().unwrap(), b.parse::<u64>().unwrap() + 1)
        }
    };
    assert_eq!(resp.status(), status, "range {range:?}");
    if status == 206 {
        assert_eq!(
            resp.headers()["content-range"].to_str().unwrap(),
            format!("bytes {a}-{}/{len}", b - 1)
        );
    }
    let body = resp.bytes().await.unwrap();
    assert!(
        body[..] == data[a as usize..b as usize],
        "wrong bytes for {range:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn range_requests_return_the_right_bytes_cold_and_cached() {
    let (_dir, origin, agent) = setup("proxy-ranges", "").await;
    let ranges = [
        Some("bytes=0-0"),
        Some("bytes=5000000-5000099"),
        Some("bytes=-100"),
        None,
    ];
    for (i, r) in ranges.iter().enumerate() {
        // A fresh blob per range, so the first request is on a cold task.
        let data = random_bytes(100 + i as u64, 10 * MIB as usize + 12345);
        let (path, _) = blob_path(&data);
        origin.put(&path, data.clone());
        check_range(&agent, &origin, &path, &data, *r).await;
        // Wait for the whole task, then the same range from the cache.
        let full = mirror_get(&agent, &origin, &path, None)
            .await
            .bytes()
            .await
            .unwrap();
        assert!(full[..] == data[..]);
        let before = origin.requests_for(&path);
        for r2 in ranges {
            check_range(&agent, &origin, &path, &data, r2).await;
        }
        assert_eq!(
            origin.requests_for(&path),
            before,
            "cached ranges reached the origin"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_bytes_for_a_digest_fail_the_client_and_nothing_is_cached() {
    let (_dir, origin, agent) = setup("proxy-bad-digest", "").await;
    let good = random_bytes(7, 6 * MIB as usize);
    let (path, digest) = blob_path(&good);
    let mut bad = good.clone();
    bad[5 * MIB as usize] ^= 0xff;
    origin.put(&path, bad);
    for attempt in 0..2 {
        let resp = mirror_get(&agent, &origin, &path, None).await;
        let ok_status = resp.status().is_success();
        let body = resp.bytes().await;
        let client_saw_error = !ok_status || body.is_err();
        assert!(
            client_saw_error,
            "attempt {attempt}: bad bytes were served as a complete body"
        );
    }
    // Both attempts went to the origin: nothing was marked complete.
    let gets = origin.ranges_for(&path).len();
    assert_eq!(
        gets, 2,
        "expected two full downloads (one stream each), origin saw {gets} GETs"
    );
    let task_id = digest.trim_start_matches("sha256:");
    assert!(
        !agent.task_path(task_id).exists(),
        "content of a bad blob was kept"
    );
    assert_eq!(
        agent
            .metric("dragonfly_dfdaemon_digest_mismatches_total")
            .await
            .unwrap(),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_errors_are_passed_through_and_not_cached() {
    let (_dir, origin, agent) = setup("proxy-origin-errors", "backend:\n  maxRetries: 1\n").await;
    let data = random_bytes(9, 1000);
    let (path, _) = blob_path(&data);
    origin.put_with(
        &path,
        data,
        ObjectOptions {
            status_override: Some((404, "no such blob\n".into())),
            ..Default::default()
        },
    );
    for _ in 0..2 {
        let resp = mirror_get(&agent, &origin, &path, None).await;
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.text().await.unwrap(), "no such blob\n");
    }
    assert_eq!(origin.requests_for(&path), 2, "a 404 must not be cached");
    origin.update(&path, |o| o.status_override = Some((500, "boom".into())));
    let resp = mirror_get(&agent, &origin, &path, None).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await.unwrap(), "boom");
    // The 5xx was retried once (backend.maxRetries: 1).
    assert_eq!(origin.requests_for(&path), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_origin_fails_after_the_piece_timeout_instead_of_hanging() {
    let (_dir, origin, agent) = setup(
        "proxy-stalled",
        "download:\n  pieceTimeout: 1s\nbackend:\n  maxRetries: 0\n",
    )
    .await;
    let data = random_bytes(10, 6 * MIB as usize);
    let (path, _) = blob_path(&data);
    // First request: nothing at all comes back.
    origin.put_with(
        &path,
        data.clone(),
        ObjectOptions {
            stall_from_offset: Some(0),
            ..Default::default()
        },
    );
    let r = mirror_get(&agent, &origin, &path, None).await;
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("download.pieceTimeout"));
    // Then: headers and the first piece, but the second piece stalls mid-way.
    origin.update(&path, |o| o.stall_from_offset = Some(5 * MIB));
    let r = mirror_get(&agent, &origin, &path, None).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.is_err(),
        "a stalled body must end in an error"
    );
    origin.release_all();
    let r = mirror_get(&agent, &origin, &path, None).await;
    assert!(
        r.bytes().await.unwrap()[..] == data[..],
        "the task resumes once the origin recovers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirect_targets_are_cached_per_task_and_credentials_stay_with_the_registry() {
    let (_dir, registry, agent) = setup("proxy-redirect", "").await;
    // The "registry" redirects blob GETs to a storage backend on another host:port.
    let storage = TestOrigin::start().await.unwrap();
    let data = random_bytes(14, 17 * MIB as usize);
    let (path, _) = blob_path(&data);
    // The stream from the storage host breaks off in piece 2: the rest is fetched by ranges.
    storage.put_with(
        "/bucket/blob-data",
        data.clone(),
        ObjectOptions {
            break_once_at: Some(9 * MIB),
            ..Default::default()
        },
    );
    registry.put_with(
        &path,
        Vec::new(),
        ObjectOptions {
            status_override: Some((307, "".into())),
            extra_headers: vec![("Location".into(), storage.url("/bucket/blob-data"))],
            ..Default::default()
        },
    );
    let r = client()
        .get(format!("{}{path}", agent.proxy_url()))
        .header("X-Dragonfly-Registry", registry.base_url())
        .header("Authorization", "Bearer registry-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap()[..] == data[..]);
    // One request resolved the redirect; the stream and then every piece it did not bring
    // (2, 3 and 4) went straight to the target.
    assert_eq!(
        registry.requests_for(&path),
        1,
        "pieces re-resolved the redirect"
    );
    let ranges: BTreeSet<String> = storage
        .ranges_for("/bucket/blob-data")
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let mut want: BTreeSet<String> = piece_ranges(data.len() as u64)
        .into_iter()
        .filter(|r| !r.starts_with("bytes=0-") && !r.starts_with(&format!("bytes={}-", 4 * MIB)))
        .collect();
    want.insert("bytes=0-".to_string());
    assert_eq!(ranges, want);
    // The registry saw the token; the storage host never did.
    let reg_auth: Vec<_> = registry
        .requests()
        .iter()
        .map(|r| r.header("authorization").map(str::to_string))
        .collect();
    assert_eq!(reg_auth, vec![Some("Bearer registry-token".to_string())]);
    assert!(
        storage
            .requests()
            .iter()
            .all(|r| r.header("authorization").is_none()),
        "credentials leaked to the redirect target"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encoded_responses_are_passed_through_and_not_cached() {
    let (_dir, origin, agent) = setup("proxy-encoding", "").await;
    let data = random_bytes(11, 5000);
    let (path, _) = blob_path(&data);
    origin.put_with(
        &path,
        data.clone(),
        ObjectOptions {
            no_range: true,
            extra_headers: vec![("Content-Encoding".into(), "gzip".into())],
            ..Default::default()
        },
    );
    for _ in 0..2 {
        let resp = mirror_get(&agent, &origin, &path, None).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-encoding"], "gzip");
        assert!(resp.bytes().await.unwrap()[..] == data[..]);
    }
    assert_eq!(
        origin.requests_for(&path),
        2,
        "an encoded body must not be cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forward_proxy_mode_caches_blobs_and_passes_other_requests() {
    let (_dir, origin, agent) = setup("proxy-forward", "").await;
    let data = random_bytes(12, 3 * MIB as usize);
    let (path, _) = blob_path(&data);
    origin.put(&path, data.clone());
    origin.put("/v2/test/manifests/latest", "{\"manifest\":true}");
    let c = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(agent.proxy_url()).unwrap())
        .build()
        .unwrap();
    for _ in 0..3 {
        let b = c
            .get(origin.url(&path))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(b[..] == data[..]);
        let m = c
            .get(origin.url("/v2/test/manifests/latest"))
            .send()
            .await
            .unwrap();
        assert_eq!(m.text().await.unwrap(), "{\"manifest\":true}");
    }
    assert_eq!(
        origin.requests_for(&path),
        1,
        "the blob should be fetched once"
    );
    assert_eq!(
        origin.requests_for("/v2/test/manifests/latest"),
        3,
        "manifests pass through"
    );
    let hits = agent
        .metric("dragonfly_dfdaemon_proxy_requests_total{outcome=\"cache_hit\"}")
        .await
        .unwrap();
    assert_eq!(hits, 2.0);
}

fn raw_request(port: u16, request: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer and close before reading everything we send.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_tunnels_to_allowed_hosts_only() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("proxy-connect").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let port = origin.addr().port();
    let agent = Agent::start(
        &dir,
        "dfdaemon",
        &format!("proxy:\n  allowedRegistries: ['127.0.0.1:{port}']\n"),
    )
    .await
    .unwrap();
    origin.put("/hello", "hello through the tunnel");
    let p = agent.proxy_port;
    let out = tokio::task::spawn_blocking(move || {
        raw_request(
            p,
            format!(
                "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\nGET /hello HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    })
    .await
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("hello through the tunnel"), "{out}");
    let other = integration::free_port();
    let out = tokio::task::spawn_blocking(move || {
        raw_request(
            p,
            format!("CONNECT 127.0.0.1:{other} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
    })
    .await
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.contains("proxy.allowedRegistries"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_clear_errors_and_the_daemon_keeps_serving() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("proxy-bad-input").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let port = origin.addr().port();
    let agent = Agent::start(
        &dir,
        "dfdaemon",
        &format!("proxy:\n  allowedRegistries: ['127.0.0.1:{port}']\n"),
    )
    .await
    .unwrap();
    let data = random_bytes(13, 2 * MIB as usize);
    let (path, _) = blob_path(&data);
    origin.put(&path, data.clone());

    // Invalid Range header.
    let r = mirror_get(&agent, &origin, &path, Some("bytes=abc")).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("invalid Range header"));
    // Unsatisfiable range on a known blob.
    let r = mirror_get(&agent, &origin, &path, Some("bytes=99999999-")).await;
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", data.len())
    );

    // A registry host the config does not allow: mirror mode and forward mode.
    let r = client()
        .get(format!("{}{path}", agent.proxy_url()))
        .header("X-Dragonfly-Registry", "http://127.0.0.1:1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("127.0.0.1:1 is not in proxy.allowedRegistries"));
    let fwd = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(agent.proxy_url()).unwrap())
        .build()
        .unwrap();
    let r = fwd.get("http://127.0.0.2:9/x").send().await.unwrap();
    assert_eq!(r.status(), 403);

    // A request line of 1 MB.
    let p = agent.proxy_port;
    let out = tokio::task::spawn_blocking(move || {
        let mut req = b"GET /".to_vec();
        req.extend(std::iter::repeat_n(b'a', 1 << 20));
        req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        raw_request(p, &req)
    })
    .await
    .unwrap();
    let status_line = out.lines().next().unwrap_or("");
    assert!(
        status_line.starts_with("HTTP/1.1 414") || status_line.starts_with("HTTP/1.1 431"),
        "1 MB request line got: {status_line:?}"
    );

    // A malformed header value for the piece length.
    let r = client()
        .get(format!("{}{path}", agent.proxy_url()))
        .header("X-Dragonfly-Registry", origin.base_url())
        .header("X-Dragonfly-Piece-Length", "12")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Still serving, with the right bytes.
    let r = mirror_get(&agent, &origin, &path, None).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap()[..] == data[..]);
}

#[test]
fn malformed_config_fails_at_start_naming_the_key() {
    let dir = TestDir::new("config-errors").unwrap();
    let cases = [
        (
            "proxy:\n  registryMirror:\n    adr: x\n",
            "proxy.registryMirror",
        ),
        (
            "gc:\n  policy:\n    distHighThresholdPercent: 150\n",
            "gc.policy.distHighThresholdPercent",
        ),
        ("proxy:\n  server:\n    port: nope\n", "proxy.server.port"),
        ("storage: [1, 2\n", "config file"),
    ];
    for (i, (yaml, key)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        let out = std::process::Command::new(integration::agent::bin("dfdaemon"))
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{yaml}: {err}");
        assert!(
            err.contains(key),
            "{yaml}: message does not name {key}: {err}"
        );
    }
    let out = std::process::Command::new(integration::agent::bin("dfdaemon"))
        .arg("--print-default-config")
        .output()
        .unwrap();
    let default = dir.join("default.yaml");
    std::fs::write(&default, &out.stdout).unwrap();
    let out = std::process::Command::new(integration::agent::bin("dfdaemon"))
        .arg("--config")
        .arg(&default)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(out.status.success(), "the printed default config must load");
}
