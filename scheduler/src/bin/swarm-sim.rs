//! `swarm-sim [PEERS] [SIZE_MIB] [RATE]`: what [`scheduler::swarm_sim`] predicts for
//! `hack/bench/p2p.sh`'s scenario (defaults 6, 1024, 1gbit; RATE as tc writes it: 250mbit,
//! 1gbit). Prints the slowest peer's time over the link limit and each host's upload.
//! `SIM_SEED` seeds the random choices (default 1).

use scheduler::swarm_sim::{simulate, SwarmSpec};

fn rate_bytes(s: &str) -> Option<f64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: f64 = n.parse().ok()?;
    let bits = match unit {
        "kbit" => n * 1e3,
        "mbit" => n * 1e6,
        "gbit" => n * 1e9,
        _ => return None,
    };
    Some(bits / 8.0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let peers: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(6);
    let size_mib: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let rate_arg = args.get(2).map(String::as_str).unwrap_or("1gbit");
    let Some(rate) = rate_bytes(rate_arg) else {
        eprintln!("swarm-sim: RATE {rate_arg:?} must look like 250mbit or 1gbit");
        std::process::exit(2);
    };
    let mut spec = SwarmSpec::bench(peers, size_mib << 20, rate);
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|v| v.parse().ok()) {
        spec.seed = seed;
    }
    match simulate(&spec) {
        Ok(out) => {
            println!(
                "| predicted (swarm simulation) | slowest / link time {:.2} | origin bytes / size {:.3} |",
                out.ratio,
                out.origin_bytes as f64 / spec.size as f64
            );
            let ups: Vec<String> = out
                .uploaded
                .iter()
                .map(|u| format!("{:.0}", *u as f64 / (1 << 20) as f64))
                .collect();
            println!(
                "| predicted upload MiB (seed, peer1..) | {} | |",
                ups.join(", ")
            );
        }
        Err(e) => {
            eprintln!("swarm-sim: {e}");
            std::process::exit(1);
        }
    }
}
