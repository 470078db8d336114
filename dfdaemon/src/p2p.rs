//! Downloading pieces from parent peers: each parent announces the pieces it
//! has over `SyncPieces`; workers fetch each piece from one parent over Vortex
//! (CRC-checked), spreading pieces over parents; a parent that fails or sends
//! a bad piece is dropped and its pieces go to the others.

use crate::metrics::{Metrics, TrafficLabels};
use crate::parent::{connect, Parent};
use crate::scheduler_client::PeerReporter;
use crate::storage::{PieceMeta, Store, Task};
use crate::transport::{Source, Transport};
use dragonfly_api::dfdaemon::v2::SyncPiecesRequest;
use dragonfly_api::scheduler::v2::announce_peer_request::Request;
use dragonfly_api::scheduler::v2::DownloadPieceFailedRequest;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Weight of a parent for the next piece: its idle upload bandwidth
/// (`max_tx - tx`, at least a tenth of `max_tx`), as Dragonfly's parent
/// selector does; 10 Gbit/s is assumed when the parent reports no maximum.
pub fn parent_weight(max_tx_bps: u64, tx_bps: u64) -> u64 {
    let max = if max_tx_bps == 0 {
        10_000_000_000
    } else {
        max_tx_bps
    };
    max.saturating_sub(tx_bps).max(max / 10).max(1)
}

/// Picks one of `candidates` with probability proportional to its weight;
/// `r` is uniform in [0, 1).
pub fn choose_weighted(candidates: &[usize], weights: &[u64], r: f64) -> Option<usize> {
    let total: u128 = candidates
        .iter()
        .map(|c| u128::from(weights.get(*c).copied().unwrap_or(1)))
        .sum();
    if total == 0 {
        return candidates.first().copied();
    }
    let mut point = (r.clamp(0.0, 1.0) * total as f64) as u128;
    for c in candidates {
        let w = u128::from(weights.get(*c).copied().unwrap_or(1));
        if point < w {
            return Some(*c);
        }
        point -= w;
    }
    candidates.last().copied()
}

/// How long a parent may take to create a task it was handed out for.
const TASK_APPEAR_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a child keeps its workers on normal parents with bandwidth to
/// spare, when they are behind, before it also loads busy ones (see
/// [`pick_piece`]).
const PATIENCE: Duration = Duration::from_secs(1);

/// How long a child keeps its workers on its normal parents, when they are
/// behind, before it also takes pieces from seed peers.
const SEED_PATIENCE: Duration = Duration::from_secs(2);

const TIER_BUSY: usize = 1;
const TIER_SEED: usize = 2;

/// Latest load report of a parent (from `SyncHost`), in bits per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Upload bandwidth limit (0: unknown).
    pub max_tx: u64,
    /// Measured upload rate.
    pub tx: u64,
}

impl Load {
    fn weight(self) -> u64 {
        parent_weight(self.max_tx, self.tx)
    }

    /// Busy: the parent announced an upload limit and uses most of it. A
    /// parent without a known limit is never busy (its weight assumes 10 Gbit/s).
    fn busy(self) -> bool {
        self.max_tx > 0 && self.tx.saturating_mul(10) >= self.max_tx.saturating_mul(8)
    }
}

/// What a child knows of one of its parents.
struct Slot {
    parent: Parent,
    /// Its SyncPieces stream ended (it announces nothing more).
    ended: bool,
    /// Its latest SyncHost report.
    load: Load,
    /// Pieces fetched from it.
    fetched: u32,
    /// It announced a piece (its first answer to SyncPieces came).
    heard: bool,
    /// When it joined.
    joined: Instant,
}

struct Board {
    /// The parents, in the order they joined (a parent's index is its position).
    slots: Vec<Slot>,
    /// Piece number -> parents (indices) that announced it.
    available: HashMap<u32, Vec<usize>>,
    /// Parents dropped after a failure.
    failed: BTreeSet<usize>,
    /// Pieces being fetched.
    in_flight: BTreeSet<u32>,
    /// When a normal parent with bandwidth to spare, and any normal parent,
    /// last announced a piece.
    progress: [Instant; 2],
}

impl Board {
    fn new(now: Instant) -> Board {
        Board {
            slots: Vec::new(),
            available: HashMap::new(),
            failed: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            progress: [now; 2],
        }
    }

    /// Adds a parent not seen before; its index, or None if it is known.
    fn add(&mut self, p: &Parent) -> Option<usize> {
        if self.slots.iter().any(|q| q.parent.id == p.id) {
            return None;
        }
        self.slots.push(Slot {
            parent: p.clone(),
            ended: false,
            load: Load::default(),
            fetched: 0,
            heard: false,
            joined: Instant::now(),
        });
        Some(self.slots.len() - 1)
    }

    fn live(&self, p: usize) -> bool {
        !self.failed.contains(&p)
    }

    /// How much a child should avoid loading parent `p`: 0 for a normal peer
    /// with upload bandwidth to spare, 1 for a normal peer using most of its
    /// announced upload limit, 2 for a seed peer (it feeds the peers that have
    /// no one else).
    fn tier(&self, p: usize) -> usize {
        let Some(slot) = self.slots.get(p) else {
            return TIER_SEED;
        };
        if slot.parent.seed {
            TIER_SEED
        } else if slot.load.busy() {
            TIER_BUSY
        } else {
            0
        }
    }

    /// Records that parent `p` has piece `number`.
    fn announce(&mut self, p: usize, number: u32, now: Instant) {
        self.available.entry(number).or_default().push(p);
        if let Some(s) = self.slots.get_mut(p) {
            s.heard = true;
        }
        match self.tier(p) {
            0 => self.progress = [now, now],
            TIER_BUSY => self.progress[1] = now,
            _ => {}
        }
    }

    /// The parents holding `number` that pass `keep`.
    fn holders(&self, number: u32, keep: impl Fn(usize) -> bool) -> Vec<usize> {
        self.available
            .get(&number)
            .map(|ps| ps.iter().copied().filter(|p| keep(*p)).collect())
            .unwrap_or_default()
    }
}

/// The parents of a task read by ranges ([`crate::lazy`]): what each
/// announces over `SyncPieces`, their load, and which failed. Feeds stop when
/// the set is dropped.
pub(crate) struct ParentSet {
    board: Arc<Mutex<Board>>,
    changed: Arc<tokio::sync::Notify>,
    syncs: Mutex<tokio::task::JoinSet<()>>,
    task_id: String,
    pieces: Vec<u32>,
}

impl ParentSet {
    /// Parents of `task_id` announcing any of `pieces`.
    pub(crate) fn new(task_id: &str, pieces: Vec<u32>) -> ParentSet {
        ParentSet {
            board: Arc::new(Mutex::new(Board::new(Instant::now()))),
            changed: Arc::new(tokio::sync::Notify::new()),
            syncs: Mutex::new(tokio::task::JoinSet::new()),
            task_id: task_id.to_string(),
            pieces,
        }
    }

    /// Adds parents not seen before and starts their feeds (in a runtime).
    pub(crate) fn join(&self, parents: &[Parent]) {
        let mut syncs = self.syncs.lock().unwrap_or_else(|p| p.into_inner());
        let mut b = lock(&self.board);
        for p in parents {
            if let Some(i) = b.add(p) {
                spawn_feeds(
                    &mut syncs,
                    &self.board,
                    &self.changed,
                    i,
                    p,
                    &self.task_id,
                    &self.pieces,
                );
            }
        }
    }

    /// A live parent holding piece `number`, from the least avoided tier,
    /// drawn by idle upload bandwidth.
    pub(crate) fn holder(&self, number: u32) -> Option<usize> {
        let b = lock(&self.board);
        let live = b.holders(number, |p| b.live(p));
        let best = live.iter().map(|p| b.tier(*p)).min()?;
        let holders: Vec<usize> = live.into_iter().filter(|p| b.tier(*p) == best).collect();
        let weights: Vec<u64> = b.slots.iter().map(|s| s.load.weight()).collect();
        choose_weighted(&holders, &weights, rand::random::<f64>())
    }

    /// Parent number `index`.
    pub(crate) fn parent(&self, index: usize) -> Option<Parent> {
        lock(&self.board).slots.get(index).map(|s| s.parent.clone())
    }

    /// Parent `index` failed or sent a bad piece: it is not asked again.
    /// True the first time.
    pub(crate) fn fail(&self, index: usize) -> bool {
        lock(&self.board).failed.insert(index)
    }

    /// Counts a piece fetched from parent `index`.
    pub(crate) fn fetched(&self, index: usize) {
        if let Some(s) = lock(&self.board).slots.get_mut(index) {
            s.fetched += 1;
        }
    }

    /// While a parent that joined less than [`PATIENCE`] ago has announced
    /// nothing yet (its SyncPieces answer may be on its way), how much longer
    /// to wait for it before going elsewhere.
    pub(crate) fn settling(&self) -> Option<Duration> {
        let b = lock(&self.board);
        let now = Instant::now();
        (0..b.slots.len())
            .filter(|i| b.live(*i) && !b.slots[*i].heard && !b.slots[*i].ended)
            .map(|i| PATIENCE.saturating_sub(now.saturating_duration_since(b.slots[i].joined)))
            .filter(|d| !d.is_zero())
            .max()
    }

    /// Woken when a parent announces a piece or its stream ends.
    pub(crate) fn changed(&self) -> &Arc<tokio::sync::Notify> {
        &self.changed
    }

    /// Pieces fetched from each parent (for the log).
    pub(crate) fn fetched_by_parent(&self) -> Vec<(String, u32)> {
        lock(&self.board)
            .slots
            .iter()
            .map(|s| (s.parent.id.clone(), s.fetched))
            .collect()
    }
}

/// Starts the two feeds of parent `i`: its load (`SyncHost`, weighs the
/// choice of parent) and the pieces it has (`SyncPieces`).
fn spawn_feeds(
    syncs: &mut tokio::task::JoinSet<()>,
    board: &Arc<Mutex<Board>>,
    changed: &Arc<tokio::sync::Notify>,
    i: usize,
    parent: &Parent,
    task_id: &str,
    missing: &[u32],
) {
    let (load_board, p) = (board.clone(), parent.clone());
    syncs.spawn(async move {
        let Some(mut c) = connect(&p).await else {
            return;
        };
        let req = dragonfly_api::dfdaemon::v2::SyncHostRequest::default();
        if let Ok(resp) = c.sync_host(req).await {
            let mut s = resp.into_inner();
            while let Ok(Some(h)) = s.message().await {
                let net = h.network.unwrap_or_default();
                let load = Load {
                    max_tx: net.max_tx_bandwidth,
                    tx: net.tx_bandwidth.unwrap_or(0),
                };
                if let Some(slot) = lock(&load_board).slots.get_mut(i) {
                    slot.load = load;
                }
            }
        }
    });
    let (board, changed, p) = (board.clone(), changed.clone(), parent.clone());
    let req = SyncPiecesRequest {
        host_id: String::new(),
        task_id: task_id.to_string(),
        interested_piece_numbers: missing.to_vec(),
    };
    syncs.spawn(async move {
        // A parent handed out as it starts may not have created the task yet:
        // ask again for a while before giving up on it.
        let deadline = Instant::now() + TASK_APPEAR_TIMEOUT;
        let stream = loop {
            let Some(mut c) = connect(&p).await else {
                break None;
            };
            match c.sync_pieces(req.clone()).await {
                Ok(resp) => break Some(resp.into_inner()),
                Err(e) if e.code() == tonic::Code::NotFound && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    tracing::debug!(parent = %p.id, error = %e, "SyncPieces refused");
                    break None;
                }
            }
        };
        if let Some(mut s) = stream {
            while let Ok(Some(m)) = s.message().await {
                let mut b = lock(&board);
                // The parent's Vortex ports come with its pieces.
                if let Some(q) = b.slots.get_mut(i).map(|s| &mut s.parent) {
                    if let Some(port) = m.tcp_port.and_then(|p| u16::try_from(p).ok()) {
                        q.vortex_port = port;
                    }
                    if let Some(port) = m.quic_port.and_then(|p| u16::try_from(p).ok()) {
                        q.quic_port = Some(port);
                    }
                }
                b.announce(i, m.number, Instant::now());
                drop(b);
                changed.notify_waiters();
            }
        }
        if let Some(slot) = lock(&board).slots.get_mut(i) {
            slot.ended = true;
        }
        changed.notify_waiters();
    });
}

/// Fetches pieces of tasks from their parents, through a [`Transport`].
pub struct Peers {
    transport: Arc<dyn Transport>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// Pieces fetched at once per task.
    concurrent: usize,
    /// How long to wait for any parent to announce anything.
    piece_timeout: Duration,
}

/// The parents could not provide every piece.
#[derive(Debug, thiserror::Error)]
#[error("parents could not provide {left} pieces")]
pub struct Incomplete {
    pub left: usize,
}

impl Peers {
    /// Fetches through `transport` into `store`, `concurrent` pieces at once per task; waits
    /// up to `piece_timeout` for parents to announce pieces.
    pub fn new(
        transport: Arc<dyn Transport>,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        concurrent: usize,
        piece_timeout: Duration,
    ) -> Peers {
        Peers {
            transport,
            store,
            metrics,
            concurrent: concurrent.max(1),
            piece_timeout,
        }
    }

    /// Fetches as many missing pieces of `task` as the parents can provide.
    /// Parents the scheduler adds while this runs (`more`) join at once.
    /// Returns Ok when the task has no missing piece left.
    pub async fn fetch_from_parents(
        self: &Arc<Self>,
        task: &Arc<Task>,
        parents: &[Parent],
        reporter: Option<&PeerReporter>,
        mut more: Option<tokio::sync::watch::Receiver<Vec<Parent>>>,
    ) -> Result<(), Incomplete> {
        let missing: Vec<u32> = task.missing_pieces();
        if missing.is_empty() {
            return Ok(());
        }
        let board = Arc::new(Mutex::new(Board::new(Instant::now())));
        let changed = Arc::new(tokio::sync::Notify::new());
        let mut syncs = tokio::task::JoinSet::new();
        let join = |syncs: &mut tokio::task::JoinSet<()>, new: &[Parent]| {
            let mut b = lock(&board);
            for p in new {
                if let Some(i) = b.add(p) {
                    spawn_feeds(syncs, &board, &changed, i, p, &task.id, &missing);
                }
            }
        };
        join(&mut syncs, parents);
        let n = self.concurrent;
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (peers, task, board, changed) =
                (self.clone(), task.clone(), board.clone(), changed.clone());
            let reporter = reporter.cloned();
            workers.spawn(async move {
                loop {
                    let notified = changed.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    let pick = {
                        let mut b = lock(&board);
                        pick_piece(
                            task.missing_pieces(),
                            |m| task.take_wanted(m),
                            &mut b,
                            Instant::now(),
                            rand::random::<f64>(),
                        )
                        .map(|(n, p)| (n, b.slots[p].parent.clone(), p))
                    };
                    match pick {
                        Pick::Done => return,
                        Pick::Wait(Some(patience)) => {
                            let _ = tokio::time::timeout(patience, notified).await;
                        }
                        Pick::Wait(None) => {
                            let wait = peers.piece_timeout;
                            if tokio::time::timeout(wait, notified).await.is_err() {
                                // No parent announced anything for a piece timeout.
                                return;
                            }
                        }
                        Pick::Fetch((number, parent, index)) => {
                            let ok = peers.fetch_piece_from(&task, number, &parent).await;
                            let newly_failed = {
                                let mut b = lock(&board);
                                b.in_flight.remove(&number);
                                if ok {
                                    if let Some(slot) = b.slots.get_mut(index) {
                                        slot.fetched += 1;
                                    }
                                }
                                !ok && b.failed.insert(index)
                            };
                            if let (true, Some(r)) = (newly_failed, &reporter) {
                                // The scheduler blocks this parent for us and counts the
                                // failure against its host.
                                r.send(Request::DownloadPieceFailedRequest(
                                    DownloadPieceFailedRequest {
                                        piece_number: Some(number),
                                        parent_id: parent.id.clone(),
                                        temporary: false,
                                    },
                                ))
                                .await;
                            }
                            changed.notify_waiters();
                        }
                    }
                }
            });
        }
        loop {
            let update = async {
                match more.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                done = workers.join_next() => if done.is_none() { break },
                ok = update => match (ok, more.as_mut()) {
                    (true, Some(rx)) => {
                        let new = rx.borrow_and_update().clone();
                        join(&mut syncs, &new);
                        changed.notify_waiters();
                    }
                    _ => more = None,
                },
            }
        }
        syncs.abort_all();
        {
            let b = lock(&board);
            let by_parent: Vec<(&str, u32)> = b
                .slots
                .iter()
                .map(|s| (s.parent.id.as_str(), s.fetched))
                .collect();
            tracing::info!(task_id = %task.id, pieces_by_parent = ?by_parent, "pieces from parents");
        }
        let left = task.missing_pieces().len();
        if left == 0 {
            Ok(())
        } else {
            Err(Incomplete { left })
        }
    }

    /// One piece from one parent; false if the parent failed or sent a bad piece.
    pub(crate) async fn fetch_piece_from(
        &self,
        task: &Arc<Task>,
        number: u32,
        parent: &Parent,
    ) -> bool {
        let (offset, length) =
            common::piece::piece_range(number, task.content_length(), task.piece_length());
        let started = Instant::now();
        let what = format!("piece {number}");
        let source = Source::Parent { parent, number };
        let crc = match self
            .transport
            .fetch(source, task, offset, offset + length, &what)
            .await
        {
            Ok(crc) => crc,
            Err(e) => {
                tracing::warn!(task_id = %task.id, piece = number, parent = %parent.id, error = %e, "dropping parent");
                return false;
            }
        };
        tracing::debug!(task_id = %task.id, piece = number, parent = %parent.id,
            elapsed = ?started.elapsed(), "piece from parent");
        self.store
            .commit_piece(task, number, PieceMeta { length, crc32: crc });
        self.metrics.traffic("remote_peer", length);
        self.metrics
            .pieces
            .get_or_create(&TrafficLabels {
                r#type: "remote_peer",
            })
            .inc();
        true
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Pick<T = (u32, usize)> {
    /// A piece and the parent to fetch it from.
    Fetch(T),
    /// Nothing to take now: pick again when a parent announces a piece or a
    /// fetch ends, or after the given patience.
    Wait(Option<Duration>),
    Done,
}

impl<T> Pick<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Pick<U> {
        match self {
            Pick::Fetch(t) => Pick::Fetch(f(t)),
            Pick::Wait(w) => Pick::Wait(w),
            Pick::Done => Pick::Done,
        }
    }
}

/// Chooses the next piece and a parent for it (`r` uniform in [0, 1) for the
/// weighted draw).
///
/// A piece a reader is waiting for comes first, from any parent holding it
/// (the least avoided first). Otherwise parents are taken tier by tier
/// ([`Board::tier`]: normal peers with bandwidth to spare, then busy normal
/// peers, then seed peers): the lowest missing piece a parent of the tier
/// holds; and if none, while a parent of that tier is behind but announced a
/// piece within [`PATIENCE`], the child waits for it rather than load the
/// next tier. So a seed's uplink feeds the peers that have no one else and
/// each other peer pulls from peers a little ahead with bandwidth to spare:
/// the swarm pipelines instead of every peer pulling through one uplink.
///
/// Among holders, a parent is drawn with probability proportional to its idle
/// upload bandwidth.
fn pick_piece(
    missing: Vec<u32>,
    take_wanted: impl FnOnce(&BTreeSet<u32>) -> Option<u32>,
    b: &mut Board,
    now: Instant,
    r: f64,
) -> Pick {
    let missing: BTreeSet<u32> = missing
        .into_iter()
        .filter(|n| !b.in_flight.contains(n))
        .collect();
    if missing.is_empty() {
        return if b.in_flight.is_empty() {
            Pick::Done
        } else {
            Pick::Wait(None)
        };
    }
    let parents = b.slots.len();
    if b.failed.len() >= parents {
        return Pick::Done;
    }
    let weights: Vec<u64> = b.slots.iter().map(|s| s.load.weight()).collect();
    let take = |b: &mut Board, number: u32, holders: &[usize]| {
        let parent = choose_weighted(holders, &weights, r).unwrap_or(holders[0]);
        b.in_flight.insert(number);
        Pick::Fetch((number, parent))
    };
    let wanted = take_wanted(&missing).filter(|n| !b.holders(*n, |p| b.live(p)).is_empty());
    if let Some(n) = wanted {
        let live = b.holders(n, |p| b.live(p));
        let best = live.iter().map(|p| b.tier(*p)).min().unwrap_or(0);
        let holders: Vec<usize> = live.into_iter().filter(|p| b.tier(*p) == best).collect();
        return take(b, n, &holders);
    }
    for tier in 0..=2 {
        let of_tier = |p: usize| b.live(p) && b.tier(p) == tier;
        // Checked without allocating: this runs for every missing piece on every pick.
        let held = missing.iter().copied().find(|n| {
            b.available
                .get(n)
                .is_some_and(|ps| ps.iter().any(|p| of_tier(*p)))
        });
        if let Some(n) = held {
            let holders = b.holders(n, of_tier);
            return take(b, n, &holders);
        }
        // Before the next tier: wait while parents of this one (or, before
        // the seeds, any normal parent) are behind but making progress.
        let (patience, waited_for): (Duration, &dyn Fn(usize) -> bool) = match tier {
            0 => (PATIENCE, &|p| b.tier(p) == 0),
            TIER_BUSY => (SEED_PATIENCE, &|p| b.tier(p) < TIER_SEED),
            _ => continue,
        };
        let behind = (0..parents).any(|p| b.live(p) && !b.slots[p].ended && waited_for(p));
        let left = patience.saturating_sub(now.saturating_duration_since(b.progress[tier]));
        if behind && !left.is_zero() {
            return Pick::Wait(Some(left));
        }
    }
    // Nothing announced; if every stream ended, nothing more will be.
    let live_streams = (0..parents).any(|p| b.live(p) && !b.slots[p].ended);
    if !live_streams && b.in_flight.is_empty() {
        Pick::Done
    } else {
        Pick::Wait(None)
    }
}

fn lock(b: &Mutex<Board>) -> std::sync::MutexGuard<'_, Board> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn idle_bandwidth_weighs_parents() {
        assert_eq!(parent_weight(1000, 200), 800);
        // A saturated parent keeps a tenth, so it is not starved entirely.
        assert_eq!(parent_weight(1000, 1000), 100);
        assert_eq!(parent_weight(0, 0), 10_000_000_000);
        let w = vec![900, 100];
        let picks: Vec<_> = (0..10)
            .map(|i| choose_weighted(&[0, 1], &w, i as f64 / 10.0).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|p| **p == 0).count(), 9);
        assert_eq!(choose_weighted(&[1], &w, 0.99), Some(1));
        assert_eq!(choose_weighted(&[], &w, 0.5), None);
    }

    fn parent(i: usize, seed: bool) -> Parent {
        Parent {
            id: format!("p{i}"),
            ip: IpAddr::from([127, 0, 0, 1]),
            grpc_port: 4000,
            vortex_port: 4005,
            quic_port: None,
            seed,
        }
    }

    /// A board whose parents are seeds where `seeds[i]`.
    fn board(seeds: &[bool], t0: Instant) -> Board {
        let mut b = Board::new(t0);
        for (i, seed) in seeds.iter().enumerate() {
            assert_eq!(b.add(&parent(i, *seed)), Some(i));
        }
        assert_eq!(
            b.add(&parent(0, false)),
            None,
            "known parents are not added twice"
        );
        b
    }

    #[test]
    fn normal_parents_are_preferred_and_waited_for() {
        let t0 = Instant::now();
        // Parent 0 (seed) has pieces 0..4, parent 1 (a normal peer) has 0..2.
        let mut b = board(&[true, false], t0);
        for n in 0..4 {
            b.announce(0, n, t0);
        }
        for n in 0..2 {
            b.announce(1, n, t0);
        }
        let missing = || (0..4).collect::<Vec<u32>>();
        assert_eq!(
            pick_piece(missing(), |_| None, &mut b, t0, 0.0),
            Pick::Fetch((0, 1))
        );
        assert_eq!(
            pick_piece(missing(), |_| None, &mut b, t0, 0.99),
            Pick::Fetch((1, 1))
        );
        // Pieces 2 and 3 only at the seed: wait for the normal parent a while...
        let later = t0 + Duration::from_millis(100);
        assert_eq!(
            pick_piece(missing(), |_| None, &mut b, later, 0.0),
            Pick::Wait(Some(PATIENCE - Duration::from_millis(100)))
        );
        // ...longer before a seed than before a busy normal parent...
        assert_eq!(
            pick_piece(missing(), |_| None, &mut b, t0 + PATIENCE, 0.0),
            Pick::Wait(Some(SEED_PATIENCE - PATIENCE))
        );
        // ...and take them from the seed once it stops making progress.
        let stalled = t0 + SEED_PATIENCE;
        assert_eq!(
            pick_piece(missing(), |_| None, &mut b, stalled, 0.0),
            Pick::Fetch((2, 0))
        );
        // A new announcement from the normal parent renews the patience.
        b.announce(1, 3, stalled);
        assert_eq!(
            pick_piece(missing(), |_| None, &mut b, stalled, 0.0),
            Pick::Fetch((3, 1))
        );
        b.in_flight.clear();
        assert_eq!(
            pick_piece(vec![2], |_| None, &mut b, stalled, 0.0),
            Pick::Wait(Some(PATIENCE))
        );
    }

    #[test]
    fn a_normal_parent_whose_stream_ended_is_not_waited_for() {
        let t0 = Instant::now();
        let mut b = board(&[true, false], t0);
        b.announce(0, 0, t0);
        b.slots[1].ended = true;
        assert_eq!(
            pick_piece(vec![0], |_| None, &mut b, t0, 0.5),
            Pick::Fetch((0, 0))
        );
    }

    #[test]
    fn with_only_seed_parents_the_seed_is_used_at_once() {
        let t0 = Instant::now();
        let mut b = board(&[true], t0);
        b.announce(0, 3, t0);
        assert_eq!(
            pick_piece(vec![3], |_| None, &mut b, t0, 0.5),
            Pick::Fetch((3, 0))
        );
    }

    #[test]
    fn wanted_pieces_go_first_from_any_holder() {
        let t0 = Instant::now();
        let mut b = board(&[true, false], t0);
        b.announce(0, 5, t0);
        b.announce(1, 0, t0);
        let pick = pick_piece(vec![0, 5], |m| m.contains(&5).then_some(5), &mut b, t0, 0.0);
        assert_eq!(pick, Pick::Fetch((5, 0)));
    }

    #[test]
    fn holders_are_drawn_by_idle_upload_bandwidth() {
        let t0 = Instant::now();
        let half = Load {
            max_tx: 1_000,
            tx: 700,
        };
        let idle = Load {
            max_tx: 1_000,
            tx: 100,
        };
        let picks: Vec<usize> = (0..10)
            .map(|i| {
                let mut b = board(&[false, false], t0);
                b.slots[0].load = half;
                b.slots[1].load = idle;
                b.announce(0, 0, t0);
                b.announce(1, 0, t0);
                match pick_piece(vec![0], |_| None, &mut b, t0, i as f64 / 10.0) {
                    Pick::Fetch((_, p)) => p,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        // Weights 300 : 900.
        assert_eq!(picks.iter().filter(|p| **p == 1).count(), 7);
    }

    #[test]
    fn failed_parents_are_skipped_and_all_failed_is_done() {
        let t0 = Instant::now();
        let mut b = board(&[false, false], t0);
        b.announce(0, 0, t0);
        b.announce(1, 0, t0);
        b.failed.insert(0);
        assert_eq!(
            pick_piece(vec![0], |_| None, &mut b, t0, 0.0),
            Pick::Fetch((0, 1))
        );
        b.in_flight.clear();
        b.failed.insert(1);
        assert_eq!(pick_piece(vec![0], |_| None, &mut b, t0, 0.0), Pick::Done);
        // Every stream ended and nothing in flight: done, even with pieces missing.
        let mut b = board(&[false], t0);
        b.slots[0].ended = true;
        assert_eq!(pick_piece(vec![0], |_| None, &mut b, t0, 0.0), Pick::Done);
    }

    #[test]
    fn busy_normal_parents_come_after_idle_ones_and_before_seeds() {
        let t0 = Instant::now();
        // 0: seed, 1: busy normal peer, 2: idle normal peer.
        let mut b = board(&[true, false, false], t0);
        b.slots[1].load = Load {
            max_tx: 1_000,
            tx: 900,
        };
        b.slots[2].load = Load {
            max_tx: 1_000,
            tx: 100,
        };
        for n in 0..3 {
            b.announce(0, n, t0);
        }
        b.announce(1, 1, t0);
        b.announce(2, 0, t0);
        let missing = || (0..3).collect::<Vec<u32>>();
        assert_eq!(
            pick_piece(missing(), |_| None, &mut b, t0, 0.0),
            Pick::Fetch((0, 2))
        );
        // The idle peer announced within the patience: wait for it.
        assert!(matches!(
            pick_piece(missing(), |_| None, &mut b, t0, 0.0),
            Pick::Wait(Some(_))
        ));
        // It stalls: the busy normal peer's piece next, then (the normal peers stall
        // too) the seed's.
        let later = t0 + PATIENCE;
        assert_eq!(
            pick_piece(missing(), |_| None, &mut b, later, 0.0),
            Pick::Fetch((1, 1))
        );
        assert_eq!(
            pick_piece(missing(), |_| None, &mut b, later, 0.0),
            Pick::Wait(Some(SEED_PATIENCE - PATIENCE))
        );
        assert_eq!(
            pick_piece(missing(), |_| None, &mut b, t0 + SEED_PATIENCE, 0.0),
            Pick::Fetch((2, 0))
        );
    }
}
