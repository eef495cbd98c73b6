//! Error kinds, after containerd's `errdefs`.

/// The error kinds of containerd's `errdefs`, which kiln's library errors
/// expose through a `kind()` method. Policy matches on kinds, never on
/// message strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    Cancelled,
    DeadlineExceeded,
    Unimplemented,
    Internal,
}

#[cfg(feature = "tonic")]
impl ErrorKind {
    /// The kind of a gRPC status received from containerd or a client.
    pub fn from_code(code: tonic::Code) -> Self {
        use tonic::Code;
        match code {
            Code::NotFound => ErrorKind::NotFound,
            Code::AlreadyExists => ErrorKind::AlreadyExists,
            Code::FailedPrecondition => ErrorKind::FailedPrecondition,
            Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidArgument,
            Code::Unavailable => ErrorKind::Unavailable,
            Code::Cancelled => ErrorKind::Cancelled,
            Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            Code::Unimplemented => ErrorKind::Unimplemented,
            _ => ErrorKind::Internal,
        }
    }

    /// The gRPC code the daemon answers for this kind.
    pub fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::Cancelled => Code::Cancelled,
            ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorKind::Unimplemented => Code::Unimplemented,
            ErrorKind::Internal => Code::Internal,
        }
    }
}

#[cfg(all(test, feature = "tonic"))]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_codes() {
        for k in [
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::FailedPrecondition,
            ErrorKind::InvalidArgument,
            ErrorKind::Unavailable,
            ErrorKind::Cancelled,
            ErrorKind::DeadlineExceeded,
            ErrorKind::Unimplemented,
            ErrorKind::Internal,
        ] {
            assert_eq!(ErrorKind::from_code(k.code()), k);
        }
        assert_eq!(
            ErrorKind::from_code(tonic::Code::Unknown),
            ErrorKind::Internal
        );
        assert_eq!(
            ErrorKind::from_code(tonic::Code::OutOfRange),
            ErrorKind::InvalidArgument
        );
    }
}
