//! The engine's error type.

use kiln_proto::ErrorKind;

/// Errors of a build.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// containerd access, mounting or diffing failed.
    #[error(transparent)]
    Snapshot(#[from] kiln_snapshot::SnapshotError),
    /// Running a step's container failed (not a non-zero exit). The
    /// whole cause chain is printed, so it is not exposed as a source.
    #[error("{location}{}", error_chain(.error))]
    Exec {
        location: String,
        error: kiln_shim::ExecError,
    },
    /// containerd access, mounting or writing the layer failed while a
    /// step ran (e.g. no space left while its layer was written): the
    /// step's Dockerfile line comes first.
    #[error("{location}{}", error_chain(.error))]
    AtStep {
        location: String,
        error: kiln_snapshot::SnapshotError,
    },
    /// A base image is not in the namespace's image store.
    #[error("image \"{image}\" not found in containerd namespace \"{namespace}\"")]
    ImageNotFound { image: String, namespace: String },
    /// A push to a registry failed; the registry's error names the host
    /// and what to fix.
    /// (Boxed, like `Registry`'s: a registry error is large and would make
    /// every engine result that big.)
    #[error("cannot push {name}: {error}")]
    Push {
        name: String,
        error: Box<kiln_registry::RegistryError>,
    },
    /// The registry refused or failed a pull (its message names the
    /// registry and what to fix).
    #[error("cannot pull {image}: {error}")]
    Registry {
        image: String,
        error: Box<kiln_registry::RegistryError>,
    },
    /// The registry has no manifest by the reference's tag or digest.
    #[error("cannot pull {image}: {registry} has no manifest {object} (manifest unknown)")]
    ManifestUnknown {
        image: String,
        registry: String,
        object: String,
    },
    /// What a registry sent cannot be used (a digest mismatch, no manifest
    /// for the host platform, a body that never completed).
    #[error("cannot pull {image}: {reason}")]
    Pull { image: String, reason: String },
    /// An image's manifest or config cannot be used.
    #[error("image {image} is invalid: {reason}")]
    InvalidImage { image: String, reason: String },
    /// An OCI layout (`oci-layout://` named context) that cannot be read.
    #[error("oci-layout {layout}: {reason}")]
    OciLayout { layout: String, reason: String },
    /// A RUN step exited non-zero.
    #[error(
        "{location}process {} did not complete successfully: exit code: {code}",
        go_quote(command)
    )]
    StepFailed {
        /// `Dockerfile:12: ` or empty.
        location: String,
        command: String,
        code: u32,
    },
    /// A RUN step's process could not start (its `USER` is not in the
    /// rootfs, the runtime could not create it): BuildKit's text, the
    /// process did not complete and why.
    #[error(
        "{location}process {} did not complete successfully: {reason}",
        go_quote(command)
    )]
    StepNotStarted {
        location: String,
        command: String,
        reason: String,
    },
    /// A step is for a platform this machine cannot run: no CPU or
    /// binfmt_misc emulator for it (`reason` says which and what to do).
    #[error(
        "{location}cannot run a step for platform {platform} on this {host} machine: {reason}"
    )]
    NoEmulation {
        location: String,
        platform: String,
        host: String,
        reason: String,
    },
    /// A COPY/ADD/WORKDIR file action failed.
    #[error("{location}{message}")]
    FileOp { location: String, message: String },
    /// A remote source (an HTTP file, a git repository) cannot be
    /// fetched or is not what the build asked for (checksum mismatch).
    #[error("{location}{message}")]
    Source { location: String, message: String },
    /// The graph uses something this engine does not run yet.
    #[error("{location}{what} is not supported yet")]
    Unsupported { location: String, what: String },
    /// A graph input has the wrong kind (e.g. a local dir as a rootfs).
    #[error("{location}invalid input: {reason}")]
    BadInput { location: String, reason: String },
    /// A source path of a copy or bind mount is not in its input, worded
    /// as BuildKit's checksum of that input for the cache key fails.
    #[error("{location}failed to compute cache key: failed to calculate checksum of ref {reference}: \"{path}\": not found")]
    SourceNotFound {
        location: String,
        /// The input: its top snapshot, or the local source's directory.
        reference: String,
        path: String,
    },
    /// A copy source path is not in an input BuildKit does not checksum
    /// (scratch, or the tree the copy writes to): its copy's lstat fails.
    #[error("{location}lstat {path}: no such file or directory")]
    SourceMissing { location: String, path: String },
    /// A secret the step needs is missing or unreadable.
    #[error("{location}{source}")]
    Secret {
        location: String,
        #[source]
        source: crate::secrets::SecretError,
    },
    /// An SSH agent the step needs is not forwarded or not reachable.
    #[error("{location}{source}")]
    Ssh {
        location: String,
        #[source]
        source: crate::ssh::SshError,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The process's step log limits are set to something unreadable.
    #[error("{location}{source}")]
    LogLimit {
        location: String,
        #[source]
        source: crate::steplog::InvalidLimit,
    },
    /// The build was cancelled.
    #[error("build cancelled")]
    Cancelled,
    /// A step's error shared with the equal steps (in this or another
    /// build) that waited for its one run; it is that error in every way.
    #[error(transparent)]
    Shared(std::sync::Arc<WorkerError>),
    /// Cache export or import failed.
    #[error(transparent)]
    RemoteCache(#[from] crate::remotecache::CacheError),
    /// A layer's blob cannot be made on demand: its snapshot is gone, or
    /// the blob made from it has another diffID than the one recorded.
    #[error("layer {diff_id}: cannot make its blob: {reason}")]
    LayerBlob { diff_id: String, reason: String },
    /// An exporter's annotation options name a bad type or platform, or
    /// one the image has no place for.
    #[error(transparent)]
    Annotation(#[from] crate::annotations::AnnotationError),
    /// The task solving a step panicked: a bug in kiln.
    #[error("{step}: internal error: the step panicked: {message}")]
    Panicked { step: String, message: String },
}

impl WorkerError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            WorkerError::Snapshot(e) | WorkerError::AtStep { error: e, .. } => e.kind(),
            WorkerError::Exec { error, .. } => error.kind(),
            WorkerError::Push { error, .. } => error.kind(),
            WorkerError::ImageNotFound { .. }
            | WorkerError::ManifestUnknown { .. }
            | WorkerError::SourceNotFound { .. }
            | WorkerError::SourceMissing { .. } => ErrorKind::NotFound,
            WorkerError::Registry { error, .. } => error.kind(),
            WorkerError::Pull { .. } | WorkerError::LayerBlob { .. } => {
                ErrorKind::FailedPrecondition
            }
            WorkerError::InvalidImage { .. }
            | WorkerError::OciLayout { .. }
            | WorkerError::BadInput { .. }
            | WorkerError::Annotation(_)
            | WorkerError::LogLimit { .. } => ErrorKind::InvalidArgument,
            WorkerError::StepFailed { .. }
            | WorkerError::StepNotStarted { .. }
            | WorkerError::NoEmulation { .. }
            | WorkerError::FileOp { .. }
            | WorkerError::Secret { .. }
            | WorkerError::Source { .. }
            | WorkerError::Ssh { .. } => ErrorKind::FailedPrecondition,
            WorkerError::Unsupported { .. } => ErrorKind::Unimplemented,
            WorkerError::Io { .. } | WorkerError::Panicked { .. } => ErrorKind::Internal,
            WorkerError::Cancelled => ErrorKind::Cancelled,
            WorkerError::Shared(e) => e.kind(),
            WorkerError::RemoteCache(e) => e.kind(),
        }
    }
}

pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

pub use kiln_snapshot::containerd::error_chain;

/// `s` quoted as Go's `%q` (what BuildKit's step errors use): `"`, `\\` and
/// control characters escaped, a single quote not.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '\'' {
            out.push(c);
        } else {
            out.extend(c.escape_debug());
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod quote_tests {
    #[test]
    fn go_quote_escapes_as_percent_q() {
        assert_eq!(
            super::go_quote("sh -c set -e\nfalse\t'x' \"y\""),
            r#""sh -c set -e\nfalse\t'x' \"y\"""#
        );
    }
}
