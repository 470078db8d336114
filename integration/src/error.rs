//! The harness error type. Every variant names what the harness was doing, so a failed test says
//! which step broke (and, for daemons, ends with the tail of that daemon's log).

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Result of a harness operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the harness (not in the code under test).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation on a harness-owned path failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A program could not be started at all.
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    /// A helper command (ctr, skopeo, openssl, ...) exited non-zero.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: ExitStatus,
        stderr: String,
    },

    /// A daemon exited while the harness expected it to run.
    #[error("{name} exited ({status}) {context}; log tail ({log}):\n{tail}")]
    DaemonExited {
        name: String,
        status: ExitStatus,
        context: String,
        log: PathBuf,
        tail: String,
    },

    /// Something did not happen within the time the harness allows for it.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },

    /// An HTTP exchange with a harness-run server failed at the transport level.
    #[error("HTTP {method} {url}: {source}")]
    Http {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },

    /// An HTTP exchange got a status the harness did not expect.
    #[error("HTTP {method} {url}: unexpected status {status}: {body}")]
    HttpStatus {
        method: String,
        url: String,
        status: u16,
        body: String,
    },

    /// A CRI call to containerd failed.
    #[error("CRI {call} {image}: {status}")]
    Cri {
        call: &'static str,
        image: String,
        #[source]
        status: Box<tonic::Status>,
    },

    /// Connecting the CRI gRPC client to containerd's socket failed.
    #[error("CRI connect {socket}: {source}")]
    CriConnect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },

    /// Data read back from a tool or a server did not have the expected shape.
    #[error("{what}: {detail}")]
    Malformed { what: String, detail: String },

    /// JSON (de)serialisation of a harness document failed.
    #[error("JSON {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// Image removal left content or snapshots behind.
    #[error("image {image} still has {what} after removal: {leftover:?}")]
    Leftover {
        image: String,
        what: &'static str,
        leftover: Vec<String>,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Malformed {
            what: what.into(),
            detail: detail.into(),
        }
    }
}
