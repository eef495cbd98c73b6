//! The one error type of the crate.

use kiln_types::ErrorKind;
use std::path::PathBuf;

/// Errors of the registry client. Every message names the registry host
/// (or the config file) and, where the user can fix it, how.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `kilnd.toml` (or the text given as its content) has a bad
    /// `[registry]` table; `message` names the key and the line.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// A file named by `[registry."HOST"]` (`ca`, `keypair`) cannot be used.
    #[error("{}: {what} of [registry.\"{host}\"]: {message}", path.display())]
    TlsFile {
        host: String,
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    /// The registry (or its token server) answered 401 to an authorized
    /// request.
    #[error("{host}: 401 Unauthorized ({})", if *credentials_sent { "credentials were sent and refused" } else { "no credentials were sent: log in to this registry first" })]
    Unauthorized {
        host: String,
        credentials_sent: bool,
    },
    /// The registry answered 403.
    #[error("{host}: 403 Forbidden: {message}")]
    Denied { host: String, message: String },
    /// The credentials could not be read (config file, helper).
    #[error("{host}: reading credentials: {message}")]
    Credentials { host: String, message: String },
    /// No manifest by that tag or digest.
    #[error("{reference}: not found")]
    ManifestUnknown { reference: String },
    /// No blob by that digest in the repository.
    #[error("{host}: blob {digest} not found in {repository}")]
    BlobUnknown {
        host: String,
        repository: String,
        digest: String,
    },
    /// Content whose digest is not the one asked for (or announced).
    #[error("{host}: digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        host: String,
        what: String,
        expected: String,
        actual: String,
    },
    /// A digest this client cannot compute or that does not parse.
    #[error("unsupported digest {digest:?} (sha256 and sha512 are supported)")]
    UnsupportedDigest { digest: String },
    /// The server's certificate does not chain to a trusted root.
    #[error(
        "{host}: TLS certificate signed by an unknown authority ({detail}); to trust it, set \
         `ca = [\"/path/ca.pem\"]` under [registry.\"{host}\"] in kilnd.toml (or `insecure = true` \
         to skip verification)"
    )]
    UnknownCa { host: String, detail: String },
    /// Any other TLS failure (handshake, client certificate, name).
    #[error("{host}: TLS: {detail}")]
    Tls { host: String, detail: String },
    /// No answer within the connect or read timeout.
    #[error(
        "{host}: no answer within {secs}s while {what} (the registry is slow or unreachable; \
         KILN_REGISTRY_TIMEOUT=<seconds> changes the limit)"
    )]
    Timeout {
        host: String,
        what: String,
        secs: u64,
    },
    /// The connection failed or broke.
    #[error("{host}: {what}: {detail}")]
    Transport {
        host: String,
        what: String,
        detail: String,
    },
    /// An answer the protocol does not allow here, or an error status.
    #[error("{host}: {what}: {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Status {
        host: String,
        what: String,
        status: u16,
        message: String,
    },
    /// A body longer than this client accepts for its kind (manifests,
    /// tokens).
    #[error("{host}: {what} is larger than {limit} bytes")]
    TooLarge {
        host: String,
        what: String,
        limit: u64,
    },
    /// A pushed blob's body does not have the size announced.
    #[error("blob {digest}: body has {actual} bytes, {expected} announced")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    /// Reading a pushed blob's body failed.
    #[error("blob {digest}: reading the body to push")]
    Body {
        digest: String,
        #[source]
        source: std::io::Error,
    },
}

/// The result type of the crate.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl RegistryError {
    /// The errdefs kind, for policy (retry, exit codes, gRPC status).
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::Config { .. }
            | RegistryError::TlsFile { .. }
            | RegistryError::UnsupportedDigest { .. }
            | RegistryError::SizeMismatch { .. } => ErrorKind::InvalidArgument,
            RegistryError::Unauthorized { .. }
            | RegistryError::Denied { .. }
            | RegistryError::Credentials { .. }
            | RegistryError::UnknownCa { .. }
            | RegistryError::Tls { .. }
            | RegistryError::DigestMismatch { .. } => ErrorKind::FailedPrecondition,
            RegistryError::ManifestUnknown { .. } | RegistryError::BlobUnknown { .. } => {
                ErrorKind::NotFound
            }
            RegistryError::Timeout { .. } => ErrorKind::DeadlineExceeded,
            RegistryError::Transport { .. } => ErrorKind::Unavailable,
            RegistryError::Status { status, .. } => match status {
                404 => ErrorKind::NotFound,
                408 | 429 | 500..=599 => ErrorKind::Unavailable,
                400 | 405 | 413 | 416 => ErrorKind::InvalidArgument,
                409 => ErrorKind::AlreadyExists,
                _ => ErrorKind::Internal,
            },
            RegistryError::TooLarge { .. } => ErrorKind::InvalidArgument,
            RegistryError::Body { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                std::io::ErrorKind::Interrupted => ErrorKind::Cancelled,
                _ => ErrorKind::Internal,
            },
        }
    }

    /// Whether trying again (possibly resuming) may succeed: a broken or
    /// slow connection, or a registry that is busy or failing.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Unavailable | ErrorKind::DeadlineExceeded
        )
    }
}
