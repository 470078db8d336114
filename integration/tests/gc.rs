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

/// A download that does not fit on the store's disk fails with an error naming the full
/// disk; it does not hang. The daemon keeps serving what is stored, and the space of the
/// failed task is given back so a smaller download works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_download_larger_than_the_free_disk_fails_and_the_daemon_keeps_serving() {
    integration::require_root_and_tools(&["mount", "umount"]);
    let dir = TestDir::new("gc-full").unwrap();
    let store = dir.join("tmpfs");
    let _fs = Tmpfs::mount(&store, "32m");
    let origin = TestOrigin::start().await.unwrap();
    // GC off, so only the failure can give the space back.
    let mut agent = Agent::start(
        &dir,
        "dfdaemon",
        &format!(
            "storage:\n  dir: {}\ngc:\n  interval: 1h\n",
            store.display()
        ),
    )
    .await
    .unwrap();
    let (small, _) = blob(&origin, 60, 4 * MIB, ObjectOptions::default());
    fetch(&agent, &origin, &small).await;
    let (big, big_digest) = blob(&origin, 61, 48 * MIB, ObjectOptions::default());
    let out = dir.join("big.out");
    let url = format!("{}{big}", origin.base_url());
    let digest = format!("sha256:{big_digest}");
    let agent_ref = &agent;
    let o = tokio::task::block_in_place(|| {
        agent_ref.dfget(&[&url, "--digest", &digest, "-O", out.to_str().unwrap()])
    });
    let stderr = String::from_utf8_lossy(&o.stderr);
    eprintln!("dfget: {stderr}");
    assert!(!o.status.success(), "a 48 MiB download fit in 32 MiB");
    assert!(
        stderr.contains("No space left on device") || stderr.contains("no space"),
        "dfget's error does not say the disk is full: {stderr}"
    );
    // What was stored is still served, from the store.
    let before = origin.requests_for(&small);
    fetch(&agent, &origin, &small).await;
    assert_eq!(
        origin.requests_for(&small),
        before,
        "a stored task went back to the origin"
    );
    // The failed task's pieces were dropped: another 16 MiB fits.
    let (mid, _) = blob(&origin, 62, 16 * MIB, ObjectOptions::default());
    fetch(&agent, &origin, &mid).await;
    // The metadata database, which hit the full disk too, commits again: after a restart
    // both tasks are still served from the store.
    agent.restart().await.unwrap();
    for path in [&small, &mid] {
        let before = origin.requests_for(path);
        fetch(&agent, &origin, path).await;
        assert_eq!(
            origin.requests_for(path),
            before,
            "{path} was not kept across the restart"
        );
    }
}

/// The metadata database on a disk that fills up: commits fail while it is full, the writes
/// are kept and committed once space is back (redb refuses every transaction after an I/O
/// error until it is reopened, which the writer does), and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_writes_that_hit_a_full_disk_are_committed_once_space_is_back() {
    use dfdaemon::storage::metadata::{Metadata, PieceMeta, TaskMeta, TaskStatus};
    integration::require_root_and_tools(&["mount", "umount"]);
    let dir = TestDir::new("gc-meta-full").unwrap();
    let mnt = dir.join("tmpfs");
    let _fs = Tmpfs::mount(&mnt, "4m");
    let path = mnt.join("m.redb");
    let record = |i: u32| TaskMeta {
        id: format!("task-{i}"),
        url: format!("http://origin/{i}"),
        content_length: 1 << 30,
        piece_length: 4 << 20,
        status: TaskStatus::Running,
        digest: None,
        content_type: None,
        // ~20 KiB per record.
        pieces: (0..256)
            .map(|n| {
                (
                    n,
                    PieceMeta {
                        length: 4 << 20,
                        crc32: n,
                    },
                )
            })
            .collect(),
        created_at: 1,
        accessed_at: 2,
    };
    let (m, records) = Metadata::open(&path).unwrap();
    assert!(records.tasks.is_empty());
    m.put(record(0));
    m.sync().await.unwrap();
    // Fill the disk, then write until a commit fails.
    let filler = mnt.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .output()
        .unwrap();
    let mut written = 1;
    let failure = loop {
        assert!(
            written < 200,
            "4 MiB took 200 records of ~20 KiB without a full disk"
        );
        m.put(record(written));
        written += 1;
        if let Err(e) = m.sync().await {
            break e.to_string();
        }
    };
    assert!(
        failure.contains("space") || failure.contains("I/O"),
        "the commit failed for another reason: {failure}"
    );
    eprintln!("commit {written} failed: {failure}");
    assert!(m.pending() > 0, "the failed writes were dropped");
    // Space is back: the next commit carries the failed writes.
    std::fs::remove_file(&filler).unwrap();
    m.delete("task-0");
    m.sync().await.unwrap();
    assert_eq!(m.pending(), 0);
    drop(m);
    // Everything but the deleted record is there when the database is opened again (the
    // writer thread lets the file go once its channel is closed).
    let records = wait_for_value(Duration::from_secs(10), "the writer to close", || {
        Metadata::open(&path).ok().map(|(_, r)| r)
    })
    .await;
    let mut ids: Vec<_> = records.tasks.iter().map(|t| t.id.clone()).collect();
    ids.sort();
    let mut want: Vec<_> = (1..written).map(|i| format!("task-{i}")).collect();
    want.sort();
    assert_eq!(ids, want);
    assert!(records.tasks.iter().all(|t| t.pieces.len() == 256));
}

async fn wait_for_value<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
