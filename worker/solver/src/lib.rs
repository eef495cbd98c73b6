//! The build graph, its cache keys and the scheduler that walks it.
//!
//! The graph is shaped like BuildKit's LLB (source / exec / file / merge ops,
//! inputs addressed by vertex and output index) so that the Dockerfile
//! frontend and, later, LLB received from `buildctl` share one format.
//!
//! Architecture invariant: this crate does no IO and names no containerd
//! type. Ops are executed through the [`scheduler::OpRunner`] trait that the
//! engine implements; with a fake runner the solver is deterministic.

pub mod cache;
pub mod chmod;
pub mod graph;
pub mod platform;
pub mod scheduler;
pub mod source;

pub use graph::*;
/// Digests live in the leaf crate `kiln-types`, shared with snapshot and
/// shim; re-exported so `kiln_solver::{digest, Digest}` keep working.
pub use kiln_types::{digest, Digest};
pub use platform::{Platform, PlatformError};

/// Errors of the solver.
#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    /// An edge points at a vertex that does not exist or comes later.
    #[error("vertex {vertex} has an input {input} that is not an earlier vertex")]
    BadInput { vertex: usize, input: usize },
    /// A graph with no vertices cannot be solved.
    #[error("build graph is empty")]
    Empty,
    /// The op runner failed a vertex. The cause is always a
    /// [`SharedError`] of the runner's error type: the vertex's own run, or
    /// the run of an equal vertex it waited for, hold the same error, so
    /// both report the same kind of failure.
    #[error("{name}")]
    Op {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The task solving a vertex panicked: a bug in kiln, not a failure of
    /// the build's own steps.
    #[error("{name}: the step panicked: {message}")]
    Panicked { name: String, message: String },
    /// The build was cancelled.
    #[error("build cancelled")]
    Cancelled,
}

pub type Result<T, E = SolveError> = std::result::Result<T, E>;

/// An op runner's error, shared by every vertex that waited for the one run
/// that failed. It prints as the error itself and has its causes; the
/// runner's caller gets its error type back with [`SharedError::into_inner`]
/// or by reference through [`std::ops::Deref`].
#[derive(Debug)]
pub struct SharedError<E>(pub std::sync::Arc<E>);

impl<E> SharedError<E> {
    /// The error itself when nothing else holds it, else the shared one.
    pub fn into_inner(self) -> std::result::Result<E, std::sync::Arc<E>> {
        std::sync::Arc::try_unwrap(self.0)
    }
}

impl<E> std::ops::Deref for SharedError<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.0
    }
}

impl<E: std::fmt::Display> std::fmt::Display for SharedError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error> std::error::Error for SharedError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
