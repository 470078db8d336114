//! State machines of peers and tasks (reference 1.2), with checked transitions.
//!
//! The tables are Dragonfly's (`scheduler/resource/standard/{peer,task}.go`): an event that is
//! not allowed in the current state is an error and leaves the state unchanged. Side effects
//! (edges removed, back-to-source slots released) belong to the scheduler state, not to the
//! machine, so these types are plain values.

use std::fmt;

/// Which state machine refused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// The peer state machine.
    Peer,
    /// The task state machine.
    Task,
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Machine::Peer => "peer",
            Machine::Task => "task",
        })
    }
}

/// An event that the current state does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{machine} event {event} is not allowed in state {state}")]
pub struct TransitionError {
    /// The machine that refused the event.
    pub machine: Machine,
    /// The state the machine was in (Dragonfly's name).
    pub state: &'static str,
    /// The refused event (Dragonfly's name).
    pub event: &'static str,
}

/// State of a peer (one host downloading one task).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerState {
    /// Created, not registered yet.
    Pending,
    /// Registered for an empty (0 byte) task.
    ReceivedEmpty,
    /// Registered for a tiny (at most 128 bytes) task.
    ReceivedTiny,
    /// Registered for a small (one piece) task.
    ReceivedSmall,
    /// Registered for a normal (several pieces, or unknown size) task.
    ReceivedNormal,
    /// Downloading from parents.
    Running,
    /// Downloading from the origin.
    BackToSource,
    /// Holds the whole task.
    Succeeded,
    /// Download failed.
    Failed,
    /// Gone; waiting to be reclaimed.
    Leave,
}

/// Events that move a peer between states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerEvent {
    /// Registered as an empty task.
    RegisterEmpty,
    /// Registered as a tiny task.
    RegisterTiny,
    /// Registered as a small task.
    RegisterSmall,
    /// Registered as a normal task.
    RegisterNormal,
    /// Started downloading from parents.
    Download,
    /// Started downloading from the origin.
    DownloadBackToSource,
    /// Finished the download.
    DownloadSucceeded,
    /// The download failed.
    DownloadFailed,
    /// The peer left.
    Leave,
}

impl PeerState {
    /// Dragonfly's name of the state, as sent in `common.v2.Peer.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Pending => "Pending",
            PeerState::ReceivedEmpty => "ReceivedEmpty",
            PeerState::ReceivedTiny => "ReceivedTiny",
            PeerState::ReceivedSmall => "ReceivedSmall",
            PeerState::ReceivedNormal => "ReceivedNormal",
            PeerState::Running => "Running",
            PeerState::BackToSource => "BackToSource",
            PeerState::Succeeded => "Succeeded",
            PeerState::Failed => "Failed",
            PeerState::Leave => "Leave",
        }
    }

    /// Whether the peer is in one of the four `Received*` states.
    pub fn is_received(self) -> bool {
        matches!(
            self,
            PeerState::ReceivedEmpty
                | PeerState::ReceivedTiny
                | PeerState::ReceivedSmall
                | PeerState::ReceivedNormal
        )
    }

    /// The state `event` leads to, or an error if `event` is not allowed here.
    pub fn on(self, event: PeerEvent) -> Result<PeerState, TransitionError> {
        use PeerState as S;
        let next = match (event, self) {
            (PeerEvent::RegisterEmpty, S::Pending) => Some(S::ReceivedEmpty),
            (PeerEvent::RegisterTiny, S::Pending) => Some(S::ReceivedTiny),
            (PeerEvent::RegisterSmall, S::Pending) => Some(S::ReceivedSmall),
            (PeerEvent::RegisterNormal, S::Pending) => Some(S::ReceivedNormal),
            (PeerEvent::Download, s) if s.is_received() => Some(S::Running),
            (PeerEvent::DownloadBackToSource, s) if s.is_received() || s == S::Running => {
                Some(S::BackToSource)
            }
            // Results may be reported before the start message (Dragonfly accepts that too).
            (PeerEvent::DownloadSucceeded, s)
                if s.is_received() || s == S::Running || s == S::BackToSource =>
            {
                Some(S::Succeeded)
            }
            (PeerEvent::DownloadFailed, s) if s != S::Failed && s != S::Leave => Some(S::Failed),
            (PeerEvent::Leave, s) if s != S::Leave => Some(S::Leave),
            _ => None,
        };
        next.ok_or(TransitionError {
            machine: Machine::Peer,
            state: self.as_str(),
            event: event.as_str(),
        })
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PeerEvent {
    /// Dragonfly's name of the event.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerEvent::RegisterEmpty => "RegisterEmpty",
            PeerEvent::RegisterTiny => "RegisterTiny",
            PeerEvent::RegisterSmall => "RegisterSmall",
            PeerEvent::RegisterNormal => "RegisterNormal",
            PeerEvent::Download => "Download",
            PeerEvent::DownloadBackToSource => "DownloadBackToSource",
            PeerEvent::DownloadSucceeded => "DownloadSucceeded",
            PeerEvent::DownloadFailed => "DownloadFailed",
            PeerEvent::Leave => "Leave",
        }
    }
}

/// State of a task (one piece of content, shared by its peers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskState {
    /// Created, nobody downloading yet.
    Pending,
    /// Some peer is downloading (from the origin, a seed peer or other peers).
    Running,
    /// Some peer fetched the whole task from the origin.
    Succeeded,
    /// The last origin download failed.
    Failed,
    /// The task has no peers.
    Leave,
}

/// Events that move a task between states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskEvent {
    /// A peer registered for the task.
    Download,
    /// An origin download of the task finished.
    DownloadSucceeded,
    /// An origin download of the task failed.
    DownloadFailed,
    /// The task lost its peers.
    Leave,
}

impl TaskState {
    /// Dragonfly's name of the state, as sent in `common.v2.Task.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "Pending",
            TaskState::Running => "Running",
            TaskState::Succeeded => "Succeeded",
            TaskState::Failed => "Failed",
            TaskState::Leave => "Leave",
        }
    }

    /// The state `event` leads to, or an error if `event` is not allowed here.
    pub fn on(self, event: TaskEvent) -> Result<TaskState, TransitionError> {
        use TaskState as S;
        let next = match (event, self) {
            (TaskEvent::Download, S::Pending | S::Succeeded | S::Failed | S::Leave) => {
                Some(S::Running)
            }
            (TaskEvent::DownloadSucceeded, S::Leave | S::Running | S::Failed) => Some(S::Succeeded),
            (TaskEvent::DownloadFailed, S::Running) => Some(S::Failed),
            (TaskEvent::Leave, S::Pending | S::Running | S::Succeeded | S::Failed) => {
                Some(S::Leave)
            }
            _ => None,
        };
        next.ok_or(TransitionError {
            machine: Machine::Task,
            state: self.as_str(),
            event: event.as_str(),
        })
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TaskEvent {
    /// Dragonfly's name of the event.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskEvent::Download => "Download",
            TaskEvent::DownloadSucceeded => "DownloadSucceeded",
            TaskEvent::DownloadFailed => "DownloadFailed",
            TaskEvent::Leave => "Leave",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER_STATES: [PeerState; 10] = [
        PeerState::Pending,
        PeerState::ReceivedEmpty,
        PeerState::ReceivedTiny,
        PeerState::ReceivedSmall,
        PeerState::ReceivedNormal,
        PeerState::Running,
        PeerState::BackToSource,
        PeerState::Succeeded,
        PeerState::Failed,
        PeerState::Leave,
    ];

    #[test]
    fn peer_happy_paths() {
        let s = PeerState::Pending.on(PeerEvent::RegisterNormal).unwrap();
        assert_eq!(s, PeerState::ReceivedNormal);
        let s = s.on(PeerEvent::Download).unwrap();
        assert_eq!(s, PeerState::Running);
        let s = s.on(PeerEvent::DownloadSucceeded).unwrap();
        assert_eq!(s, PeerState::Succeeded);
        assert_eq!(s.on(PeerEvent::Leave).unwrap(), PeerState::Leave);

        let s = PeerState::Pending.on(PeerEvent::RegisterSmall).unwrap();
        let s = s.on(PeerEvent::DownloadBackToSource).unwrap();
        assert_eq!(s, PeerState::BackToSource);
        assert_eq!(s.on(PeerEvent::DownloadFailed).unwrap(), PeerState::Failed);
        // Running peers may fall back to the origin.
        assert_eq!(
            PeerState::Running
                .on(PeerEvent::DownloadBackToSource)
                .unwrap(),
            PeerState::BackToSource
        );
    }

    #[test]
    fn register_only_from_pending() {
        for s in PEER_STATES {
            for ev in [
                PeerEvent::RegisterEmpty,
                PeerEvent::RegisterTiny,
                PeerEvent::RegisterSmall,
                PeerEvent::RegisterNormal,
            ] {
                assert_eq!(s.on(ev).is_ok(), s == PeerState::Pending, "{s} {ev:?}");
            }
        }
    }

    #[test]
    fn illegal_peer_events_are_errors_naming_state_and_event() {
        let err = PeerState::Pending.on(PeerEvent::Download).unwrap_err();
        assert_eq!(err.machine, Machine::Peer);
        assert_eq!(
            err.to_string(),
            "peer event Download is not allowed in state Pending"
        );
        assert!(PeerState::Succeeded.on(PeerEvent::Download).is_err());
        assert!(PeerState::Succeeded
            .on(PeerEvent::DownloadBackToSource)
            .is_err());
        assert!(PeerState::BackToSource.on(PeerEvent::Download).is_err());
        assert!(PeerState::Failed.on(PeerEvent::DownloadSucceeded).is_err());
        assert!(PeerState::Pending.on(PeerEvent::DownloadSucceeded).is_err());
        assert!(PeerState::Failed.on(PeerEvent::DownloadFailed).is_err());
        for ev in [
            PeerEvent::Download,
            PeerEvent::DownloadBackToSource,
            PeerEvent::DownloadSucceeded,
            PeerEvent::DownloadFailed,
            PeerEvent::Leave,
        ] {
            assert!(PeerState::Leave.on(ev).is_err(), "{ev:?} from Leave");
        }
    }

    #[test]
    fn every_live_state_can_fail_and_leave() {
        for s in PEER_STATES {
            assert_eq!(s.on(PeerEvent::Leave).is_ok(), s != PeerState::Leave, "{s}");
            assert_eq!(
                s.on(PeerEvent::DownloadFailed).is_ok(),
                s != PeerState::Leave && s != PeerState::Failed,
                "{s}"
            );
        }
    }

    #[test]
    fn task_transitions() {
        let t = TaskState::Pending.on(TaskEvent::Download).unwrap();
        assert_eq!(t, TaskState::Running);
        assert_eq!(t.on(TaskEvent::DownloadFailed).unwrap(), TaskState::Failed);
        assert_eq!(
            TaskState::Failed.on(TaskEvent::Download).unwrap(),
            TaskState::Running
        );
        assert_eq!(
            TaskState::Running.on(TaskEvent::DownloadSucceeded).unwrap(),
            TaskState::Succeeded
        );
        assert_eq!(
            TaskState::Succeeded.on(TaskEvent::Leave).unwrap(),
            TaskState::Leave
        );
        assert!(TaskState::Running.on(TaskEvent::Download).is_err());
        assert!(TaskState::Pending.on(TaskEvent::DownloadSucceeded).is_err());
        assert!(TaskState::Succeeded.on(TaskEvent::DownloadFailed).is_err());
        assert!(TaskState::Leave.on(TaskEvent::Leave).is_err());
        let err = TaskState::Succeeded
            .on(TaskEvent::DownloadSucceeded)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "task event DownloadSucceeded is not allowed in state Succeeded"
        );
    }
}
