//! The errors of the session transport and of the services carried over it.

use kiln_proto::ErrorKind;

use crate::fsutil::FsutilError;

/// The result of the session's transport and service helpers.
pub type Result<T, E = SessionError> = std::result::Result<T, E>;

/// Errors of the session transport, FileSync and FileSend.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The daemon could not open its HTTP/2 connection over the session.
    #[error("connecting over the session failed")]
    Connect {
        #[source]
        source: tonic::transport::Error,
    },
    /// The client's HTTP/2 server on the session failed.
    #[error("serving the session failed")]
    Serve {
        #[source]
        source: hyper::Error,
    },
    /// A call over the session answered with an error status. Its
    /// message is the client's own account of the cause (e.g. a bad ignore
    /// pattern), so it is printed.
    #[error("session call {method} failed: {}", status.message())]
    Call {
        method: &'static str,
        status: tonic::Status,
    },
    /// A metadata key or value cannot be sent as a gRPC header.
    #[error("invalid session metadata {key:?}")]
    Metadata { key: String },
    /// An fsutil transfer over the session failed.
    #[error("transfer of {name:?} failed")]
    Transfer {
        name: String,
        #[source]
        source: FsutilError,
    },
    /// A blob read from a client's content store is not what was asked.
    #[error("content {digest} from the session: {reason}")]
    Content { digest: String, reason: String },
    /// Reading the exporter output to send failed.
    #[error("reading exporter output failed")]
    Read {
        #[source]
        source: std::io::Error,
    },
}

impl SessionError {
    /// The errdefs kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SessionError::Connect { .. } | SessionError::Serve { .. } => ErrorKind::Unavailable,
            SessionError::Call { status, .. } => ErrorKind::from_code(status.code()),
            SessionError::Metadata { .. } => ErrorKind::InvalidArgument,
            SessionError::Transfer { source, .. } => source.kind(),
            SessionError::Read { .. } => ErrorKind::Internal,
            SessionError::Content { .. } => ErrorKind::InvalidArgument,
        }
    }
}
