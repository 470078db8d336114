//! Errors of the scheduler API: each names the host, task or peer it concerns.

use crate::dag::DagError;
use crate::fsm::{PeerState, TransitionError};
use crate::resource::{HostId, PeerId, TaskId};

/// A request the scheduler state cannot carry out. The shell maps these to wire codes
/// (`NotFound`, `FailedPrecondition`, `InvalidArgument`, ...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    /// No host with this ID has announced itself.
    #[error("host {0} not found")]
    HostNotFound(HostId),
    /// No task with this ID is known.
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    /// No peer with this ID is known.
    #[error("peer {0} not found")]
    PeerNotFound(PeerId),
    /// A peer with this ID is registered already.
    #[error("peer {0} is already registered")]
    PeerExists(PeerId),
    /// A peer's state machine refused an event.
    #[error("peer {peer}: {source}")]
    PeerTransition {
        /// The peer.
        peer: PeerId,
        /// The refused transition.
        #[source]
        source: TransitionError,
    },
    /// A task's state machine refused an event.
    #[error("task {task}: {source}")]
    TaskTransition {
        /// The task.
        task: TaskId,
        /// The refused transition.
        #[source]
        source: TransitionError,
    },
    /// Only registered or running peers get parents.
    #[error("peer {peer} is {state} and cannot be scheduled")]
    NotSchedulable {
        /// The peer.
        peer: PeerId,
        /// Its state.
        state: PeerState,
    },
    /// A piece number outside the task.
    #[error("peer {peer} reported piece {number}, but the task has {limit} pieces")]
    PieceOutOfRange {
        /// The reporting peer.
        peer: PeerId,
        /// The reported piece number.
        number: u32,
        /// Number of pieces the task has (or the hard bound when unknown).
        limit: u64,
    },
    /// The DAG of a task refused an operation (an internal inconsistency).
    #[error("dag of task {task}: {source}")]
    Dag {
        /// The task.
        task: TaskId,
        /// What the DAG refused.
        #[source]
        source: DagError,
    },
}
