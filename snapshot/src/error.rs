//! The crate's error type.

use kiln_types::ErrorKind;

/// Errors of containerd access, mounting and diffing.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// containerd's socket could not be reached.
    #[error("cannot connect to containerd at {address}: {reason} (is containerd running? set --containerd-address or CONTAINERD_ADDRESS)")]
    Connect { address: String, reason: String },
    /// A containerd RPC failed.
    #[error("containerd {method} {object}: {message}")]
    Rpc {
        method: &'static str,
        /// The object the call was about (digest, snapshot key, image name).
        object: String,
        kind: ErrorKind,
        message: String,
    },
    /// containerd went away during a call (it stopped or restarted, or its
    /// socket vanished); what was in flight is lost.
    #[error("containerd connection lost (restarted?): {method} on {address}: {message}")]
    Unavailable {
        address: String,
        method: &'static str,
        message: String,
    },
    /// A blob's bytes are not what its descriptor says.
    #[error("blob {digest} is invalid: {reason}")]
    InvalidBlob { digest: String, reason: String },
    /// Computing a layer diff failed.
    #[error(transparent)]
    Diff(#[from] crate::diff::DiffError),
    /// Mounting a snapshot on the host failed.
    #[error(transparent)]
    Mount(#[from] crate::mount::MountError),
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl SnapshotError {
    /// The errdefs kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SnapshotError::Connect { .. } | SnapshotError::Unavailable { .. } => {
                ErrorKind::Unavailable
            }
            SnapshotError::Rpc { kind, .. } => *kind,
            SnapshotError::InvalidBlob { .. } => ErrorKind::InvalidArgument,
            SnapshotError::Io { .. } | SnapshotError::Diff(_) | SnapshotError::Mount(_) => {
                ErrorKind::Internal
            }
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    pub fn is_already_exists(&self) -> bool {
        self.kind() == ErrorKind::AlreadyExists
    }
}

pub type Result<T, E = SnapshotError> = std::result::Result<T, E>;
