//! Tasks: one piece of content, with the DAG of the peers downloading it.

use std::collections::BTreeSet;
use std::time::SystemTime;

use super::{PeerId, TaskId, UploadReservation};
use crate::dag::Dag;
use crate::fsm::TaskState;

/// Largest content, in bytes, that counts as a tiny task.
pub const TINY_FILE_SIZE: u64 = 128;

/// Size class of a task (`common.v2.SizeScope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SizeScope {
    /// More than one piece.
    Normal,
    /// Exactly one piece.
    Small,
    /// At most 128 bytes.
    Tiny,
    /// 0 bytes.
    Empty,
    /// Length or piece count not known yet.
    Unknown,
}

/// What a registering peer knows about its task (`Download.actual_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskInfo {
    /// Content length in bytes.
    pub content_length: Option<u64>,
    /// Piece length in bytes.
    pub piece_length: Option<u64>,
    /// Number of pieces.
    pub total_pieces: Option<u32>,
}

/// A task and the DAG of its peers.
#[derive(Debug, Clone)]
pub struct Task {
    pub(crate) id: TaskId,
    pub(crate) state: TaskState,
    pub(crate) content_length: Option<u64>,
    pub(crate) piece_length: Option<u64>,
    pub(crate) total_pieces: Option<u32>,
    pub(crate) dag: Dag<UploadReservation>,
    pub(crate) back_to_source_peers: BTreeSet<PeerId>,
    pub(crate) back_to_source_total: u64,
    pub(crate) peer_failed_count: u32,
    pub(crate) seed_peer_failed_at: Option<SystemTime>,
    pub(crate) created_at: SystemTime,
    pub(crate) updated_at: SystemTime,
}

impl Task {
    pub(crate) fn new(id: TaskId, info: TaskInfo, now: SystemTime) -> Task {
        Task {
            id,
            state: TaskState::Pending,
            content_length: info.content_length,
            piece_length: info.piece_length,
            total_pieces: info.total_pieces,
            dag: Dag::new(),
            back_to_source_peers: BTreeSet::new(),
            back_to_source_total: 0,
            peer_failed_count: 0,
            seed_peer_failed_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Fills in figures the task did not know yet; known figures are kept (the first peer to
    /// report them wins, as every peer of a task computes the same values).
    pub(crate) fn learn(&mut self, info: TaskInfo) {
        self.content_length = self.content_length.or(info.content_length);
        self.piece_length = self.piece_length.or(info.piece_length);
        self.total_pieces = self.total_pieces.or(info.total_pieces);
    }

    /// Task ID.
    pub fn id(&self) -> &TaskId {
        &self.id
    }

    /// Current state.
    pub fn state(&self) -> TaskState {
        self.state
    }

    /// Content length, if known.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// Piece length, if known.
    pub fn piece_length(&self) -> Option<u64> {
        self.piece_length
    }

    /// Number of pieces, if known.
    pub fn total_pieces(&self) -> Option<u32> {
        self.total_pieces
    }

    /// Size class, from the content length and piece count.
    pub fn size_scope(&self) -> SizeScope {
        match (self.content_length, self.total_pieces) {
            (Some(0), _) => SizeScope::Empty,
            (Some(len), _) if len <= TINY_FILE_SIZE => SizeScope::Tiny,
            (Some(_), Some(1)) => SizeScope::Small,
            (Some(_), Some(_)) => SizeScope::Normal,
            _ => SizeScope::Unknown,
        }
    }

    /// The peers of the task and who downloads from whom.
    pub fn dag(&self) -> &Dag<UploadReservation> {
        &self.dag
    }

    /// Number of peers.
    pub fn peer_count(&self) -> usize {
        self.dag.len()
    }

    /// Peers holding an origin slot: told to go to the origin or doing so, or done from it.
    pub fn back_to_source_peers(&self) -> &BTreeSet<PeerId> {
        &self.back_to_source_peers
    }

    /// Origin slots ever given out for this task (seed peers triggered included).
    pub fn back_to_source_total(&self) -> u64 {
        self.back_to_source_total
    }

    /// Origin downloads that failed since the last success.
    pub fn peer_failed_count(&self) -> u32 {
        self.peer_failed_count
    }

    /// When a seed peer of this task last failed.
    pub fn seed_peer_failed_at(&self) -> Option<SystemTime> {
        self.seed_peer_failed_at
    }

    /// Creation time.
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }

    /// Last change (peer added or removed, state change).
    pub fn updated_at(&self) -> SystemTime {
        self.updated_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(content_length: Option<u64>, total_pieces: Option<u32>) -> Task {
        Task::new(
            TaskId::from("t"),
            TaskInfo {
                content_length,
                piece_length: Some(4 << 20),
                total_pieces,
            },
            SystemTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn size_scopes() {
        assert_eq!(task(Some(0), Some(0)).size_scope(), SizeScope::Empty);
        assert_eq!(task(Some(128), Some(1)).size_scope(), SizeScope::Tiny);
        assert_eq!(task(Some(129), Some(1)).size_scope(), SizeScope::Small);
        assert_eq!(task(Some(9 << 20), Some(3)).size_scope(), SizeScope::Normal);
        assert_eq!(task(None, None).size_scope(), SizeScope::Unknown);
        assert_eq!(task(Some(1 << 30), None).size_scope(), SizeScope::Unknown);
    }

    #[test]
    fn learn_fills_only_unknown_figures() {
        let mut t = task(None, None);
        t.learn(TaskInfo {
            content_length: Some(10 << 20),
            piece_length: Some(1),
            total_pieces: Some(3),
        });
        assert_eq!(t.content_length(), Some(10 << 20));
        assert_eq!(t.piece_length(), Some(4 << 20), "known value kept");
        assert_eq!(t.total_pieces(), Some(3));
    }
}
