//! What the scheduler and seed peers share to talk to the manager (`manager.v2.Manager`): its
//! address as either Dragonfly writes it (`host:port` in scheduler.yaml, `http://host:port` in
//! dfdaemon.yaml), and the KeepAlive stream that keeps an instance `active`.

use dragonfly_api::manager::v2::manager_client::ManagerClient;
use dragonfly_api::manager::v2::KeepAliveRequest;
use std::future::Future;
use std::time::Duration;
use tonic::transport::Channel;

/// Who a scheduler or seed peer is to the manager.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Hostname (with the cluster, the manager's key).
    pub hostname: String,
    /// The address others dial.
    pub ip: String,
    /// The port others dial.
    pub port: u16,
    /// Data centre, for the searcher.
    pub idc: String,
    /// Location, for the searcher.
    pub location: String,
    /// Its cluster (a scheduler cluster or a seed peer cluster).
    pub cluster_id: u64,
}

/// The manager at `addr` (`host:port`, `http://host:port`, `https://host:port`), connected
/// lazily: a manager that is down at start is reached when it comes back. With `tls` (the
/// `manager` section's `caCert`, `cert`, `key`) over mutual TLS.
pub fn channel(addr: &str, tls: Option<&crate::tls::Tls>) -> Result<Channel, String> {
    let endpoint = crate::tls::endpoint(addr, tls, "manager")?;
    // No whole-call timeout here: KeepAlive streams live for good. Unary calls set their own
    // (`request`).
    Ok(endpoint
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_lazy())
}

/// A unary request to the manager, limited to 10 s.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(Duration::from_secs(10));
    r
}

/// Whether `addr` is a manager address [`channel`] takes.
pub fn valid_addr(addr: &str) -> bool {
    let rest = match addr.split_once("://") {
        Some(("http" | "https", rest)) => rest,
        Some(_) => return false,
        None => addr,
    };
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(['/', '@', '?', '#'])
                && !host.contains(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

/// Keeps an instance alive on the manager, forever: calls `register` (UpdateScheduler or
/// UpdateSeedPeer) until it succeeds, then holds a KeepAlive stream with `message` every
/// `interval`. A stream that breaks (manager restarted, network) is reopened after `interval`,
/// registering again first, so a manager that lost the record learns it back.
pub async fn keep_alive<R, F>(
    channel: Channel,
    message: KeepAliveRequest,
    interval: Duration,
    mut register: R,
) where
    R: FnMut(ManagerClient<Channel>) -> F,
    F: Future<Output = Result<(), tonic::Status>>,
{
    let mut warned = false;
    loop {
        if let Err(e) = register(ManagerClient::new(channel.clone())).await {
            if !warned {
                tracing::warn!(error = %e.message(), code = ?e.code(), "cannot register with the manager; retrying");
                warned = true;
            }
            tokio::time::sleep(interval).await;
            continue;
        }
        if warned {
            tracing::info!("registered with the manager");
            warned = false;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let _ = tx.try_send(message.clone());
        let mut client = ManagerClient::new(channel.clone());
        let call = client.keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx));
        tokio::pin!(call);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        let opened = std::time::Instant::now();
        let ended = loop {
            tokio::select! {
                r = &mut call => break match r {
                    Ok(_) => "the manager closed the stream".to_string(),
                    Err(e) => e.message().to_string(),
                },
                _ = tick.tick() => {
                    if tx.send(message.clone()).await.is_err() {
                        break "the stream is gone".to_string();
                    }
                }
            }
        };
        tracing::warn!(reason = %ended, "KeepAlive to the manager ended; reconnecting");
        // A stream that held for a while is reopened at once; one that broke at once waits.
        if opened.elapsed() < interval * 2 {
            tokio::time::sleep(interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_as_dragonfly_writes_them() {
        assert!(valid_addr("manager:65003"));
        assert!(valid_addr("http://manager:65003"));
        assert!(valid_addr("http://127.0.0.1:65003/"));
        assert!(valid_addr("[::1]:65003"));
        assert!(!valid_addr("manager"));
        // https:// is taken with the section's caCert, cert and key (checked by `channel`).
        assert!(valid_addr("https://manager:65003"));
        assert!(!valid_addr("grpc://manager:65003"));
        assert!(channel("https://manager:65003", None)
            .unwrap_err()
            .contains("manager.caCert"));
        assert!(!valid_addr("manager:0"));
        assert!(!valid_addr(":65003"));
        assert!(!valid_addr("x/y:1"));
        assert!(!valid_addr("a b:1"));
    }
}
