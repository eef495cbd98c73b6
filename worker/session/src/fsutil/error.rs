//! The errors of an fsutil transfer.

use std::path::PathBuf;

use kiln_proto::ErrorKind;

/// Errors of an fsutil DiffCopy transfer, on either side.
#[derive(Debug, thiserror::Error)]
pub enum FsutilError {
    /// A path is absolute, unclean, escapes the root or is empty.
    #[error("invalid path {path:?}")]
    InvalidPath { path: PathBuf },
    /// An entry does not come after the one before it in walk order (or
    /// repeats it).
    #[error("changes out of order: {path:?} after {previous:?}")]
    OutOfOrder { path: PathBuf, previous: PathBuf },
    /// An entry's parent is not a directory sent earlier in this transfer.
    #[error("parent of {path:?} is not a directory of this transfer")]
    ParentNotDirectory { path: PathBuf },
    /// A hard link does not name an earlier regular file of this transfer.
    #[error("invalid hard link {path:?} to {target:?}")]
    InvalidLink { path: PathBuf, target: PathBuf },
    /// A transfer past one of the receiver's limits (the receiver's
    /// `MAX_*`): too many entries, too long a path or symlink target, more
    /// content than declared or than a context may hold.
    #[error("{path:?}: {what} exceeds the limit of {limit}")]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        limit: u64,
    },
    /// A symlink without a target.
    #[error("symlink {path:?} has no target")]
    EmptySymlink { path: PathBuf },
    /// An entry whose type cannot be created (socket, irregular file).
    #[error("unsupported file type {mode:#x} for {path:?}")]
    UnsupportedType { path: PathBuf, mode: u32 },
    /// The receiver asked for an ID that is not a pending regular file.
    #[error("invalid file request {id}")]
    InvalidRequest { id: u32 },
    /// DATA for an ID that was not requested or is already complete.
    #[error("data for file {id} that was not requested")]
    UnexpectedData { id: u32 },
    /// A packet that makes no sense at this point of the protocol.
    #[error("unexpected {packet} packet")]
    UnexpectedPacket { packet: &'static str },
    /// A packet type outside the protocol.
    #[error("invalid packet type {value}")]
    InvalidPacketType { value: i32 },
    /// The sender reported an error.
    #[error("error from sender: {message}")]
    FromSender { message: String },
    /// The receiver reported an error.
    #[error("error from receiver: {message}")]
    FromReceiver { message: String },
    /// The peer's stream ended before the transfer was complete.
    #[error("stream ended before the transfer was complete")]
    UnexpectedEof,
    /// The peer stopped reading this side's packets.
    #[error("the peer closed the transfer")]
    Closed,
    /// The transport reported an error status.
    #[error("transfer stream failed")]
    Transport {
        #[source]
        status: tonic::Status,
    },
    /// A file system call failed.
    #[error("{op} {path:?} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The sender sent an extended attribute whose name is not UTF-8
    /// (Go's fsutil sends any bytes; the wire's map keys are strings, so
    /// the packet does not decode).
    #[error("an extended attribute name the client sent is not UTF-8: receiving it is not supported yet")]
    NonUtf8XattrReceived,
    /// An include or exclude pattern does not compile.
    #[error("invalid pattern")]
    Pattern {
        #[source]
        source: kiln_context::ignore::IgnoreError,
    },
    /// A background task of the transfer panicked or was cancelled.
    #[error("transfer task failed")]
    Task {
        #[source]
        source: tokio::task::JoinError,
    },
}

impl FsutilError {
    /// The errdefs kind of this error.
    pub fn kind(&self) -> ErrorKind {
        use FsutilError::*;
        match self {
            InvalidPath { .. }
            | OutOfOrder { .. }
            | ParentNotDirectory { .. }
            | InvalidLink { .. }
            | EmptySymlink { .. }
            | UnsupportedType { .. }
            | TooLarge { .. }
            | InvalidRequest { .. }
            | UnexpectedData { .. }
            | UnexpectedPacket { .. }
            | InvalidPacketType { .. }
            | Pattern { .. } => ErrorKind::InvalidArgument,
            NonUtf8XattrReceived => ErrorKind::Unimplemented,
            FromSender { .. } | FromReceiver { .. } | Task { .. } => ErrorKind::Internal,
            UnexpectedEof | Closed => ErrorKind::Unavailable,
            Transport { status } => ErrorKind::from_code(status.code()),
            Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
                std::io::ErrorKind::PermissionDenied => ErrorKind::FailedPrecondition,
                _ => ErrorKind::Internal,
            },
        }
    }

    /// The message sent to the peer in an ERR packet: the error and its
    /// causes, as Go's wrapped errors print.
    pub(crate) fn wire_message(&self) -> String {
        let mut msg = self.to_string();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(self);
        while let Some(e) = cur {
            msg.push_str(": ");
            msg.push_str(&e.to_string());
            cur = e.source();
        }
        msg
    }
}
