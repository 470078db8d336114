//! Ranking of parent candidates (Dragonfly's load-aware evaluator, reference 2.2) and the
//! bad-parent test (reference 2.1). Pure functions: scores lie in `[0, 1]`, higher is better.
//!
//! ```text
//! Total       = 0.6 LoadQuality + 0.2 IDCAffinity + 0.1 LocationAffinity + 0.1 HostType
//! LoadQuality = 0.5 PeakBandwidthUsage + 0.3 BandwidthDuration + 0.2 Concurrency
//! ```

use crate::fsm::PeerState;
use crate::resource::{HostLoad, HostType, PieceCosts};

/// Weight of the load quality in the total.
pub const LOAD_QUALITY_WEIGHT: f64 = 0.6;
/// Weight of the IDC affinity in the total.
pub const IDC_AFFINITY_WEIGHT: f64 = 0.2;
/// Weight of the location affinity in the total.
pub const LOCATION_AFFINITY_WEIGHT: f64 = 0.1;
/// Weight of the host type in the total.
pub const HOST_TYPE_WEIGHT: f64 = 0.1;

/// Weight of the free bandwidth in the load quality.
pub const PEAK_BANDWIDTH_USAGE_WEIGHT: f64 = 0.5;
/// Weight of the queued upload volume in the load quality.
pub const BANDWIDTH_DURATION_WEIGHT: f64 = 0.3;
/// Weight of the concurrent uploads in the load quality.
pub const CONCURRENCY_WEIGHT: f64 = 0.2;

/// Window over which queued upload bytes are weighed against bandwidth, in seconds.
pub const BANDWIDTH_DURATION_WINDOW_SECS: f64 = 60.0;
/// Piece size assumed when counting the uploads that saturate a host (16 MiB).
pub const CONCURRENCY_PIECE_LENGTH: f64 = 16.0 * 1024.0 * 1024.0;
/// Location elements compared at most.
pub const MAX_LOCATION_ELEMENTS: usize = 5;
/// Fewer piece costs than this say nothing about a parent.
pub const MIN_AVAILABLE_COSTS: usize = 2;
/// Before the costs window fills, a piece this many times slower than the mean is an outlier.
pub const SLOW_PIECE_FACTOR: f64 = 20.0;

/// A parent candidate as the evaluator sees it.
#[derive(Debug, Clone, Copy)]
pub struct ParentFeatures<'a> {
    /// Load of the candidate's host.
    pub load: HostLoad,
    /// IDC of the candidate's host.
    pub idc: &'a str,
    /// Location of the candidate's host.
    pub location: &'a str,
    /// Type of the candidate's host.
    pub host_type: HostType,
    /// State of the candidate peer.
    pub state: PeerState,
}

/// The peer asking for parents, as the evaluator sees it.
#[derive(Debug, Clone, Copy)]
pub struct ChildFeatures<'a> {
    /// IDC of the child's host.
    pub idc: &'a str,
    /// Location of the child's host.
    pub location: &'a str,
}

/// Free share of the upload bandwidth: `1 - tx / max_tx`; 0 if the maximum is unknown or
/// reached.
pub fn peak_bandwidth_usage_score(load: &HostLoad) -> f64 {
    if load.max_tx_bandwidth == 0 || load.tx_bandwidth >= load.max_tx_bandwidth {
        return 0.0;
    }
    1.0 - load.tx_bandwidth as f64 / load.max_tx_bandwidth as f64
}

/// How little the queued upload bytes weigh on the bandwidth over a 60 s window:
/// `1 - (queued_bytes x 8 / max_tx) / 60`; 1 if nothing is queued, 0 if the maximum is unknown
/// or the queue fills the window.
pub fn bandwidth_duration_score(load: &HostLoad) -> f64 {
    if load.max_tx_bandwidth == 0 {
        return 0.0;
    }
    if load.upload_content_length == 0 {
        return 1.0;
    }
    let ratio = load.upload_content_length as f64 * 8.0
        / load.max_tx_bandwidth as f64
        / BANDWIDTH_DURATION_WINDOW_SECS;
    if ratio >= 1.0 {
        0.0
    } else {
        1.0 - ratio
    }
}

/// Whether concurrent uploads stay within what the bandwidth carries: with
/// `need = max_tx / (16 MiB x 8)` pieces in flight saturating the host, 1 while
/// `concurrent <= need`, then `need / concurrent`; 0 if `need <= 1` (bandwidth unknown or tiny).
pub fn concurrency_score(load: &HostLoad) -> f64 {
    if load.max_tx_bandwidth == 0 {
        return 0.0;
    }
    let need = load.max_tx_bandwidth as f64 / CONCURRENCY_PIECE_LENGTH / 8.0;
    if need <= 1.0 {
        return 0.0;
    }
    let concurrent = load.concurrent_upload_piece_count as f64;
    if concurrent <= need {
        1.0
    } else {
        need / concurrent
    }
}

/// `0.5 PeakBandwidthUsage + 0.3 BandwidthDuration + 0.2 Concurrency`.
pub fn load_quality_score(load: &HostLoad) -> f64 {
    PEAK_BANDWIDTH_USAGE_WEIGHT * peak_bandwidth_usage_score(load)
        + BANDWIDTH_DURATION_WEIGHT * bandwidth_duration_score(load)
        + CONCURRENCY_WEIGHT * concurrency_score(load)
}

/// 1 if both IDCs are set and equal ignoring case, else 0.
pub fn idc_affinity_score(parent: &str, child: &str) -> f64 {
    if parent.is_empty() || child.is_empty() || !eq_ignore_case(parent, child) {
        0.0
    } else {
        1.0
    }
}

/// Leading `|`-separated elements in common (case-insensitive, at most 5) divided by 5;
/// 1 if the locations are equal, 0 if either is empty.
pub fn location_affinity_score(parent: &str, child: &str) -> f64 {
    if parent.is_empty() || child.is_empty() {
        return 0.0;
    }
    if eq_ignore_case(parent, child) {
        return 1.0;
    }
    let common = parent
        .split('|')
        .zip(child.split('|'))
        .take(MAX_LOCATION_ELEMENTS)
        .take_while(|(p, c)| eq_ignore_case(p, c))
        .count();
    common as f64 / MAX_LOCATION_ELEMENTS as f64
}

/// Seed peers score 1 while registered or running from parents and 0 otherwise (notably while
/// still fetching from the origin); normal peers score 0.5.
pub fn host_type_score(host_type: HostType, state: PeerState) -> f64 {
    if host_type.is_seed() {
        if matches!(state, PeerState::ReceivedNormal | PeerState::Running) {
            1.0
        } else {
            0.0
        }
    } else {
        0.5
    }
}

/// Total score of `parent` for `child`.
pub fn evaluate_parent(parent: &ParentFeatures<'_>, child: &ChildFeatures<'_>) -> f64 {
    LOAD_QUALITY_WEIGHT * load_quality_score(&parent.load)
        + IDC_AFFINITY_WEIGHT * idc_affinity_score(parent.idc, child.idc)
        + LOCATION_AFFINITY_WEIGHT * location_affinity_score(parent.location, child.location)
        + HOST_TYPE_WEIGHT * host_type_score(parent.host_type, parent.state)
}

/// Whether a peer must not be a parent: it is pending, only registered, failed or gone; or its
/// newest piece cost is an outlier against the older ones in its window (more than 20x their
/// mean while the window fills, more than mean + 3 sigma once it is full). Fewer than two costs
/// say nothing.
pub fn is_bad_parent(state: PeerState, costs: &PieceCosts) -> bool {
    if matches!(
        state,
        PeerState::Pending | PeerState::Failed | PeerState::Leave
    ) || state.is_received()
    {
        return true;
    }
    if costs.len() < MIN_AVAILABLE_COSTS {
        return false;
    }
    let (Some(last), Some((mean, std_dev))) = (costs.last_secs(), costs.stats_excluding_last())
    else {
        return false;
    };
    if costs.is_full() {
        last > mean + 3.0 * std_dev
    } else {
        last > mean * SLOW_PIECE_FACTOR
    }
}

fn eq_ignore_case(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.chars()
            .zip(b.chars())
            .all(|(x, y)| x.to_lowercase().eq(y.to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GBPS: u64 = 1_000_000_000;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn load(max: u64, tx: u64, queued: u64, pieces: u64) -> HostLoad {
        HostLoad {
            max_tx_bandwidth: max,
            tx_bandwidth: tx,
            upload_content_length: queued,
            concurrent_upload_piece_count: pieces,
        }
    }

    #[test]
    fn peak_bandwidth_usage() {
        assert!(close(
            peak_bandwidth_usage_score(&load(10 * GBPS, 2 * GBPS, 0, 0)),
            0.8
        ));
        assert!(close(
            peak_bandwidth_usage_score(&load(10 * GBPS, 0, 0, 0)),
            1.0
        ));
        assert_eq!(
            peak_bandwidth_usage_score(&load(10 * GBPS, 10 * GBPS, 0, 0)),
            0.0
        );
        assert_eq!(
            peak_bandwidth_usage_score(&load(10 * GBPS, 11 * GBPS, 0, 0)),
            0.0
        );
        assert_eq!(
            peak_bandwidth_usage_score(&load(0, 0, 0, 0)),
            0.0,
            "unknown max"
        );
    }

    #[test]
    fn bandwidth_duration() {
        // 7.5 GB queued = 60 Gbit; at 10 Gbps that is 6 s of a 60 s window: 1 - 0.1.
        assert!(close(
            bandwidth_duration_score(&load(10 * GBPS, 0, 7_500_000_000, 0)),
            0.9
        ));
        assert_eq!(bandwidth_duration_score(&load(10 * GBPS, 0, 0, 0)), 1.0);
        // 75 GB = 60 s exactly: saturated.
        assert_eq!(
            bandwidth_duration_score(&load(10 * GBPS, 0, 75_000_000_000, 0)),
            0.0
        );
        assert_eq!(bandwidth_duration_score(&load(0, 0, 0, 0)), 0.0);
    }

    #[test]
    fn concurrency() {
        // 1 Gibit/s = 128 MiB/s carries exactly 8 pieces of 16 MiB per second.
        let max = 1024 * 1024 * 1024;
        assert_eq!(concurrency_score(&load(max, 0, 0, 0)), 1.0);
        assert_eq!(concurrency_score(&load(max, 0, 0, 8)), 1.0);
        assert!(close(concurrency_score(&load(max, 0, 0, 16)), 0.5));
        assert!(close(concurrency_score(&load(max, 0, 0, 32)), 0.25));
        // 128 Mibit/s carries one piece: too little to score.
        assert_eq!(concurrency_score(&load(128 * 1024 * 1024, 0, 0, 0)), 0.0);
        assert_eq!(concurrency_score(&load(0, 0, 0, 0)), 0.0);
    }

    #[test]
    fn load_quality_combines_the_three() {
        let max = 1024 * 1024 * 1024u64; // 1 Gibit/s: a need of 8 pieces
                                         // tx at a quarter: peak 0.75. Queued 768 MiB = 6 Gibit = 6 s: duration 0.9.
                                         // 16 pieces for a need of 8: concurrency 0.5.
        let l = load(max, max / 4, 768 * 1024 * 1024, 16);
        let expected = 0.5 * 0.75 + 0.3 * 0.9 + 0.2 * 0.5;
        assert!(close(load_quality_score(&l), expected));
        assert!(close(expected, 0.745));
    }

    #[test]
    fn idc_affinity() {
        assert_eq!(idc_affinity_score("IDC-1", "idc-1"), 1.0);
        assert_eq!(idc_affinity_score("idc-1", "idc-2"), 0.0);
        assert_eq!(idc_affinity_score("", ""), 0.0);
        assert_eq!(idc_affinity_score("idc-1", ""), 0.0);
    }

    #[test]
    fn location_affinity() {
        assert_eq!(
            location_affinity_score("cn|bj|hd|z1|r1", "cn|bj|hd|z1|r1"),
            1.0
        );
        assert_eq!(location_affinity_score("CN|BJ", "cn|bj"), 1.0);
        assert!(close(
            location_affinity_score("cn|bj|hd|z1|r1", "cn|bj|cy|z2|r2"),
            0.4
        ));
        assert!(close(location_affinity_score("cn|bj|hd", "cn|bj"), 0.4));
        assert_eq!(location_affinity_score("us|ny", "cn|bj"), 0.0);
        // Only five elements count.
        assert_eq!(location_affinity_score("a|b|c|d|e|f", "a|b|c|d|e|g"), 1.0);
        assert_eq!(location_affinity_score("", "cn"), 0.0);
    }

    #[test]
    fn host_type() {
        assert_eq!(
            host_type_score(HostType::SuperSeed, PeerState::Running),
            1.0
        );
        assert_eq!(
            host_type_score(HostType::SuperSeed, PeerState::ReceivedNormal),
            1.0
        );
        assert_eq!(
            host_type_score(HostType::SuperSeed, PeerState::BackToSource),
            0.0
        );
        assert_eq!(
            host_type_score(HostType::SuperSeed, PeerState::Succeeded),
            0.0
        );
        assert_eq!(host_type_score(HostType::Normal, PeerState::Succeeded), 0.5);
    }

    #[test]
    fn total_score_by_hand() {
        let max = 1024 * 1024 * 1024u64;
        let parent = ParentFeatures {
            load: load(max, max / 4, 768 * 1024 * 1024, 16), // load quality 0.745
            idc: "idc-a",
            location: "cn|bj|hd",
            host_type: HostType::Normal,
            state: PeerState::Succeeded,
        };
        let child = ChildFeatures {
            idc: "IDC-A",
            location: "cn|sh",
        };
        // 0.6 x 0.745 + 0.2 x 1 + 0.1 x 0.2 + 0.1 x 0.5
        let expected = 0.447 + 0.2 + 0.02 + 0.05;
        assert!(close(evaluate_parent(&parent, &child), expected));

        // An idle seed in the same IDC and location, running: every term at its best.
        let seed = ParentFeatures {
            load: load(10 * GBPS, 0, 0, 0),
            idc: "x",
            location: "l",
            host_type: HostType::SuperSeed,
            state: PeerState::Running,
        };
        let near = ChildFeatures {
            idc: "x",
            location: "l",
        };
        assert!(close(evaluate_parent(&seed, &near), 1.0));
    }

    fn costs(window: usize, ms: &[u64]) -> PieceCosts {
        let mut c = PieceCosts::new(window);
        for m in ms {
            c.push(Duration::from_millis(*m));
        }
        c
    }

    #[test]
    fn bad_parent_by_state() {
        let none = costs(10, &[]);
        for s in [
            PeerState::Pending,
            PeerState::ReceivedEmpty,
            PeerState::ReceivedTiny,
            PeerState::ReceivedSmall,
            PeerState::ReceivedNormal,
            PeerState::Failed,
            PeerState::Leave,
        ] {
            assert!(is_bad_parent(s, &none), "{s}");
        }
        for s in [
            PeerState::Running,
            PeerState::BackToSource,
            PeerState::Succeeded,
        ] {
            assert!(!is_bad_parent(s, &none), "{s}");
        }
    }

    #[test]
    fn bad_parent_needs_two_costs() {
        assert!(!is_bad_parent(PeerState::Running, &costs(10, &[100_000])));
    }

    #[test]
    fn bad_parent_twenty_times_the_mean_before_the_window_fills() {
        // Older costs 10 and 10 ms: mean 10 ms, limit 200 ms (exclusive).
        assert!(!is_bad_parent(
            PeerState::Running,
            &costs(10, &[10, 10, 200])
        ));
        assert!(is_bad_parent(
            PeerState::Running,
            &costs(10, &[10, 10, 201])
        ));
    }

    #[test]
    fn bad_parent_three_sigma_once_the_window_is_full() {
        // Window of 4; older costs 10, 12, 14 ms: mean 12, sigma sqrt(8/3) = 1.633 ms,
        // limit 12 + 4.899 = 16.899 ms.
        assert!(!is_bad_parent(
            PeerState::Running,
            &costs(4, &[10, 12, 14, 16])
        ));
        assert!(is_bad_parent(
            PeerState::Running,
            &costs(4, &[10, 12, 14, 17])
        ));
        // The same 17 ms in a window not yet full is far below 20x the mean.
        assert!(!is_bad_parent(
            PeerState::Running,
            &costs(5, &[10, 12, 14, 17])
        ));
        // The window slides: once the outlier is old, a normal newest cost is fine.
        assert!(!is_bad_parent(
            PeerState::Running,
            &costs(4, &[10, 12, 14, 17, 12])
        ));
    }
}
