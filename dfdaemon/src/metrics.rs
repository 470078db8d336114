//! Prometheus metrics (prefix `dragonfly_dfdaemon_`) and the `/metrics` +
//! `/healthy` HTTP endpoint.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Where downloaded bytes came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    /// `back_to_source`, `local_cache` or `remote_peer`.
    pub r#type: &'static str,
}

/// Proxy request outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// Piece transport.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

/// GC reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Task state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// Where bytes of range reads (lazy loading) came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `origin`, `parent` (fetched) or `local` (returned from the store).
    pub source: &'static str,
}

/// A FUSE request kind of a mount mode.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FuseOpLabels {
    /// `lookup`, `getattr`, `read`, ...
    pub op: &'static str,
    /// `fuse` (the image's filesystem) or `erofs` (the blob views under a kernel EROFS mount).
    pub mode: &'static str,
}

/// An image (its repository).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ImageLabels {
    pub image: String,
}

/// A parent host (its IP: one series per host, whatever the tasks).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ParentLabels {
    pub parent_ip: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn fuse_histogram() -> Histogram {
    // 50 µs .. ~13 s
    Histogram::new(exponential_buckets(0.00005, 4.0, 10))
}

/// All dfdaemon metrics.
pub struct Metrics {
    pub registry: Registry,
    /// Bytes by source: fetched from the origin (`back_to_source`), served from
    /// tasks already complete in the store (`local_cache`), fetched from other
    /// peers (`remote_peer`).
    pub download_traffic: Family<TrafficLabels, Counter>,
    /// Pieces stored, by source.
    pub pieces: Family<TrafficLabels, Counter>,
    /// Proxy requests by outcome.
    pub proxy_requests: Family<OutcomeLabels, Counter>,
    /// Tasks in the store by state.
    pub tasks: Family<StateLabels, Gauge>,
    /// Tasks evicted by GC, by reason (`ttl`, `disk`).
    pub gc_evicted_tasks: Family<ReasonLabels, Counter>,
    /// Bytes evicted by GC.
    pub gc_evicted_bytes: Counter,
    /// Bytes the store's content files occupy on disk.
    pub storage_bytes: Gauge,
    /// Downloads that failed digest verification.
    pub digest_mismatches: Counter,
    /// GC passes run.
    pub gc_runs: Counter,
    /// Bytes of pieces served to other peers, by transport (`tcp`, `quic`).
    pub upload_traffic: Family<ProtocolLabels, Counter>,
    /// Metadata writes queued but not yet committed to disk.
    pub metadata_pending_writes: Gauge,
    /// Range-read (lazy loading) bytes by source.
    pub lazy_traffic: Family<SourceLabels, Counter>,
    /// Chunks that failed their CRC32C or digest check.
    pub chunk_check_failures: Counter,
    /// FUSE request durations of image mounts.
    pub fuse_requests: HistogramFamily<FuseOpLabels>,
    /// Bytes read from each mounted image.
    pub image_read_bytes: Family<ImageLabels, Counter>,
    /// Bytes of pieces fetched from each parent host.
    pub parent_bytes: Family<ParentLabels, Counter>,
    /// Rate of the last piece fetched from each parent host, in bytes per second (how fast
    /// its uplink serves this host now).
    pub parent_rate: Family<ParentLabels, Gauge>,
    /// AnnounceHost calls that failed (a scheduler down or refusing).
    pub announce_host_failures: Counter,
    /// Schedulers in use: resolved and answering their health check.
    pub schedulers_healthy: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("dragonfly_dfdaemon");
        let m = Metrics {
            download_traffic: Family::default(),
            pieces: Family::default(),
            proxy_requests: Family::default(),
            tasks: Family::default(),
            gc_evicted_tasks: Family::default(),
            gc_evicted_bytes: Counter::default(),
            storage_bytes: Gauge::default(),
            digest_mismatches: Counter::default(),
            gc_runs: Counter::default(),
            upload_traffic: Family::default(),
            metadata_pending_writes: Gauge::default(),
            lazy_traffic: Family::default(),
            chunk_check_failures: Counter::default(),
            fuse_requests: Family::new_with_constructor(fuse_histogram as fn() -> Histogram),
            image_read_bytes: Family::default(),
            parent_bytes: Family::default(),
            parent_rate: Family::default(),
            announce_host_failures: Counter::default(),
            schedulers_healthy: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "download_traffic_bytes",
            "Bytes by source: back_to_source (origin), local_cache (served from complete cached tasks), remote_peer",
            m.download_traffic.clone(),
        );
        registry.register("pieces", "Pieces stored, by source", m.pieces.clone());
        registry.register(
            "proxy_requests",
            "Proxy requests by outcome",
            m.proxy_requests.clone(),
        );
        registry.register("tasks", "Tasks in the store by state", m.tasks.clone());
        registry.register(
            "gc_evicted_tasks",
            "Tasks evicted by GC, by reason",
            m.gc_evicted_tasks.clone(),
        );
        registry.register(
            "gc_evicted_bytes",
            "Bytes evicted by GC",
            m.gc_evicted_bytes.clone(),
        );
        registry.register(
            "storage_bytes",
            "Bytes the store's content files occupy on disk",
            m.storage_bytes.clone(),
        );
        registry.register(
            "digest_mismatches",
            "Downloads whose content did not match the expected digest",
            m.digest_mismatches.clone(),
        );
        registry.register("gc_runs", "GC passes run", m.gc_runs.clone());
        registry.register(
            "upload_traffic_bytes",
            "Bytes of pieces served to other peers",
            m.upload_traffic.clone(),
        );
        registry.register(
            "metadata_pending_writes",
            "Metadata writes queued but not yet committed to disk",
            m.metadata_pending_writes.clone(),
        );
        registry.register(
            "lazy_traffic_bytes",
            "Range-read (lazy loading) bytes: fetched from the origin, from parents, or returned from the store (local)",
            m.lazy_traffic.clone(),
        );
        registry.register(
            "chunk_check_failures",
            "Image chunks that failed their CRC32C or digest check",
            m.chunk_check_failures.clone(),
        );
        registry.register(
            "fuse_request_duration_seconds",
            "FUSE request durations of image mounts, by request kind and mount mode",
            m.fuse_requests.clone(),
        );
        registry.register(
            "image_read_bytes",
            "Bytes read from each mounted image (file data in fuse mode, blob data in erofs mode)",
            m.image_read_bytes.clone(),
        );
        registry.register(
            "parent_download_traffic_bytes",
            "Bytes of pieces fetched from each parent host",
            m.parent_bytes.clone(),
        );
        registry.register(
            "parent_download_rate_bytes_per_second",
            "Rate of the last piece fetched from each parent host",
            m.parent_rate.clone(),
        );
        registry.register(
            "announce_host_failures",
            "AnnounceHost calls to a scheduler that failed",
            m.announce_host_failures.clone(),
        );
        registry.register(
            "schedulers_healthy",
            "Schedulers in use: resolved and answering their gRPC health check",
            m.schedulers_healthy.clone(),
        );
        // Pre-create the label sets users look for, so they read 0 rather than absent.
        for source in ["origin", "parent", "local"] {
            let _ = m.lazy_traffic.get_or_create(&SourceLabels { source });
        }
        for t in ["back_to_source", "local_cache", "remote_peer"] {
            let _ = m
                .download_traffic
                .get_or_create(&TrafficLabels { r#type: t });
        }
        Metrics { registry, ..m }
    }

    pub fn traffic(&self, source: &'static str, bytes: u64) {
        self.download_traffic
            .get_or_create(&TrafficLabels { r#type: source })
            .inc_by(bytes);
    }

    /// Counts range-read bytes from `source`.
    pub fn lazy(&self, source: &'static str, bytes: u64) {
        self.lazy_traffic
            .get_or_create(&SourceLabels { source })
            .inc_by(bytes);
    }

    /// Counts bytes served to another peer.
    pub fn uploaded(&self, protocol: &'static str, bytes: u64) {
        self.upload_traffic
            .get_or_create(&ProtocolLabels { protocol })
            .inc_by(bytes);
    }

    /// Bytes served to other peers over every transport.
    pub fn uploaded_total(&self) -> u64 {
        ["tcp", "quic"]
            .iter()
            .map(|p| {
                self.upload_traffic
                    .get_or_create(&ProtocolLabels { protocol: p })
                    .get()
            })
            .sum()
    }

    /// Counts a piece of `bytes` fetched from the parent at `ip` in `elapsed`.
    pub fn from_parent(&self, ip: std::net::IpAddr, bytes: u64, elapsed: std::time::Duration) {
        let labels = ParentLabels {
            parent_ip: ip.to_string(),
        };
        self.parent_bytes.get_or_create(&labels).inc_by(bytes);
        let rate = bytes as f64 / elapsed.as_secs_f64().max(1e-6);
        self.parent_rate
            .get_or_create(&labels)
            .set(rate.min(i64::MAX as f64) as i64);
    }

    pub fn proxy_outcome(&self, outcome: &'static str) {
        self.proxy_requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}
