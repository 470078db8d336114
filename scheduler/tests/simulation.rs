//! Drives the scheduling core with 5,000 virtual peers downloading one task, with two seed
//! peers, in virtual time: peers register in random order, get parents or go to the origin,
//! report pieces, some are rescheduled away from their parents, some fail, most finish and
//! become parents themselves. Asserts on the resulting DAG and origin use.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use scheduler::{
    BackToSourceReason, HostId, HostInfo, HostType, PeerId, PeerState, PieceFinished,
    RegisterDecision, RegisterPeer, ScheduleDecision, Scheduler, SchedulerConfig, SeedTrigger,
    TaskId, TaskInfo,
};

const PEERS: usize = 5_000;
const SEEDS: usize = 2;
const BACK_TO_SOURCE_COUNT: u32 = 3;
/// Small upload limits so that hosts fill up and the limit is actually exercised.
const PEER_UPLOAD_LIMIT: u32 = 4;
const SEED_UPLOAD_LIMIT: u32 = 40;
const TASK: &str = "5f0c7a1e9b3d4c2a8e6f1b0d7c9a3e5f2b4d6c8a0e1f3b5d7c9a2e4f6b8d0c1a";
const PIECES: u32 = 256;
/// Registrations spread over this window: a burst, to put the upload limits under pressure.
const ARRIVAL_WINDOW_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Register(usize),
    Schedule(usize),
    Progress(usize),
    Finish(usize),
    BackToSourceFinish(usize),
    SeedRegister(usize),
    SeedFinish(usize),
}

#[derive(Debug, Default)]
struct SimPeer {
    got_parents: bool,
    told_back_to_source: bool,
    rescheduled: bool,
    failed_decision: bool,
}

struct Sim {
    s: Scheduler,
    rng: StdRng,
    now_ms: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    peer_ids: Vec<PeerId>,
    host_ids: Vec<HostId>,
    peers: Vec<SimPeer>,
    triggers: Vec<SeedTrigger>,
    retries: usize,
    reschedules: usize,
    parent_decisions: usize,
    events: usize,
}

fn time(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
}

fn task_info() -> TaskInfo {
    TaskInfo {
        content_length: Some(u64::from(PIECES) * (4 << 20)),
        piece_length: Some(4 << 20),
        total_pieces: Some(PIECES),
    }
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let config = SchedulerConfig {
            back_to_source_count: BACK_TO_SOURCE_COUNT,
            ..SchedulerConfig::default()
        };
        let mut sim = Sim {
            s: Scheduler::new(config),
            rng: StdRng::seed_from_u64(seed),
            now_ms: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            peer_ids: Vec::with_capacity(PEERS),
            host_ids: Vec::with_capacity(PEERS),
            peers: (0..PEERS).map(|_| SimPeer::default()).collect(),
            triggers: Vec::new(),
            retries: 0,
            reschedules: 0,
            parent_decisions: 0,
            events: 0,
        };
        for i in 0..SEEDS {
            let mut info = HostInfo::new(format!("10.1.0.{i}-seed{i}-seed"), HostType::SuperSeed);
            info.concurrent_upload_limit = Some(SEED_UPLOAD_LIMIT);
            info.max_tx_bandwidth = 25_000_000_000;
            info.idc = format!("idc-{}", i % 3);
            info.location = "cn|east".into();
            sim.s.announce_host(info, time(0));
        }
        for i in 0..PEERS {
            let host = HostId::from(format!("10.0.{}.{}-node{i}", i / 250, i % 250));
            let mut info = HostInfo::new(host.clone(), HostType::Normal);
            info.concurrent_upload_limit = Some(PEER_UPLOAD_LIMIT);
            info.max_tx_bandwidth = sim.rng.random_range(1..=10) * 1_000_000_000;
            info.idc = format!("idc-{}", i % 3);
            info.location = format!("cn|{}|rack{}", ["east", "west"][i % 2], i % 7);
            sim.s.announce_host(info, time(0));
            sim.host_ids.push(host);
            sim.peer_ids.push(PeerId::from(format!(
                "10.0.{}.{}-node{i}-peer",
                i / 250,
                i % 250
            )));
        }
        // Random registration order over the arrival window.
        let mut order: Vec<usize> = (0..PEERS).collect();
        order.shuffle(&mut sim.rng);
        for (k, i) in order.into_iter().enumerate() {
            let at = k as u64 * ARRIVAL_WINDOW_MS / PEERS as u64 + sim.rng.random_range(0..12);
            sim.push(at, Event::Register(i));
        }
        sim
    }

    fn push(&mut self, at_ms: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at_ms, self.seq, event)));
    }

    fn after(&mut self, delay_ms: u64, event: Event) {
        self.push(self.now_ms + delay_ms, event);
    }

    fn now(&self) -> SystemTime {
        time(self.now_ms)
    }

    fn run(&mut self) {
        while let Some(Reverse((at, _, event))) = self.queue.pop() {
            self.now_ms = at;
            self.events += 1;
            self.step(event);
            if self.events.is_multiple_of(2_000) {
                self.s.verify_invariants().unwrap();
            }
        }
    }

    fn step(&mut self, event: Event) {
        let now = self.now();
        match event {
            Event::Register(i) => {
                let mut req =
                    RegisterPeer::new(self.peer_ids[i].clone(), TASK, self.host_ids[i].clone());
                req.task = task_info();
                req.concurrent_piece_count = Some(16);
                let r = self.s.register_peer(req, now, &mut self.rng).unwrap();
                assert_eq!(r.peer_id, self.peer_ids[i]);
                if let Some(t) = r.seed_trigger {
                    self.triggers.push(t);
                    self.after(100, Event::SeedRegister(self.triggers.len() - 1));
                }
                match r.decision {
                    RegisterDecision::Schedule(d) => self.handle(i, d),
                    other => panic!("unexpected {other:?}"),
                }
            }
            Event::Schedule(i) => {
                let d = self
                    .s
                    .schedule_candidate_parents(&self.peer_ids[i], now, &mut self.rng)
                    .unwrap();
                self.handle(i, d);
            }
            Event::Progress(i) => {
                let id = self.peer_ids[i].clone();
                for _ in 0..3 {
                    // Mostly steady costs; now and then a stall that marks the peer a bad
                    // parent until its next piece.
                    let cost = if self.rng.random_bool(0.02) {
                        Duration::from_secs(5)
                    } else {
                        Duration::from_millis(self.rng.random_range(50..150))
                    };
                    let piece = PieceFinished {
                        number: self.rng.random_range(0..PIECES),
                        cost,
                    };
                    self.s.download_piece_finished(&id, piece, now).unwrap();
                }
                let d = self.rng.random_range(3_000..10_000);
                self.after(d, Event::Finish(i));
            }
            Event::Finish(i) => {
                let id = self.peer_ids[i].clone();
                let roll: f64 = self.rng.random();
                if roll < 0.08 && !self.peers[i].rescheduled {
                    // Its parents are too slow: ask for others.
                    self.peers[i].rescheduled = true;
                    self.reschedules += 1;
                    let current = self.s.parents_of(&id).unwrap();
                    let d = self
                        .s
                        .reschedule_peer(&id, &current, now, &mut self.rng)
                        .unwrap();
                    self.handle(i, d);
                } else if roll < 0.10 {
                    self.s.download_peer_failed(&id, now).unwrap();
                } else {
                    self.s.download_peer_finished(&id, now).unwrap();
                }
            }
            Event::BackToSourceFinish(i) => {
                self.s
                    .download_peer_back_to_source_finished(&self.peer_ids[i], task_info(), now)
                    .unwrap();
            }
            Event::SeedRegister(k) => {
                let t = self.triggers[k].clone();
                // The seed peer's node agent picks its own peer ID.
                let own = PeerId::from(format!(
                    "{}-own{k}-seed",
                    t.seed_host_id.as_str().trim_end_matches("-seed")
                ));
                let mut req = RegisterPeer::new(own.clone(), t.task_id.clone(), t.seed_host_id);
                req.need_back_to_source = true;
                req.task = task_info();
                let r = self.s.register_peer(req, now, &mut self.rng).unwrap();
                assert_eq!(
                    r.peer_id, t.seed_peer_id,
                    "adopted under the scheduler's ID"
                );
                assert_eq!(
                    r.decision,
                    RegisterDecision::Schedule(ScheduleDecision::NeedBackToSource(
                        BackToSourceReason::TriggeredSeedPeer
                    ))
                );
                self.s
                    .download_peer_back_to_source_started(&own, now)
                    .unwrap();
                self.after(5_000, Event::SeedFinish(k));
            }
            Event::SeedFinish(k) => {
                let t = &self.triggers[k];
                self.s
                    .download_peer_back_to_source_finished(&t.seed_peer_id, task_info(), now)
                    .unwrap();
            }
        }
    }

    fn handle(&mut self, i: usize, d: ScheduleDecision) {
        let now = self.now();
        match d {
            ScheduleDecision::Parents(parents) => {
                assert!(!parents.is_empty() && parents.len() <= 4);
                self.parent_decisions += 1;
                self.peers[i].got_parents = true;
                for p in &parents {
                    let host = self.s.peer(p).unwrap().host_id().clone();
                    let h = self.s.host(&host).unwrap();
                    assert!(
                        h.concurrent_upload_count() <= h.concurrent_upload_limit(),
                        "{host} over its upload limit"
                    );
                }
                self.s
                    .download_peer_started(&self.peer_ids[i], now)
                    .unwrap();
                let d = self.rng.random_range(500..2_000);
                self.after(d, Event::Progress(i));
            }
            ScheduleDecision::NeedBackToSource(_) => {
                self.peers[i].told_back_to_source = true;
                self.s
                    .download_peer_back_to_source_started(&self.peer_ids[i], now)
                    .unwrap();
                self.after(8_000, Event::BackToSourceFinish(i));
            }
            ScheduleDecision::RetryLater(delay) => {
                self.retries += 1;
                self.push(self.now_ms + delay.as_millis() as u64, Event::Schedule(i));
            }
            ScheduleDecision::Fail(reason) => {
                self.peers[i].failed_decision = true;
                eprintln!("peer {i} failed: {reason}");
            }
        }
    }
}

#[test]
fn five_thousand_peers_one_task_two_seeds() {
    let mut sim = Sim::new(20260101);
    sim.run();
    let s = &sim.s;
    s.verify_invariants().unwrap();

    let task = s.task(&TaskId::from(TASK)).unwrap();
    assert_eq!(task.peer_count(), PEERS + sim.triggers.len());

    // One seed peer was triggered, and the origin was asked by no more than
    // backToSourceCount peers (that seed included).
    assert_eq!(sim.triggers.len(), 1, "one trigger for one task");
    let told: usize = sim.peers.iter().filter(|p| p.told_back_to_source).count();
    assert!(
        told + sim.triggers.len() <= BACK_TO_SOURCE_COUNT as usize,
        "{told} peers told to go to the origin plus {} seed triggers",
        sim.triggers.len()
    );
    assert!(task.back_to_source_total() <= u64::from(BACK_TO_SOURCE_COUNT));

    // Every peer got parents or was sent to the origin; none was refused.
    let refused = sim.peers.iter().filter(|p| p.failed_decision).count();
    assert_eq!(refused, 0, "peers whose scheduling failed");
    let served = sim
        .peers
        .iter()
        .filter(|p| p.got_parents || p.told_back_to_source)
        .count();
    assert_eq!(served, PEERS);

    eprintln!(
        "events {}, parent decisions {}, retries {}, reschedules {}, told to origin {}",
        sim.events, sim.parent_decisions, sim.retries, sim.reschedules, told
    );
    // The upload limits were tight enough to matter, and rescheduling happened.
    assert!(sim.retries > 0, "no peer ever had to wait for a parent");
    assert!(sim.reschedules > 100);
    assert!(sim.parent_decisions >= PEERS - told);

    // Everyone ended finished or failed, so every edge (and every reservation) is gone.
    let mut succeeded = 0;
    for id in &sim.peer_ids {
        match s.peer(id).unwrap().state() {
            PeerState::Succeeded => succeeded += 1,
            PeerState::Failed => {}
            other => panic!("{id} ended {other}"),
        }
    }
    assert!(succeeded >= PEERS * 85 / 100, "{succeeded} succeeded");
    assert_eq!(task.dag().edge_count(), 0);
    for h in s.hosts() {
        assert_eq!(h.concurrent_upload_count(), 0, "{}", h.id());
        assert_eq!(h.load().upload_content_length, 0, "{}", h.id());
        assert_eq!(h.load().concurrent_upload_piece_count, 0, "{}", h.id());
    }
    eprintln!(
        "events {}, parent decisions {}, retries {}, reschedules {}, told to origin {}, succeeded {}",
        sim.events, sim.parent_decisions, sim.retries, sim.reschedules, told, succeeded
    );
}
