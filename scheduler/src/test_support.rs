//! Builders shared by the unit tests.

use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::fsm::PeerState;
use crate::resource::{HostId, HostInfo, HostType, PeerId, TaskInfo};
use crate::scheduling::{RegisterDecision, RegisterPeer, Registration, ScheduleDecision};
use crate::state::Scheduler;

pub(crate) const TASK: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub(crate) const GBPS: u64 = 1_000_000_000;

/// A fixed point in time plus `secs`.
pub(crate) fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

pub(crate) fn rng() -> StdRng {
    StdRng::seed_from_u64(0x5eed)
}

/// 1 GiB in 256 pieces of 4 MiB.
pub(crate) fn task_info() -> TaskInfo {
    TaskInfo {
        content_length: Some(1 << 30),
        piece_length: Some(4 << 20),
        total_pieces: Some(256),
    }
}

pub(crate) fn normal_host(s: &mut Scheduler, name: &str) -> HostId {
    let mut info = HostInfo::new(format!("10.0.0.1-{name}"), HostType::Normal);
    info.max_tx_bandwidth = 10 * GBPS;
    let id = info.id.clone();
    s.announce_host(info, at(0));
    id
}

pub(crate) fn seed_host(s: &mut Scheduler, name: &str) -> HostId {
    let mut info = HostInfo::new(format!("10.0.1.1-{name}-seed"), HostType::SuperSeed);
    info.max_tx_bandwidth = 10 * GBPS;
    let id = info.id.clone();
    s.announce_host(info, at(0));
    id
}

pub(crate) fn register(s: &mut Scheduler, peer: &str, host: &HostId) -> Registration {
    let mut req = RegisterPeer::new(peer, TASK, host.clone());
    req.task = task_info();
    s.register_peer(req, at(1), &mut rng()).unwrap()
}

pub(crate) fn decision(r: &Registration) -> &ScheduleDecision {
    match &r.decision {
        RegisterDecision::Schedule(d) => d,
        other => panic!("not a scheduling decision: {other:?}"),
    }
}

/// Forces a peer's state, bypassing the state machine (to set up a scenario).
pub(crate) fn force_state(s: &mut Scheduler, peer: &str, state: PeerState) {
    s.peers.get_mut(&PeerId::from(peer)).unwrap().state = state;
}

pub(crate) fn pid(s: &str) -> PeerId {
    PeerId::from(s)
}
