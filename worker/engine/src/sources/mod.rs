//! Remote sources fetched by the engine: HTTP(S) files ([`http`]) and git
//! checkouts ([`git`]). These modules only fetch into a directory; the
//! source op (`ops::remote`) puts that directory into a containerd
//! snapshot and keeps it as a cache record keyed by what was fetched (the
//! commit, the content digest), so a second build of the same commit or
//! file fetches nothing.

pub mod epoch;
pub mod git;
pub mod http;
pub mod limits;

/// Why a remote source could not be fetched: the message BuildKit gives
/// where it has one. The op adds the Dockerfile line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceFailure(pub String);
