//! Downloading pieces from parent peers: each parent announces the pieces it
//! has over `SyncPieces`; the child asks each parent for the rarest pieces it holds, a few
//! requests per parent at a time ([`common::swarm`]), over Vortex (CRC-checked); a parent
//! that fails or sends a bad piece is dropped and its pieces go to the others.

use crate::metrics::{Metrics, TrafficLabels};
use crate::parent::{connect, Parent};
use crate::scheduler_client::PeerReporter;
use crate::storage::{PieceMeta, Store, Task};
use crate::transport::{Source, Transport};
use common::swarm::{Pick, Swarm};
use dragonfly_api::dfdaemon::v2::SyncPiecesRequest;
use dragonfly_api::scheduler::v2::announce_peer_request::Request;
use dragonfly_api::scheduler::v2::DownloadPieceFailedRequest;
use std::collections::BTreeSet;
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

/// How long a child waits for a parent that joined to announce something, before reading
/// elsewhere ([`ParentSet::settling`]).
const PATIENCE: Duration = Duration::from_secs(1);

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
}

/// What a child knows of one of its parents besides its pieces.
struct Slot {
    parent: Parent,
    /// Its latest SyncHost report.
    load: Load,
    /// Pieces fetched from it.
    fetched: u32,
    /// It announced a piece (its first answer to SyncPieces came).
    heard: bool,
    /// When it joined.
    joined: Instant,
}

/// The parents of one task and the pieces each announced ([`Swarm`] decides what to ask
/// whom).
struct Board {
    /// The parents, in the order they joined (a parent's index is its position, in `swarm`
    /// too).
    slots: Vec<Slot>,
    swarm: Swarm,
}

impl Board {
    fn new() -> Board {
        Board {
            slots: Vec::new(),
            swarm: Swarm::new(),
        }
    }

    /// Adds a parent not seen before; its index, or None if it is known.
    fn add(&mut self, p: &Parent) -> Option<usize> {
        if self.slots.iter().any(|q| q.parent.id == p.id) {
            return None;
        }
        self.slots.push(Slot {
            parent: p.clone(),
            load: Load::default(),
            fetched: 0,
            heard: false,
            joined: Instant::now(),
        });
        Some(self.swarm.add_parent())
    }

    /// Records that parent `p` has piece `number`.
    fn announce(&mut self, p: usize, number: u32) {
        self.swarm.announce(p, number);
        if let Some(s) = self.slots.get_mut(p) {
            s.heard = true;
        }
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
    tls: Option<Arc<common::tls::Tls>>,
}

impl ParentSet {
    /// Parents of `task_id` announcing any of `pieces`, reached with `tls` if set.
    pub(crate) fn new(
        task_id: &str,
        pieces: Vec<u32>,
        tls: Option<Arc<common::tls::Tls>>,
    ) -> ParentSet {
        ParentSet {
            board: Arc::new(Mutex::new(Board::new())),
            changed: Arc::new(tokio::sync::Notify::new()),
            syncs: Mutex::new(tokio::task::JoinSet::new()),
            task_id: task_id.to_string(),
            pieces,
            tls,
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
                    self.tls.clone(),
                );
            }
        }
    }

    /// A live parent holding piece `number`, drawn by idle upload bandwidth.
    pub(crate) fn holder(&self, number: u32) -> Option<usize> {
        let b = lock(&self.board);
        let holders = b.swarm.holders(number);
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
        lock(&self.board).swarm.fail(index)
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
            .filter(|i| b.swarm.live(*i) && !b.slots[*i].heard && !b.swarm.ended(*i))
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
#[allow(clippy::too_many_arguments)]
fn spawn_feeds(
    syncs: &mut tokio::task::JoinSet<()>,
    board: &Arc<Mutex<Board>>,
    changed: &Arc<tokio::sync::Notify>,
    i: usize,
    parent: &Parent,
    task_id: &str,
    missing: &[u32],
    tls: Option<Arc<common::tls::Tls>>,
) {
    let (load_board, p, load_tls) = (board.clone(), parent.clone(), tls.clone());
    syncs.spawn(async move {
        let Some(mut c) = connect(&p, load_tls.as_deref()).await else {
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
            let Some(mut c) = connect(&p, tls.as_deref()).await else {
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
                b.announce(i, m.number);
                drop(b);
                changed.notify_waiters();
            }
        }
        lock(&board).swarm.end(i);
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
    /// Mutual TLS to the parents' upload servers (`upload.client`).
    tls: Option<Arc<common::tls::Tls>>,
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
        tls: Option<Arc<common::tls::Tls>>,
    ) -> Peers {
        Peers {
            transport,
            store,
            metrics,
            concurrent: concurrent.max(1),
            piece_timeout,
            tls,
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
        let board = Arc::new(Mutex::new(Board::new()));
        let changed = Arc::new(tokio::sync::Notify::new());
        let mut syncs = tokio::task::JoinSet::new();
        let join = |syncs: &mut tokio::task::JoinSet<()>, new: &[Parent]| {
            let mut b = lock(&board);
            for p in new {
                if let Some(i) = b.add(p) {
                    spawn_feeds(
                        syncs,
                        &board,
                        &changed,
                        i,
                        p,
                        &task.id,
                        &missing,
                        self.tls.clone(),
                    );
                }
            }
        };
        join(&mut syncs, parents);
        let mut running: tokio::task::JoinSet<(u32, usize, bool)> = tokio::task::JoinSet::new();
        let mut task_changed = task.subscribe();
        loop {
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Fill the free slots.
            let done = loop {
                let pick = {
                    let mut b = lock(&board);
                    let missing: BTreeSet<u32> = task.missing_pieces().into_iter().collect();
                    match b.swarm.pick(
                        &missing,
                        |c| task.first_wanted(c),
                        self.concurrent,
                        rand::random(),
                    ) {
                        Pick::Fetch { piece, parent } => {
                            Some((piece, parent, b.slots[parent].parent.clone()))
                        }
                        Pick::Wait => break false,
                        Pick::Done => break true,
                    }
                };
                if let Some((number, index, parent)) = pick {
                    let (peers, task) = (self.clone(), task.clone());
                    running.spawn(async move {
                        let ok = peers.fetch_piece_from(&task, number, &parent).await;
                        (number, index, ok)
                    });
                }
            };
            if done && running.is_empty() {
                break;
            }
            let update = async {
                match more.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let idle = running.is_empty();
            tokio::select! {
                Some(r) = running.join_next() => {
                    let (number, index, ok) = match r {
                        Ok(r) => r,
                        // A fetch panicked: its piece stays missing and its slot is freed below.
                        Err(e) => {
                            tracing::warn!(task_id = %task.id, error = %e, "piece fetch panicked");
                            continue;
                        }
                    };
                    let (newly_failed, parent) = {
                        let mut b = lock(&board);
                        let was_live = b.swarm.live(index);
                        b.swarm.finish(number, ok);
                        if ok {
                            if let Some(slot) = b.slots.get_mut(index) {
                                slot.fetched += 1;
                            }
                        }
                        (was_live && !ok, b.slots.get(index).map(|s| s.parent.id.clone()))
                    };
                    if let (true, Some(r), Some(parent_id)) = (newly_failed, reporter, parent) {
                        // The scheduler blocks this parent for us and counts the failure
                        // against its host.
                        r.send(Request::DownloadPieceFailedRequest(DownloadPieceFailedRequest {
                            piece_number: Some(number),
                            parent_id,
                            temporary: false,
                        }))
                        .await;
                    }
                }
                () = &mut notified => {}
                r = task_changed.changed() => if r.is_err() { break },
                ok = update => match (ok, more.as_mut()) {
                    (true, Some(rx)) => {
                        let new = rx.borrow_and_update().clone();
                        join(&mut syncs, &new);
                    }
                    _ => more = None,
                },
                // Nothing in flight and no parent announced anything for a piece timeout.
                () = tokio::time::sleep(self.piece_timeout), if idle => break,
            }
        }
        running.abort_all();
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
        let elapsed = started.elapsed();
        tracing::debug!(task_id = %task.id, piece = number, parent = %parent.id,
            ?elapsed, "piece from parent");
        self.metrics.from_parent(parent.ip, length, elapsed);
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

fn lock(b: &Mutex<Board>) -> std::sync::MutexGuard<'_, Board> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
