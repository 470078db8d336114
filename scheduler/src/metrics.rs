//! Prometheus metrics of the scheduler (prefix `dragonfly_scheduler_`): counts of the calls and
//! reports it handles, its scheduling decisions, and (read from the core at each scrape) the
//! hosts, tasks and peers it holds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A label naming a kind of event (`type`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// The kind.
    pub r#type: &'static str,
}

/// A peer state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The state's name.
    pub state: String,
}

/// A host.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    /// The host's ID.
    pub host_id: String,
}

/// A gauge of a fraction.
pub type RatioGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The build.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    git_version: &'static str,
    platform: &'static str,
}

/// All scheduler metrics.
pub struct Metrics {
    registry: Registry,
    /// AnnounceHost calls.
    pub announce_host: Counter,
    /// Peers registered.
    pub register_peer: Counter,
    /// Registrations refused.
    pub register_peer_failure: Counter,
    /// Downloads that peers reported started, finished and failed (`type`: `p2p`,
    /// `back_to_source`).
    pub download_peer_started: Family<TypeLabels, Counter>,
    /// Downloads peers reported finished.
    pub download_peer_finished: Family<TypeLabels, Counter>,
    /// Downloads peers reported failed.
    pub download_peer_failure: Family<TypeLabels, Counter>,
    /// Pieces peers reported finished (`type`: `p2p`, `back_to_source`).
    pub download_piece_finished: Family<TypeLabels, Counter>,
    /// Piece failures peers reported (a parent that failed them).
    pub download_piece_failure: Counter,
    /// Scheduling decisions (`type`: `parents`, `back_to_source`, `fail`).
    pub schedule: Family<TypeLabels, Counter>,
    /// Seed peers triggered, and those triggers that failed.
    pub seed_trigger: Family<TypeLabels, Counter>,
    /// Hosts held (`type`: `normal`, `seed`).
    pub hosts: Family<TypeLabels, Gauge>,
    /// Tasks held.
    pub tasks: Gauge,
    /// Peers held, by state.
    pub peers: Family<StateLabels, Gauge>,
    /// Each host's upload rate over its announced maximum (`upload.rateLimit`), from its
    /// last AnnounceHost: how busy its uplink is.
    pub host_upload_utilization: Family<HostLabels, RatioGauge>,
    /// Children each host serves now (edges of the task graphs out of its peers).
    pub host_upload_peers: Family<HostLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("dragonfly_scheduler");
        let version = Family::<VersionLabels, Gauge>::default();
        version
            .get_or_create(&VersionLabels {
                git_version: env!("CARGO_PKG_VERSION"),
                platform: std::env::consts::ARCH,
            })
            .set(1);
        r.register("version", "Version of the scheduler", version);
        let m = Metrics {
            registry: Registry::default(),
            announce_host: Counter::default(),
            register_peer: Counter::default(),
            register_peer_failure: Counter::default(),
            download_peer_started: Family::default(),
            download_peer_finished: Family::default(),
            download_peer_failure: Family::default(),
            download_piece_finished: Family::default(),
            download_piece_failure: Counter::default(),
            schedule: Family::default(),
            seed_trigger: Family::default(),
            hosts: Family::default(),
            tasks: Gauge::default(),
            peers: Family::default(),
            host_upload_utilization: Family::default(),
            host_upload_peers: Family::default(),
        };
        r.register(
            "announce_host",
            "AnnounceHost calls",
            m.announce_host.clone(),
        );
        r.register("register_peer", "Peers registered", m.register_peer.clone());
        r.register(
            "register_peer_failure",
            "Peer registrations refused",
            m.register_peer_failure.clone(),
        );
        r.register(
            "download_peer_started",
            "Downloads reported started",
            m.download_peer_started.clone(),
        );
        r.register(
            "download_peer_finished",
            "Downloads reported finished",
            m.download_peer_finished.clone(),
        );
        r.register(
            "download_peer_finished_failure",
            "Downloads reported failed",
            m.download_peer_failure.clone(),
        );
        r.register(
            "download_piece_finished",
            "Pieces reported finished",
            m.download_piece_finished.clone(),
        );
        r.register(
            "download_piece_finished_failure",
            "Piece failures reported by peers",
            m.download_piece_failure.clone(),
        );
        r.register("schedule", "Scheduling decisions", m.schedule.clone());
        r.register(
            "seed_peer_trigger",
            "Seed peers triggered (type: started, failed)",
            m.seed_trigger.clone(),
        );
        r.register("hosts", "Hosts held", m.hosts.clone());
        r.register(
            "host_upload_bandwidth_utilization",
            "Upload rate over the announced maximum upload rate, per host (0 when the host announces no maximum)",
            m.host_upload_utilization.clone(),
        );
        r.register(
            "host_upload_peers",
            "Children a host serves now, per host",
            m.host_upload_peers.clone(),
        );
        r.register("tasks", "Tasks held", m.tasks.clone());
        r.register("peers", "Peers held, by state", m.peers.clone());
        Metrics { registry: r, ..m }
    }

    /// Encodes everything in the text format (after the caller set the gauges).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
