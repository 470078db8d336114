//! hack/bench/scheduler.sh: scheduling decision latency and memory of the
//! scheduler core with 10,000 simulated peers announcing over 100 tasks.
//! Prints percentiles; never fails on timing.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scheduler::{
    HostId, HostInfo, HostType, PieceFinished, RegisterDecision, RegisterPeer, ScheduleDecision,
    Scheduler, SchedulerConfig, TaskInfo,
};
use std::time::{Duration, Instant, SystemTime};

const PEERS: usize = 10_000;
const TASKS: usize = 100;
const SEEDS: usize = 4;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut s = Scheduler::new(SchedulerConfig::default());
    let now = SystemTime::now();
    for i in 0..SEEDS {
        s.announce_host(
            HostInfo::new(format!("10.1.0.{i}-seed{i}-seed"), HostType::SuperSeed),
            now,
        );
    }
    let hosts: Vec<HostId> = (0..PEERS)
        .map(|i| {
            let id = HostId::from(format!("10.0.{}.{}-node{i}", i / 250, i % 250));
            let mut info = HostInfo::new(id.clone(), HostType::Normal);
            info.max_tx_bandwidth = rng.random_range(1..=10) * 1_000_000_000;
            info.idc = format!("idc-{}", i % 3);
            s.announce_host(info, now);
            id
        })
        .collect();
    let tasks: Vec<String> = (0..TASKS).map(|t| format!("{t:064x}")).collect();
    let info = TaskInfo {
        content_length: Some(256 * (4 << 20)),
        piece_length: Some(4 << 20),
        total_pieces: Some(256),
    };
    let mut decisions = Vec::with_capacity(PEERS);
    let mut parents_given = 0usize;
    for (i, host) in hosts.iter().enumerate() {
        let task = &tasks[i % TASKS];
        let mut reg = RegisterPeer::new(format!("{host}-peer"), task.clone(), host.clone());
        reg.task = info;
        let t0 = Instant::now();
        let r = s.register_peer(reg, now, &mut rng);
        decisions.push(t0.elapsed());
        let Ok(r) = r else { continue };
        if let RegisterDecision::Schedule(ScheduleDecision::Parents(p)) = &r.decision {
            parents_given += p.len();
        }
        // Some peers make progress and become parents for later ones.
        if i % 3 == 0 {
            let _ = s.download_peer_back_to_source_started(&r.peer_id, now);
            for n in 0..8 {
                let _ = s.download_piece_finished(
                    &r.peer_id,
                    PieceFinished {
                        number: n,
                        cost: Duration::from_millis(80),
                    },
                    now,
                );
            }
        }
    }
    decisions.sort();
    println!(
        "# scheduler core: {PEERS} peers on {PEERS} hosts over {TASKS} tasks, {SEEDS} seed hosts"
    );
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!(
        "| register+schedule decision p50 | {:?} | |",
        pct(&decisions, 0.50)
    );
    println!(
        "| register+schedule decision p99 | {:?} | <= 1 ms |",
        pct(&decisions, 0.99)
    );
    println!("| decision max | {:?} | |", pct(&decisions, 1.0));
    println!("| candidate parents handed out | {parents_given} | |");
    println!("| peak RSS | {:.1} MB | <= 500 MB |", peak_rss_mb());
}
