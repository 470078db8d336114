//! Downloading pieces from parent peers: each parent announces the pieces it
//! has over `SyncPieces`; workers fetch each piece from one parent over Vortex
//! (CRC-checked), spreading pieces over parents; a parent that fails or sends
//! a bad piece is dropped and its pieces go to the others.

use crate::download::{DownloadError, Engine};
use crate::metrics::TrafficLabels;
use crate::storage::{PieceMeta, Task};
use dragonfly_api::dfdaemon::v2::dfdaemon_upload_client::DfdaemonUploadClient;
use dragonfly_api::dfdaemon::v2::{StatLocalTaskRequest, SyncPiecesRequest};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A peer that may serve pieces of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub id: String,
    pub ip: IpAddr,
    /// Upload gRPC port (SyncPieces, StatLocalTask).
    pub grpc_port: u16,
    /// Vortex TCP port.
    pub vortex_port: u16,
    /// Vortex QUIC port, if the parent serves QUIC.
    pub quic_port: Option<u16>,
}

impl Parent {
    fn grpc_url(&self) -> String {
        format!("http://{}", SocketAddr::new(self.ip, self.grpc_port))
    }
}

async fn connect(p: &Parent) -> Option<DfdaemonUploadClient<tonic::transport::Channel>> {
    let ep = tonic::transport::Endpoint::from_shared(p.grpc_url())
        .ok()?
        .connect_timeout(CONNECT_TIMEOUT);
    tokio::time::timeout(CONNECT_TIMEOUT, ep.connect())
        .await
        .ok()?
        .ok()
        .map(DfdaemonUploadClient::new)
}

/// Content length and piece length of a task, from the first parent that
/// knows it; retried for up to `wait` (a seed peer may just be starting).
pub async fn describe_task(
    parents: &[Parent],
    task_id: &str,
    wait: std::time::Duration,
) -> Option<(u64, u64)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(d) = describe_once(parents, task_id).await {
            return Some(d);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn describe_once(parents: &[Parent], task_id: &str) -> Option<(u64, u64)> {
    for p in parents {
        let Some(mut c) = connect(p).await else {
            continue;
        };
        let r = c
            .stat_local_task(StatLocalTaskRequest {
                task_id: task_id.to_string(),
                remote_ip: None,
            })
            .await;
        if let Ok(r) = r {
            let r = r.into_inner();
            if let (Some(len), Some(pl)) = (r.content_length, r.piece_length) {
                if pl > 0 {
                    return Some((len, pl));
                }
            }
        }
    }
    None
}

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

#[derive(Default)]
struct Board {
    /// Piece number -> parents (indices) that announced it.
    available: HashMap<u32, Vec<usize>>,
    /// Parents dropped after a failure.
    failed: BTreeSet<usize>,
    /// Parents whose SyncPieces stream ended.
    finished_streams: usize,
    /// Pieces being fetched.
    in_flight: BTreeSet<u32>,
    /// Per parent: weight from its latest SyncHost report.
    weights: Vec<u64>,
}

impl Engine {
    /// Fetches as many missing pieces of `task` as the parents can provide.
    /// Returns Ok when the task has no missing piece left.
    pub async fn fetch_from_parents(
        self: &Arc<Self>,
        task: &Arc<Task>,
        parents: &[Parent],
    ) -> Result<(), DownloadError> {
        let missing: Vec<u32> = task.missing_pieces();
        if missing.is_empty() {
            return Ok(());
        }
        let board = Arc::new(Mutex::new(Board {
            weights: vec![parent_weight(0, 0); parents.len()],
            ..Default::default()
        }));
        let changed = Arc::new(tokio::sync::Notify::new());
        let mut syncs = tokio::task::JoinSet::new();
        for (i, p) in parents.iter().enumerate() {
            // Load feed: each parent's idle upload bandwidth weighs the choice.
            let (load_board, p2) = (board.clone(), p.clone());
            syncs.spawn(async move {
                let Some(mut c) = connect(&p2).await else {
                    return;
                };
                let req = dragonfly_api::dfdaemon::v2::SyncHostRequest::default();
                if let Ok(resp) = c.sync_host(req).await {
                    let mut s = resp.into_inner();
                    while let Ok(Some(h)) = s.message().await {
                        let net = h.network.unwrap_or_default();
                        let w = parent_weight(net.max_tx_bandwidth, net.tx_bandwidth.unwrap_or(0));
                        if let Some(slot) = lock(&load_board).weights.get_mut(i) {
                            *slot = w;
                        }
                    }
                }
            });
            let (board, changed, p, missing) =
                (board.clone(), changed.clone(), p.clone(), missing.clone());
            let task_id = task.id.clone();
            syncs.spawn(async move {
                if let Some(mut c) = connect(&p).await {
                    let req = SyncPiecesRequest {
                        host_id: String::new(),
                        task_id,
                        interested_piece_numbers: missing,
                    };
                    if let Ok(resp) = c.sync_pieces(req).await {
                        let mut s = resp.into_inner();
                        while let Ok(Some(m)) = s.message().await {
                            lock(&board).available.entry(m.number).or_default().push(i);
                            changed.notify_waiters();
                        }
                    }
                }
                lock(&board).finished_streams += 1;
                changed.notify_waiters();
            });
        }
        let n = self.config.concurrent_piece_count.max(1);
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..n {
            let (engine, task, board, changed) =
                (self.clone(), task.clone(), board.clone(), changed.clone());
            let parents = parents.to_vec();
            workers.spawn(async move {
                loop {
                    let notified = changed.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    let pick = {
                        let mut b = lock(&board);
                        pick_piece(&task, &mut b, parents.len(), w)
                    };
                    match pick {
                        Pick::Done => return,
                        Pick::Wait => {
                            let wait = engine.config.piece_timeout;
                            if tokio::time::timeout(wait, notified).await.is_err() {
                                // No parent announced anything for a piece timeout.
                                return;
                            }
                        }
                        Pick::Fetch(number, parent) => {
                            let ok = engine
                                .fetch_piece_from(&task, number, &parents[parent])
                                .await;
                            let mut b = lock(&board);
                            b.in_flight.remove(&number);
                            if !ok {
                                b.failed.insert(parent);
                            }
                            drop(b);
                            changed.notify_waiters();
                        }
                    }
                }
            });
        }
        while workers.join_next().await.is_some() {}
        syncs.abort_all();
        let left = task.missing_pieces().len();
        if left == 0 {
            Ok(())
        } else {
            Err(DownloadError::Failed {
                task_id: task.id.clone(),
                reason: format!("parents could not provide {left} pieces"),
            })
        }
    }

    fn quic_client(&self) -> Result<Arc<crate::vortex::quic::QuicClient>, String> {
        self.quic
            .get_or_init(|| {
                crate::vortex::quic::QuicClient::new()
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// One piece from one parent; false if the parent failed or sent a bad piece.
    async fn fetch_piece_from(&self, task: &Arc<Task>, number: u32, parent: &Parent) -> bool {
        let (offset, length) =
            common::piece::piece_range(number, task.content_length(), task.piece_length());
        self.limiter.acquire(length).await;
        let timeout = self.config.piece_timeout;
        let result = match (self.config.protocol, parent.quic_port) {
            (crate::config::Protocol::Quic, Some(port)) => match self.quic_client() {
                Ok(c) => {
                    let addr = SocketAddr::new(parent.ip, port);
                    c.download_piece(addr, &task.id, number, offset, length, timeout)
                        .await
                }
                Err(e) => Err(crate::vortex::VortexError::Io(std::io::Error::other(e))),
            },
            _ => {
                let addr = SocketAddr::new(parent.ip, parent.vortex_port);
                crate::vortex::client::download_piece(
                    addr, &task.id, number, offset, length, timeout,
                )
                .await
            }
        };
        let piece = match result {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(task_id = %task.id, piece = number, parent = %parent.id, error = %e, "dropping parent");
                return false;
            }
        };
        let crc = crc32fast::hash(&piece.content);
        let t = task.clone();
        let content = piece.content;
        let wrote = tokio::task::spawn_blocking(move || t.write_at(offset, &content)).await;
        if !matches!(wrote, Ok(Ok(()))) {
            return false;
        }
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

enum Pick {
    Fetch(u32, usize),
    Wait,
    Done,
}

/// Chooses the next piece and a parent for it: wanted pieces first, then the
/// lowest missing piece some live parent has; parents spread by worker index.
fn pick_piece(task: &Task, b: &mut Board, parents: usize, worker: u32) -> Pick {
    let missing: BTreeSet<u32> = task
        .missing_pieces()
        .into_iter()
        .filter(|n| !b.in_flight.contains(n))
        .collect();
    if missing.is_empty() {
        return if b.in_flight.is_empty() {
            Pick::Done
        } else {
            Pick::Wait
        };
    }
    if b.failed.len() >= parents {
        return Pick::Done;
    }
    let has_source = |b: &Board, n: &u32| {
        b.available
            .get(n)
            .is_some_and(|ps| ps.iter().any(|p| !b.failed.contains(p)))
    };
    let wanted = task.take_wanted(&missing).filter(|n| has_source(b, n));
    let number = wanted.or_else(|| missing.iter().copied().find(|n| has_source(b, n)));
    let Some(number) = number else {
        // Nothing announced yet; if every stream ended, nothing more will be.
        let live_streams = parents - b.finished_streams;
        return if live_streams == 0 && b.in_flight.is_empty() {
            Pick::Done
        } else {
            Pick::Wait
        };
    };
    let candidates: Vec<usize> = b.available[&number]
        .iter()
        .copied()
        .filter(|p| !b.failed.contains(p))
        .collect();
    let parent = choose_weighted(&candidates, &b.weights, rand::random::<f64>())
        .unwrap_or(candidates[worker as usize % candidates.len()]);
    b.in_flight.insert(number);
    Pick::Fetch(number, parent)
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
