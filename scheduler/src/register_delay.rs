//! Delay before a registration is handled, growing with the host's registrations in flight, so
//! that a host starting many downloads at once does not hit the scheduler (and the origin) in
//! one burst.

use std::time::Duration;

use rand::Rng;

use crate::config::RegisterDelayConfig;
use crate::resource::HostType;

/// Delay for a registration of a host of `host_type` that has `in_flight` registrations being
/// handled, this one included.
///
/// The nominal delay is `base x 2^(in_flight - 1)`, capped at `max`; the result is drawn
/// uniformly from `[nominal / 2, nominal]` ("equal jitter"), so it never exceeds `max`.
/// Seed peers are never delayed: the scheduler itself controls how many of them go to the
/// origin. (Dragonfly draws from `[nominal / 2, 3 x nominal / 2)` with exponent `in_flight`;
/// we keep the cap a cap.)
pub fn register_delay<R: Rng + ?Sized>(
    host_type: HostType,
    in_flight: u32,
    config: &RegisterDelayConfig,
    rng: &mut R,
) -> Duration {
    if host_type.is_seed() || config.base.is_zero() {
        return Duration::ZERO;
    }
    let exponent = in_flight.saturating_sub(1).min(63);
    let nominal = config
        .base
        .checked_mul(1u32.checked_shl(exponent).unwrap_or(u32::MAX))
        .unwrap_or(config.max)
        .min(config.max);
    let half = nominal / 2;
    let jitter_nanos = rng.random_range(0..=duration_nanos(nominal - half));
    half + Duration::from_nanos(jitter_nanos)
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn seed_peers_are_not_delayed() {
        let mut rng = StdRng::seed_from_u64(1);
        let c = RegisterDelayConfig::default();
        assert_eq!(
            register_delay(HostType::SuperSeed, 10, &c, &mut rng),
            Duration::ZERO
        );
    }

    #[test]
    fn zero_base_disables() {
        let mut rng = StdRng::seed_from_u64(1);
        let c = RegisterDelayConfig {
            base: Duration::ZERO,
            max: ms(1000),
        };
        assert_eq!(
            register_delay(HostType::Normal, 10, &c, &mut rng),
            Duration::ZERO
        );
    }

    #[test]
    fn grows_exponentially_within_jitter_bounds_and_caps() {
        let c = RegisterDelayConfig::default();
        let mut rng = StdRng::seed_from_u64(42);
        // (in flight, nominal): 30, 60, 120, 240, 480, 960, then capped at 1000.
        for (n, nominal) in [
            (0, 30),
            (1, 30),
            (2, 60),
            (3, 120),
            (4, 240),
            (5, 480),
            (6, 960),
            (7, 1000),
            (40, 1000),
            (u32::MAX, 1000),
        ] {
            for _ in 0..200 {
                let d = register_delay(HostType::Normal, n, &c, &mut rng);
                assert!(d >= ms(nominal) / 2 && d <= ms(nominal), "n={n}: {d:?}");
            }
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let c = RegisterDelayConfig::default();
        let mut rng = StdRng::seed_from_u64(3);
        let mut v: Vec<Duration> = (0..100)
            .map(|_| register_delay(HostType::Normal, 7, &c, &mut rng))
            .collect();
        v.sort();
        v.dedup();
        assert!(v.len() > 90, "delays should differ");
        assert!(v[0] < ms(600) && v[v.len() - 1] > ms(900));
    }

    #[test]
    fn same_seed_same_delays() {
        let c = RegisterDelayConfig::default();
        let a: Vec<_> = {
            let mut rng = StdRng::seed_from_u64(9);
            (1..10)
                .map(|n| register_delay(HostType::Normal, n, &c, &mut rng))
                .collect()
        };
        let b: Vec<_> = {
            let mut rng = StdRng::seed_from_u64(9);
            (1..10)
                .map(|n| register_delay(HostType::Normal, n, &c, &mut rng))
                .collect()
        };
        assert_eq!(a, b);
    }
}
