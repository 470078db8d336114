//! Preheat jobs under failure, on loopback (separate processes): a manager killed while a job
//! runs comes back and the job still reaches SUCCESS; a scheduler killed mid-job turns the job
//! into FAILURE with an error per host that did not finish. Never a job left PENDING.

use integration::agent::Agent;
use integration::cluster::{file_task_id, managed_peer_yaml, Manager, Scheduler};
use integration::harbor::{failures, successes, HarborProvider};
use integration::origin::ObjectOptions;
use integration::process::Signal;
use integration::{random_bytes, require_root_and_tools, wait_for, TestDir, TestOrigin};
use std::time::Duration;

const POLL: Duration = Duration::from_millis(500);
const LIMIT: Duration = Duration::from_secs(120);

/// Manager (allowing the origin), scheduler, seed peer and `peers` peers.
async fn cluster(
    dir: &TestDir,
    origin: &TestOrigin,
    peers: usize,
) -> (Manager, Scheduler, Agent, Vec<Agent>, HarborProvider) {
    let manager = Manager::start(
        dir,
        "manager",
        &format!(
            "job:\n  preheat:\n    allowedHosts: ['127.0.0.1:{}']\n",
            origin.addr().port()
        ),
    )
    .await
    .unwrap();
    let session = manager.root_session().await.unwrap();
    let sched = Scheduler::start_with_manager(dir, "scheduler", &manager).unwrap();
    manager
        .wait_state(&session, "/api/v1/schedulers", "scheduler", "active")
        .await
        .unwrap();
    let seed = Agent::start(dir, "seed", &managed_peer_yaml("seed", &manager, true))
        .await
        .unwrap();
    let mut all = Vec::new();
    for i in 1..=peers {
        let name = format!("peer{i}");
        all.push(
            Agent::start(dir, &name, &managed_peer_yaml(&name, &manager, false))
                .await
                .unwrap(),
        );
    }
    sched.wait_hosts(peers + 1).await.unwrap();
    let token = manager
        .create_token(&session, "harbor", &["job"])
        .await
        .unwrap();
    let harbor = HarborProvider::new(&manager.url(""), &token);
    (manager, sched, seed, all, harbor)
}

/// A file at `path` whose bytes are held back until released.
fn stalled_file(origin: &TestOrigin, path: &str, seed: u64) -> Vec<u8> {
    let data = random_bytes(seed, 5 * 1024 * 1024 + 7);
    origin.put_with(
        path,
        data.clone(),
        ObjectOptions {
            stall_from_offset: Some(0),
            ..Default::default()
        },
    );
    data
}

fn file_job(url: &str, scope: &str) -> serde_json::Value {
    serde_json::json!({"type": "preheat", "args": {"type": "file", "url": url, "scope": scope}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_running_when_the_manager_is_killed_finishes_after_it_restarts() {
    require_root_and_tools(&[]);
    let dir = TestDir::new("preheat-manager-restart").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let (manager, _sched, seed, _peers, harbor) = cluster(&dir, &origin, 1).await;
    let path = "/files/held.bin";
    let data = stalled_file(&origin, path, 401);
    let id = harbor
        .create(&file_job(&origin.url(path), "single_seed_peer"))
        .await
        .unwrap();
    // The seed peer is downloading (its request to the origin hangs) when the manager dies.
    wait_for(
        Duration::from_secs(30),
        "the seed peer asks the origin",
        || async { origin.requests_for(path) > 0 },
    )
    .await
    .unwrap();
    assert_eq!(harbor.get(id).await.unwrap()["state"], "PENDING");
    let (rest, grpc) = (manager.rest_port, manager.grpc_port);
    manager.process.kill(Signal::KILL).unwrap();
    drop(manager);
    let manager = Manager::start_on(
        &dir,
        "manager",
        rest,
        grpc,
        &format!(
            "job:\n  preheat:\n    allowedHosts: ['127.0.0.1:{}']\n",
            origin.addr().port()
        ),
    )
    .await
    .unwrap();
    assert!(
        manager
            .process
            .log()
            .contains("resuming a job left pending by the last run"),
        "{}",
        manager.process.log_tail(20)
    );
    origin.release(path);
    let job = harbor.wait(id, POLL, LIMIT).await.unwrap();
    assert_eq!(job["state"], "SUCCESS", "{job}");
    assert_eq!(
        successes(&job),
        vec![(
            origin.url(path),
            "seed".to_string(),
            "127.0.0.1".to_string()
        )]
    );
    let hex = file_task_id(&origin.url(path));
    assert!(std::fs::read(seed.task_path(&hex)).unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduler_killed_mid_job_fails_the_job_with_an_error_per_host() {
    require_root_and_tools(&[]);
    let dir = TestDir::new("preheat-scheduler-kill").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let (manager, sched, _seed, _peers, harbor) = cluster(&dir, &origin, 2).await;
    let path = "/files/held-too.bin";
    stalled_file(&origin, path, 402);
    let id = harbor
        .create(&file_job(&origin.url(path), "all_peers"))
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "a download reaches the origin",
        || async { origin.requests_for(path) > 0 },
    )
    .await
    .unwrap();
    sched.process.kill(Signal::KILL).unwrap();
    let job = harbor.wait(id, POLL, LIMIT).await.unwrap();
    origin.release(path);
    assert_eq!(job["state"], "FAILURE", "{job}");
    let failed = failures(&job);
    let hosts: Vec<&str> = failed.iter().map(|f| f.1.as_str()).collect();
    assert_eq!(hosts, ["peer1", "peer2"], "{job}");
    let state = &job["result"]["job_states"][0];
    let descriptions: Vec<String> = state["results"][0]["failure_tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["description"].as_str().unwrap().to_string())
        .collect();
    for d in &descriptions {
        assert!(
            d.contains(&format!("scheduler 127.0.0.1:{}", sched.port)),
            "{d}"
        );
    }
    assert!(!state["error"].as_str().unwrap().is_empty(), "{job}");
    drop(manager);
}
