//! The scheduler's in-memory state and the handlers for what peers report. Every handler takes
//! the current time and returns what changed or what to do; nothing here waits, sleeps or
//! touches a socket.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::config::SchedulerConfig;
use crate::error::SchedulerError;
use crate::fsm::{PeerEvent, PeerState, TaskEvent};
use crate::hashring::HashRing;
use crate::resource::{
    Host, HostId, HostInfo, Peer, PeerId, Task, TaskId, TaskInfo, UploadReservation,
    MAX_PIECE_NUMBER,
};

/// A piece a peer reports finished, from a parent or from the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceFinished {
    /// Piece number.
    pub number: u32,
    /// How long the download took.
    pub cost: Duration,
}

/// The state broke one of its own rules (a bug, reported by [`Scheduler::verify_invariants`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scheduler invariant violated: {0}")]
pub struct InvariantViolation(pub String);

/// Hosts, tasks with their peer DAGs, and peers; plus the policy that schedules them.
#[derive(Debug, Clone)]
pub struct Scheduler {
    pub(crate) config: SchedulerConfig,
    pub(crate) hosts: BTreeMap<HostId, Host>,
    pub(crate) tasks: BTreeMap<TaskId, Task>,
    pub(crate) peers: BTreeMap<PeerId, Peer>,
    /// IDs that node agents of triggered seed peers registered with, mapped to the ID the
    /// scheduler gave those peers.
    pub(crate) aliases: BTreeMap<PeerId, PeerId>,
    pub(crate) seed_ring: HashRing,
}

impl Scheduler {
    /// An empty state with this policy.
    pub fn new(config: SchedulerConfig) -> Scheduler {
        Scheduler {
            config,
            hosts: BTreeMap::new(),
            tasks: BTreeMap::new(),
            peers: BTreeMap::new(),
            aliases: BTreeMap::new(),
            seed_ring: HashRing::default(),
        }
    }

    /// The policy.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The seed peer host owning `task_id` on the hash ring.
    pub fn seed_host_for(&self, task_id: &str) -> Option<HostId> {
        self.seed_ring.get(task_id).cloned()
    }

    /// Applies a cluster's settings from the manager; the keys that changed.
    pub fn apply_cluster_config(&mut self, c: &crate::config::ClusterConfig) -> Vec<&'static str> {
        self.config.apply(c)
    }

    /// A host by ID.
    pub fn host(&self, id: &HostId) -> Option<&Host> {
        self.hosts.get(id)
    }

    /// A task by ID.
    pub fn task(&self, id: &TaskId) -> Option<&Task> {
        self.tasks.get(id)
    }

    /// A peer by ID (also by the ID a triggered seed peer registered with).
    pub fn peer(&self, id: &PeerId) -> Option<&Peer> {
        self.peers.get(self.aliases.get(id).unwrap_or(id))
    }

    /// All hosts, by ID.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    /// All tasks, by ID.
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    /// All peers, by ID.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// Seed peer hosts on the hash ring.
    pub fn seed_host_count(&self) -> usize {
        self.seed_ring.len()
    }

    /// How long the shell waits before handling a registration from `host` while `in_flight`
    /// registrations of that host (this one included) are being handled; see
    /// [`register_delay`](crate::register_delay::register_delay).
    pub fn register_delay<R: rand::Rng + ?Sized>(
        &self,
        host: &HostId,
        in_flight: u32,
        rng: &mut R,
    ) -> Result<Duration, SchedulerError> {
        let host = self
            .hosts
            .get(host)
            .ok_or_else(|| SchedulerError::HostNotFound(host.clone()))?;
        Ok(crate::register_delay::register_delay(
            host.host_type,
            in_flight,
            &self.config.register_delay,
            rng,
        ))
    }

    /// Current parents of a peer.
    pub fn parents_of(&self, peer: &PeerId) -> Result<Vec<PeerId>, SchedulerError> {
        let (peer, task) = self.peer_and_task(peer)?;
        let parents = task
            .dag
            .parents(&peer.id)
            .map_err(|source| SchedulerError::Dag {
                task: task.id.clone(),
                source,
            })?;
        Ok(parents.map(|(p, _)| p.clone()).collect())
    }

    /// Current children of a peer.
    pub fn children_of(&self, peer: &PeerId) -> Result<Vec<PeerId>, SchedulerError> {
        let (peer, task) = self.peer_and_task(peer)?;
        let children = task
            .dag
            .children(&peer.id)
            .map_err(|source| SchedulerError::Dag {
                task: task.id.clone(),
                source,
            })?;
        Ok(children.cloned().collect())
    }

    /// Takes a host's announcement: adds the host or updates it (measured bandwidth replaced,
    /// reservations for current children kept). Seed peer hosts join the hash ring.
    pub fn announce_host(&mut self, info: HostInfo, now: SystemTime) {
        let default_limit = if info.host_type.is_seed() {
            self.config.seed_peer_concurrent_upload_limit
        } else {
            self.config.peer_concurrent_upload_limit
        };
        let id = info.id.clone();
        let on_ring = info.host_type.is_seed() && !info.disable_shared;
        match self.hosts.get_mut(&id) {
            Some(host) => host.update(info, default_limit, now),
            None => {
                self.hosts
                    .insert(id.clone(), Host::new(info, default_limit, now));
            }
        }
        if on_ring {
            self.seed_ring.add(&id);
        } else {
            self.seed_ring.remove(&id);
        }
    }

    /// Removes a host and all its peers; returns the removed peers.
    pub fn remove_host(
        &mut self,
        id: &HostId,
        now: SystemTime,
    ) -> Result<Vec<PeerId>, SchedulerError> {
        let host = self
            .hosts
            .get(id)
            .ok_or_else(|| SchedulerError::HostNotFound(id.clone()))?;
        let peers: Vec<PeerId> = host.peers.iter().cloned().collect();
        for p in &peers {
            self.remove_peer(p, now)?;
        }
        self.hosts.remove(id);
        self.seed_ring.remove(id);
        Ok(peers)
    }

    /// Records task figures learned after registration (content length, pieces); figures
    /// already known are replaced.
    pub fn update_task(
        &mut self,
        id: &TaskId,
        info: TaskInfo,
        now: SystemTime,
    ) -> Result<(), SchedulerError> {
        let task = self
            .tasks
            .get_mut(id)
            .ok_or_else(|| SchedulerError::TaskNotFound(id.clone()))?;
        task.content_length = info.content_length.or(task.content_length);
        task.piece_length = info.piece_length.or(task.piece_length);
        task.total_pieces = info.total_pieces.or(task.total_pieces);
        task.updated_at = now;
        Ok(())
    }

    /// `DownloadPeerStartedRequest`: the peer downloads from its parents (no-op if it already
    /// does).
    pub fn download_peer_started(
        &mut self,
        peer: &PeerId,
        now: SystemTime,
    ) -> Result<(), SchedulerError> {
        let id = self.canonical(peer)?;
        if self.peers.get(&id).map(|p| p.state) == Some(PeerState::Running) {
            return Ok(());
        }
        self.fire(&id, PeerEvent::Download, now).map(drop)
    }

    /// `DownloadPeerBackToSourceStartedRequest`: the peer downloads from the origin (no-op if
    /// it already does). The peer takes an origin slot even if it was not given one: it is
    /// fetching from the origin whatever the scheduler said.
    pub fn download_peer_back_to_source_started(
        &mut self,
        peer: &PeerId,
        now: SystemTime,
    ) -> Result<(), SchedulerError> {
        let id = self.canonical(peer)?;
        if self.peers.get(&id).map(|p| p.state) == Some(PeerState::BackToSource) {
            return Ok(());
        }
        self.fire(&id, PeerEvent::DownloadBackToSource, now)
            .map(drop)
    }

    /// `DownloadPeerFinishedRequest`: the peer holds the whole task and serves it.
    pub fn download_peer_finished(
        &mut self,
        peer: &PeerId,
        now: SystemTime,
    ) -> Result<(), SchedulerError> {
        let id = self.canonical(peer)?;
        self.fire(&id, PeerEvent::DownloadSucceeded, now).map(drop)
    }

    /// `DownloadPeerBackToSourceFinishedRequest`: the peer fetched the whole task from the
    /// origin, which tells the task's real length and piece count (`info`, when given).
    pub fn download_peer_back_to_source_finished(
        &mut self,
        peer: &PeerId,
        info: TaskInfo,
        now: SystemTime,
    ) -> Result<(), SchedulerError> {
        let id = self.canonical(peer)?;
        let task_id = self.peer_task_id(&id)?;
        self.fire(&id, PeerEvent::DownloadSucceeded, now)?;
        self.update_task(&task_id, info, now)?;
        self.fire_task(&task_id, TaskEvent::DownloadSucceeded, now)
    }

    /// `DownloadPeerFailedRequest`: the peer gave up.
    pub fn download_peer_failed(
        &mut self,
        peer: &PeerId,
        now: SystemTime,
    ) -> Result<(), SchedulerError> {
        let id = self.canonical(peer)?;
        self.fire(&id, PeerEvent::DownloadFailed, now).map(drop)
    }

    /// `DownloadPeerBackToSourceFailedRequest`: the origin download failed, and with it the
    /// task (until another peer fetches it). The peer's origin slot is given back.
    pub fn download_peer_back_to_source_failed(
        &mut self,
        peer: &PeerId,
        now: SystemTime,
    ) -> Result<(), SchedulerError> {
        let id = self.canonical(peer)?;
        let task_id = self.peer_task_id(&id)?;
        self.fire(&id, PeerEvent::DownloadFailed, now)?;
        self.fire_task(&task_id, TaskEvent::DownloadFailed, now)
    }

    /// `DownloadPieceFinishedRequest` / `DownloadPieceBackToSourceFinishedRequest`.
    pub fn download_piece_finished(
        &mut self,
        peer: &PeerId,
        piece: PieceFinished,
        now: SystemTime,
    ) -> Result<(), SchedulerError> {
        let id = self.canonical(peer)?;
        let task_id = self.peer_task_id(&id)?;
        let task = self
            .tasks
            .get_mut(&task_id)
            .ok_or_else(|| SchedulerError::TaskNotFound(task_id.clone()))?;
        let limit = task
            .total_pieces
            .map_or(u64::from(MAX_PIECE_NUMBER) + 1, u64::from);
        if u64::from(piece.number) >= limit {
            return Err(SchedulerError::PieceOutOfRange {
                peer: id,
                number: piece.number,
                limit,
            });
        }
        task.updated_at = now;
        let p = self
            .peers
            .get_mut(&id)
            .ok_or_else(|| SchedulerError::PeerNotFound(id.clone()))?;
        p.finished_pieces.insert(piece.number);
        p.piece_costs.push(piece.cost);
        p.piece_updated_at = now;
        p.updated_at = now;
        Ok(())
    }

    /// `DownloadPieceFailedRequest`: a piece from `parent` failed; that parent is not given to
    /// this peer again and its host's failure count goes up.
    pub fn download_piece_failed(
        &mut self,
        peer: &PeerId,
        parent: Option<&PeerId>,
        now: SystemTime,
    ) -> Result<(), SchedulerError> {
        let id = self.canonical(peer)?;
        let parent = parent.map(|p| self.aliases.get(p).unwrap_or(p).clone());
        if let Some(parent) = &parent {
            if let Some(host) = self
                .peers
                .get(parent)
                .and_then(|pp| self.hosts.get_mut(&pp.host_id))
            {
                host.upload_failed_count = host.upload_failed_count.saturating_add(1);
            }
        }
        let p = self
            .peers
            .get_mut(&id)
            .ok_or_else(|| SchedulerError::PeerNotFound(id.clone()))?;
        if let Some(parent) = parent {
            p.block_parents.insert(parent);
        }
        p.updated_at = now;
        Ok(())
    }

    /// The shell could not trigger the seed peer it was told to (`DownloadTask` failed): the
    /// seed peer fails, no seed peer is triggered for the task for `seedPeerFailedTimeout`,
    /// and the children given this seed peer lose it. Returns those children, to reschedule.
    pub fn seed_trigger_failed(
        &mut self,
        seed_peer: &PeerId,
        now: SystemTime,
    ) -> Result<Vec<PeerId>, SchedulerError> {
        let id = self.canonical(seed_peer)?;
        let task_id = self.peer_task_id(&id)?;
        self.fire(&id, PeerEvent::DownloadFailed, now)?;
        let children = self.delete_out_edges(&task_id, &id)?;
        Ok(children)
    }

    /// The peer leaves: its edges go, its origin slot is given back; it stays listed in state
    /// `Leave` until reclaimed.
    pub fn leave_peer(&mut self, peer: &PeerId, now: SystemTime) -> Result<(), SchedulerError> {
        let id = self.canonical(peer)?;
        self.fire(&id, PeerEvent::Leave, now).map(drop)
    }

    /// Removes a peer entirely (leaving first if needed).
    pub fn remove_peer(&mut self, peer: &PeerId, now: SystemTime) -> Result<(), SchedulerError> {
        let id = self.canonical(peer)?;
        if self.peers.get(&id).map(|p| p.state) != Some(PeerState::Leave) {
            self.fire(&id, PeerEvent::Leave, now)?;
        }
        let Some(p) = self.peers.remove(&id) else {
            return Err(SchedulerError::PeerNotFound(id));
        };
        if let Some(alias) = &p.registered_as {
            self.aliases.remove(alias);
        }
        if let Some(host) = self.hosts.get_mut(&p.host_id) {
            host.peers.remove(&id);
        }
        if let Some(task) = self.tasks.get_mut(&p.task_id) {
            // Leave removed every edge, so this gives back nothing more.
            task.dag
                .delete_vertex(&id)
                .map_err(|source| SchedulerError::Dag {
                    task: task.id.clone(),
                    source,
                })?;
            task.back_to_source_peers.remove(&id);
            task.updated_at = now;
        }
        Ok(())
    }

    /// Removes a task and all its peers; returns the removed peers.
    pub fn remove_task(
        &mut self,
        id: &TaskId,
        now: SystemTime,
    ) -> Result<Vec<PeerId>, SchedulerError> {
        let task = self
            .tasks
            .get(id)
            .ok_or_else(|| SchedulerError::TaskNotFound(id.clone()))?;
        let peers: Vec<PeerId> = task.dag.vertices().cloned().collect();
        for p in &peers {
            self.remove_peer(p, now)?;
        }
        self.tasks.remove(id);
        Ok(peers)
    }

    /// Checks the state's own rules: no peer its own parent; peers, hosts and tasks referring to
    /// each other consistently; each host's upload counters equal to what its edges reserve;
    /// no host serving more children than its limit (unless the limit was lowered by an
    /// announcement after the children were given). O(peers + edges); for tests and debugging.
    pub fn verify_invariants(&self) -> Result<(), InvariantViolation> {
        let fail = |m: String| Err(InvariantViolation(m));
        let mut expected: BTreeMap<&HostId, (u32, u64, u64)> = BTreeMap::new();
        for task in self.tasks.values() {
            for v in task.dag.vertices() {
                let Some(peer) = self.peers.get(v) else {
                    return fail(format!("task {} lists unknown peer {v}", task.id));
                };
                if peer.task_id != task.id {
                    return fail(format!("peer {v} is in the dag of task {}", task.id));
                }
                if task.dag.edge(v, v).is_some() {
                    return fail(format!("peer {v} of task {} is its own parent", task.id));
                }
                let Ok(parents) = task.dag.parents(v) else {
                    return fail(format!("vertex {v} vanished"));
                };
                for (parent, r) in parents {
                    let Some(pp) = self.peers.get(parent) else {
                        return fail(format!("edge from unknown peer {parent}"));
                    };
                    let e = expected.entry(&pp.host_id).or_default();
                    e.0 += 1;
                    e.1 += r.piece_count;
                    e.2 += r.content_length;
                }
            }
            for b in &task.back_to_source_peers {
                if !task.dag.contains(b) {
                    return fail(format!(
                        "origin slot of task {} held by gone peer {b}",
                        task.id
                    ));
                }
            }
        }
        for peer in self.peers.values() {
            let in_host = self
                .hosts
                .get(&peer.host_id)
                .is_some_and(|h| h.peers.contains(&peer.id));
            let in_task = self
                .tasks
                .get(&peer.task_id)
                .is_some_and(|t| t.dag.contains(&peer.id));
            if !in_host || !in_task {
                return fail(format!(
                    "peer {} is not linked to its host and task",
                    peer.id
                ));
            }
        }
        for host in self.hosts.values() {
            let (count, pieces, bytes) = expected.get(&host.id).copied().unwrap_or_default();
            if (count, pieces, bytes)
                != (
                    host.concurrent_upload_count,
                    host.concurrent_upload_piece_count,
                    host.upload_content_length,
                )
            {
                return fail(format!(
                    "host {} counts {} children / {} pieces / {} bytes, its edges say {count} / {pieces} / {bytes}",
                    host.id,
                    host.concurrent_upload_count,
                    host.concurrent_upload_piece_count,
                    host.upload_content_length
                ));
            }
            if host.concurrent_upload_count > host.concurrent_upload_limit {
                return fail(format!(
                    "host {} serves {} children, limit {}",
                    host.id, host.concurrent_upload_count, host.concurrent_upload_limit
                ));
            }
        }
        for (alias, id) in &self.aliases {
            if !self.peers.contains_key(id) {
                return fail(format!("alias {alias} points to gone peer {id}"));
            }
        }
        Ok(())
    }

    // ---- internals shared with scheduling and gc ----

    /// The scheduler's ID for `peer` (resolving seed peer aliases).
    pub(crate) fn canonical(&self, peer: &PeerId) -> Result<PeerId, SchedulerError> {
        let id = self.aliases.get(peer).unwrap_or(peer);
        if self.peers.contains_key(id) {
            Ok(id.clone())
        } else {
            Err(SchedulerError::PeerNotFound(peer.clone()))
        }
    }

    pub(crate) fn peer_task_id(&self, id: &PeerId) -> Result<TaskId, SchedulerError> {
        self.peers
            .get(id)
            .map(|p| p.task_id.clone())
            .ok_or_else(|| SchedulerError::PeerNotFound(id.clone()))
    }

    pub(crate) fn peer_and_task(&self, peer: &PeerId) -> Result<(&Peer, &Task), SchedulerError> {
        let id = self.canonical(peer)?;
        let p = self
            .peers
            .get(&id)
            .ok_or_else(|| SchedulerError::PeerNotFound(id.clone()))?;
        let t = self
            .tasks
            .get(&p.task_id)
            .ok_or_else(|| SchedulerError::TaskNotFound(p.task_id.clone()))?;
        Ok((p, t))
    }

    /// Applies a peer event with its side effects on edges, load and origin slots.
    pub(crate) fn fire(
        &mut self,
        id: &PeerId,
        event: PeerEvent,
        now: SystemTime,
    ) -> Result<PeerState, SchedulerError> {
        let peer = self
            .peers
            .get_mut(id)
            .ok_or_else(|| SchedulerError::PeerNotFound(id.clone()))?;
        let from = peer.state;
        let to = from
            .on(event)
            .map_err(|source| SchedulerError::PeerTransition {
                peer: id.clone(),
                source,
            })?;
        peer.state = to;
        peer.updated_at = now;
        let awaiting_seed = peer.awaiting_seed_registration;
        if matches!(event, PeerEvent::Leave | PeerEvent::DownloadFailed) {
            peer.awaiting_seed_registration = false;
        }
        let task_id = peer.task_id.clone();
        let is_seed = self
            .hosts
            .get(&peer.host_id)
            .is_some_and(|h| h.host_type.is_seed());
        match event {
            PeerEvent::DownloadBackToSource => {
                self.delete_in_edges(&task_id, id)?;
                self.take_origin_slot(&task_id, id);
            }
            PeerEvent::DownloadSucceeded => {
                self.delete_in_edges(&task_id, id)?;
                if let Some(task) = self.tasks.get_mut(&task_id) {
                    task.peer_failed_count = 0;
                }
            }
            PeerEvent::DownloadFailed => {
                self.delete_in_edges(&task_id, id)?;
                if let Some(task) = self.tasks.get_mut(&task_id) {
                    task.back_to_source_peers.remove(id);
                    if from == PeerState::BackToSource {
                        task.peer_failed_count = task.peer_failed_count.saturating_add(1);
                    }
                    if is_seed {
                        task.seed_peer_failed_at = Some(now);
                    }
                }
            }
            PeerEvent::Leave => {
                self.delete_in_edges(&task_id, id)?;
                self.delete_out_edges(&task_id, id)?;
                if let Some(task) = self.tasks.get_mut(&task_id) {
                    task.back_to_source_peers.remove(id);
                    // A triggered seed peer that never showed up counts as a failed one.
                    if awaiting_seed {
                        task.seed_peer_failed_at = Some(now);
                    }
                }
            }
            _ => {}
        }
        if let Some(task) = self.tasks.get_mut(&task_id) {
            task.updated_at = now;
        }
        Ok(to)
    }

    /// Applies a task event; an event that would not change the state is skipped (several
    /// peers report the same outcome).
    pub(crate) fn fire_task(
        &mut self,
        id: &TaskId,
        event: TaskEvent,
        now: SystemTime,
    ) -> Result<(), SchedulerError> {
        let task = self
            .tasks
            .get_mut(id)
            .ok_or_else(|| SchedulerError::TaskNotFound(id.clone()))?;
        let already = matches!(
            (event, task.state),
            (TaskEvent::Download, crate::fsm::TaskState::Running)
                | (
                    TaskEvent::DownloadSucceeded,
                    crate::fsm::TaskState::Succeeded
                )
                | (TaskEvent::DownloadFailed, crate::fsm::TaskState::Failed)
                | (TaskEvent::DownloadFailed, crate::fsm::TaskState::Succeeded)
        );
        if already {
            task.updated_at = now;
            return Ok(());
        }
        task.state = task
            .state
            .on(event)
            .map_err(|source| SchedulerError::TaskTransition {
                task: id.clone(),
                source,
            })?;
        task.updated_at = now;
        Ok(())
    }

    /// Gives `peer` an origin slot of its task (counted once).
    pub(crate) fn take_origin_slot(&mut self, task: &TaskId, peer: &PeerId) {
        if let Some(task) = self.tasks.get_mut(task) {
            if task.back_to_source_peers.insert(peer.clone()) {
                task.back_to_source_total += 1;
            }
        }
    }

    /// Removes the edges into `peer`, giving the load back to its parents' hosts.
    pub(crate) fn delete_in_edges(
        &mut self,
        task_id: &TaskId,
        peer: &PeerId,
    ) -> Result<(), SchedulerError> {
        let task = self
            .tasks
            .get_mut(task_id)
            .ok_or_else(|| SchedulerError::TaskNotFound(task_id.clone()))?;
        let removed = task
            .dag
            .delete_in_edges(peer)
            .map_err(|source| SchedulerError::Dag {
                task: task_id.clone(),
                source,
            })?;
        for (parent, r) in removed {
            self.release_on_host_of(&parent, r);
        }
        Ok(())
    }

    /// Removes the edges out of `peer`, giving the load back to its host; returns the children.
    pub(crate) fn delete_out_edges(
        &mut self,
        task_id: &TaskId,
        peer: &PeerId,
    ) -> Result<Vec<PeerId>, SchedulerError> {
        let task = self
            .tasks
            .get_mut(task_id)
            .ok_or_else(|| SchedulerError::TaskNotFound(task_id.clone()))?;
        let removed = task
            .dag
            .delete_out_edges(peer)
            .map_err(|source| SchedulerError::Dag {
                task: task_id.clone(),
                source,
            })?;
        let mut children = Vec::with_capacity(removed.len());
        for (child, r) in removed {
            self.release_on_host_of(peer, r);
            children.push(child);
        }
        Ok(children)
    }

    /// Adds edge `parent -> child` and reserves the child's load on the parent's host.
    pub(crate) fn add_edge(
        &mut self,
        task_id: &TaskId,
        parent: &PeerId,
        child: &PeerId,
    ) -> Result<(), SchedulerError> {
        let r = self.reservation(task_id, child)?;
        let task = self
            .tasks
            .get_mut(task_id)
            .ok_or_else(|| SchedulerError::TaskNotFound(task_id.clone()))?;
        let parent_host = &self
            .peers
            .get(parent)
            .ok_or_else(|| SchedulerError::PeerNotFound(parent.clone()))?
            .host_id;
        let host = self
            .hosts
            .get_mut(parent_host)
            .ok_or_else(|| SchedulerError::HostNotFound(parent_host.clone()))?;
        task.dag
            .add_edge(parent, child, r)
            .map_err(|source| SchedulerError::Dag {
                task: task_id.clone(),
                source,
            })?;
        host.reserve(r);
        Ok(())
    }

    /// Adds edges from `parents` into `child` (skipping any the DAG refuses) and reserves
    /// the child's load on each added parent's host; returns the parents added.
    pub(crate) fn add_edges(
        &mut self,
        task_id: &TaskId,
        parents: Vec<PeerId>,
        child: &PeerId,
    ) -> Result<Vec<PeerId>, SchedulerError> {
        let r = self.reservation(task_id, child)?;
        let task = self
            .tasks
            .get_mut(task_id)
            .ok_or_else(|| SchedulerError::TaskNotFound(task_id.clone()))?;
        let added = task
            .dag
            .add_edges(parents.into_iter().map(|p| (p, r)).collect(), child)
            .map_err(|source| SchedulerError::Dag {
                task: task_id.clone(),
                source,
            })?;
        for parent in &added {
            if let Some(host) = self
                .peers
                .get(parent)
                .and_then(|p| self.hosts.get_mut(&p.host_id))
            {
                host.reserve(r);
            }
        }
        Ok(added)
    }

    /// The load `child` puts on a parent's host.
    fn reservation(
        &self,
        task_id: &TaskId,
        child: &PeerId,
    ) -> Result<UploadReservation, SchedulerError> {
        let task = self
            .tasks
            .get(task_id)
            .ok_or_else(|| SchedulerError::TaskNotFound(task_id.clone()))?;
        let child_peer = self
            .peers
            .get(child)
            .ok_or_else(|| SchedulerError::PeerNotFound(child.clone()))?;
        let piece_count = u64::from(child_peer.concurrent_piece_count);
        Ok(UploadReservation {
            piece_count,
            content_length: task.content_length.unwrap_or(0),
            tx_bandwidth: task
                .piece_length
                .unwrap_or(0)
                .saturating_mul(piece_count)
                .saturating_mul(8),
        })
    }

    fn release_on_host_of(&mut self, peer: &PeerId, r: UploadReservation) {
        if let Some(host) = self
            .peers
            .get(peer)
            .and_then(|p| self.hosts.get_mut(&p.host_id))
        {
            host.release(r);
        }
    }
}

/// Time from `then` to `now`; zero if the clock went back.
pub(crate) fn elapsed(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::TaskState;
    use crate::resource::HostType;
    use crate::scheduling::{RegisterPeer, ScheduleDecision};
    use crate::test_support::*;

    /// p1 fetched from the origin and finished; p2 and p3 (other hosts) download from it.
    fn chain() -> (Scheduler, HostId, HostId, HostId) {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let a = normal_host(&mut s, "a");
        let b = normal_host(&mut s, "b");
        let c = normal_host(&mut s, "c");
        register(&mut s, "p1", &a);
        s.download_peer_back_to_source_started(&pid("p1"), at(1))
            .unwrap();
        s.download_peer_back_to_source_finished(&pid("p1"), task_info(), at(2))
            .unwrap();
        for (p, h) in [("p2", &b), ("p3", &c)] {
            let r = register(&mut s, p, h);
            assert_eq!(
                decision(&r),
                &ScheduleDecision::Parents(vec![pid("p1")]),
                "{p}"
            );
        }
        s.verify_invariants().unwrap();
        (s, a, b, c)
    }

    #[test]
    fn origin_success_keeps_the_slot_and_succeeds_the_task() {
        let (s, ..) = chain();
        let t = s.task(&TaskId::from(TASK)).unwrap();
        assert_eq!(
            t.state(),
            TaskState::Running,
            "new peers put it back to running"
        );
        assert_eq!(t.back_to_source_peers().len(), 1);
        assert_eq!(
            s.host(&HostId::from("10.0.0.1-a"))
                .unwrap()
                .concurrent_upload_count(),
            2
        );
        assert_eq!(
            s.children_of(&pid("p1")).unwrap(),
            vec![pid("p2"), pid("p3")]
        );
    }

    #[test]
    fn removing_a_parent_releases_its_host_and_orphans_children() {
        let (mut s, a, ..) = chain();
        s.remove_peer(&pid("p1"), at(3)).unwrap();
        assert!(s.peer(&pid("p1")).is_none());
        assert_eq!(s.host(&a).unwrap().concurrent_upload_count(), 0);
        assert_eq!(s.host(&a).unwrap().load().upload_content_length, 0);
        assert!(s.parents_of(&pid("p2")).unwrap().is_empty());
        let t = s.task(&TaskId::from(TASK)).unwrap();
        assert!(t.back_to_source_peers().is_empty(), "slot given back");
        assert_eq!(t.peer_count(), 2);
        assert_eq!(
            s.remove_peer(&pid("p1"), at(3)),
            Err(SchedulerError::PeerNotFound(pid("p1")))
        );
        s.verify_invariants().unwrap();
    }

    #[test]
    fn removing_a_child_releases_its_parents() {
        let (mut s, a, b, _) = chain();
        s.remove_peer(&pid("p2"), at(3)).unwrap();
        assert_eq!(s.host(&a).unwrap().concurrent_upload_count(), 1);
        assert_eq!(s.host(&b).unwrap().peers().count(), 0);
        s.verify_invariants().unwrap();
    }

    #[test]
    fn remove_host_takes_its_peers_and_ring_place() {
        let (mut s, a, ..) = chain();
        let removed = s.remove_host(&a, at(3)).unwrap();
        assert_eq!(removed, vec![pid("p1")]);
        assert!(s.host(&a).is_none());
        assert!(s.peer(&pid("p1")).is_none());
        s.verify_invariants().unwrap();

        let sh = seed_host(&mut s, "s1");
        assert_eq!(s.seed_host_count(), 1);
        s.remove_host(&sh, at(3)).unwrap();
        assert_eq!(s.seed_host_count(), 0);
        assert_eq!(
            s.remove_host(&sh, at(3)),
            Err(SchedulerError::HostNotFound(sh))
        );
    }

    #[test]
    fn announcements_move_hosts_on_and_off_the_ring() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let sh = seed_host(&mut s, "s1");
        assert_eq!(s.host(&sh).unwrap().concurrent_upload_limit(), 2000);
        let mut info = HostInfo::new(sh.clone(), HostType::Normal);
        info.concurrent_upload_limit = Some(7);
        s.announce_host(info, at(5));
        assert_eq!(s.seed_host_count(), 0);
        let h = s.host(&sh).unwrap();
        assert_eq!(h.concurrent_upload_limit(), 7);
        assert_eq!(h.updated_at(), at(5));
        assert_eq!(h.created_at(), at(0));
        let n = normal_host(&mut s, "n");
        assert_eq!(s.host(&n).unwrap().concurrent_upload_limit(), 200);
    }

    #[test]
    fn leave_frees_edges_and_slot() {
        let (mut s, a, ..) = chain();
        s.leave_peer(&pid("p1"), at(3)).unwrap();
        assert_eq!(s.peer(&pid("p1")).unwrap().state(), PeerState::Leave);
        assert_eq!(s.host(&a).unwrap().concurrent_upload_count(), 0);
        assert!(s
            .task(&TaskId::from(TASK))
            .unwrap()
            .back_to_source_peers()
            .is_empty());
        let err = s.leave_peer(&pid("p1"), at(3)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "peer p1: peer event Leave is not allowed in state Leave"
        );
        s.verify_invariants().unwrap();
    }

    #[test]
    fn origin_failure_fails_the_task_and_frees_the_slot() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let a = normal_host(&mut s, "a");
        register(&mut s, "p1", &a);
        s.download_peer_back_to_source_started(&pid("p1"), at(1))
            .unwrap();
        s.download_peer_back_to_source_started(&pid("p1"), at(1))
            .unwrap(); // repeated: no-op
        s.download_peer_back_to_source_failed(&pid("p1"), at(2))
            .unwrap();
        let t = s.task(&TaskId::from(TASK)).unwrap();
        assert_eq!(t.state(), TaskState::Failed);
        assert!(t.back_to_source_peers().is_empty());
        assert_eq!(t.peer_failed_count(), 1);
        assert_eq!(t.back_to_source_total(), 1);
        // The next peer may go to the origin again.
        let b = normal_host(&mut s, "b");
        let r = register(&mut s, "p2", &b);
        assert!(matches!(
            decision(&r),
            ScheduleDecision::NeedBackToSource(_)
        ));
        assert_eq!(
            s.task(&TaskId::from(TASK)).unwrap().state(),
            TaskState::Running
        );
    }

    #[test]
    fn started_is_idempotent_and_illegal_events_name_the_peer() {
        let (mut s, ..) = chain();
        s.download_peer_started(&pid("p2"), at(3)).unwrap();
        s.download_peer_started(&pid("p2"), at(3)).unwrap();
        assert_eq!(s.peer(&pid("p2")).unwrap().state(), PeerState::Running);
        s.download_peer_finished(&pid("p2"), at(4)).unwrap();
        let err = s.download_peer_finished(&pid("p2"), at(4)).unwrap_err();
        assert!(
            matches!(err, SchedulerError::PeerTransition { ref peer, .. } if *peer == pid("p2"))
        );
        assert_eq!(
            s.download_peer_started(&pid("ghost"), at(4)),
            Err(SchedulerError::PeerNotFound(pid("ghost")))
        );
    }

    #[test]
    fn piece_reports_are_bounded() {
        let (mut s, ..) = chain();
        let piece = |number| PieceFinished {
            number,
            cost: Duration::from_millis(5),
        };
        s.download_piece_finished(&pid("p2"), piece(255), at(3))
            .unwrap();
        assert_eq!(
            s.download_piece_finished(&pid("p2"), piece(256), at(3)),
            Err(SchedulerError::PieceOutOfRange {
                peer: pid("p2"),
                number: 256,
                limit: 256
            })
        );
        let p = s.peer(&pid("p2")).unwrap();
        assert_eq!(p.finished_pieces().len(), 1);
        assert_eq!(p.piece_costs().len(), 1);
        assert_eq!(p.piece_updated_at(), at(3));

        // Unknown piece count: the hard bound applies.
        let d = normal_host(&mut s, "d");
        let mut req = RegisterPeer::new("q", "other", d);
        req.need_back_to_source = true;
        s.register_peer(req, at(1), &mut rng()).unwrap();
        s.download_piece_finished(&pid("q"), piece(MAX_PIECE_NUMBER), at(3))
            .unwrap();
        assert!(s
            .download_piece_finished(&pid("q"), piece(u32::MAX), at(3))
            .is_err());
    }

    #[test]
    fn update_task_replaces_known_figures() {
        let (mut s, ..) = chain();
        let t = TaskId::from(TASK);
        s.update_task(
            &t,
            TaskInfo {
                content_length: Some(5),
                ..TaskInfo::default()
            },
            at(9),
        )
        .unwrap();
        assert_eq!(s.task(&t).unwrap().content_length(), Some(5));
        assert_eq!(s.task(&t).unwrap().total_pieces(), Some(256));
        assert!(s
            .update_task(&TaskId::from("x"), TaskInfo::default(), at(9))
            .is_err());
    }

    #[test]
    fn register_delay_depends_on_the_host_type() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let a = normal_host(&mut s, "a");
        let sh = seed_host(&mut s, "s");
        let d = s.register_delay(&a, 3, &mut rng()).unwrap();
        assert!(d >= Duration::from_millis(60) && d <= Duration::from_millis(120));
        assert_eq!(
            s.register_delay(&sh, 3, &mut rng()).unwrap(),
            Duration::ZERO
        );
        assert!(s.register_delay(&HostId::from("x"), 1, &mut rng()).is_err());
    }

    #[test]
    fn a_triggered_seed_that_never_registers_counts_as_failed() {
        let mut s = Scheduler::new(SchedulerConfig::default());
        seed_host(&mut s, "s1");
        let a = normal_host(&mut s, "a");
        let seed = register(&mut s, "p1", &a)
            .seed_trigger
            .unwrap()
            .seed_peer_id;
        s.remove_peer(&seed, at(1800)).unwrap();
        let t = s.task(&TaskId::from(TASK)).unwrap();
        assert_eq!(t.seed_peer_failed_at(), Some(at(1800)));
        assert!(t.back_to_source_peers().is_empty());
        assert!(s.parents_of(&pid("p1")).unwrap().is_empty());
    }

    #[test]
    fn verify_invariants_catches_drift() {
        let (mut s, a, ..) = chain();
        s.hosts.get_mut(&a).unwrap().concurrent_upload_count = 5;
        let err = s.verify_invariants().unwrap_err();
        assert!(err.0.contains("10.0.0.1-a"), "{err}");
        s.hosts.get_mut(&a).unwrap().concurrent_upload_count = 2;
        s.hosts.get_mut(&a).unwrap().concurrent_upload_limit = 1;
        assert!(s.verify_invariants().unwrap_err().0.contains("limit"));
    }
}
