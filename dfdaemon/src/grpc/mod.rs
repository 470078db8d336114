//! gRPC services of dfdaemon (Dragonfly v2 API).

pub mod download;
pub mod upload;

use crate::download::DownloadError;
use crate::storage::{FailureKind, StoreError};
use tonic::Status;

/// The status of a failure of `kind`: `UNAVAILABLE` when the task's sources could not deliver it
/// (a later attempt may succeed), `DATA_LOSS` when its content did not match its digest,
/// `INTERNAL` for local failures.
pub(crate) fn failure_status(kind: FailureKind, message: String) -> Status {
    match kind {
        FailureKind::Unavailable => Status::unavailable(message),
        FailureKind::DigestMismatch => Status::data_loss(message),
        FailureKind::Internal => Status::internal(message),
    }
}

/// The status of a download that failed.
pub(crate) fn download_status(e: &DownloadError) -> Status {
    match e {
        DownloadError::Store(e) => store_status(e),
        e => failure_status(e.kind(), e.to_string()),
    }
}

/// The status of a store error met while serving a task: `ABORTED` when the task was removed
/// meanwhile, `OUT_OF_RANGE` for a range past its end, else by [`StoreError::kind`].
pub(crate) fn store_status(e: &StoreError) -> Status {
    match e {
        StoreError::TaskRemoved { .. } => Status::aborted(e.to_string()),
        StoreError::OutOfRange { .. } => Status::out_of_range(e.to_string()),
        e => failure_status(e.kind(), e.to_string()),
    }
}
