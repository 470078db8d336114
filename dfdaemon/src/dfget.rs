//! dfget's client side: talks to dfdaemon's download API over its unix socket.

use dragonfly_api::dfdaemon::v2::dfdaemon_download_client::DfdaemonDownloadClient;
use hyper_util::rt::TokioIo;
use std::path::Path;
use tonic::transport::{Channel, Endpoint, Uri};

/// Errors reaching the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach dfdaemon at {path}: {message} (is dfdaemon running? see --endpoint)")]
    Unreachable { path: String, message: String },
}

/// Connects to the download API on a unix socket.
pub async fn connect(socket: &Path) -> Result<DfdaemonDownloadClient<Channel>, ConnectError> {
    let path = socket.to_path_buf();
    let unreachable = |message: String| ConnectError::Unreachable {
        path: socket.display().to_string(),
        message,
    };
    // The URI is required by tonic but unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://[::1]:50051")
        .map_err(|e| unreachable(e.to_string()))?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        }))
        .await
        .map_err(|e| unreachable(crate::backend::error_chain(&e)))?;
    Ok(DfdaemonDownloadClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

/// Parses `Name: value` header arguments.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("header {s:?} must look like 'Name: value'"))?;
    let k = k.trim();
    if k.is_empty() || http::HeaderName::from_bytes(k.as_bytes()).is_err() {
        return Err(format!("invalid header name in {s:?}"));
    }
    let v = v.trim();
    if http::HeaderValue::from_str(v).is_err() {
        return Err(format!("invalid header value in {s:?}"));
    }
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parsing() {
        assert_eq!(
            parse_header("Authorization: Bearer x:y").unwrap(),
            ("Authorization".into(), "Bearer x:y".into())
        );
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("bad name: v").is_err());
    }
}
