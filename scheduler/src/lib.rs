//! Dragonfly v2 scheduler: hosts, tasks, peers, parent selection, seed-peer triggering.
//!
//! This crate's core is sans-IO: [`Scheduler`] holds hosts, tasks (each with a DAG of its
//! peers) and peers in memory, and every operation takes the current time (and, where chance
//! is involved, a random number generator) and returns a decision. Waiting, timers, gRPC and
//! the calls to seed peers belong to the shell, which makes the core cheap to test and to
//! drive with thousands of simulated peers.
//!
//! - [`resource`]: hosts, tasks, peers and their identifiers;
//! - [`fsm`]: peer and task state machines with checked transitions;
//! - [`dag`]: the per-task graph of who downloads from whom (peers downloading together may be
//!   each other's parents);
//! - [`evaluator`]: the load-aware parent score and the bad-parent test;
//! - [`scheduling`]: registration, candidate filtering, ranking, the back-to-source policy and
//!   seed peer triggering;
//! - [`hashring`]: consistent hashing of task IDs over seed peers;
//! - [`register_delay`](mod@register_delay): registration delay against thundering herds;
//! - [`gc`]: what to reclaim, as a function of time;
//! - [`config`]: the policy (`scheduler:` config section);
//! - [`swarm_sim`]: a simulation of one swarm on equal links (this core plus the children's
//!   piece choice), which predicts `hack/bench/p2p.sh`.

#![warn(missing_docs)]

pub mod announcer;
pub mod config;
pub mod dag;
mod error;
pub mod evaluator;
pub mod file_config;
pub mod fsm;
pub mod gc;
pub mod hashring;
pub mod jobs;
pub mod metrics;
pub mod register_delay;
pub mod resource;
pub mod scheduling;
pub mod service;
mod state;
pub mod swarm_sim;
#[cfg(test)]
mod test_support;

pub use config::{ClusterConfig, GcConfig, RegisterDelayConfig, SchedulerConfig};
pub use error::SchedulerError;
pub use fsm::{PeerEvent, PeerState, TaskEvent, TaskState, TransitionError};
pub use gc::{GcDecisions, PeerGcReason};
pub use register_delay::register_delay;
pub use resource::{
    Host, HostId, HostInfo, HostLoad, HostType, Peer, PeerId, Priority, SizeScope, Task, TaskId,
    TaskInfo,
};
pub use scheduling::{
    BackToSourceReason, FailReason, FilterOutcome, RegisterDecision, RegisterPeer, Registration,
    RejectReason, ScheduleDecision, ScoredParent, SeedTrigger,
};
pub use state::{InvariantViolation, PieceFinished, Scheduler};
