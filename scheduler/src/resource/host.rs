//! Hosts: one per node agent, with the upload load the scheduler tracks for parent selection.

use std::collections::BTreeSet;
use std::time::SystemTime;

use super::{HostId, PeerId};

/// Kind of node agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostType {
    /// An ordinary node agent (wire value 0).
    Normal,
    /// A seed peer, which the scheduler may trigger to fetch from the origin (wire value 1).
    SuperSeed,
}

impl HostType {
    /// The type for `common.v2.Host.type`: 0 normal, 1 super seed; anything else is unknown.
    pub fn from_wire(value: u32) -> Option<HostType> {
        match value {
            0 => Some(HostType::Normal),
            1 => Some(HostType::SuperSeed),
            _ => None,
        }
    }

    /// Whether this is a seed peer host.
    pub fn is_seed(self) -> bool {
        self != HostType::Normal
    }
}

/// What a host announces about itself (`AnnounceHost`), reduced to what scheduling uses.
#[derive(Debug, Clone, PartialEq)]
pub struct HostInfo {
    /// Host ID.
    pub id: HostId,
    /// Normal host or seed peer.
    pub host_type: HostType,
    /// Leech mode: the host downloads but never uploads to others.
    pub disable_shared: bool,
    /// Most children the host serves at once; `None` takes the configured default for its type
    /// (`peerConcurrentUploadLimit` 200, `seedPeerConcurrentUploadLimit` 2000).
    pub concurrent_upload_limit: Option<u32>,
    /// Internet data center label (compared case-insensitively).
    pub idc: String,
    /// Location, `|`-separated from widest to narrowest (e.g. `country|region|city|zone|rack`).
    pub location: String,
    /// Upload bandwidth the host may use, bits per second (0: unknown).
    pub max_tx_bandwidth: u64,
    /// Upload bandwidth measured now, bits per second.
    pub tx_bandwidth: u64,
}

impl HostInfo {
    /// A host of `host_type` with no location, no bandwidth figures and the default limit.
    pub fn new(id: impl Into<HostId>, host_type: HostType) -> HostInfo {
        HostInfo {
            id: id.into(),
            host_type,
            disable_shared: false,
            concurrent_upload_limit: None,
            idc: String::new(),
            location: String::new(),
            max_tx_bandwidth: 0,
            tx_bandwidth: 0,
        }
    }
}

/// Load one child puts on its parent's host, recorded on the DAG edge so that removing the edge
/// gives back exactly what adding it took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadReservation {
    /// Pieces the child fetches at once (`concurrent_piece_count`).
    pub piece_count: u64,
    /// Bytes the child will fetch: the task's content length (0 when unknown).
    pub content_length: u64,
    /// Peak bandwidth the child may draw: piece length x piece count x 8 bits per second.
    pub tx_bandwidth: u64,
}

/// The load figures the evaluator reads (reference 2.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostLoad {
    /// Upload bandwidth the host may use, bits per second (0: unknown).
    pub max_tx_bandwidth: u64,
    /// Upload bandwidth in use: last measurement plus reservations since, bits per second.
    pub tx_bandwidth: u64,
    /// Bytes children still fetch from this host.
    pub upload_content_length: u64,
    /// Pieces being uploaded at once.
    pub concurrent_upload_piece_count: u64,
}

/// A host the scheduler knows, with its live upload load.
#[derive(Debug, Clone)]
pub struct Host {
    pub(crate) id: HostId,
    pub(crate) host_type: HostType,
    pub(crate) disable_shared: bool,
    pub(crate) concurrent_upload_limit: u32,
    pub(crate) idc: String,
    pub(crate) location: String,
    pub(crate) max_tx_bandwidth: u64,
    pub(crate) tx_bandwidth: u64,
    pub(crate) concurrent_upload_count: u32,
    pub(crate) concurrent_upload_piece_count: u64,
    pub(crate) upload_content_length: u64,
    pub(crate) upload_count: u64,
    pub(crate) upload_failed_count: u64,
    pub(crate) peers: BTreeSet<PeerId>,
    pub(crate) created_at: SystemTime,
    pub(crate) updated_at: SystemTime,
}

impl Host {
    /// A new host from its announcement, with `default_limit` when it names no upload limit.
    pub(crate) fn new(info: HostInfo, default_limit: u32, now: SystemTime) -> Host {
        Host {
            id: info.id,
            host_type: info.host_type,
            disable_shared: info.disable_shared,
            concurrent_upload_limit: info.concurrent_upload_limit.unwrap_or(default_limit),
            idc: info.idc,
            location: info.location,
            max_tx_bandwidth: info.max_tx_bandwidth,
            tx_bandwidth: info.tx_bandwidth,
            concurrent_upload_count: 0,
            concurrent_upload_piece_count: 0,
            upload_content_length: 0,
            upload_count: 0,
            upload_failed_count: 0,
            peers: BTreeSet::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// Takes a new announcement: static fields and measured bandwidth are replaced, reservations
    /// for current children are kept.
    pub(crate) fn update(&mut self, info: HostInfo, default_limit: u32, now: SystemTime) {
        self.host_type = info.host_type;
        self.disable_shared = info.disable_shared;
        self.concurrent_upload_limit = info.concurrent_upload_limit.unwrap_or(default_limit);
        self.idc = info.idc;
        self.location = info.location;
        self.max_tx_bandwidth = info.max_tx_bandwidth;
        self.tx_bandwidth = info.tx_bandwidth;
        self.updated_at = now;
    }

    /// Adds one child's load.
    pub(crate) fn reserve(&mut self, r: UploadReservation) {
        self.concurrent_upload_count = self.concurrent_upload_count.saturating_add(1);
        self.upload_count = self.upload_count.saturating_add(1);
        self.concurrent_upload_piece_count = self
            .concurrent_upload_piece_count
            .saturating_add(r.piece_count);
        self.upload_content_length = self.upload_content_length.saturating_add(r.content_length);
        self.tx_bandwidth = self.tx_bandwidth.saturating_add(r.tx_bandwidth);
    }

    /// Gives back one child's load. Saturating: an announcement may have replaced the measured
    /// bandwidth since the reservation was made.
    pub(crate) fn release(&mut self, r: UploadReservation) {
        self.concurrent_upload_count = self.concurrent_upload_count.saturating_sub(1);
        self.concurrent_upload_piece_count = self
            .concurrent_upload_piece_count
            .saturating_sub(r.piece_count);
        self.upload_content_length = self.upload_content_length.saturating_sub(r.content_length);
        self.tx_bandwidth = self.tx_bandwidth.saturating_sub(r.tx_bandwidth);
    }

    /// Host ID.
    pub fn id(&self) -> &HostId {
        &self.id
    }

    /// Normal host or seed peer.
    pub fn host_type(&self) -> HostType {
        self.host_type
    }

    /// Whether the host refuses to upload (leech mode).
    pub fn disable_shared(&self) -> bool {
        self.disable_shared
    }

    /// Most children the host serves at once.
    pub fn concurrent_upload_limit(&self) -> u32 {
        self.concurrent_upload_limit
    }

    /// Children the host serves now (DAG edges out of its peers, over all tasks).
    pub fn concurrent_upload_count(&self) -> u32 {
        self.concurrent_upload_count
    }

    /// Whether the host can take one more child.
    pub fn has_free_upload(&self) -> bool {
        self.concurrent_upload_count < self.concurrent_upload_limit
    }

    /// IDC label.
    pub fn idc(&self) -> &str {
        &self.idc
    }

    /// Location label.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The load figures the evaluator reads.
    pub fn load(&self) -> HostLoad {
        HostLoad {
            max_tx_bandwidth: self.max_tx_bandwidth,
            tx_bandwidth: self.tx_bandwidth,
            upload_content_length: self.upload_content_length,
            concurrent_upload_piece_count: self.concurrent_upload_piece_count,
        }
    }

    /// Children ever assigned to this host.
    pub fn upload_count(&self) -> u64 {
        self.upload_count
    }

    /// Piece downloads from this host that children reported failed.
    pub fn upload_failed_count(&self) -> u64 {
        self.upload_failed_count
    }

    /// Peers (of any task) on this host.
    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.peers.iter()
    }

    /// First announcement.
    pub fn created_at(&self) -> SystemTime {
        self.created_at
    }

    /// Last announcement.
    pub fn updated_at(&self) -> SystemTime {
        self.updated_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_types() {
        assert_eq!(HostType::from_wire(0), Some(HostType::Normal));
        assert_eq!(HostType::from_wire(1), Some(HostType::SuperSeed));
        assert_eq!(HostType::from_wire(7), None);
        assert!(HostType::SuperSeed.is_seed());
        assert!(!HostType::Normal.is_seed());
    }

    #[test]
    fn reserve_and_release_are_symmetric_and_announce_keeps_reservations() {
        let now = SystemTime::UNIX_EPOCH;
        let mut info = HostInfo::new("10.0.0.1-a", HostType::Normal);
        info.tx_bandwidth = 100;
        let mut h = Host::new(info.clone(), 2, now);
        assert_eq!(h.concurrent_upload_limit(), 2);
        let r = UploadReservation {
            piece_count: 8,
            content_length: 1000,
            tx_bandwidth: 50,
        };
        h.reserve(r);
        assert!(h.has_free_upload());
        h.reserve(r);
        assert!(!h.has_free_upload());
        assert_eq!(h.load().concurrent_upload_piece_count, 16);
        assert_eq!(h.load().upload_content_length, 2000);
        assert_eq!(h.load().tx_bandwidth, 200);
        assert_eq!(h.upload_count(), 2);

        // A new measurement replaces the bandwidth, not the reservations.
        info.tx_bandwidth = 10;
        info.concurrent_upload_limit = Some(5);
        h.update(info, 2, now);
        assert_eq!(h.concurrent_upload_count(), 2);
        assert_eq!(h.concurrent_upload_limit(), 5);
        h.release(r);
        h.release(r);
        assert_eq!(h.load().tx_bandwidth, 0, "saturates at zero");
        assert_eq!(h.concurrent_upload_count(), 0);
        assert_eq!(h.load().concurrent_upload_piece_count, 0);
        assert_eq!(h.load().upload_content_length, 0);
        assert_eq!(h.upload_count(), 2, "lifetime count is kept");
    }
}
