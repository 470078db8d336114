//! Random sequences of registrations, scheduling rounds, reports, departures, host removals
//! and GC passes never leave a self loop, a host over its upload limit, load counters that
//! disagree with the edges, or more origin slots than `backToSourceCount`; and they never
//! panic, whatever the order (out-of-order reports are errors, not corruption).

use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use scheduler::{
    HostId, HostInfo, HostType, PeerId, PieceFinished, RegisterDecision, RegisterPeer,
    ScheduleDecision, Scheduler, SchedulerConfig, SeedTrigger, TaskInfo,
};

const NORMAL_HOSTS: u8 = 8;
const SEED_HOSTS: u8 = 2;
const TASKS: [&str; 2] = [
    "1111111111111111111111111111111111111111111111111111111111111111",
    "2222222222222222222222222222222222222222222222222222222222222222",
];
const BACK_TO_SOURCE_COUNT: u32 = 2;

#[derive(Debug, Clone)]
enum Op {
    Register {
        host: u8,
        task: u8,
        priority: u8,
    },
    Schedule(u16),
    Reschedule(u16),
    Started(u16),
    BackToSourceStarted(u16),
    Finished(u16),
    BackToSourceFinished(u16),
    Failed(u16),
    BackToSourceFailed(u16),
    Piece {
        peer: u16,
        number: u16,
        cost_ms: u16,
    },
    PieceFailed {
        peer: u16,
        parent: u16,
    },
    Leave(u16),
    Remove(u16),
    RemoveHost(u8),
    Announce {
        host: u8,
        tx_gbps: u8,
    },
    SeedRegister(u16),
    SeedTriggerFailed(u16),
    Gc {
        advance_mins: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u8>(), any::<u8>(), 0u8..7).prop_map(|(host, task, priority)| Op::Register { host, task, priority }),
        5 => any::<u16>().prop_map(Op::Schedule),
        1 => any::<u16>().prop_map(Op::Reschedule),
        3 => any::<u16>().prop_map(Op::Started),
        2 => any::<u16>().prop_map(Op::BackToSourceStarted),
        3 => any::<u16>().prop_map(Op::Finished),
        1 => any::<u16>().prop_map(Op::BackToSourceFinished),
        1 => any::<u16>().prop_map(Op::Failed),
        1 => any::<u16>().prop_map(Op::BackToSourceFailed),
        2 => (any::<u16>(), any::<u16>(), any::<u16>()).prop_map(|(peer, number, cost_ms)| Op::Piece { peer, number, cost_ms }),
        1 => (any::<u16>(), any::<u16>()).prop_map(|(peer, parent)| Op::PieceFailed { peer, parent }),
        1 => any::<u16>().prop_map(Op::Leave),
        1 => any::<u16>().prop_map(Op::Remove),
        1 => any::<u8>().prop_map(Op::RemoveHost),
        1 => (any::<u8>(), 0u8..12).prop_map(|(host, tx_gbps)| Op::Announce { host, tx_gbps }),
        2 => any::<u16>().prop_map(Op::SeedRegister),
        1 => any::<u16>().prop_map(Op::SeedTriggerFailed),
        1 => (0u16..120).prop_map(|advance_mins| Op::Gc { advance_mins }),
    ]
}

struct World {
    s: Scheduler,
    rng: StdRng,
    now: SystemTime,
    peers: Vec<PeerId>,
    /// Peers told to go to the origin (only those report origin downloads here).
    told: Vec<PeerId>,
    triggers: Vec<SeedTrigger>,
    next: u32,
}

fn host_info(h: u8, tx_gbps: u8) -> HostInfo {
    let h = h % (NORMAL_HOSTS + SEED_HOSTS);
    let mut info = if h < NORMAL_HOSTS {
        let mut i = HostInfo::new(format!("10.0.0.{h}-n{h}"), HostType::Normal);
        i.concurrent_upload_limit = Some(2);
        i
    } else {
        let mut i = HostInfo::new(format!("10.0.1.{h}-s{h}-seed"), HostType::SuperSeed);
        i.concurrent_upload_limit = Some(3);
        i
    };
    info.max_tx_bandwidth = 10_000_000_000;
    info.tx_bandwidth = u64::from(tx_gbps) * 1_000_000_000;
    info.idc = format!("idc{}", h % 2);
    info.location = format!("cn|r{}", h % 3);
    info
}

impl World {
    fn new(seed: u64) -> World {
        let config = SchedulerConfig {
            back_to_source_count: BACK_TO_SOURCE_COUNT,
            retry_back_to_source_limit: 2,
            retry_limit: 3,
            piece_costs_window: 5,
            ..SchedulerConfig::default()
        };
        let mut w = World {
            s: Scheduler::new(config),
            rng: StdRng::seed_from_u64(seed),
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            peers: Vec::new(),
            told: Vec::new(),
            triggers: Vec::new(),
            next: 0,
        };
        for h in 0..NORMAL_HOSTS + SEED_HOSTS {
            w.s.announce_host(host_info(h, 0), w.now);
        }
        w
    }

    fn pick(&self, i: u16) -> Option<PeerId> {
        if self.peers.is_empty() {
            None
        } else {
            Some(self.peers[i as usize % self.peers.len()].clone())
        }
    }

    fn note(&mut self, peer: &PeerId, d: &ScheduleDecision) {
        if let ScheduleDecision::NeedBackToSource(_) = d {
            self.told.push(peer.clone());
        }
    }

    fn apply(&mut self, op: Op) {
        self.now += Duration::from_millis(100);
        let now = self.now;
        match op {
            Op::Register {
                host,
                task,
                priority,
            } => {
                let info = host_info(host, 0);
                let id = PeerId::from(format!("{}-peer{}", info.id, self.next));
                self.next += 1;
                let mut req = RegisterPeer::new(
                    id.clone(),
                    TASKS[task as usize % TASKS.len()],
                    info.id.clone(),
                );
                req.task = TaskInfo {
                    content_length: Some(40 << 20),
                    piece_length: Some(4 << 20),
                    total_pieces: Some(10),
                };
                req.priority =
                    scheduler::Priority::from_wire(i32::from(priority)).unwrap_or_default();
                if let Ok(r) = self.s.register_peer(req, now, &mut self.rng) {
                    self.peers.push(r.peer_id.clone());
                    if let Some(t) = r.seed_trigger {
                        self.peers.push(t.seed_peer_id.clone());
                        self.triggers.push(t);
                    }
                    if let RegisterDecision::Schedule(d) = &r.decision {
                        self.note(&r.peer_id, d);
                    }
                }
            }
            Op::Schedule(i) => {
                if let Some(p) = self.pick(i) {
                    if let Ok(d) = self.s.schedule_candidate_parents(&p, now, &mut self.rng) {
                        self.note(&p, &d);
                    }
                }
            }
            Op::Reschedule(i) => {
                if let Some(p) = self.pick(i) {
                    let parents = self.s.parents_of(&p).unwrap_or_default();
                    if let Ok(d) = self.s.reschedule_peer(&p, &parents, now, &mut self.rng) {
                        self.note(&p, &d);
                    }
                }
            }
            Op::Started(i) => {
                if let Some(p) = self.pick(i) {
                    let _ = self.s.download_peer_started(&p, now);
                }
            }
            Op::BackToSourceStarted(i) => {
                if !self.told.is_empty() {
                    let p = self.told[i as usize % self.told.len()].clone();
                    let _ = self.s.download_peer_back_to_source_started(&p, now);
                }
            }
            Op::Finished(i) => {
                if let Some(p) = self.pick(i) {
                    let _ = self.s.download_peer_finished(&p, now);
                }
            }
            Op::BackToSourceFinished(i) => {
                if let Some(p) = self.pick(i) {
                    let _ =
                        self.s
                            .download_peer_back_to_source_finished(&p, TaskInfo::default(), now);
                }
            }
            Op::Failed(i) => {
                if let Some(p) = self.pick(i) {
                    let _ = self.s.download_peer_failed(&p, now);
                }
            }
            Op::BackToSourceFailed(i) => {
                if let Some(p) = self.pick(i) {
                    let _ = self.s.download_peer_back_to_source_failed(&p, now);
                }
            }
            Op::Piece {
                peer,
                number,
                cost_ms,
            } => {
                if let Some(p) = self.pick(peer) {
                    let _ = self.s.download_piece_finished(
                        &p,
                        PieceFinished {
                            number: u32::from(number % 12),
                            cost: Duration::from_millis(u64::from(cost_ms)),
                        },
                        now,
                    );
                }
            }
            Op::PieceFailed { peer, parent } => {
                if let (Some(p), Some(q)) = (self.pick(peer), self.pick(parent)) {
                    let _ = self.s.download_piece_failed(&p, Some(&q), now);
                }
            }
            Op::Leave(i) => {
                if let Some(p) = self.pick(i) {
                    let _ = self.s.leave_peer(&p, now);
                }
            }
            Op::Remove(i) => {
                if let Some(p) = self.pick(i) {
                    let _ = self.s.remove_peer(&p, now);
                }
            }
            Op::RemoveHost(h) => {
                let _ = self.s.remove_host(&host_info(h, 0).id, now);
            }
            Op::Announce { host, tx_gbps } => {
                // Limits stay as they were: only load figures change.
                self.s.announce_host(host_info(host, tx_gbps), now);
            }
            Op::SeedRegister(k) => {
                if !self.triggers.is_empty() {
                    let t = self.triggers[k as usize % self.triggers.len()].clone();
                    let own = PeerId::from(format!("{}-own{}", t.seed_host_id, self.next));
                    self.next += 1;
                    let mut req = RegisterPeer::new(own, t.task_id, t.seed_host_id);
                    req.need_back_to_source = true;
                    if let Ok(r) = self.s.register_peer(req, now, &mut self.rng) {
                        if !self.peers.contains(&r.peer_id) {
                            self.peers.push(r.peer_id.clone());
                        }
                        if let RegisterDecision::Schedule(d) = &r.decision {
                            self.note(&r.peer_id, d);
                        }
                    }
                }
            }
            Op::SeedTriggerFailed(k) => {
                if !self.triggers.is_empty() {
                    let t = &self.triggers[k as usize % self.triggers.len()];
                    let _ = self.s.seed_trigger_failed(&t.seed_peer_id, now);
                }
            }
            Op::Gc { advance_mins } => {
                self.now += Duration::from_secs(u64::from(advance_mins) * 60);
                let d = self.s.collect_garbage(self.now);
                self.s
                    .apply_gc(&d, self.now)
                    .expect("applying a fresh GC decision");
                // Hosts come back (re-announced) after a GC pass.
                for h in 0..NORMAL_HOSTS + SEED_HOSTS {
                    if self.s.host(&host_info(h, 0).id).is_none() {
                        self.s.announce_host(host_info(h, 0), self.now);
                    }
                }
            }
        }
    }

    fn check(&self) -> Result<(), TestCaseError> {
        self.s
            .verify_invariants()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for task in self.s.tasks() {
            prop_assert!(
                task.back_to_source_peers().len() <= BACK_TO_SOURCE_COUNT as usize,
                "task {} has {} origin slots taken",
                task.id(),
                task.back_to_source_peers().len()
            );
        }
        for host in self.s.hosts() {
            prop_assert!(
                host.concurrent_upload_count() <= host.concurrent_upload_limit(),
                "host {} over its limit",
                host.id()
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_operations_keep_hosts_within_limits_and_counters_consistent(
        seed in any::<u64>(),
        ops in prop::collection::vec(op(), 1..150),
    ) {
        let mut w = World::new(seed);
        for op in ops {
            w.apply(op);
            w.check()?;
        }
    }
}

#[test]
fn unknown_hosts_and_peers_are_errors_not_panics() {
    let mut w = World::new(1);
    let now = w.now;
    let ghost = PeerId::from("ghost");
    assert!(w.s.download_peer_started(&ghost, now).is_err());
    assert!(w.s.leave_peer(&ghost, now).is_err());
    assert!(w
        .s
        .register_peer(
            RegisterPeer::new("p", TASKS[0], HostId::from("nope")),
            now,
            &mut w.rng
        )
        .is_err());
}
