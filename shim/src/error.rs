//! The crate's error type.

use crate::user::UserError;
use kiln_snapshot::SnapshotError;
use kiln_types::ErrorKind;
use std::path::PathBuf;
use std::time::Duration;

/// Errors of running a step. A non-zero exit is not one of them.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The step's `USER` could not be resolved in its rootfs.
    #[error("step {id}: cannot resolve user {user:?}")]
    User {
        id: String,
        user: String,
        #[source]
        source: UserError,
    },
    /// The step itself is malformed (no args, relative cwd or mount point).
    #[error("step {id}: invalid step: {reason}")]
    InvalidStep { id: String, reason: &'static str },
    /// A containerd call failed; the error names the call, the container
    /// id and, for a dead daemon, the socket.
    #[error(transparent)]
    Containerd(#[from] SnapshotError),
    /// A local file operation failed.
    #[error("step {id}: cannot {op} {path}")]
    Io {
        id: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The step's network could not be set up.
    #[error("step {id}: cannot set up its network")]
    Network {
        id: String,
        #[source]
        source: Box<crate::network::NetworkError>,
    },
    /// The runtime spec could not be encoded.
    #[error("step {id}: cannot encode the runtime spec")]
    Spec {
        id: String,
        #[source]
        source: serde_json::Error,
    },
    /// The step was cancelled; its processes were killed.
    #[error("step {id} was cancelled")]
    Cancelled { id: String },
    /// The step ran longer than its timeout; its processes were killed.
    #[error("step {id} timed out after {timeout:?}")]
    Timeout { id: String, timeout: Duration },
    /// The step's processes did not exit within the grace period after
    /// SIGKILL.
    #[error("step {id}: failed to kill process on cancel")]
    KillTimeout { id: String },
}

impl ExecError {
    /// The errdefs kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ExecError::User { .. } | ExecError::InvalidStep { .. } => ErrorKind::InvalidArgument,
            ExecError::Containerd(e) => e.kind(),
            ExecError::Io { .. }
            | ExecError::Spec { .. }
            | ExecError::KillTimeout { .. }
            | ExecError::Network { .. } => ErrorKind::Internal,
            ExecError::Cancelled { .. } => ErrorKind::Cancelled,
            ExecError::Timeout { .. } => ErrorKind::DeadlineExceeded,
        }
    }
}

pub type Result<T, E = ExecError> = std::result::Result<T, E>;
