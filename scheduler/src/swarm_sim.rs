//! A simulation of one swarm, to tune the parent and piece choice without a network: one seed
//! peer and `peers` peers on hosts whose uplinks all run at the same rate (downlinks
//! unshaped), all peers asking for one task at the same moment, as in a rollout and in
//! `hack/bench/p2p.sh`, which shapes each host's uplink with `tbf` the same way.
//!
//! Everything the real system decides is decided by the real code: who gets which parents by
//! this crate's [`Scheduler`] (registration, the seed peer trigger, parents added as peers
//! start), which piece a child asks which parent for by [`common::swarm::Swarm`], as dfdaemon
//! does. What is simulated is the network: a fluid model in which the transfers leaving one
//! uplink share it equally (as TCP flows through one `tbf` queue do), each request starts after
//! a fixed latency, and the seed peer fetches the task from the origin as one stream (one flow
//! on the origin's uplink, pieces landing in order) and, as dfdaemon's seed peers do, offers
//! each new piece to one child first ([`common::swarm::offered_first`]). CPU is not modelled: on the 2-core
//! development machine the 1 Gbit/s bench is CPU-bound, the 250 Mbit/s one is not, so the
//! prediction is for links that are the limit.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use common::swarm::{Pick, Swarm};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{
    HostId, HostInfo, HostType, PeerId, PieceFinished, RegisterDecision, RegisterPeer,
    ScheduleDecision, Scheduler, SchedulerConfig, SchedulerError, TaskId, TaskInfo,
};

/// Why a simulation could not finish.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scheduler refused an operation.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The swarm stopped making progress.
    #[error("swarm simulation: {0}")]
    Stalled(String),
}

/// The scenario.
#[derive(Debug, Clone)]
pub struct SwarmSpec {
    /// Normal peers (besides the seed peer).
    pub peers: usize,
    /// Task size in bytes.
    pub size: u64,
    /// Piece length in bytes.
    pub piece_length: u64,
    /// Every host's uplink, the origin's included, in bytes per second.
    pub rate: f64,
    /// Requests a child has in flight at most (dfdaemon's `download.concurrentPieceCount`).
    pub concurrent: usize,
    /// Time from a request to its first byte.
    pub latency: Duration,
    /// Seeds the random choices (scheduler and children alike).
    pub seed: u64,
}

impl SwarmSpec {
    /// The bench's scenario: `peers` peers, `size` bytes, every uplink at `rate` bytes per
    /// second, dfdaemon's defaults.
    pub fn bench(peers: usize, size: u64, rate: f64) -> SwarmSpec {
        SwarmSpec {
            peers,
            size,
            piece_length: common::piece::piece_length_for(size),
            rate,
            concurrent: 8,
            latency: Duration::from_millis(2),
            seed: 1,
        }
    }

    /// The physical limit of one host: size ÷ rate (the origin sends every byte once, at the
    /// rate of its uplink).
    pub fn link_time(&self) -> f64 {
        self.size as f64 / self.rate
    }
}

/// What the simulation predicts.
#[derive(Debug, Clone)]
pub struct SwarmOutcome {
    /// When each peer (seed peer first) had every piece, in seconds from the start.
    pub finished: Vec<f64>,
    /// Bytes each host (seed peer first) uploaded to other peers.
    pub uploaded: Vec<u64>,
    /// Bytes the origin sent.
    pub origin_bytes: u64,
    /// The slowest normal peer's time over [`SwarmSpec::link_time`].
    pub ratio: f64,
}

/// A piece on its way.
#[derive(Debug, Clone)]
struct Transfer {
    child: usize,
    /// Host index, or `ORIGIN`.
    from: usize,
    piece: u32,
    remaining: f64,
    /// When its bytes start to flow.
    starts: f64,
}

const ORIGIN: usize = usize::MAX;

struct Host {
    id: HostId,
    peer: PeerId,
    /// The child's view of its parents ([`Swarm`] indices match `parents`).
    swarm: Swarm,
    /// Parent host of each swarm index.
    parents: Vec<usize>,
    have: BTreeSet<u32>,
    finished: Option<f64>,
    uploaded: u64,
    /// Downloads from parents (else: from the origin, or not yet scheduled).
    p2p: bool,
    /// A scheduling round is due at this time.
    retry_at: Option<f64>,
}

/// Runs the scenario to the end (every peer has every piece), or fails if the scheduler does.
pub fn simulate(spec: &SwarmSpec) -> Result<SwarmOutcome, SimError> {
    Sim::new(spec)?.run()
}

struct Sim<'a> {
    spec: &'a SwarmSpec,
    s: Scheduler,
    rng: StdRng,
    hosts: Vec<Host>,
    transfers: Vec<Transfer>,
    now: f64,
    task: TaskId,
    pieces: u32,
    origin_bytes: u64,
    /// Children of the seed peer, in the order they subscribed.
    seed_subscribers: Vec<usize>,
    /// Announcements the seed peer holds back: (when, child, piece).
    held: Vec<(f64, usize, u32)>,
}

fn at(t: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_secs_f64(t)
}

impl<'a> Sim<'a> {
    fn new(spec: &'a SwarmSpec) -> Result<Sim<'a>, SimError> {
        let mut s = Scheduler::new(SchedulerConfig::default());
        let bits = (spec.rate * 8.0) as u64;
        let mut hosts = Vec::new();
        for i in 0..=spec.peers {
            let (name, kind) = if i == 0 {
                ("seed".to_string(), HostType::SuperSeed)
            } else {
                (format!("peer{i}"), HostType::Normal)
            };
            let id = HostId::from(format!("10.231.0.{}-{name}", 10 + i));
            let mut info = HostInfo::new(id.clone(), kind);
            info.max_tx_bandwidth = bits;
            s.announce_host(info, at(0.0));
            hosts.push(Host {
                peer: PeerId::from(format!("{id}-peer")),
                id,
                swarm: Swarm::new(),
                parents: Vec::new(),
                have: BTreeSet::new(),
                finished: None,
                uploaded: 0,
                p2p: false,
                retry_at: None,
            });
        }
        let pieces = common::piece::piece_count(spec.size, spec.piece_length);
        Ok(Sim {
            spec,
            s,
            rng: StdRng::seed_from_u64(spec.seed),
            hosts,
            transfers: Vec::new(),
            now: 0.0,
            task: TaskId::from(format!("{:064x}", spec.seed)),
            pieces,
            origin_bytes: 0,
            seed_subscribers: Vec::new(),
            held: Vec::new(),
        })
    }

    fn piece_len(&self, n: u32) -> u64 {
        common::piece::piece_range(n, self.spec.size, self.spec.piece_length).1
    }

    fn host_of(&self, peer: &PeerId) -> Option<usize> {
        self.hosts.iter().position(|h| &h.peer == peer)
    }

    fn run(mut self) -> Result<SwarmOutcome, SimError> {
        // Every peer registers at once (in random order).
        let mut order: Vec<usize> = (1..=self.spec.peers).collect();
        for i in (1..order.len()).rev() {
            let j = self.rng.random_range(0..=i);
            order.swap(i, j);
        }
        for h in order {
            self.register(h)?;
        }
        let limit = 100.0 * self.spec.link_time() + 60.0;
        while self.hosts.iter().any(|h| h.finished.is_none()) {
            if self.now > limit {
                return Err(SimError::Stalled(format!(
                    "not every peer finished by {limit:.0}s"
                )));
            }
            for h in 0..self.hosts.len() {
                self.fill(h);
            }
            self.step()?;
        }
        let link = self.spec.link_time();
        let slowest = self.hosts[1..]
            .iter()
            .filter_map(|h| h.finished)
            .fold(0.0, f64::max);
        Ok(SwarmOutcome {
            finished: self
                .hosts
                .iter()
                .map(|h| h.finished.unwrap_or(f64::NAN))
                .collect(),
            uploaded: self.hosts.iter().map(|h| h.uploaded).collect(),
            origin_bytes: self.origin_bytes,
            ratio: slowest / link,
        })
    }

    fn register(&mut self, h: usize) -> Result<(), SimError> {
        let mut req = RegisterPeer::new(
            self.hosts[h].peer.clone(),
            self.task.clone(),
            self.hosts[h].id.clone(),
        );
        req.task = TaskInfo {
            content_length: Some(self.spec.size),
            piece_length: Some(self.spec.piece_length),
            total_pieces: Some(self.pieces),
        };
        let now = at(self.now);
        let reg = self.s.register_peer(req, now, &mut self.rng)?;
        if let Some(t) = reg.seed_trigger {
            // The seed peer registers under the ID children know it by and streams the task
            // from the origin.
            self.hosts[0].peer = t.seed_peer_id.clone();
            let seed_req = RegisterPeer {
                need_back_to_source: true,
                ..RegisterPeer::new(t.seed_peer_id, self.task.clone(), t.seed_host_id)
            };
            self.s.register_peer(seed_req, now, &mut self.rng)?;
            self.s
                .download_peer_back_to_source_started(&self.hosts[0].peer, now)?;
            self.origin_next(0);
        }
        match reg.decision {
            RegisterDecision::Schedule(d) => self.decided(h, d),
            _ => Ok(()),
        }
    }

    fn decided(&mut self, h: usize, d: ScheduleDecision) -> Result<(), SimError> {
        let now = at(self.now);
        match d {
            ScheduleDecision::Parents(ps) => {
                self.add_parents(h, &ps);
                if !self.hosts[h].p2p {
                    self.hosts[h].p2p = true;
                    let peer = self.hosts[h].peer.clone();
                    self.s.download_peer_started(&peer, now)?;
                    // The scheduler gives the peers already downloading more parents.
                    let added = self
                        .s
                        .top_up_parents(&self.task, Some(&peer), &mut self.rng)?;
                    for (child, parents) in added {
                        if let Some(c) = self.host_of(&child) {
                            self.add_parents(c, &parents);
                        }
                    }
                }
            }
            ScheduleDecision::NeedBackToSource(_) => {
                let peer = self.hosts[h].peer.clone();
                self.s.download_peer_back_to_source_started(&peer, now)?;
                self.origin_next(h);
            }
            ScheduleDecision::RetryLater(d) => {
                self.hosts[h].retry_at = Some(self.now + d.as_secs_f64());
            }
            ScheduleDecision::Fail(r) => {
                return Err(SimError::Stalled(format!(
                    "peer {h} failed to schedule: {r:?}"
                )))
            }
        }
        Ok(())
    }

    /// Child `h` gets `parents`: each announces every piece it holds (SyncPieces).
    fn add_parents(&mut self, h: usize, parents: &[PeerId]) {
        for p in parents {
            let Some(ph) = self.host_of(p) else { continue };
            if self.hosts[h].parents.contains(&ph) {
                continue;
            }
            let idx = self.hosts[h].swarm.add_parent();
            self.hosts[h].parents.push(ph);
            if ph == 0 {
                self.seed_subscribers.push(h);
            }
            let held: Vec<u32> = self.hosts[ph].have.iter().copied().collect();
            for n in held {
                self.offer(ph, h, idx, n);
            }
        }
    }

    /// Parent `p` announces piece `n` to child `c` (its parent number `idx`): at once, or, for
    /// the seed peer while it fetches the task, at once only on the child's turn, else once the
    /// seed is complete, or after [`common::swarm::offer_hold`] if the piece's first transfer
    /// from the seed has not landed by then.
    fn offer(&mut self, p: usize, c: usize, idx: usize, n: u32) {
        let taking_turns = p == 0 && self.hosts[0].finished.is_none();
        if taking_turns {
            let count = self.seed_subscribers.len();
            let index = self
                .seed_subscribers
                .iter()
                .position(|s| *s == c)
                .unwrap_or(0);
            if !common::swarm::offered_first(n, index, count) {
                let hold =
                    common::swarm::offer_hold(self.spec.piece_length, self.spec.rate as u64, count);
                self.held.push((self.now + hold.as_secs_f64(), c, n));
                return;
            }
        }
        self.hosts[c].swarm.announce(idx, n);
    }

    /// Announces the seed peer's held pieces that are due (all of them once it finished).
    fn release_held(&mut self) {
        let all = self.hosts[0].finished.is_some();
        let now = self.now;
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(at, _, _)| all || *at <= now + 1e-9);
        self.held = keep;
        for (_, c, n) in due {
            if let Some(idx) = self.hosts[c].parents.iter().position(|p| *p == 0) {
                self.hosts[c].swarm.announce(idx, n);
            }
        }
    }

    /// The next piece of a host fetching from the origin (in order, one stream).
    fn origin_next(&mut self, h: usize) {
        let next = (0..self.pieces).find(|n| !self.hosts[h].have.contains(n));
        if let Some(n) = next {
            let len = self.piece_len(n) as f64;
            self.transfers.push(Transfer {
                child: h,
                from: ORIGIN,
                piece: n,
                remaining: len,
                starts: self.now,
            });
        }
    }

    /// Fills host `h`'s free request slots.
    fn fill(&mut self, h: usize) {
        if !self.hosts[h].p2p || self.hosts[h].finished.is_some() {
            return;
        }
        loop {
            let missing: BTreeSet<u32> = (0..self.pieces)
                .filter(|n| !self.hosts[h].have.contains(n))
                .collect();
            let random = self.rng.random::<u64>();
            let pick = self.hosts[h]
                .swarm
                .pick(&missing, |_| None, self.spec.concurrent, random);
            let Pick::Fetch { piece, parent } = pick else {
                return;
            };
            let from = self.hosts[h].parents[parent];
            self.transfers.push(Transfer {
                child: h,
                from,
                piece,
                remaining: self.piece_len(piece) as f64,
                starts: self.now + self.spec.latency.as_secs_f64(),
            });
        }
    }

    /// Advances to the next event and handles it.
    fn step(&mut self) -> Result<(), SimError> {
        // Each uplink is shared equally by the transfers flowing through it.
        let mut flows: std::collections::HashMap<usize, usize> = Default::default();
        for t in &self.transfers {
            if t.starts <= self.now {
                *flows.entry(t.from).or_default() += 1;
            }
        }
        let rate = |t: &Transfer| self.spec.rate / flows.get(&t.from).copied().unwrap_or(1) as f64;
        let mut next = f64::INFINITY;
        for t in &self.transfers {
            let end = if t.starts > self.now {
                t.starts
            } else {
                self.now + t.remaining / rate(t)
            };
            next = next.min(end);
        }
        for h in &self.hosts {
            if let Some(r) = h.retry_at {
                next = next.min(r);
            }
        }
        for (at, _, _) in &self.held {
            next = next.min(*at);
        }
        if !next.is_finite() {
            return Err(SimError::Stalled("nothing in flight".into()));
        }
        let dt = (next - self.now).max(0.0);
        let rates: Vec<f64> = self
            .transfers
            .iter()
            .map(|t| if t.starts <= self.now { rate(t) } else { 0.0 })
            .collect();
        for (t, r) in self.transfers.iter_mut().zip(rates) {
            t.remaining -= r * dt;
        }
        self.now = next;
        let (done, running): (Vec<Transfer>, Vec<Transfer>) = std::mem::take(&mut self.transfers)
            .into_iter()
            .partition(|t| t.starts <= self.now && t.remaining <= 1e-3);
        self.transfers = running;
        for t in done {
            self.landed(t)?;
        }
        self.release_held();
        for h in 0..self.hosts.len() {
            if self.hosts[h].retry_at.is_some_and(|r| r <= self.now) {
                self.hosts[h].retry_at = None;
                let peer = self.hosts[h].peer.clone();
                let d = self
                    .s
                    .schedule_candidate_parents(&peer, at(self.now), &mut self.rng)?;
                self.decided(h, d)?;
            }
        }
        Ok(())
    }

    /// A piece landed at its child: stored, reported, announced to the child's children.
    fn landed(&mut self, t: Transfer) -> Result<(), SimError> {
        let len = self.piece_len(t.piece);
        let now = at(self.now);
        let h = t.child;
        if t.from == ORIGIN {
            self.origin_bytes += len;
        } else {
            self.hosts[t.from].uploaded += len;
            self.hosts[h].swarm.finish(t.piece, true);
            if t.from == 0 {
                // The seed's first transfer of the piece is over: the first child passes it
                // on, the seed offers it to its other children only once it is complete.
                for held in self.held.iter_mut().filter(|(_, _, n)| *n == t.piece) {
                    held.0 = f64::INFINITY;
                }
            }
        }
        if !self.hosts[h].have.insert(t.piece) {
            return Ok(());
        }
        let peer = self.hosts[h].peer.clone();
        self.s.download_piece_finished(
            &peer,
            PieceFinished {
                number: t.piece,
                cost: Duration::from_millis(100),
            },
            now,
        )?;
        let complete = self.hosts[h].have.len() as u32 == self.pieces;
        if complete {
            self.hosts[h].finished = Some(self.now);
        }
        for c in 0..self.hosts.len() {
            if let Some(idx) = self.hosts[c].parents.iter().position(|p| *p == h) {
                self.offer(h, c, idx, t.piece);
            }
        }
        if complete {
            if t.from == ORIGIN {
                self.s
                    .download_peer_back_to_source_finished(&peer, TaskInfo::default(), now)?;
            } else {
                self.s.download_peer_finished(&peer, now)?;
            }
        } else if t.from == ORIGIN {
            self.origin_next(h);
        }
        Ok(())
    }
}
