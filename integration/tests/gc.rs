//! GC against a running daemon: eviction by TTL and by disk usage on a small
//! tmpfs store, never evicting a task that is being downloaded or read.

use integration::agent::Agent;
use integration::image::sha256_digest;
use integration::{random_bytes, wait_for, ObjectOptions, TestDir, TestOrigin};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MIB: usize = 1024 * 1024;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn blob(origin: &TestOrigin, seed: u64, len: usize, opts: ObjectOptions) -> (String, String) {
    let data = random_bytes(seed, len);
    let d = sha256_digest(&data);
    let path = format!("/v2/gc/blobs/{d}");
    origin.put_with(&path, data, opts);
    (path, d.trim_start_matches("sha256:").to_string())
}

async fn fetch(agent: &Agent, origin: &TestOrigin, path: &str) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", agent.proxy_url()))
        .header("X-Dragonfly-Registry", origin.base_url())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
}

/// Starts a GET that stalls at the origin, so its task stays in use.
fn fetch_stalled(agent: &Agent, origin: &TestOrigin, path: &str) -> tokio::task::JoinHandle<()> {
    let url = format!("{}{path}", agent.proxy_url());
    let reg = origin.base_url();
    tokio::spawn(async move {
        if let Ok(r) = reqwest::Client::new()
            .get(url)
            .header("X-Dragonfly-Registry", reg)
            .send()
            .await
        {
            let _ = r.bytes().await;
        }
    })
}

async fn gc_runs(agent: &Agent) -> f64 {
    agent
        .metric("dragonfly_dfdaemon_gc_runs_total")
        .await
        .unwrap()
}

async fn wait_gc_passes(agent: &Agent, n: f64) {
    let start = gc_runs(agent).await;
    wait_for(Duration::from_secs(30), "GC passes", || async {
        gc_runs(agent).await >= start + n
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_evicts_idle_tasks_after_ttl_but_not_tasks_in_use() {
    integration::require_root_and_tools(&[]);
    let dir = TestDir::new("gc-ttl").unwrap();
    let origin = TestOrigin::start().await.unwrap();
    let agent = Agent::start(
        &dir,
        "dfdaemon",
        // The disk watermarks are taken against a 1 TiB budget so that only
        // the TTL can evict here, however full the host's filesystem is.
        "gc:\n  interval: 1s\n  policy:\n    taskTTL: 2s\n    distThreshold: 1TiB\n",
    )
    .await
    .unwrap();
    let (idle, idle_id) = blob(&origin, 41, MIB, ObjectOptions::default());
    let (busy, busy_id) = blob(
        &origin,
        42,
        6 * MIB,
        ObjectOptions {
            stall_from_offset: Some(4 * MIB as u64),
            ..Default::default()
        },
    );
    fetch(&agent, &origin, &idle).await;
    let reader = fetch_stalled(&agent, &origin, &busy);
    assert!(agent.task_path(&idle_id).exists());
    wait_for(Duration::from_secs(30), "idle task evicted", || async {
        !agent.task_path(&idle_id).exists()
    })
    .await
    .unwrap();
    // The busy task has been idle longer than the TTL too, but is in use.
    wait_gc_passes(&agent, 3.0).await;
    assert!(
        agent.task_path(&busy_id).exists(),
        "a task in use was evicted"
    );
    origin.release_all();
    reader.await.unwrap();
    wait_for(
        Duration::from_secs(30),
        "busy task evicted once idle",
        || async { !agent.task_path(&busy_id).exists() },
    )
    .await
    .unwrap();
    let evicted = agent
        .metric("dragonfly_dfdaemon_gc_evicted_tasks_total{reason=\"ttl\"}")
        .await
        .unwrap();
    assert_eq!(evicted, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_evicts_least_recently_used_tasks_when_the_disk_fills() {
    integration::require_root_and_tools(&["mount", "umount"]);
    let dir = TestDir::new("gc-disk").unwrap();
    let store = dir.join("tmpfs");
    let _fs = Tmpfs::mount(&store, "64m");
    let origin = TestOrigin::start().await.unwrap();
    let agent = Agent::start(
        &dir,
        "dfdaemon",
        &format!(
            "storage:\n  dir: {}\ngc:\n  interval: 1s\n  policy:\n    distHighThresholdPercent: 50\n    distLowThresholdPercent: 25\n",
            store.display()
        ),
    )
    .await
    .unwrap();
    // The oldest task stays in use (its download stalls), so it must survive.
    let (busy, busy_id) = blob(
        &origin,
        50,
        8 * MIB,
        ObjectOptions {
            stall_from_offset: Some(4 * MIB as u64),
            ..Default::default()
        },
    );
    let reader = fetch_stalled(&agent, &origin, &busy);
    wait_for(Duration::from_secs(30), "busy task started", || async {
        agent.task_path(&busy_id).exists()
    })
    .await
    .unwrap();
    let mut ids = Vec::new();
    for seed in 51..55 {
        let (p, id) = blob(&origin, seed, 8 * MIB, ObjectOptions::default());
        fetch(&agent, &origin, &p).await;
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 4 x 8 MiB + 4 MiB of the busy task (+ metadata) = 36+ MiB of 64 MiB: above 50%.
    // Eviction stops at 25% (16 MiB): the three least recently used complete
    // tasks go, the newest stays, the busy one is skipped.
    wait_for(Duration::from_secs(30), "disk eviction", || async {
        ids[..3].iter().all(|id| !agent.task_path(id).exists())
    })
    .await
    .unwrap();
    wait_gc_passes(&agent, 2.0).await;
    assert!(
        agent.task_path(&ids[3]).exists(),
        "the most recently used task was evicted"
    );
    assert!(
        agent.task_path(&busy_id).exists(),
        "a task in use was evicted"
    );
    let evicted = agent
        .metric("dragonfly_dfdaemon_gc_evicted_tasks_total{reason=\"disk\"}")
        .await
        .unwrap();
    assert_eq!(evicted, 3.0);
    origin.release_all();
    reader.await.unwrap();
}
