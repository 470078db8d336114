//! Byte-rate limiting (`upload.rateLimit`, `download.rateLimit`): a token
//! bucket whose arithmetic takes time as a parameter, and an async shell
//! that sleeps for the delay it computes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket of bytes: `rate` bytes per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate_per_sec: u64, burst: u64, now: Instant) -> TokenBucket {
        let burst = burst.max(1) as f64;
        TokenBucket {
            rate: rate_per_sec.max(1) as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `n` bytes at `now` and returns how long the caller must wait
    /// before sending them (zero when the bucket had enough). Debt is allowed,
    /// so large sends are paced rather than refused.
    pub fn take(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// A shared limiter; `None` rate means unlimited.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Option<Mutex<TokenBucket>>,
    /// Bytes asked for so far (limited or not).
    acquired: std::sync::atomic::AtomicU64,
}

impl RateLimiter {
    /// `bytes_per_sec == 0` disables limiting. The burst is a tenth of a second.
    pub fn new(bytes_per_sec: u64) -> RateLimiter {
        RateLimiter {
            bucket: (bytes_per_sec > 0).then(|| {
                Mutex::new(TokenBucket::new(
                    bytes_per_sec,
                    (bytes_per_sec / 10).max(64 * 1024),
                    Instant::now(),
                ))
            }),
            acquired: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether a rate is set (else [`RateLimiter::acquire`] never waits).
    pub fn is_limited(&self) -> bool {
        self.bucket.is_some()
    }

    /// Bytes asked for so far: what callers are charged, which must be what
    /// they send or receive.
    pub fn acquired(&self) -> u64 {
        self.acquired.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `n` bytes may be sent or received.
    pub async fn acquire(&self, n: u64) {
        self.acquired
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        let Some(b) = &self.bucket else { return };
        let wait = b
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_paces_to_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100, t0);
        // The burst is free.
        assert_eq!(b.take(100, t0), Duration::ZERO);
        // 500 more bytes at once: 0.5 s of debt.
        assert_eq!(b.take(500, t0), Duration::from_millis(500));
        // After the debt is paid, 1 s later refills 1000 bytes but only up to the burst.
        let t2 = t0 + Duration::from_millis(1500);
        assert_eq!(b.take(100, t2), Duration::ZERO);
        assert_eq!(b.take(100, t2), Duration::from_millis(100));
    }

    #[test]
    fn sending_n_bytes_takes_n_over_rate_overall() {
        // Simulate a sender that sleeps exactly as told: 10 MB at 1 MB/s in
        // 64 KiB chunks ends after ~10 s of simulated time, whatever the chunking.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000, 100_000, t0);
        let mut now = t0;
        let mut sent = 0u64;
        while sent < 10_000_000 {
            let n = 65_536.min(10_000_000 - sent);
            now += b.take(n, now);
            sent += n;
        }
        let secs = now.duration_since(t0).as_secs_f64();
        assert!((9.8..=10.0).contains(&secs), "{secs}");
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let l = RateLimiter::new(0);
        l.acquire(u64::MAX).await;
    }
}
