//! `kill -9` mid-download: after a restart the task resumes from the pieces
//! that were stored, fetching only the missing ones from the origin.

use integration::agent::Agent;
use integration::image::sha256_digest;
use integration::{random_bytes, wait_for, ObjectOptions, TestDir, TestOrigin};
use std::collections::BTreeSet;
use std::time::Duration;

const PIECE: u64 = 4 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_download_then_restart_fetches_only_missing_pieces() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("crash-resume").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let len = 10 * PIECE - 1000;
    let data = random_bytes(21, len as usize);
    let digest = sha256_digest(&data);
    let path = format!("/v2/app/blobs/{digest}");
    // Pieces 0-5 are served; requests for pieces 6-9 hang.
    origin.put_with(
        &path,
        data.clone(),
        ObjectOptions {
            stall_from_offset: Some(6 * PIECE),
            ..Default::default()
        },
    );
    let mut agent = Agent::start(&dir, "dfdaemon", "download:\n  concurrentPieceCount: 4\n")
        .await
        .unwrap();
    let url = format!("{}{path}", agent.proxy_url());
    let registry = origin.base_url();
    let first = tokio::spawn({
        let (url, registry) = (url.clone(), registry.clone());
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .header("X-Dragonfly-Registry", registry)
                .send()
                .await;
            match r {
                Ok(r) => r.bytes().await.map(|b| b.len()).ok(),
                Err(_) => None,
            }
        }
    });
    // Six pieces stored and their records committed to disk.
    wait_for(
        Duration::from_secs(60),
        "6 pieces stored and committed",
        || async {
            let pieces = agent
                .metric("dragonfly_dfdaemon_pieces_total{type=\"back_to_source\"}")
                .await
                .unwrap_or(0.0);
            let pending = agent
                .metric("dragonfly_dfdaemon_metadata_pending_writes")
                .await
                .unwrap_or(1.0);
            pieces >= 6.0 && pending == 0.0
        },
    )
    .await
    .unwrap();
    agent.kill9().await;
    assert!(
        first.await.unwrap() != Some(len as usize),
        "the first client cannot have the whole blob"
    );

    origin.release_all();
    origin.clear_requests();
    agent.restart().await.unwrap();
    let body = reqwest::Client::new()
        .get(&url)
        .header("X-Dragonfly-Registry", registry)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        body[..] == data[..],
        "resumed blob differs from the origin's"
    );
    let fetched: Vec<String> = origin
        .ranges_for(&path)
        .into_iter()
        .map(|r| r.expect("ranged GETs only"))
        .collect();
    let want: BTreeSet<String> = (6..10)
        .map(|i| format!("bytes={}-{}", i * PIECE, ((i + 1) * PIECE).min(len) - 1))
        .collect();
    assert_eq!(fetched.len(), 4, "after restart the origin saw {fetched:?}");
    assert_eq!(fetched.into_iter().collect::<BTreeSet<_>>(), want);
    let log = agent.log();
    assert!(
        log.contains("partial=1"),
        "restart should report one partial task"
    );
}
