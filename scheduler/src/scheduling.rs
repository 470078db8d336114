//! Registration and parent selection (reference 1.2 step 4 and 2.1): who a peer downloads
//! from, when it goes to the origin instead, and when a seed peer is triggered.
//!
//! Nothing here waits. Where Dragonfly sleeps `retryInterval` and loops, the core returns
//! [`ScheduleDecision::RetryLater`] and the shell calls
//! [`Scheduler::schedule_candidate_parents`] again after the delay; the count of fruitless
//! rounds lives in the peer.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::error::SchedulerError;
use crate::evaluator::{evaluate_parent, is_bad_parent, ChildFeatures, ParentFeatures};
use crate::fsm::{PeerEvent, PeerState, TaskEvent};
use crate::resource::{
    HostId, HostType, Peer, PeerId, Priority, SizeScope, Task, TaskId, TaskInfo,
};
use crate::state::{elapsed, Scheduler};

/// A peer registering for a task (`RegisterPeerRequest`).
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterPeer {
    /// Peer ID chosen by the node agent.
    pub peer_id: PeerId,
    /// Task ID.
    pub task_id: TaskId,
    /// The node agent's host (announced before).
    pub host_id: HostId,
    /// What the node agent knows of the task (`actual_content_length`, ...).
    pub task: TaskInfo,
    /// Download priority.
    pub priority: Priority,
    /// Pieces the peer fetches at once (`None` or 0: 8).
    pub concurrent_piece_count: Option<u32>,
    /// The download asks to go to the origin (how a triggered seed peer registers).
    pub need_back_to_source: bool,
    /// The peer has everything locally and only reports it.
    pub metadata_only: bool,
}

impl RegisterPeer {
    /// A registration with default options.
    pub fn new(
        peer_id: impl Into<PeerId>,
        task_id: impl Into<TaskId>,
        host_id: impl Into<HostId>,
    ) -> RegisterPeer {
        RegisterPeer {
            peer_id: peer_id.into(),
            task_id: task_id.into(),
            host_id: host_id.into(),
            task: TaskInfo::default(),
            priority: Priority::Level0,
            concurrent_piece_count: None,
            need_back_to_source: false,
            metadata_only: false,
        }
    }
}

/// What to answer a registration with.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// The peer's ID in the scheduler: the registered one, except for a triggered seed peer,
    /// which keeps the ID children were already given (the registered one becomes an alias).
    pub peer_id: PeerId,
    /// A seed peer the shell must trigger now (`DfdaemonUpload.DownloadTask` on that host, with
    /// `need_back_to_source` set). When present, the decision already lists the seed peer as
    /// a parent, so pieces flow as soon as it has them.
    pub seed_trigger: Option<SeedTrigger>,
    /// The answer.
    pub decision: RegisterDecision,
}

/// A seed peer to trigger for a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedTrigger {
    /// The task to download.
    pub task_id: TaskId,
    /// The seed peer host chosen by consistent hashing of the task ID.
    pub seed_host_id: HostId,
    /// The ID the scheduler gave the seed peer (children know it by this ID).
    pub seed_peer_id: PeerId,
}

/// Answer to a registration.
#[derive(Debug, Clone, PartialEq)]
pub enum RegisterDecision {
    /// The task is empty: `EmptyTaskResponse`.
    Empty,
    /// The peer only reports metadata: `MetadataOnlyResponse`.
    MetadataOnly,
    /// The outcome of scheduling the peer.
    Schedule(ScheduleDecision),
}

/// Outcome of a scheduling round.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleDecision {
    /// Download from these parents, best first (`NormalTaskResponse`). The edges are in the
    /// DAG and their load is reserved on the parents' hosts.
    Parents(Vec<PeerId>),
    /// Download from the origin (`NeedBackToSourceResponse`); the peer holds an origin slot.
    NeedBackToSource(BackToSourceReason),
    /// No parent now: call [`Scheduler::schedule_candidate_parents`] again after this delay.
    RetryLater(Duration),
    /// Scheduling failed; the peer is now `Failed` (`FailedPrecondition` / `NotFound`).
    Fail(FailReason),
}

/// Why a peer is sent to the origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackToSourceReason {
    /// Its download asked for it, or the task had no peer to serve it and no seed peer
    /// could be triggered.
    PeerNeedsBackToSource,
    /// `retryBackToSourceLimit` rounds found no parent.
    RetryBackToSourceLimit,
    /// It is the seed peer the scheduler triggered for the task.
    TriggeredSeedPeer,
}

impl fmt::Display for BackToSourceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackToSourceReason::PeerNeedsBackToSource => "peer's NeedBackToSource is true",
            BackToSourceReason::RetryBackToSourceLimit => {
                "scheduling exceeded RetryBackToSourceLimit"
            }
            BackToSourceReason::TriggeredSeedPeer => "seed peer triggered by the scheduler",
        })
    }
}

/// Why scheduling failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// `retryLimit` rounds found no parent and the origin was not allowed.
    RetryLimitExceeded,
    /// Priority `LEVEL1`: downloads are forbidden.
    DownloadForbidden,
    /// Priority `LEVEL2`: no peer has the task and the origin is not allowed.
    NoPeerToServe,
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailReason::RetryLimitExceeded => "scheduling exceeded RetryLimit",
            FailReason::DownloadForbidden => "LEVEL1 peer is forbidden",
            FailReason::NoPeerToServe => "LEVEL2 peer not found candidate peers",
        })
    }
}

/// Why a sampled peer was not kept as a candidate parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The peer itself.
    SelfPeer,
    /// A parent that failed this peer before.
    Blocked,
    /// Its host is in leech mode (`disable_shared`).
    DisableShared,
    /// On the same host as the child.
    SameHost,
    /// Not in the task's DAG (or its host is gone).
    NotInDag,
    /// A normal peer with no parent that neither fetches from the origin nor has finished.
    NoSource,
    /// Pending, registered only, failed, gone, or its last piece was an outlier.
    BadParent,
    /// Its host serves as many children as it may.
    UploadLimit,
    /// Already a parent of this peer.
    AlreadyParent,
}

/// Result of filtering a random sample of the task's peers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FilterOutcome {
    /// Peers that may be parents, in sample order.
    pub candidates: Vec<PeerId>,
    /// Sampled peers left out, and why.
    pub rejected: Vec<(PeerId, RejectReason)>,
}

/// A candidate parent with its evaluator score.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredParent {
    /// The candidate.
    pub peer: PeerId,
    /// Its total score in `[0, 1]`.
    pub score: f64,
}

/// The running peers of `task_id` (seed peers included) serving fewer than `limit` children,
/// fewest first: `(children, id)`.
fn task_parents_with_room(s: &Scheduler, task_id: &TaskId, limit: usize) -> Vec<(usize, PeerId)> {
    let Some(task) = s.tasks.get(task_id) else {
        return Vec::new();
    };
    let mut v: Vec<(usize, PeerId)> = task
        .dag
        .vertices()
        .filter_map(|id| {
            let p = s.peers.get(id)?;
            if !matches!(p.state, PeerState::Running | PeerState::BackToSource) {
                return None;
            }
            let children = task.dag.out_degree(id).ok()?;
            (children < limit).then(|| (children, id.clone()))
        })
        .collect();
    v.sort();
    v
}

/// Most peers given more parents by one [`Scheduler::top_up_parents`] call (it runs each time
/// a peer of the task starts downloading, so the work per event stays bounded).
pub const TOP_UP_BATCH: usize = 16;

/// Outcome of trying to trigger a seed peer.
enum SeedChoice {
    /// Trigger a seed peer on this host.
    Triggered(HostId),
    /// The chosen seed host already has a live peer of this task: schedule normally.
    AlreadyThere,
    /// No seed peer to trigger.
    Unavailable,
}

impl Scheduler {
    /// Handles `RegisterPeerRequest` (after the shell waited the register delay): records the
    /// peer, triggers a seed peer when the task has nobody to serve it, and schedules it.
    ///
    /// When the registering host is a seed peer host with a triggered seed peer of this task
    /// waiting for registration, the registration is that seed peer's: it keeps the ID the
    /// scheduler gave it and is told to fetch from the origin.
    pub fn register_peer<R: Rng + ?Sized>(
        &mut self,
        req: RegisterPeer,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<Registration, SchedulerError> {
        let host = self
            .hosts
            .get(&req.host_id)
            .ok_or_else(|| SchedulerError::HostNotFound(req.host_id.clone()))?;
        let host_type = host.host_type;
        if host_type.is_seed() {
            if let Some(seed) = self.waiting_seed_peer(&req.task_id, &req.host_id) {
                return Ok(self.adopt_seed_peer(seed, req, now));
            }
        }
        if self.peers.contains_key(&req.peer_id) || self.aliases.contains_key(&req.peer_id) {
            return Err(SchedulerError::PeerExists(req.peer_id));
        }

        let task_id = req.task_id.clone();
        let peer_id = req.peer_id.clone();
        self.tasks
            .entry(task_id.clone())
            .or_insert_with(|| Task::new(task_id.clone(), req.task, now))
            .learn(req.task);
        self.insert_peer(&req, now)?;
        self.fire_task(&task_id, TaskEvent::Download, now)?;

        if req.metadata_only {
            self.fire(&peer_id, PeerEvent::RegisterNormal, now)?;
            return Ok(Registration {
                peer_id,
                seed_trigger: None,
                decision: RegisterDecision::MetadataOnly,
            });
        }
        let scope = self
            .tasks
            .get(&task_id)
            .map_or(SizeScope::Unknown, Task::size_scope);
        if scope == SizeScope::Empty {
            self.fire(&peer_id, PeerEvent::RegisterEmpty, now)?;
            return Ok(Registration {
                peer_id,
                seed_trigger: None,
                decision: RegisterDecision::Empty,
            });
        }

        // First download of the task (nobody to serve it): trigger a seed peer, or send the
        // peer to the origin, or refuse, depending on the priority.
        let mut seed_trigger = None;
        if !req.need_back_to_source && !self.task_has_available_peer(&task_id, &peer_id) {
            match req.priority {
                Priority::Level1 => {
                    return self.refuse(peer_id, FailReason::DownloadForbidden, now)
                }
                Priority::Level2 => return self.refuse(peer_id, FailReason::NoPeerToServe, now),
                Priority::Level3 => self.set_need_back_to_source(&peer_id),
                Priority::Level0 | Priority::Level4 | Priority::Level5 | Priority::Level6 => {
                    match self.choose_seed(&task_id, host_type, now) {
                        SeedChoice::Triggered(t) => seed_trigger = Some(t),
                        SeedChoice::AlreadyThere => {}
                        SeedChoice::Unavailable => self.set_need_back_to_source(&peer_id),
                    }
                }
            }
        }

        let event = match scope {
            SizeScope::Tiny => PeerEvent::RegisterTiny,
            SizeScope::Small => PeerEvent::RegisterSmall,
            _ => PeerEvent::RegisterNormal,
        };
        self.fire(&peer_id, event, now)?;

        if let Some(seed_host_id) = seed_trigger {
            let seed = self.create_seed_peer(&task_id, &seed_host_id, now, rng)?;
            let trigger = SeedTrigger {
                task_id: task_id.clone(),
                seed_host_id,
                seed_peer_id: seed.clone(),
            };
            tracing::info!(task_id = %task_id, peer_id = %peer_id, seed_host = %trigger.seed_host_id,
                seed_peer = %seed, "task has no peer to serve it, triggering seed peer");
            let decision = if self.can_hand_over(&task_id, &seed, &peer_id) {
                self.add_edge(&task_id, &seed, &peer_id)?;
                ScheduleDecision::Parents(vec![seed])
            } else {
                self.schedule_candidate_parents(&peer_id, now, rng)?
            };
            return Ok(Registration {
                peer_id,
                seed_trigger: Some(trigger),
                decision: RegisterDecision::Schedule(decision),
            });
        }

        let decision = self.schedule_candidate_parents(&peer_id, now, rng)?;
        Ok(Registration {
            peer_id,
            seed_trigger: None,
            decision: RegisterDecision::Schedule(decision),
        })
    }

    /// `ReschedulePeerRequest`: the peer's parents (`blocked`, and any reported failing
    /// before) are not given again; a new scheduling round starts.
    pub fn reschedule_peer<R: Rng + ?Sized>(
        &mut self,
        peer: &PeerId,
        blocked: &[PeerId],
        now: SystemTime,
        rng: &mut R,
    ) -> Result<ScheduleDecision, SchedulerError> {
        let id = self.canonical(peer)?;
        let blocked: Vec<PeerId> = blocked
            .iter()
            .map(|b| self.aliases.get(b).unwrap_or(b).clone())
            .collect();
        if let Some(p) = self.peers.get_mut(&id) {
            p.block_parents.extend(blocked);
            p.schedule_attempts = 0;
            p.updated_at = now;
        }
        self.schedule_candidate_parents(&id, now, rng)
    }

    /// One scheduling round for a registered or running peer (Dragonfly's
    /// `ScheduleCandidateParents` loop body):
    ///
    /// 1. if the task has an origin slot free and the peer needs the origin, or
    ///    `retryBackToSourceLimit` rounds found nothing: [`ScheduleDecision::NeedBackToSource`];
    /// 2. if `retryLimit` rounds found nothing: [`ScheduleDecision::Fail`] (peer `Failed`);
    /// 3. otherwise the peer's current parents are dropped and new ones chosen: on success
    ///    [`ScheduleDecision::Parents`], else [`ScheduleDecision::RetryLater`] with
    ///    `retryInterval` +-25%.
    pub fn schedule_candidate_parents<R: Rng + ?Sized>(
        &mut self,
        peer: &PeerId,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<ScheduleDecision, SchedulerError> {
        let id = self.canonical(peer)?;
        let (p, task) = self.peer_and_task(&id)?;
        if !matches!(
            p.state,
            PeerState::ReceivedTiny
                | PeerState::ReceivedSmall
                | PeerState::ReceivedNormal
                | PeerState::Running
        ) {
            return Err(SchedulerError::NotSchedulable {
                peer: id,
                state: p.state,
            });
        }
        let task_id = task.id.clone();
        let attempts = p.schedule_attempts;
        let back_to_source = if !self.can_back_to_source(task) {
            None
        } else if p.need_back_to_source {
            Some(BackToSourceReason::PeerNeedsBackToSource)
        } else if attempts >= self.config.retry_back_to_source_limit {
            Some(BackToSourceReason::RetryBackToSourceLimit)
        } else {
            None
        };
        if let Some(reason) = back_to_source {
            self.delete_in_edges(&task_id, &id)?;
            self.take_origin_slot(&task_id, &id);
            if let Some(p) = self.peers.get_mut(&id) {
                p.need_back_to_source = true;
                p.schedule_attempts = 0;
                p.updated_at = now;
            }
            tracing::info!(task_id = %task_id, peer_id = %id, %reason, "peer goes back to source");
            return Ok(ScheduleDecision::NeedBackToSource(reason));
        }
        if attempts >= self.config.retry_limit {
            tracing::warn!(task_id = %task_id, peer_id = %id, attempts, "scheduling exceeded RetryLimit");
            self.fail_peer(&id, now)?;
            return Ok(ScheduleDecision::Fail(FailReason::RetryLimitExceeded));
        }

        self.delete_in_edges(&task_id, &id)?;
        let found = self.find_candidate_parents(&id, rng)?;
        let chosen = self.within_upload_limits(found, usize::MAX);
        let added = self.add_edges(&task_id, chosen, &id)?;
        let p = self
            .peers
            .get_mut(&id)
            .ok_or_else(|| SchedulerError::PeerNotFound(id.clone()))?;
        p.updated_at = now;
        if added.is_empty() {
            p.schedule_attempts = p.schedule_attempts.saturating_add(1);
            let delay = jittered(self.config.retry_interval, rng);
            tracing::debug!(task_id = %task_id, peer_id = %id, attempts = p.schedule_attempts,
                "no candidate parent, retry later");
            return Ok(ScheduleDecision::RetryLater(delay));
        }
        p.schedule_attempts = 0;
        tracing::debug!(task_id = %task_id, peer_id = %id, parents = ?added, "scheduled parents");
        Ok(ScheduleDecision::Parents(added))
    }

    /// More parents for peers already downloading from parents, when a peer of `task` has just
    /// become a possible parent (it started downloading). Peers that registered together
    /// all got the same first parents (often only the seed peer, the one peer with pieces
    /// then); this lets each of them also pull from the others so the swarm pipelines.
    ///
    /// Only `Running` peers with at least one and fewer than `candidateParentLimit` parents
    /// are topped up, fewest parents first, at most [`TOP_UP_BATCH`] per call. Current
    /// parents are kept; the usual filters apply (upload limits, bad parents).
    ///
    /// Then `started`, the peer that just started, and the running peers serving fewer than
    /// `candidateParentLimit` children (fewest first) are given children: running peers with
    /// the fewest parents, even those that have `candidateParentLimit` already (up to twice
    /// that). Without this the peers that start last find everyone's parent list full, and
    /// the first find nobody left to take them, and never upload, though their uplinks are
    /// as idle as anyone's.
    /// Unlike [`Scheduler::schedule_candidate_parents`] this never fails a peer, never sends
    /// one to the origin and never counts an attempt: finding nothing changes nothing.
    /// Returns each topped-up peer with the parents added.
    pub fn top_up_parents<R: Rng + ?Sized>(
        &mut self,
        task_id: &TaskId,
        started: Option<&PeerId>,
        rng: &mut R,
    ) -> Result<Vec<(PeerId, Vec<PeerId>)>, SchedulerError> {
        let Some(task) = self.tasks.get(task_id) else {
            return Err(SchedulerError::TaskNotFound(task_id.clone()));
        };
        let limit = self.config.candidate_parent_limit as usize;
        let mut wanting = self.running_children(task, limit, |_| true);
        wanting.sort();
        wanting.truncate(TOP_UP_BATCH);
        let mut out = Vec::new();
        for (have, child) in wanting {
            let found = self.find_candidate_parents(&child, rng)?;
            let chosen = self.within_upload_limits(found, limit.saturating_sub(have));
            if chosen.is_empty() {
                continue;
            }
            let added = self.add_edges(task_id, chosen, &child)?;
            if !added.is_empty() {
                tracing::debug!(task_id = %task_id, peer_id = %child, parents = ?added, "added parents");
                out.push((child, added));
            }
        }
        // Then parents with room: the peer that started, then the running peers with the
        // fewest children.
        let mut serving = task_parents_with_room(self, task_id, limit);
        if let Some(started) = started {
            let x = self.canonical(started)?;
            serving.retain(|(_, p)| *p != x);
            serving.insert(0, (0, x));
        }
        serving.truncate(TOP_UP_BATCH);
        for (_, x) in serving {
            for child in self.children_for(task_id, &x)? {
                if self.add_edges(task_id, vec![x.clone()], &child)?.is_empty() {
                    continue;
                }
                tracing::debug!(task_id = %task_id, peer_id = %child, parent = %x, "added a starting parent");
                match out.iter_mut().find(|(c, _)| *c == child) {
                    Some((_, ps)) => ps.push(x.clone()),
                    None => out.push((child, vec![x.clone()])),
                }
            }
        }
        Ok(out)
    }

    /// The running peers of `task` downloading from parents (not the origin) with at least one
    /// and fewer than `below` parents, that pass `keep`: `(parents, id)`.
    fn running_children(
        &self,
        task: &Task,
        below: usize,
        keep: impl Fn(&Peer) -> bool,
    ) -> Vec<(usize, PeerId)> {
        task.dag
            .vertices()
            .filter_map(|id| {
                let p = self.peers.get(id)?;
                if p.state != PeerState::Running || p.need_back_to_source || !keep(p) {
                    return None;
                }
                let parents = task.dag.in_degree(id).ok()?;
                (parents >= 1 && parents < below).then(|| (parents, id.clone()))
            })
            .collect()
    }

    /// The running peers of `task_id` that `parent` (which just started) should serve: up to
    /// `candidateParentLimit` minus its children, those with the fewest parents first (below
    /// twice the limit), that it may serve (the usual filters) within its host's upload limit.
    fn children_for(
        &self,
        task_id: &TaskId,
        parent: &PeerId,
    ) -> Result<Vec<PeerId>, SchedulerError> {
        let parent = self.canonical(parent)?;
        let Some(task) = self.tasks.get(task_id) else {
            return Err(SchedulerError::TaskNotFound(task_id.clone()));
        };
        let limit = self.config.candidate_parent_limit as usize;
        let Some(host) = self
            .peers
            .get(&parent)
            .and_then(|p| self.hosts.get(&p.host_id))
        else {
            return Ok(Vec::new());
        };
        let have = task.dag.out_degree(&parent).unwrap_or(limit);
        if have >= limit {
            return Ok(Vec::new());
        }
        let mut kids = self.running_children(task, 2 * limit, |p| {
            self.reject_reason(p, task, &parent).is_none()
        });
        kids.sort();
        let room = host
            .concurrent_upload_limit
            .saturating_sub(host.concurrent_upload_count) as usize;
        Ok(kids
            .into_iter()
            .map(|(_, id)| id)
            .take((limit - have).min(room))
            .collect())
    }

    /// Up to `most` of the ranked candidates whose hosts can take one more upload. Two
    /// candidates may share a host with one free slot left, so slots are counted as they go.
    fn within_upload_limits(&self, found: Vec<ScoredParent>, most: usize) -> Vec<PeerId> {
        let mut taken: BTreeMap<&HostId, u32> = BTreeMap::new();
        let mut chosen = Vec::new();
        for c in found {
            if chosen.len() >= most {
                break;
            }
            let Some(host) = self
                .peers
                .get(&c.peer)
                .and_then(|p| self.hosts.get(&p.host_id))
            else {
                continue;
            };
            let extra = taken.entry(&host.id).or_default();
            if host.concurrent_upload_count.saturating_add(*extra) < host.concurrent_upload_limit {
                *extra += 1;
                chosen.push(c.peer);
            }
        }
        chosen
    }

    /// The candidate parents for `peer`: [`Scheduler::filter_candidate_parents`], ranked by the
    /// evaluator (best first; ties keep sample order), at most `candidateParentLimit`.
    pub fn find_candidate_parents<R: Rng + ?Sized>(
        &self,
        peer: &PeerId,
        rng: &mut R,
    ) -> Result<Vec<ScoredParent>, SchedulerError> {
        let outcome = self.filter_candidate_parents(peer, rng)?;
        if !outcome.rejected.is_empty() {
            tracing::trace!(peer_id = %peer, rejected = ?outcome.rejected, "filtered candidate parents");
        }
        let (child, _) = self.peer_and_task(peer)?;
        let child_host = self
            .hosts
            .get(&child.host_id)
            .ok_or_else(|| SchedulerError::HostNotFound(child.host_id.clone()))?;
        let child_features = ChildFeatures {
            idc: &child_host.idc,
            location: &child_host.location,
        };
        let mut scored: Vec<ScoredParent> = outcome
            .candidates
            .into_iter()
            .filter_map(|id| {
                let p = self.peers.get(&id)?;
                let h = self.hosts.get(&p.host_id)?;
                let features = ParentFeatures {
                    load: h.load(),
                    idc: &h.idc,
                    location: &h.location,
                    host_type: h.host_type,
                    state: p.state,
                };
                Some(ScoredParent {
                    score: evaluate_parent(&features, &child_features),
                    peer: id,
                })
            })
            .collect();
        scored.sort_by(|a, b| b.score.total_cmp(&a.score));
        scored.truncate(self.config.candidate_parent_limit as usize);
        Ok(scored)
    }

    /// Samples `filterParentLimit` peers of the task at random and keeps those that may be
    /// parents of `peer`: not itself, not blocked, host sharing, not on the same host, in the
    /// graph, with a source (normal hosts), not a bad parent, host under its upload limit, and
    /// not already its parent (its own children may be: they trade pieces).
    pub fn filter_candidate_parents<R: Rng + ?Sized>(
        &self,
        peer: &PeerId,
        rng: &mut R,
    ) -> Result<FilterOutcome, SchedulerError> {
        let (child, task) = self.peer_and_task(peer)?;
        let mut out = FilterOutcome::default();
        for id in task
            .dag
            .random_vertices(self.config.filter_parent_limit as usize, rng)
        {
            match self.reject_reason(child, task, id) {
                Some(reason) => out.rejected.push((id.clone(), reason)),
                None => out.candidates.push(id.clone()),
            }
        }
        Ok(out)
    }

    fn reject_reason(&self, child: &Peer, task: &Task, id: &PeerId) -> Option<RejectReason> {
        if *id == child.id {
            return Some(RejectReason::SelfPeer);
        }
        if child.block_parents.contains(id) {
            return Some(RejectReason::Blocked);
        }
        let Some(parent) = self.peers.get(id) else {
            return Some(RejectReason::NotInDag);
        };
        let Some(host) = self.hosts.get(&parent.host_id) else {
            return Some(RejectReason::NotInDag);
        };
        if host.disable_shared {
            return Some(RejectReason::DisableShared);
        }
        if parent.host_id == child.host_id {
            return Some(RejectReason::SameHost);
        }
        let Ok(in_degree) = task.dag.in_degree(id) else {
            return Some(RejectReason::NotInDag);
        };
        if host.host_type == HostType::Normal
            && in_degree == 0
            && !matches!(parent.state, PeerState::BackToSource | PeerState::Succeeded)
        {
            return Some(RejectReason::NoSource);
        }
        if is_bad_parent(parent.state, &parent.piece_costs) {
            return Some(RejectReason::BadParent);
        }
        if !host.has_free_upload() {
            return Some(RejectReason::UploadLimit);
        }
        if task.dag.edge(id, &child.id).is_some() {
            return Some(RejectReason::AlreadyParent);
        }
        None
    }

    /// Whether the task may give out another origin slot.
    pub(crate) fn can_back_to_source(&self, task: &Task) -> bool {
        task.back_to_source_peers.len() < self.config.back_to_source_count as usize
    }

    /// Whether some other peer of the task, on another host that shares, can serve it: it
    /// holds an origin slot, has finished, fetches from the origin, or runs with pieces in hand.
    fn task_has_available_peer(&self, task_id: &TaskId, requester: &PeerId) -> bool {
        let Some(task) = self.tasks.get(task_id) else {
            return false;
        };
        let Some(requester_host) = self.peers.get(requester).map(|p| &p.host_id) else {
            return false;
        };
        task.dag.vertices().any(|id| {
            let Some(p) = self.peers.get(id) else {
                return false;
            };
            let shares = self
                .hosts
                .get(&p.host_id)
                .is_some_and(|h| !h.disable_shared);
            if id == requester || &p.host_id == requester_host || !shares {
                return false;
            }
            task.back_to_source_peers.contains(id)
                || matches!(p.state, PeerState::Succeeded | PeerState::BackToSource)
                || (p.state == PeerState::Running && !p.finished_pieces.is_empty())
        })
    }

    fn choose_seed(&self, task_id: &TaskId, requester: HostType, now: SystemTime) -> SeedChoice {
        let Some(task) = self.tasks.get(task_id) else {
            return SeedChoice::Unavailable;
        };
        if requester.is_seed() || !self.can_back_to_source(task) {
            return SeedChoice::Unavailable;
        }
        if task
            .seed_peer_failed_at
            .is_some_and(|t| elapsed(now, t) < self.config.seed_peer_failed_timeout)
        {
            return SeedChoice::Unavailable;
        }
        let Some(seed_host) = self.seed_ring.get(task_id.as_str()) else {
            return SeedChoice::Unavailable;
        };
        let Some(host) = self.hosts.get(seed_host) else {
            return SeedChoice::Unavailable;
        };
        let live = host.peers.iter().any(|p| {
            self.peers.get(p).is_some_and(|p| {
                &p.task_id == task_id && !matches!(p.state, PeerState::Failed | PeerState::Leave)
            })
        });
        if live {
            return SeedChoice::AlreadyThere;
        }
        SeedChoice::Triggered(seed_host.clone())
    }

    /// Creates the triggered seed peer: already fetching from the origin as far as scheduling
    /// is concerned (it holds an origin slot and can be handed to children at once).
    fn create_seed_peer<R: Rng + ?Sized>(
        &mut self,
        task_id: &TaskId,
        seed_host: &HostId,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<PeerId, SchedulerError> {
        let id = loop {
            let id = seed_peer_id(seed_host, rng);
            if !self.peers.contains_key(&id) && !self.aliases.contains_key(&id) {
                break id;
            }
        };
        let mut peer = Peer::new(
            id.clone(),
            task_id.clone(),
            seed_host.clone(),
            self.config.piece_costs_window as usize,
            now,
        );
        peer.need_back_to_source = true;
        peer.awaiting_seed_registration = true;
        peer.block_parents.insert(id.clone());
        self.link_peer(peer)?;
        self.fire(&id, PeerEvent::RegisterNormal, now)?;
        self.fire(&id, PeerEvent::DownloadBackToSource, now)?;
        Ok(id)
    }

    /// The registration of a triggered seed peer's node agent: keep the scheduler's ID, alias
    /// the registered one, and send it to the origin.
    fn adopt_seed_peer(
        &mut self,
        seed: PeerId,
        req: RegisterPeer,
        now: SystemTime,
    ) -> Registration {
        if let Some(p) = self.peers.get_mut(&seed) {
            p.awaiting_seed_registration = false;
            p.updated_at = now;
            if let Some(n) = req.concurrent_piece_count.filter(|n| *n > 0) {
                p.concurrent_piece_count = n;
            }
            if req.peer_id != seed {
                p.registered_as = Some(req.peer_id.clone());
                self.aliases.insert(req.peer_id.clone(), seed.clone());
            }
        }
        if let Some(t) = self.tasks.get_mut(&req.task_id) {
            t.learn(req.task);
            t.updated_at = now;
        }
        tracing::info!(task_id = %req.task_id, peer_id = %seed, registered_as = %req.peer_id,
            "triggered seed peer registered");
        Registration {
            peer_id: seed,
            seed_trigger: None,
            decision: RegisterDecision::Schedule(ScheduleDecision::NeedBackToSource(
                BackToSourceReason::TriggeredSeedPeer,
            )),
        }
    }

    fn waiting_seed_peer(&self, task: &TaskId, host: &HostId) -> Option<PeerId> {
        self.hosts.get(host)?.peers.iter().find_map(|p| {
            let peer = self.peers.get(p)?;
            (peer.awaiting_seed_registration && &peer.task_id == task).then(|| p.clone())
        })
    }

    fn insert_peer(&mut self, req: &RegisterPeer, now: SystemTime) -> Result<(), SchedulerError> {
        let mut peer = Peer::new(
            req.peer_id.clone(),
            req.task_id.clone(),
            req.host_id.clone(),
            self.config.piece_costs_window as usize,
            now,
        );
        peer.priority = req.priority;
        if let Some(n) = req.concurrent_piece_count.filter(|n| *n > 0) {
            peer.concurrent_piece_count = n;
        }
        peer.need_back_to_source = req.need_back_to_source;
        peer.block_parents.insert(req.peer_id.clone());
        self.link_peer(peer)
    }

    fn link_peer(&mut self, peer: Peer) -> Result<(), SchedulerError> {
        let id = peer.id.clone();
        let task = self
            .tasks
            .get_mut(&peer.task_id)
            .ok_or_else(|| SchedulerError::TaskNotFound(peer.task_id.clone()))?;
        let host = self
            .hosts
            .get_mut(&peer.host_id)
            .ok_or_else(|| SchedulerError::HostNotFound(peer.host_id.clone()))?;
        task.dag
            .add_vertex(id.clone())
            .map_err(|source| SchedulerError::Dag {
                task: task.id.clone(),
                source,
            })?;
        task.updated_at = peer.created_at;
        host.peers.insert(id.clone());
        self.peers.insert(id, peer);
        Ok(())
    }

    fn set_need_back_to_source(&mut self, peer: &PeerId) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.need_back_to_source = true;
        }
    }

    /// Fails the peer after a refused registration or scheduling.
    fn fail_peer(&mut self, peer: &PeerId, now: SystemTime) -> Result<(), SchedulerError> {
        self.fire(peer, PeerEvent::DownloadFailed, now)?;
        if let Some(p) = self.peers.get_mut(peer) {
            p.schedule_attempts = 0;
        }
        Ok(())
    }

    /// Fails a registering peer and answers with `reason`.
    fn refuse(
        &mut self,
        peer: PeerId,
        reason: FailReason,
        now: SystemTime,
    ) -> Result<Registration, SchedulerError> {
        self.fail_peer(&peer, now)?;
        Ok(Registration {
            peer_id: peer,
            seed_trigger: None,
            decision: RegisterDecision::Schedule(ScheduleDecision::Fail(reason)),
        })
    }

    /// Whether edge `parent -> child` may be added now: the parent's host has a free upload
    /// slot and the edge is new and acyclic.
    fn can_hand_over(&self, task: &TaskId, parent: &PeerId, child: &PeerId) -> bool {
        let host_free = self
            .peers
            .get(parent)
            .and_then(|p| self.hosts.get(&p.host_id))
            .is_some_and(|h| h.has_free_upload());
        host_free
            && self
                .tasks
                .get(task)
                .is_some_and(|t| t.dag.can_add_edge(parent, child))
    }
}

/// `interval` +-25%, drawn from `rng`.
fn jittered<R: Rng + ?Sized>(interval: Duration, rng: &mut R) -> Duration {
    let quarter = interval / 4;
    let span = u64::try_from((quarter * 2).as_nanos()).unwrap_or(u64::MAX);
    if span == 0 {
        return interval;
    }
    interval - quarter + Duration::from_nanos(rng.random_range(0..span))
}

/// A peer ID for a seed peer on `host` (`{ip}-{hostname}-{uuid}-seed`, the host ID being
/// `{ip}-{hostname}-seed`), with a version 4 UUID drawn from `rng`.
fn seed_peer_id<R: Rng + ?Sized>(host: &HostId, rng: &mut R) -> PeerId {
    let host = host.as_str();
    let seed_host = if host.ends_with("-seed") {
        host.to_string()
    } else {
        format!("{host}-seed")
    };
    PeerId::from(common::id::peer_id(&seed_host, rng.random()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SchedulerConfig;
    use crate::resource::{HostInfo, HostLoad};
    use crate::state::PieceFinished;
    use crate::test_support::*;

    fn scheduler() -> Scheduler {
        Scheduler::new(SchedulerConfig::default())
    }

    /// A scheduler sampling every peer (so filter tests see all candidates).
    fn exhaustive() -> Scheduler {
        Scheduler::new(SchedulerConfig {
            filter_parent_limit: 1000,
            ..SchedulerConfig::default()
        })
    }

    fn parents(d: &ScheduleDecision) -> Vec<PeerId> {
        match d {
            ScheduleDecision::Parents(p) => p.clone(),
            other => panic!("expected parents, got {other:?}"),
        }
    }

    #[test]
    fn first_peer_triggers_the_hashed_seed_and_gets_it_as_parent_at_once() {
        let mut s = scheduler();
        let s1 = seed_host(&mut s, "s1");
        let s2 = seed_host(&mut s, "s2");
        let h = normal_host(&mut s, "a");
        let r = register(&mut s, "p1", &h);
        let trigger = r.seed_trigger.clone().expect("seed triggered");
        let expected_host = s.seed_ring.get(TASK).cloned().unwrap();
        assert!(expected_host == s1 || expected_host == s2);
        assert_eq!(trigger.seed_host_id, expected_host);
        assert_eq!(trigger.task_id.as_str(), TASK);
        let seed = trigger.seed_peer_id.clone();
        assert!(seed
            .as_str()
            .starts_with(expected_host.as_str().strip_suffix("-seed").unwrap()));
        assert!(seed.as_str().ends_with("-seed"));
        assert_eq!(parents(decision(&r)), vec![seed.clone()]);

        let sp = s.peer(&seed).unwrap();
        assert_eq!(sp.state(), PeerState::BackToSource);
        assert!(sp.awaiting_seed_registration());
        let task = s.task(&TaskId::from(TASK)).unwrap();
        assert!(task.back_to_source_peers().contains(&seed));
        assert_eq!(task.back_to_source_total(), 1);
        assert_eq!(task.state(), crate::fsm::TaskState::Running);
        assert_eq!(s.parents_of(&pid("p1")).unwrap(), vec![seed.clone()]);
        assert_eq!(s.host(&expected_host).unwrap().concurrent_upload_count(), 1);
        s.verify_invariants().unwrap();
    }

    #[test]
    fn later_peers_reuse_the_triggered_seed() {
        let mut s = scheduler();
        seed_host(&mut s, "s1");
        let a = normal_host(&mut s, "a");
        let b = normal_host(&mut s, "b");
        let seed = register(&mut s, "p1", &a)
            .seed_trigger
            .unwrap()
            .seed_peer_id;
        let r = register(&mut s, "p2", &b);
        assert!(r.seed_trigger.is_none());
        // p1 only registered (a bad parent), so the seed is the one parent.
        assert_eq!(parents(decision(&r)), vec![seed]);
        assert_eq!(
            s.task(&TaskId::from(TASK)).unwrap().back_to_source_total(),
            1
        );
    }

    #[test]
    fn seed_registration_is_adopted_under_the_scheduler_id() {
        let mut s = scheduler();
        let sh = seed_host(&mut s, "s1");
        let a = normal_host(&mut s, "a");
        let seed = register(&mut s, "p1", &a)
            .seed_trigger
            .unwrap()
            .seed_peer_id;

        let mut req = RegisterPeer::new("10.0.1.1-s1-own-uuid-seed", TASK, sh.clone());
        req.need_back_to_source = true;
        req.task = task_info();
        let r = s.register_peer(req, at(2), &mut rng()).unwrap();
        assert_eq!(r.peer_id, seed);
        assert_eq!(
            r.decision,
            RegisterDecision::Schedule(ScheduleDecision::NeedBackToSource(
                BackToSourceReason::TriggeredSeedPeer
            ))
        );
        let alias = pid("10.0.1.1-s1-own-uuid-seed");
        assert_eq!(s.peer(&alias).unwrap().id(), &seed);
        assert_eq!(s.peer(&seed).unwrap().registered_as(), Some(&alias));
        assert!(!s.peer(&seed).unwrap().awaiting_seed_registration());
        // Its reports under its own ID reach the adopted peer.
        s.download_peer_back_to_source_started(&alias, at(3))
            .unwrap();
        s.download_piece_finished(
            &alias,
            PieceFinished {
                number: 0,
                cost: Duration::from_millis(10),
            },
            at(3),
        )
        .unwrap();
        assert_eq!(s.peer(&seed).unwrap().finished_pieces().len(), 1);
        s.download_peer_back_to_source_finished(&alias, TaskInfo::default(), at(4))
            .unwrap();
        assert_eq!(s.peer(&seed).unwrap().state(), PeerState::Succeeded);
        assert_eq!(
            s.task(&TaskId::from(TASK)).unwrap().state(),
            crate::fsm::TaskState::Succeeded
        );
        // Removing the peer drops the alias.
        s.remove_peer(&alias, at(5)).unwrap();
        assert!(s.peer(&alias).is_none());
        s.verify_invariants().unwrap();
    }

    #[test]
    fn without_seed_peers_the_first_peer_goes_to_the_origin() {
        let mut s = scheduler();
        let a = normal_host(&mut s, "a");
        let b = normal_host(&mut s, "b");
        let r = register(&mut s, "p1", &a);
        assert!(r.seed_trigger.is_none());
        assert_eq!(
            decision(&r),
            &ScheduleDecision::NeedBackToSource(BackToSourceReason::PeerNeedsBackToSource)
        );
        assert!(s
            .task(&TaskId::from(TASK))
            .unwrap()
            .back_to_source_peers()
            .contains(&pid("p1")));

        // p1 holds the origin slot, so p2 waits for it rather than going to the origin too.
        let r = register(&mut s, "p2", &b);
        assert!(matches!(decision(&r), ScheduleDecision::RetryLater(_)));
        s.download_peer_back_to_source_started(&pid("p1"), at(2))
            .unwrap();
        let d = s
            .schedule_candidate_parents(&pid("p2"), at(2), &mut rng())
            .unwrap();
        assert_eq!(parents(&d), vec![pid("p1")]);
        assert_eq!(
            s.task(&TaskId::from(TASK)).unwrap().back_to_source_total(),
            1
        );
    }

    #[test]
    fn retry_back_to_source_limit_sends_a_starved_peer_to_the_origin() {
        let mut s = Scheduler::new(SchedulerConfig {
            back_to_source_count: 2,
            ..SchedulerConfig::default()
        });
        let a = normal_host(&mut s, "a");
        let b = normal_host(&mut s, "b");
        register(&mut s, "p1", &a); // origin slot 1, stays only registered (bad parent)
        let r = register(&mut s, "p2", &b);
        let mut delays = vec![];
        let mut d = decision(&r).clone();
        while let ScheduleDecision::RetryLater(delay) = d {
            delays.push(delay);
            d = s
                .schedule_candidate_parents(&pid("p2"), at(2), &mut rng())
                .unwrap();
        }
        assert_eq!(delays.len(), 4, "retryBackToSourceLimit rounds");
        for delay in delays {
            assert!(
                delay >= Duration::from_millis(375) && delay < Duration::from_millis(625),
                "{delay:?}"
            );
        }
        assert_eq!(
            d,
            ScheduleDecision::NeedBackToSource(BackToSourceReason::RetryBackToSourceLimit)
        );
        let task = s.task(&TaskId::from(TASK)).unwrap();
        assert_eq!(task.back_to_source_peers().len(), 2);
        assert_eq!(s.peer(&pid("p2")).unwrap().schedule_attempts(), 0);
    }

    #[test]
    fn retry_limit_fails_when_the_origin_slots_are_taken() {
        let mut s = Scheduler::new(SchedulerConfig {
            back_to_source_count: 1,
            ..SchedulerConfig::default()
        });
        let a = normal_host(&mut s, "a");
        let b = normal_host(&mut s, "b");
        register(&mut s, "p1", &a); // takes the only origin slot
        let r = register(&mut s, "p2", &b);
        let mut rounds = 0;
        let mut d = decision(&r).clone();
        while let ScheduleDecision::RetryLater(_) = d {
            rounds += 1;
            d = s
                .schedule_candidate_parents(&pid("p2"), at(2), &mut rng())
                .unwrap();
        }
        assert_eq!(rounds, 5, "retryLimit rounds");
        assert_eq!(d, ScheduleDecision::Fail(FailReason::RetryLimitExceeded));
        assert_eq!(s.peer(&pid("p2")).unwrap().state(), PeerState::Failed);
        assert_eq!(
            s.task(&TaskId::from(TASK)).unwrap().back_to_source_total(),
            1
        );
        // A failed peer is not scheduled again.
        assert!(matches!(
            s.schedule_candidate_parents(&pid("p2"), at(3), &mut rng()),
            Err(SchedulerError::NotSchedulable { .. })
        ));
    }

    #[test]
    fn zero_back_to_source_count_never_sends_to_the_origin_nor_triggers_seeds() {
        let mut s = Scheduler::new(SchedulerConfig {
            back_to_source_count: 0,
            ..SchedulerConfig::default()
        });
        seed_host(&mut s, "s1");
        let a = normal_host(&mut s, "a");
        let r = register(&mut s, "p1", &a);
        assert!(r.seed_trigger.is_none());
        assert!(matches!(decision(&r), ScheduleDecision::RetryLater(_)));
    }

    #[test]
    fn priorities_decide_the_first_download() {
        let mut s = scheduler();
        seed_host(&mut s, "s1");
        let a = normal_host(&mut s, "a");
        let mut req = RegisterPeer::new("p1", TASK, a.clone());
        req.task = task_info();
        req.priority = Priority::Level1;
        let r = s.register_peer(req.clone(), at(1), &mut rng()).unwrap();
        assert_eq!(
            decision(&r),
            &ScheduleDecision::Fail(FailReason::DownloadForbidden)
        );
        assert_eq!(s.peer(&pid("p1")).unwrap().state(), PeerState::Failed);

        req.peer_id = pid("p2");
        req.priority = Priority::Level2;
        let r = s.register_peer(req.clone(), at(1), &mut rng()).unwrap();
        assert_eq!(
            decision(&r),
            &ScheduleDecision::Fail(FailReason::NoPeerToServe)
        );

        req.peer_id = pid("p3");
        req.priority = Priority::Level3;
        let r = s.register_peer(req.clone(), at(1), &mut rng()).unwrap();
        assert!(r.seed_trigger.is_none(), "LEVEL3 goes to the origin itself");
        assert_eq!(
            decision(&r),
            &ScheduleDecision::NeedBackToSource(BackToSourceReason::PeerNeedsBackToSource)
        );

        // Once p3 holds the origin slot, priorities no longer matter (for other hosts: a peer
        // on p3's own host cannot download from it).
        let b = normal_host(&mut s, "b");
        req.host_id = b;
        req.peer_id = pid("p4");
        req.priority = Priority::Level1;
        let r = s.register_peer(req, at(1), &mut rng()).unwrap();
        assert!(
            matches!(decision(&r), ScheduleDecision::RetryLater(_)),
            "{r:?}"
        );
    }

    #[test]
    fn a_failed_seed_is_not_triggered_again_for_a_while() {
        let mut s = scheduler();
        seed_host(&mut s, "s1");
        let a = normal_host(&mut s, "a");
        let b = normal_host(&mut s, "b");
        let c = normal_host(&mut s, "c");
        let seed = register(&mut s, "p1", &a)
            .seed_trigger
            .unwrap()
            .seed_peer_id;
        let orphans = s.seed_trigger_failed(&seed, at(2)).unwrap();
        assert_eq!(orphans, vec![pid("p1")]);
        assert_eq!(s.peer(&seed).unwrap().state(), PeerState::Failed);
        assert!(s
            .task(&TaskId::from(TASK))
            .unwrap()
            .back_to_source_peers()
            .is_empty());

        // Within seedPeerFailedTimeout the next peer goes to the origin itself.
        let mut req = RegisterPeer::new("p2", TASK, b);
        req.task = task_info();
        let r = s.register_peer(req, at(60), &mut rng()).unwrap();
        assert!(r.seed_trigger.is_none());
        assert_eq!(
            decision(&r),
            &ScheduleDecision::NeedBackToSource(BackToSourceReason::PeerNeedsBackToSource)
        );
        s.download_peer_back_to_source_failed(&pid("p2"), at(61))
            .unwrap();

        // Later a seed peer is triggered again, under a new ID.
        let mut req = RegisterPeer::new("p3", TASK, c);
        req.task = task_info();
        let r = s.register_peer(req, at(2 + 31 * 60), &mut rng()).unwrap();
        let again = r.seed_trigger.expect("triggered again");
        assert_ne!(again.seed_peer_id, seed);
        s.verify_invariants().unwrap();
    }

    #[test]
    fn empty_and_metadata_only_registrations() {
        let mut s = scheduler();
        seed_host(&mut s, "s1");
        let a = normal_host(&mut s, "a");
        let mut req = RegisterPeer::new("p1", "empty", a.clone());
        req.task = TaskInfo {
            content_length: Some(0),
            piece_length: Some(4 << 20),
            total_pieces: Some(0),
        };
        let r = s.register_peer(req, at(1), &mut rng()).unwrap();
        assert_eq!(r.decision, RegisterDecision::Empty);
        assert!(r.seed_trigger.is_none());
        assert_eq!(
            s.peer(&pid("p1")).unwrap().state(),
            PeerState::ReceivedEmpty
        );

        let mut req = RegisterPeer::new("p2", TASK, a);
        req.metadata_only = true;
        let r = s.register_peer(req, at(1), &mut rng()).unwrap();
        assert_eq!(r.decision, RegisterDecision::MetadataOnly);
        assert_eq!(
            s.peer(&pid("p2")).unwrap().state(),
            PeerState::ReceivedNormal
        );
    }

    #[test]
    fn registration_errors() {
        let mut s = scheduler();
        let a = normal_host(&mut s, "a");
        let err = s
            .register_peer(RegisterPeer::new("p", TASK, "nope"), at(1), &mut rng())
            .unwrap_err();
        assert_eq!(err, SchedulerError::HostNotFound(HostId::from("nope")));
        register(&mut s, "p1", &a);
        let err = s
            .register_peer(RegisterPeer::new("p1", TASK, a), at(1), &mut rng())
            .unwrap_err();
        assert_eq!(err, SchedulerError::PeerExists(pid("p1")));
    }

    /// Child `c` on host "child"; returns the scheduler. Candidates are added by each test.
    fn with_child() -> (Scheduler, HostId) {
        let mut s = exhaustive();
        let ch = normal_host(&mut s, "child");
        let mut req = RegisterPeer::new("c", TASK, ch.clone());
        req.task = task_info();
        req.need_back_to_source = false;
        // Register with the origin slots taken so nothing is triggered.
        s.config.back_to_source_count = 0;
        s.register_peer(req, at(1), &mut rng()).unwrap();
        s.config.back_to_source_count = 200;
        s.peers.get_mut(&pid("c")).unwrap().need_back_to_source = false;
        (s, ch)
    }

    fn add_peer(s: &mut Scheduler, peer: &str, host: &HostId, state: PeerState) {
        let mut req = RegisterPeer::new(peer, TASK, host.clone());
        req.metadata_only = true; // registers without scheduling
        s.register_peer(req, at(1), &mut rng()).unwrap();
        force_state(s, peer, state);
    }

    fn rejected(s: &Scheduler) -> Vec<(PeerId, RejectReason)> {
        let mut r = s
            .filter_candidate_parents(&pid("c"), &mut rng())
            .unwrap()
            .rejected;
        r.sort_by(|a, b| a.0.cmp(&b.0));
        r
    }

    fn candidates(s: &Scheduler) -> Vec<PeerId> {
        let mut c = s
            .filter_candidate_parents(&pid("c"), &mut rng())
            .unwrap()
            .candidates;
        c.sort();
        c
    }

    #[test]
    fn filter_keeps_good_parents_and_drops_self() {
        let (mut s, _) = with_child();
        let h = normal_host(&mut s, "h1");
        add_peer(&mut s, "done", &h, PeerState::Succeeded);
        let h2 = normal_host(&mut s, "h2");
        add_peer(&mut s, "origin", &h2, PeerState::BackToSource);
        assert_eq!(candidates(&s), vec![pid("done"), pid("origin")]);
        assert_eq!(rejected(&s), vec![(pid("c"), RejectReason::SelfPeer)]);
    }

    #[test]
    fn filter_drops_blocked_parents() {
        let (mut s, _) = with_child();
        let h = normal_host(&mut s, "h1");
        add_peer(&mut s, "x", &h, PeerState::Succeeded);
        s.download_piece_failed(&pid("c"), Some(&pid("x")), at(2))
            .unwrap();
        assert!(rejected(&s).contains(&(pid("x"), RejectReason::Blocked)));
        assert_eq!(s.host(&h).unwrap().upload_failed_count(), 1);
    }

    #[test]
    fn filter_drops_leech_hosts() {
        let (mut s, _) = with_child();
        let mut info = HostInfo::new("10.0.0.9-leech", HostType::Normal);
        info.disable_shared = true;
        let h = info.id.clone();
        s.announce_host(info, at(0));
        add_peer(&mut s, "x", &h, PeerState::Succeeded);
        assert!(rejected(&s).contains(&(pid("x"), RejectReason::DisableShared)));
    }

    #[test]
    fn filter_drops_peers_on_the_same_host() {
        let (mut s, ch) = with_child();
        let mut req = RegisterPeer::new("twin", "other-task", ch.clone());
        req.metadata_only = true;
        s.register_peer(req, at(1), &mut rng()).unwrap();
        // Same host, same task: a second peer of the child's host.
        add_peer(&mut s, "x", &ch, PeerState::Succeeded);
        assert!(rejected(&s).contains(&(pid("x"), RejectReason::SameHost)));
    }

    #[test]
    fn filter_drops_normal_peers_without_a_source_but_not_seeds() {
        let (mut s, _) = with_child();
        let h = normal_host(&mut s, "h1");
        add_peer(&mut s, "orphan", &h, PeerState::Running);
        let sh = seed_host(&mut s, "s1");
        add_peer(&mut s, "seed", &sh, PeerState::Running);
        assert!(rejected(&s).contains(&(pid("orphan"), RejectReason::NoSource)));
        assert_eq!(candidates(&s), vec![pid("seed")]);

        // With a parent of its own, the running peer is a valid parent.
        s.add_edge(&TaskId::from(TASK), &pid("seed"), &pid("orphan"))
            .unwrap();
        assert_eq!(candidates(&s), vec![pid("orphan"), pid("seed")]);
    }

    #[test]
    fn filter_drops_bad_parents() {
        let (mut s, _) = with_child();
        // Seed hosts are exempt from the no-source rule, so only the state speaks here.
        let sh = seed_host(&mut s, "s1");
        add_peer(&mut s, "registered", &sh, PeerState::ReceivedNormal);
        let sh = seed_host(&mut s, "s2");
        add_peer(&mut s, "slow", &sh, PeerState::Running);
        for ms in [10, 10, 500] {
            s.download_piece_finished(
                &pid("slow"),
                PieceFinished {
                    number: 0,
                    cost: Duration::from_millis(ms),
                },
                at(2),
            )
            .unwrap();
        }
        let r = rejected(&s);
        assert!(
            r.contains(&(pid("registered"), RejectReason::BadParent)),
            "{r:?}"
        );
        assert!(r.contains(&(pid("slow"), RejectReason::BadParent)), "{r:?}");
    }

    #[test]
    fn filter_drops_hosts_at_their_upload_limit() {
        let (mut s, _) = with_child();
        let mut info = HostInfo::new("10.0.0.9-small", HostType::Normal);
        info.concurrent_upload_limit = Some(1);
        let h = info.id.clone();
        s.announce_host(info, at(0));
        add_peer(&mut s, "x", &h, PeerState::Succeeded);
        let other = normal_host(&mut s, "o");
        add_peer(&mut s, "y", &other, PeerState::Running);
        assert_eq!(candidates(&s), vec![pid("x")]);
        s.add_edge(&TaskId::from(TASK), &pid("x"), &pid("y"))
            .unwrap();
        assert!(rejected(&s).contains(&(pid("x"), RejectReason::UploadLimit)));
    }

    #[test]
    fn filter_keeps_children_as_parents_and_drops_current_parents() {
        let (mut s, _) = with_child();
        let h = normal_host(&mut s, "h1");
        add_peer(&mut s, "desc", &h, PeerState::Running);
        let h2 = normal_host(&mut s, "h2");
        add_peer(&mut s, "par", &h2, PeerState::Succeeded);
        force_state(&mut s, "c", PeerState::Running);
        let t = TaskId::from(TASK);
        s.add_edge(&t, &pid("c"), &pid("desc")).unwrap(); // desc downloads from c
        s.add_edge(&t, &pid("par"), &pid("c")).unwrap();
        let r = rejected(&s);
        assert!(
            r.contains(&(pid("par"), RejectReason::AlreadyParent)),
            "{r:?}"
        );
        // c's own child may serve c (they trade pieces).
        assert!(candidates(&s).contains(&pid("desc")), "{r:?}");
    }

    #[test]
    fn filter_samples_at_most_filter_parent_limit_peers() {
        let (mut s, _) = with_child();
        s.config.filter_parent_limit = 15;
        for i in 0..40 {
            let h = normal_host(&mut s, &format!("h{i}"));
            add_peer(&mut s, &format!("x{i}"), &h, PeerState::Succeeded);
        }
        let out = s.filter_candidate_parents(&pid("c"), &mut rng()).unwrap();
        assert_eq!(out.candidates.len() + out.rejected.len(), 15);
    }

    #[test]
    fn candidates_are_ranked_by_score_and_limited() {
        let (mut s, _) = with_child();
        // Six finished parents whose hosts use 0%, 10%, ... 50% of their bandwidth.
        for i in 0..6u64 {
            let mut info = HostInfo::new(format!("10.0.2.{i}-h"), HostType::Normal);
            info.max_tx_bandwidth = 10 * GBPS;
            info.tx_bandwidth = i * GBPS;
            let h = info.id.clone();
            s.announce_host(info, at(0));
            add_peer(&mut s, &format!("x{i}"), &h, PeerState::Succeeded);
        }
        let found = s.find_candidate_parents(&pid("c"), &mut rng()).unwrap();
        let ids: Vec<_> = found.iter().map(|c| c.peer.clone()).collect();
        assert_eq!(ids, vec![pid("x0"), pid("x1"), pid("x2"), pid("x3")]);
        // Peak usage differs by 0.1 per host: 0.6 x 0.5 x 0.1 = 0.03 per step.
        for w in found.windows(2) {
            assert!((w[0].score - w[1].score - 0.03).abs() < 1e-9);
        }
    }

    #[test]
    fn scheduled_edges_reserve_load_and_give_it_back() {
        let (mut s, _) = with_child();
        let h = normal_host(&mut s, "h1");
        add_peer(&mut s, "x", &h, PeerState::Succeeded);
        let d = s
            .schedule_candidate_parents(&pid("c"), at(2), &mut rng())
            .unwrap();
        assert_eq!(parents(&d), vec![pid("x")]);
        let load = s.host(&h).unwrap().load();
        assert_eq!(s.host(&h).unwrap().concurrent_upload_count(), 1);
        assert_eq!(load.concurrent_upload_piece_count, 8);
        assert_eq!(load.upload_content_length, 1 << 30);
        assert_eq!(load.tx_bandwidth, (4 << 20) * 8 * 8);
        s.verify_invariants().unwrap();

        s.download_peer_started(&pid("c"), at(3)).unwrap();
        s.download_peer_finished(&pid("c"), at(4)).unwrap();
        let load = s.host(&h).unwrap().load();
        assert_eq!(s.host(&h).unwrap().concurrent_upload_count(), 0);
        assert_eq!(
            load,
            HostLoad {
                max_tx_bandwidth: 10 * GBPS,
                ..HostLoad::default()
            }
        );
        s.verify_invariants().unwrap();
    }

    #[test]
    fn two_candidates_on_one_host_do_not_overrun_its_limit() {
        let (mut s, _) = with_child();
        let mut info = HostInfo::new("10.0.0.9-one", HostType::Normal);
        info.concurrent_upload_limit = Some(1);
        let h = info.id.clone();
        s.announce_host(info, at(0));
        add_peer(&mut s, "x", &h, PeerState::Succeeded);
        add_peer(&mut s, "y", &h, PeerState::Succeeded);
        let d = s
            .schedule_candidate_parents(&pid("c"), at(2), &mut rng())
            .unwrap();
        assert_eq!(parents(&d).len(), 1);
        assert_eq!(s.host(&h).unwrap().concurrent_upload_count(), 1);
        s.verify_invariants().unwrap();
    }

    #[test]
    fn reschedule_blocks_the_old_parents() {
        let (mut s, _) = with_child();
        let h1 = normal_host(&mut s, "h1");
        add_peer(&mut s, "x", &h1, PeerState::Succeeded);
        let h2 = normal_host(&mut s, "h2");
        add_peer(&mut s, "y", &h2, PeerState::Succeeded);
        s.config.candidate_parent_limit = 1;
        let first = parents(
            &s.schedule_candidate_parents(&pid("c"), at(2), &mut rng())
                .unwrap(),
        );
        let d = s
            .reschedule_peer(&pid("c"), &first, at(3), &mut rng())
            .unwrap();
        let second = parents(&d);
        assert_eq!(second.len(), 1);
        assert_ne!(second, first);
        assert_eq!(s.parents_of(&pid("c")).unwrap(), second, "old edge removed");
        // Both blocked now: nothing left.
        let d = s
            .reschedule_peer(&pid("c"), &second, at(4), &mut rng())
            .unwrap();
        assert!(matches!(d, ScheduleDecision::RetryLater(_)));
        assert!(s.parents_of(&pid("c")).unwrap().is_empty());
        s.verify_invariants().unwrap();
    }

    #[test]
    fn only_registered_or_running_peers_are_scheduled() {
        let (mut s, _) = with_child();
        for state in [
            PeerState::Pending,
            PeerState::ReceivedEmpty,
            PeerState::BackToSource,
            PeerState::Succeeded,
            PeerState::Failed,
            PeerState::Leave,
        ] {
            force_state(&mut s, "c", state);
            assert_eq!(
                s.schedule_candidate_parents(&pid("c"), at(2), &mut rng()),
                Err(SchedulerError::NotSchedulable {
                    peer: pid("c"),
                    state
                })
            );
        }
        assert_eq!(
            s.schedule_candidate_parents(&pid("nobody"), at(2), &mut rng()),
            Err(SchedulerError::PeerNotFound(pid("nobody")))
        );
    }

    #[test]
    fn same_seed_same_decisions() {
        let run = || {
            let mut s = scheduler();
            seed_host(&mut s, "s1");
            seed_host(&mut s, "s2");
            let mut out = vec![];
            let mut r = rng();
            for i in 0..30 {
                let h = normal_host(&mut s, &format!("h{i}"));
                let mut req = RegisterPeer::new(format!("p{i}"), TASK, h);
                req.task = task_info();
                let reg = s.register_peer(req, at(i), &mut r).unwrap();
                s.download_peer_started(&reg.peer_id, at(i)).ok();
                out.push(reg);
            }
            out
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn seed_peer_ids_look_like_dragonflys() {
        let id = seed_peer_id(&HostId::from("10.0.1.1-s1-seed"), &mut rng());
        let s = id.as_str();
        assert!(s.starts_with("10.0.1.1-s1-") && s.ends_with("-seed"), "{s}");
        let uuid = &s["10.0.1.1-s1-".len()..s.len() - "-seed".len()];
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4", "version 4");
    }

    #[test]
    fn peers_registered_together_get_each_other_as_parents_once_they_start() {
        let mut s = exhaustive();
        seed_host(&mut s, "s1");
        let hosts: Vec<HostId> = (1..=4)
            .map(|i| normal_host(&mut s, &format!("h{i}")))
            .collect();
        let names = ["p1", "p2", "p3", "p4"];
        let mut seed = None;
        // All register before any starts: each gets the seed alone (the others are only
        // registered, which makes them bad parents).
        for (name, host) in names.iter().zip(&hosts) {
            let r = register(&mut s, name, host);
            if let Some(t) = &r.seed_trigger {
                seed = Some(t.seed_peer_id.clone());
            }
            assert_eq!(parents(decision(&r)), vec![seed.clone().unwrap()]);
        }
        // Nothing to add while nobody runs.
        assert!(s
            .top_up_parents(&TaskId::from(TASK), None, &mut rng())
            .unwrap()
            .is_empty());
        let mut added_total = 0;
        for (i, name) in names.iter().enumerate() {
            s.download_peer_started(&pid(name), at(2 + i as u64))
                .unwrap();
            for (child, added) in s
                .top_up_parents(&TaskId::from(TASK), Some(&pid(name)), &mut rng())
                .unwrap()
            {
                assert!(!added.is_empty());
                assert!(!added.contains(&child));
                added_total += added.len();
            }
            s.verify_invariants().unwrap();
        }
        // Every peer ends with more than the seed (the first to start too: the later ones
        // serve it, they trade pieces), every peer serves another, and every peer is still
        // running.
        let with_more = names
            .iter()
            .filter(|n| s.parents_of(&pid(n)).unwrap().len() > 1)
            .count();
        assert_eq!(with_more, names.len(), "added {added_total} parents");
        let t = s.task(&TaskId::from(TASK)).unwrap();
        for n in names {
            assert!(
                t.dag().out_degree(&pid(n)).unwrap() > 0,
                "{n} serves nobody"
            );
        }
        for n in names {
            assert_eq!(s.peer(&pid(n)).unwrap().state(), PeerState::Running);
            assert!(s
                .parents_of(&pid(n))
                .unwrap()
                .contains(seed.as_ref().unwrap()));
        }
        // Topping up again with nothing new changes nothing and fails nobody.
        for _ in 0..10 {
            s.top_up_parents(&TaskId::from(TASK), None, &mut rng())
                .unwrap();
        }
        for n in names {
            assert_eq!(s.peer(&pid(n)).unwrap().state(), PeerState::Running);
        }
    }

    #[test]
    fn top_up_respects_the_candidate_parent_limit() {
        let mut s = Scheduler::new(SchedulerConfig {
            filter_parent_limit: 1000,
            candidate_parent_limit: 2,
            ..SchedulerConfig::default()
        });
        seed_host(&mut s, "s1");
        let hosts: Vec<HostId> = (1..=5)
            .map(|i| normal_host(&mut s, &format!("h{i}")))
            .collect();
        for (i, host) in hosts.iter().enumerate() {
            register(&mut s, &format!("p{i}"), host);
        }
        for i in 0..5 {
            s.download_peer_started(&pid(&format!("p{i}")), at(2))
                .unwrap();
            s.top_up_parents(&TaskId::from(TASK), None, &mut rng())
                .unwrap();
        }
        // Topping up a child's own list stops at the limit; a parent with room for
        // children may take a child past it, never past twice the limit.
        for i in 0..5 {
            assert!(s.parents_of(&pid(&format!("p{i}"))).unwrap().len() <= 4);
        }
        s.verify_invariants().unwrap();
    }
}
