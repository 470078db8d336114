//! Polling until a condition holds.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Polls `predicate` every 50 ms until it returns true; [`Error::Timeout`] naming `what` if it
/// has not after `timeout`. The predicate is always tried at least once.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut predicate: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if predicate().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_string(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_once_true_and_times_out_otherwise() {
        let n = AtomicU32::new(0);
        wait_for(Duration::from_secs(5), "third poll", || async {
            n.fetch_add(1, Ordering::SeqCst) >= 2
        })
        .await
        .expect("becomes true");
        assert_eq!(n.load(Ordering::SeqCst), 3);

        let err = wait_for(Duration::from_millis(120), "never", || async { false })
            .await
            .expect_err("must time out");
        assert!(err.to_string().contains("never"), "{err}");
    }
}
