//! What the scheduler keeps in memory: hosts, tasks (each with its DAG of peers) and peers.

mod host;
mod peer;
mod task;

pub use host::{Host, HostInfo, HostLoad, HostType, UploadReservation};
pub use peer::{Peer, PieceCosts, PieceSet, Priority, MAX_PIECE_NUMBER};
pub use task::{SizeScope, Task, TaskInfo, TINY_FILE_SIZE};

use std::fmt;
use std::sync::Arc;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps an identifier string.
            pub fn new(id: impl Into<Arc<str>>) -> Self {
                $name(id.into())
            }

            /// The identifier as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(Arc::from(s))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(Arc::from(s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

id_type!(
    /// Host ID, `{ip}-{hostname}` with `-seed` appended for seed peers.
    HostId
);
id_type!(
    /// Task ID: 64 hex characters (reference 1.4), kept as given.
    TaskId
);
id_type!(
    /// Peer ID, `{ip}-{hostname}-{uuid}` with `-seed` appended for seed peers.
    PeerId
);
