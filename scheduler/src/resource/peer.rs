//! Peers: one host downloading one task.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, SystemTime};

use super::{HostId, PeerId, TaskId};
use crate::fsm::PeerState;

/// Highest piece number accepted from a report when the task's piece count is unknown: bounds
/// the finished-piece bitmap at 2 MiB per peer whatever a client sends.
pub const MAX_PIECE_NUMBER: u32 = (1 << 24) - 1;

/// Download priority (`common.v2.Priority`). It matters only when a task has no peer to serve
/// it yet: it says whether a seed peer is triggered, the peer itself goes to the origin, or
/// the download is refused (reference 5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    /// Default: as `Level6` (trigger a seed peer).
    #[default]
    Level0,
    /// Downloads are forbidden.
    Level1,
    /// Never from the origin: only from other peers.
    Level2,
    /// The peer itself goes to the origin.
    Level3,
    /// Trigger a seed peer; the peer goes to the origin if the seed peer failed recently.
    Level4,
    /// As `Level4`.
    Level5,
    /// As `Level4`.
    Level6,
}

impl Priority {
    /// The priority for a wire value 0-6; anything else is unknown.
    pub fn from_wire(value: i32) -> Option<Priority> {
        Some(match value {
            0 => Priority::Level0,
            1 => Priority::Level1,
            2 => Priority::Level2,
            3 => Priority::Level3,
            4 => Priority::Level4,
            5 => Priority::Level5,
            6 => Priority::Level6,
            _ => return None,
        })
    }
}

/// The set of piece numbers a peer holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PieceSet {
    words: Vec<u64>,
    count: u32,
}

impl PieceSet {
    /// Marks `number` as held; returns whether it was new. Callers bound `number` first
    /// (the bitmap grows to fit it).
    pub(crate) fn insert(&mut self, number: u32) -> bool {
        let word = (number / 64) as usize;
        let bit = 1u64 << (number % 64);
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        if self.words[word] & bit != 0 {
            return false;
        }
        self.words[word] |= bit;
        self.count += 1;
        true
    }

    /// Whether `number` is held.
    pub fn contains(&self, number: u32) -> bool {
        let word = (number / 64) as usize;
        self.words
            .get(word)
            .is_some_and(|w| w & (1u64 << (number % 64)) != 0)
    }

    /// How many pieces are held.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether no piece is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The most recent piece download costs of a peer, used to spot a parent that has turned slow
/// (reference 2.1, bad parent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceCosts {
    capacity: usize,
    costs: VecDeque<Duration>,
}

impl PieceCosts {
    /// An empty window keeping the last `capacity` costs (at least 2).
    pub fn new(capacity: usize) -> PieceCosts {
        PieceCosts {
            capacity: capacity.max(2),
            costs: VecDeque::new(),
        }
    }

    /// Records a cost, dropping the oldest when the window is full.
    pub fn push(&mut self, cost: Duration) {
        if self.costs.len() == self.capacity {
            self.costs.pop_front();
        }
        self.costs.push_back(cost);
    }

    /// Costs recorded (at most the capacity).
    pub fn len(&self) -> usize {
        self.costs.len()
    }

    /// Whether no cost is recorded.
    pub fn is_empty(&self) -> bool {
        self.costs.is_empty()
    }

    /// Whether the window holds `capacity` costs.
    pub fn is_full(&self) -> bool {
        self.costs.len() == self.capacity
    }

    /// The newest cost, in seconds.
    pub fn last_secs(&self) -> Option<f64> {
        self.costs.back().map(Duration::as_secs_f64)
    }

    /// Mean and population standard deviation of all costs but the newest, in seconds;
    /// `None` with fewer than two costs.
    pub fn stats_excluding_last(&self) -> Option<(f64, f64)> {
        let n = self.costs.len().checked_sub(1).filter(|n| *n > 0)?;
        let older = || self.costs.iter().take(n).map(Duration::as_secs_f64);
        let mean = older().sum::<f64>() / n as f64;
        let var = older().map(|c| (c - mean) * (c - mean)).sum::<f64>() / n as f64;
        Some((mean, var.sqrt()))
    }
}

/// A peer: one host downloading one task.
#[derive(Debug, Clone)]
pub struct Peer {
    pub(crate) id: PeerId,
    pub(crate) task_id: TaskId,
    pub(crate) host_id: HostId,
    pub(crate) state: PeerState,
    pub(crate) priority: Priority,
    pub(crate) concurrent_piece_count: u32,
    pub(crate) finished_pieces: PieceSet,
    pub(crate) piece_costs: PieceCosts,
    pub(crate) block_parents: BTreeSet<PeerId>,
    pub(crate) need_back_to_source: bool,
    pub(crate) schedule_attempts: u32,
    pub(crate) awaiting_seed_registration: bool,
    pub(crate) registered_as: Option<PeerId>,
    pub(crate) created_at: SystemTime,
    pub(crate) updated_at: SystemTime,
    pub(crate) piece_updated_at: SystemTime,
}

impl Peer {
    pub(crate) fn new(
        id: PeerId,
        task_id: TaskId,
        host_id: HostId,
        costs_window: usize,
        now: SystemTime,
    ) -> Peer {
        Peer {
            id,
            task_id,
            host_id,
            state: PeerState::Pending,
            priority: Priority::Level0,
            concurrent_piece_count: crate::config::DEFAULT_CONCURRENT_PIECE_COUNT,
            finished_pieces: PieceSet::default(),
            piece_costs: PieceCosts::new(costs_window),
            block_parents: BTreeSet::new(),
            need_back_to_source: false,
            schedule_attempts: 0,
            awaiting_seed_registration: false,
            registered_as: None,
            created_at: now,
            updated_at: now,
            piece_updated_at: now,
        }
    }

    /// Peer ID.
    pub fn id(&self) -> &PeerId {
        &self.id
    }

    /// The task the peer downloads.
    pub fn task_id(&self) -> &TaskId {
        &self.task_id
    }

    /// The host the peer runs on.
    pub fn host_id(&self) -> &HostId {
        &self.host_id
    }

    /// Current state.
    pub fn state(&self) -> PeerState {
        self.state
    }

    /// Requested priority.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// Pieces the peer fetches at once.
    pub fn concurrent_piece_count(&self) -> u32 {
        self.concurrent_piece_count
    }

    /// Pieces the peer reported finished.
    pub fn finished_pieces(&self) -> &PieceSet {
        &self.finished_pieces
    }

    /// Recent piece download costs.
    pub fn piece_costs(&self) -> &PieceCosts {
        &self.piece_costs
    }

    /// Parents this peer must not be given again (itself, parents that failed it).
    pub fn block_parents(&self) -> &BTreeSet<PeerId> {
        &self.block_parents
    }

    /// Whether the peer is to fetch from the origin when the task allows it.
    pub fn need_back_to_source(&self) -> bool {
        self.need_back_to_source
    }

    /// Scheduling rounds in a row that found no parent.
    pub fn schedule_attempts(&self) -> u32 {
        self.schedule_attempts
    }

    /// Whether this is a seed peer the scheduler triggered and whose node agent has not
    /// registered it yet.
    pub fn awaiting_seed_registration(&self) -> bool {
        self.awaiting_seed_registration
    }

    /// For a triggered seed peer: the ID its node agent registered with, which the scheduler
    /// maps to this peer's ID (the one children were already given).
    pub fn registered_as(&self) -> Option<&PeerId> {
        self.registered_as.as_ref()
    }

    /// Registration time.
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }

    /// Last state change or report.
    pub fn updated_at(&self) -> SystemTime {
        self.updated_at
    }

    /// Last finished piece (registration time before the first).
    pub fn piece_updated_at(&self) -> SystemTime {
        self.piece_updated_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_set_counts_each_piece_once() {
        let mut s = PieceSet::default();
        assert!(s.is_empty());
        assert!(s.insert(0));
        assert!(s.insert(64));
        assert!(s.insert(1000));
        assert!(!s.insert(64));
        assert_eq!(s.len(), 3);
        assert!(s.contains(1000));
        assert!(!s.contains(999));
        assert!(!s.contains(1 << 20), "beyond the bitmap is absent");
    }

    #[test]
    fn piece_costs_window_drops_oldest() {
        let mut c = PieceCosts::new(3);
        assert_eq!(c.stats_excluding_last(), None);
        c.push(Duration::from_secs(1));
        assert_eq!(
            c.stats_excluding_last(),
            None,
            "one cost: nothing to compare"
        );
        c.push(Duration::from_secs(3));
        assert_eq!(c.stats_excluding_last(), Some((1.0, 0.0)));
        c.push(Duration::from_secs(5));
        assert!(c.is_full());
        // Older costs 1 and 3: mean 2, population deviation 1.
        assert_eq!(c.stats_excluding_last(), Some((2.0, 1.0)));
        c.push(Duration::from_secs(7));
        assert_eq!(c.len(), 3);
        assert_eq!(c.last_secs(), Some(7.0));
        assert_eq!(c.stats_excluding_last(), Some((4.0, 1.0)));
        assert_eq!(PieceCosts::new(0).capacity, 2);
    }

    #[test]
    fn priorities_from_wire() {
        assert_eq!(Priority::from_wire(0), Some(Priority::Level0));
        assert_eq!(Priority::from_wire(6), Some(Priority::Level6));
        assert_eq!(Priority::from_wire(7), None);
        assert_eq!(Priority::from_wire(-1), None);
    }
}
