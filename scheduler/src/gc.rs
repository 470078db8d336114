//! Garbage collection decisions as pure functions of the current time: what to reclaim and
//! why. The shell runs [`Scheduler::collect_garbage`] on its GC timers and applies the result
//! with [`Scheduler::apply_gc`] (or removes things one by one).

use std::time::SystemTime;

use crate::config::GcConfig;
use crate::error::SchedulerError;
use crate::fsm::PeerState;
use crate::resource::{Host, HostId, Peer, PeerId, Task, TaskId};
use crate::state::{elapsed, Scheduler};

/// Why a peer is reclaimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerGcReason {
    /// It left.
    Left,
    /// Its host was not announced within `hostTTL`.
    HostExpired,
    /// Running (from parents or the origin) with no finished piece for
    /// `pieceDownloadTimeout`.
    PieceDownloadTimeout,
    /// No activity for `peerTTL`.
    PeerTtlExpired,
    /// Its download failed.
    Failed,
}

/// What one GC pass reclaims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcDecisions {
    /// Peers to remove, and why (peers of expired hosts included).
    pub peers: Vec<(PeerId, PeerGcReason)>,
    /// Tasks to remove: no peer for `taskGCInterval`.
    pub tasks: Vec<TaskId>,
    /// Hosts to remove: not announced within `hostTTL`.
    pub hosts: Vec<HostId>,
}

impl GcDecisions {
    /// Whether nothing is to be reclaimed.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty() && self.tasks.is_empty() && self.hosts.is_empty()
    }
}

/// Whether a host was last announced more than `hostTTL` ago.
pub fn host_expired(host: &Host, now: SystemTime, config: &GcConfig) -> bool {
    elapsed(now, host.updated_at()) > config.host_ttl
}

/// Why `peer` is to be reclaimed now, if it is (`host_expired`: its host is reclaimed).
pub fn peer_gc_reason(
    peer: &Peer,
    host_expired: bool,
    now: SystemTime,
    config: &GcConfig,
) -> Option<PeerGcReason> {
    if peer.state() == PeerState::Leave {
        return Some(PeerGcReason::Left);
    }
    if host_expired {
        return Some(PeerGcReason::HostExpired);
    }
    if matches!(peer.state(), PeerState::Running | PeerState::BackToSource)
        && elapsed(now, peer.piece_updated_at()) > config.piece_download_timeout
    {
        return Some(PeerGcReason::PieceDownloadTimeout);
    }
    if elapsed(now, peer.updated_at()) > config.peer_ttl {
        return Some(PeerGcReason::PeerTtlExpired);
    }
    if peer.state() == PeerState::Failed {
        return Some(PeerGcReason::Failed);
    }
    None
}

/// Whether a task has had no peer for `taskGCInterval`.
pub fn task_is_garbage(task: &Task, now: SystemTime, config: &GcConfig) -> bool {
    task.peer_count() == 0 && elapsed(now, task.updated_at()) >= config.task_gc_interval
}

impl Scheduler {
    /// What to reclaim at `now`; changes nothing.
    pub fn collect_garbage(&self, now: SystemTime) -> GcDecisions {
        let gc = &self.config.gc;
        let hosts: Vec<HostId> = self
            .hosts
            .values()
            .filter(|h| host_expired(h, now, gc))
            .map(|h| h.id().clone())
            .collect();
        let peers = self
            .peers
            .values()
            .filter_map(|p| {
                let expired = hosts.binary_search(p.host_id()).is_ok();
                peer_gc_reason(p, expired, now, gc).map(|r| (p.id().clone(), r))
            })
            .collect();
        let tasks = self
            .tasks
            .values()
            .filter(|t| task_is_garbage(t, now, gc))
            .map(|t| t.id().clone())
            .collect();
        GcDecisions {
            peers,
            tasks,
            hosts,
        }
    }

    /// Reclaims what `decisions` lists; entries gone in the meantime are skipped, and a task
    /// that got a peer since is kept.
    pub fn apply_gc(
        &mut self,
        decisions: &GcDecisions,
        now: SystemTime,
    ) -> Result<(), SchedulerError> {
        for (peer, reason) in &decisions.peers {
            if self.peers.contains_key(peer) {
                tracing::info!(peer_id = %peer, ?reason, "reclaiming peer");
                self.remove_peer(peer, now)?;
            }
        }
        for host in &decisions.hosts {
            if self.hosts.contains_key(host) {
                tracing::info!(host_id = %host, "reclaiming host");
                self.remove_host(host, now)?;
            }
        }
        for task in &decisions.tasks {
            if self.tasks.get(task).is_some_and(|t| t.peer_count() == 0) {
                tracing::info!(task_id = %task, "reclaiming task");
                self.remove_task(task, now)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SchedulerConfig;
    use crate::resource::HostInfo;
    use crate::state::PieceFinished;
    use crate::test_support::*;
    use std::time::Duration;

    const MIN: u64 = 60;
    const HOUR: u64 = 3600;

    #[test]
    fn peer_rules_by_hand() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let a = normal_host(&mut s, "a");
        register(&mut s, "p", &a); // registered at(1), told to go to the origin
        let gc = GcConfig::default();
        fn peer(s: &Scheduler) -> Peer {
            s.peer(&pid("p")).unwrap().clone()
        }
        assert_eq!(peer_gc_reason(&peer(&s), false, at(2), &gc), None);
        assert_eq!(
            peer_gc_reason(&peer(&s), true, at(2), &gc),
            Some(PeerGcReason::HostExpired)
        );
        // Only registered: the piece timeout does not apply, the TTL does.
        assert_eq!(
            peer_gc_reason(&peer(&s), false, at(1 + 31 * MIN), &gc),
            None
        );
        assert_eq!(
            peer_gc_reason(&peer(&s), false, at(1 + 24 * HOUR + 1), &gc),
            Some(PeerGcReason::PeerTtlExpired)
        );

        s.download_peer_back_to_source_started(&pid("p"), at(1))
            .unwrap();
        s.download_piece_finished(
            &pid("p"),
            PieceFinished {
                number: 1,
                cost: Duration::from_secs(1),
            },
            at(10),
        )
        .unwrap();
        assert_eq!(
            peer_gc_reason(&peer(&s), false, at(10 + 30 * MIN), &gc),
            None
        );
        assert_eq!(
            peer_gc_reason(&peer(&s), false, at(10 + 30 * MIN + 1), &gc),
            Some(PeerGcReason::PieceDownloadTimeout)
        );

        s.download_peer_back_to_source_failed(&pid("p"), at(20))
            .unwrap();
        assert_eq!(
            peer_gc_reason(&peer(&s), false, at(21), &gc),
            Some(PeerGcReason::Failed)
        );
        s.leave_peer(&pid("p"), at(22)).unwrap();
        assert_eq!(
            peer_gc_reason(&peer(&s), false, at(22), &gc),
            Some(PeerGcReason::Left)
        );
    }

    #[test]
    fn succeeded_peers_are_kept_until_their_ttl() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let a = normal_host(&mut s, "a");
        register(&mut s, "p", &a);
        s.download_peer_back_to_source_started(&pid("p"), at(1))
            .unwrap();
        s.download_peer_back_to_source_finished(&pid("p"), task_info(), at(2))
            .unwrap();
        let gc = GcConfig::default();
        let p = s.peer(&pid("p")).unwrap();
        assert_eq!(peer_gc_reason(p, false, at(2 + 23 * HOUR), &gc), None);
        assert_eq!(
            peer_gc_reason(p, false, at(2 + 24 * HOUR + 1), &gc),
            Some(PeerGcReason::PeerTtlExpired)
        );
    }

    #[test]
    fn host_and_task_rules_by_hand() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let a = normal_host(&mut s, "a"); // announced at(0)
        let gc = GcConfig::default();
        assert!(!host_expired(s.host(&a).unwrap(), at(HOUR), &gc));
        assert!(host_expired(s.host(&a).unwrap(), at(HOUR + 1), &gc));
        // The clock going back expires nothing.
        assert!(!host_expired(
            s.host(&a).unwrap(),
            at(0) - Duration::from_secs(10 * HOUR),
            &gc
        ));

        register(&mut s, "p", &a);
        let t = TaskId::from(TASK);
        assert!(
            !task_is_garbage(s.task(&t).unwrap(), at(HOUR), &gc),
            "has a peer"
        );
        s.remove_peer(&pid("p"), at(100)).unwrap();
        assert!(!task_is_garbage(
            s.task(&t).unwrap(),
            at(100 + 29 * MIN),
            &gc
        ));
        assert!(task_is_garbage(
            s.task(&t).unwrap(),
            at(100 + 30 * MIN),
            &gc
        ));
    }

    #[test]
    fn collect_and_apply() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let stale = normal_host(&mut s, "stale"); // announced at(0), never again
        register(&mut s, "p1", &stale);
        let mut info = HostInfo::new("10.0.0.1-fresh", crate::resource::HostType::Normal);
        info.max_tx_bandwidth = 10 * GBPS;
        let fresh = info.id.clone();
        s.announce_host(info.clone(), at(0));
        register(&mut s, "p2", &fresh);
        s.leave_peer(&pid("p2"), at(5)).unwrap();

        let now = at(2 * HOUR);
        s.announce_host(info, now);
        assert!(s.collect_garbage(at(3)).hosts.is_empty());
        let d = s.collect_garbage(now);
        assert_eq!(d.hosts, vec![stale.clone()]);
        assert_eq!(
            d.peers,
            vec![
                (pid("p1"), PeerGcReason::HostExpired),
                (pid("p2"), PeerGcReason::Left)
            ]
        );
        assert!(d.tasks.is_empty(), "the task still has peers");
        s.apply_gc(&d, now).unwrap();
        assert!(s.host(&stale).is_none());
        assert_eq!(s.peers().count(), 0);
        s.verify_invariants().unwrap();

        // The now empty task goes once taskGCInterval has passed.
        assert!(s.collect_garbage(now).tasks.is_empty());
        let later = now + Duration::from_secs(30 * MIN);
        let d = s.collect_garbage(later);
        assert_eq!(d.tasks, vec![TaskId::from(TASK)]);
        // A peer arriving before the decision is applied keeps the task.
        let mut req = crate::scheduling::RegisterPeer::new("p3", TASK, fresh);
        req.task = task_info();
        s.register_peer(req, later, &mut rng()).unwrap();
        s.apply_gc(&d, later).unwrap();
        assert!(s.task(&TaskId::from(TASK)).is_some());
        assert!(GcDecisions::default().is_empty());
    }
}
