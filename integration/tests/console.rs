//! The manager's web console in a real headless Chromium (WebDriver): sign in, see the
//! clusters with their scheduler and seed peer active, create and revoke a token, add a user,
//! create a preheat job and watch it reach SUCCESS; a wrong password is refused and repeated
//! failures are rate limited.

use integration::agent::Agent;
use integration::browser::Browser;
use integration::cluster::{managed_peer_yaml, Manager, Scheduler, MANAGER_ROOT_PASSWORD};
use integration::{random_bytes, require_root_and_tools, TestDir, TestOrigin};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_signs_in_shows_clusters_manages_tokens_and_runs_a_preheat() {
    require_root_and_tools(&["chromium", "chromedriver"]);
    let dir = TestDir::new("console").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let manager = Manager::start(
        &dir,
        "manager",
        &format!(
            "job:\n  preheat:\n    allowedHosts: ['127.0.0.1:{}']\n",
            origin.addr().port()
        ),
    )
    .await
    .unwrap();
    let sched = Scheduler::start_with_manager(&dir, "scheduler", &manager).unwrap();
    let _seed = Agent::start(&dir, "seed", &managed_peer_yaml("seed", &manager, true))
        .await
        .unwrap();
    let peer = Agent::start(&dir, "peer1", &managed_peer_yaml("peer1", &manager, false))
        .await
        .unwrap();
    sched.wait_hosts(2).await.unwrap();
    let data = random_bytes(601, 3 * 1024 * 1024 + 11);
    origin.put("/files/console.bin", data.clone());

    let b = Browser::start(&dir).await.unwrap();
    b.goto(&manager.url("/")).await.unwrap();
    b.fill("#name", "root").await.unwrap();
    b.fill("#password", MANAGER_ROOT_PASSWORD).await.unwrap();
    b.click("#signin").await.unwrap();

    // Clusters: the default cluster with its scheduler and seed peer, both active.
    let text = b
        .wait_text("#clusters", WAIT, |t| {
            t.contains("cluster-1")
                && t.lines().any(|l| {
                    l.contains("scheduler") && l.contains("active") && !l.contains("inactive")
                })
                && t.lines()
                    .any(|l| l.contains("seed peer") && l.contains("seed") && l.ends_with("active"))
        })
        .await
        .unwrap();
    assert!(text.contains("candidate_parent_limit 3"), "{text}");
    assert_eq!(b.text("#who").await.unwrap(), "root (root)");

    // Tokens: created (shown once), then revoked.
    b.click("#nav-tokens").await.unwrap();
    b.fill("#token-name", "from-console").await.unwrap();
    b.click("#token-create").await.unwrap();
    let token = b
        .wait_text("#token-value", WAIT, |t| t.len() >= 32)
        .await
        .unwrap();
    b.wait_text("#tokens", WAIT, |t| {
        t.contains("from-console") && t.contains("active")
    })
    .await
    .unwrap();
    let r = integration::http_client()
        .get(manager.url("/oapi/v1/jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the new token works");
    b.click("#tokens button").await.unwrap();
    b.wait_text("#tokens", WAIT, |t| t.contains("inactive"))
        .await
        .unwrap();
    let r = integration::http_client()
        .get(manager.url("/oapi/v1/jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "the revoked token is refused");

    // Users: root adds a guest.
    b.click("#nav-users").await.unwrap();
    b.fill("#user-name", "alice").await.unwrap();
    b.fill("#user-password", "alice-password-1").await.unwrap();
    b.click("#user-create").await.unwrap();
    b.wait_text("#users", WAIT, |t| {
        t.contains("alice") && t.contains("guest")
    })
    .await
    .unwrap();

    // Preheat: a file to every peer, watched until SUCCESS.
    b.click("#nav-jobs").await.unwrap();
    b.click("#job-type option[value=file]").await.unwrap();
    b.fill("#job-url", &origin.url("/files/console.bin"))
        .await
        .unwrap();
    b.click("#job-scope option[value=all_peers]").await.unwrap();
    b.click("#job-create").await.unwrap();
    let state = b
        .wait_text("#job-state", Duration::from_secs(60), |t| {
            t == "SUCCESS" || t == "FAILURE"
        })
        .await
        .unwrap();
    assert_eq!(state, "SUCCESS", "{}", b.text("#job-result").await.unwrap());
    let result = b.text("#job-result").await.unwrap();
    assert!(result.contains("peer1"), "{result}");
    let id = common::id::url_task_id(&common::id::UrlTaskId {
        url: &origin.url("/files/console.bin"),
        tag: None,
        application: None,
        piece_length: None,
        filtered_query_params: &common::id::default_filtered_query_params(),
    })
    .unwrap();
    assert!(std::fs::read(peer.task_path(&id)).unwrap() == data);
    b.wait_text("#jobs", WAIT, |t| t.contains("SUCCESS"))
        .await
        .unwrap();

    // Sign out; a wrong password is refused, and after five failures sign-in waits.
    b.click("#signout").await.unwrap();
    for i in 0..5 {
        // Each attempt shows its own answer: the last one is cleared first.
        b.script("document.getElementById('signin-error').textContent = ''")
            .await
            .unwrap();
        b.fill("#name", "root").await.unwrap();
        b.fill("#password", &format!("wrong-{i}")).await.unwrap();
        b.click("#signin").await.unwrap();
        b.wait_text("#signin-error", WAIT, |t| {
            t.contains("incorrect name or password")
        })
        .await
        .unwrap();
    }
    b.script("document.getElementById('signin-error').textContent = ''")
        .await
        .unwrap();
    b.fill("#password", MANAGER_ROOT_PASSWORD).await.unwrap();
    b.click("#signin").await.unwrap();
    b.wait_text("#signin-error", WAIT, |t| {
        t.contains("too many failed sign-ins")
    })
    .await
    .unwrap();
}
