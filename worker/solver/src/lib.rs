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
pub mod graph;
pub mod scheduler;

pub use graph::*;
/// Digests live in the leaf crate `kiln-types`, shared with snapshot and
/// shim; re-exported so `kiln_solver::{digest, Digest}` keep working.
pub use kiln_types::{digest, Digest};

/// Errors of the solver.
#[derive(Debug, thiserror::Error)]
pub enum SolveError {
    /// An edge points at a vertex that does not exist or comes later.
    #[error("vertex {vertex} has an input {input} that is not an earlier vertex")]
    BadInput { vertex: usize, input: usize },
    /// A graph with no vertices cannot be solved.
    #[error("build graph is empty")]
    Empty,
    /// The op runner failed a vertex; the runner's error is the cause.
    #[error("{name}")]
    Op {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The build was cancelled.
    #[error("build cancelled")]
    Cancelled,
}

pub type Result<T, E = SolveError> = std::result::Result<T, E>;
