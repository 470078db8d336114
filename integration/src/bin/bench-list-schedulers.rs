//! hack/bench/preheat.sh: `ListSchedulers` at a fixed rate from simulated peers (each request
//! a different hostname and IP, as a fleet's dfdaemons refreshing their dynconfig), against a
//! running manager. Prints the latency percentiles; never fails on timing.
//!
//! Usage: bench-list-schedulers <manager gRPC URL> [rate per second] [seconds] [connections]

use dragonfly_api::manager::v2::manager_client::ManagerClient;
use dragonfly_api::manager::v2::{ListSchedulersRequest, SourceType};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:65003".into());
    let rate: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let seconds: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
    let conns: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(16);
    let mut clients = Vec::new();
    for _ in 0..conns {
        let ch = tonic::transport::Endpoint::from_shared(addr.clone())
            .expect("address")
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{addr}: {e}"));
        clients.push(ManagerClient::new(ch));
    }
    let errors = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let total = rate * seconds;
    let every = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        tick.tick().await;
        let mut c = clients[i as usize % conns].clone();
        let (tx, errors) = (tx.clone(), errors.clone());
        tokio::spawn(async move {
            let req = ListSchedulersRequest {
                source_type: SourceType::PeerSource as i32,
                hostname: format!("node-{}", i % 5000),
                ip: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                idc: Some(String::new()),
                location: Some(String::new()),
                version: "bench".into(),
                commit: String::new(),
                scheduler_cluster_id: 0,
            };
            let t = Instant::now();
            match c.list_schedulers(req).await {
                Ok(_) => {
                    let _ = tx.send(t.elapsed());
                }
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    drop(tx);
    let mut lat = Vec::with_capacity(total as usize);
    while let Some(d) = rx.recv().await {
        lat.push(d);
    }
    let wall = start.elapsed();
    lat.sort();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1000.0
    };
    println!(
        "list_schedulers rate={rate}/s sent={total} ok={} errors={} achieved={:.0}/s p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        lat.len(),
        errors.load(Ordering::Relaxed),
        total as f64 / wall.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
}
