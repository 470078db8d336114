//! dfget through the daemon's download API on its unix socket.

use integration::agent::{bin, Agent};
use integration::image::sha256_digest;
use integration::{random_bytes, TestDir, TestOrigin};
use std::os::unix::fs::MetadataExt;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".dfget-"))
        .collect()
}

/// The gRPC code a `DownloadTask` of `url` with `digest` fails with (through the daemon's
/// download API, as dfget calls it).
async fn failure_code(agent: &Agent, url: &str, digest: &str) -> tonic::Code {
    use dragonfly_api::common::v2::Download;
    use dragonfly_api::dfdaemon::v2::DownloadTaskRequest;
    let mut client = dfdaemon::dfget::connect(&agent.socket).await.unwrap();
    let request = DownloadTaskRequest {
        download: Some(Download {
            url: url.to_string(),
            digest: Some(digest.to_string()),
            ..Default::default()
        }),
    };
    match client.download_task(request).await {
        Err(s) => s.code(),
        Ok(resp) => {
            let mut s = resp.into_inner();
            loop {
                match s.message().await {
                    Err(st) => break st.code(),
                    Ok(None) => panic!("the download of {url} with digest {digest} succeeded"),
                    Ok(Some(_)) => {}
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dfget_downloads_verifies_and_hard_links_from_the_store() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("dfget").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let agent = Agent::start(&dir, "dfdaemon", "").await.unwrap();
    let data = random_bytes(31, 9 * 1024 * 1024 + 7);
    let digest = sha256_digest(&data);
    origin.put("/files/model.bin", data.clone());
    let url = origin.url("/files/model.bin");
    let out_dir = dir.subdir("out").unwrap();

    // Plain URL (URL-based task ID), with a digest to verify.
    let out1 = out_dir.join("a.bin");
    let o = agent.dfget(&[&url, "-O", out1.to_str().unwrap(), "--digest", &digest]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&out1).unwrap() == data);
    assert!(
        std::fs::metadata(&out1).unwrap().nlink() >= 2,
        "output on the store's filesystem should be hard-linked"
    );

    // Second download: from the cache, no origin request.
    let before = origin.requests_for("/files/model.bin");
    let out2 = out_dir.join("b.bin");
    let o = agent.dfget(&[&url, "-O", out2.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&out2).unwrap() == data);
    assert_eq!(origin.requests_for("/files/model.bin"), before);

    // A different tag is a different task: the origin is asked again.
    let out3 = out_dir.join("c.bin");
    let o = agent.dfget(&[&url, "-O", out3.to_str().unwrap(), "--tag", "v2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(origin.requests_for("/files/model.bin") > before);

    // Wrong digest: non-zero exit naming both digests, no output, no temp file.
    let out4 = out_dir.join("d.bin");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let o = agent.dfget(&[&url, "-O", out4.to_str().unwrap(), "--digest", &wrong]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("digest mismatch"), "{}", stderr(&o));
    assert!(!out4.exists());
    // Through the download API the same failure is DATA_LOSS, not UNAVAILABLE: trying again
    // will not help. For the stored task, and for one downloaded now (whose bytes are then
    // dropped).
    let wrong = format!("sha256:{}", "1".repeat(64));
    assert_eq!(
        failure_code(&agent, &url, &wrong).await,
        tonic::Code::DataLoss
    );
    origin.put("/files/other.bin", random_bytes(32, 5 * 1024 * 1024));
    assert_eq!(
        failure_code(&agent, &origin.url("/files/other.bin"), &wrong).await,
        tonic::Code::DataLoss
    );

    // Existing output without --overwrite.
    let o = agent.dfget(&[&url, "-O", out1.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));

    // Origin 404: the error reaches the user.
    origin.put("/exists", "x");
    let o = agent.dfget(&[
        &origin.url("/missing"),
        "-O",
        out_dir.join("e").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));

    // Back-to-source disabled and not cached.
    let o = agent.dfget(&[
        &origin.url("/exists"),
        "-O",
        out_dir.join("f").to_str().unwrap(),
        "--disable-back-to-source",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("back-to-source is disabled"),
        "{}",
        stderr(&o)
    );
    assert!(
        leftovers(&out_dir).is_empty(),
        "temp files left: {:?}",
        leftovers(&out_dir)
    );
}

#[test]
fn dfget_without_a_daemon_says_so() {
    let dir = TestDir::new("dfget-no-daemon").unwrap();
    let o = std::process::Command::new(bin("dfget"))
        .args(["--no-progress", "--endpoint"])
        .arg(dir.join("nothing.sock"))
        .args(["http://127.0.0.1:9/x", "-O"])
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot reach dfdaemon"),
        "{}",
        stderr(&o)
    );
}
