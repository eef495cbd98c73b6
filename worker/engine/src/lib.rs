//! kiln's build engine: the ops of the build graph run over containerd.
//!
//! It owns one lease per build, base-image resolution and unpacking, the
//! exec/file/source ops (`ops`), the image exporter and pushing its result
//! to registries (`push`). It drives the
//! solver's scheduler with its `StepRunner`, runs steps through the shim's
//! executor and writes layers through the snapshot crate.
//!
//! Architecture invariant: the engine does not speak the daemon's gRPC,
//! does not build OCI runtime specs (the shim does) and does not write
//! layer tars (the snapshot crate does).

pub mod annotations;
pub mod archive;
pub mod base;
pub mod blobs;
pub mod build;
pub mod cache;
pub mod claim;
pub mod entitlements;
pub mod epoch;
pub mod error;
pub mod export;
pub mod exporter_options;
pub mod fileop;
pub mod import;
pub mod inuse;
pub mod layout;
pub mod lease;
pub mod oci;
pub mod ops;
pub mod progress;
pub mod prune;
pub mod pull;
pub mod push;
pub mod refs;
pub mod remotecache;
pub mod resolve;
pub mod runtime;
pub mod secrets;
pub mod services;
pub mod shared;
pub mod sources;
pub mod ssh;
pub mod steplog;
pub mod sweep;
pub mod uploads;

/// The build context's rules live in `kiln-context` (shared with the
/// session); re-exported so `kiln_engine::{contenthash, ignore}` keep working.
pub use kiln_context::{contenthash, ignore};
/// Step networks (modes, the CNI network) live in the shim, which runs
/// steps; re-exported so the binaries configure them without depending on
/// the shim.
pub use kiln_shim::network;
/// A process's stdio ([`build::Solved::run_process`]).
pub use kiln_shim::{ExitStatus, OutputStream, Stdin, StepIo, OUTPUT_QUEUE};

pub use build::{BuildRequest, BuildResult, Engine};

/// kiln's version, from this one place: what kilnd reports as the worker's
/// BuildKit version (ListWorkers, Info, `buildx inspect`) and what both
/// `kiln --version` and `kilnd --version` print. Semver-like, as buildx
/// shows it.
pub const VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"), "-kiln");

/// The line `kiln --version`, `kiln version` and `kilnd --version` print
/// after the binary's name: [`VERSION`] and the git commit the binary was
/// built from (each binary's build script finds it; empty outside a git
/// checkout), as buildx and buildkitd print theirs.
pub fn version_line(commit: &str) -> String {
    if commit.is_empty() {
        VERSION.to_string()
    } else {
        format!("{VERSION} {commit}")
    }
}
pub use error::{Result, WorkerError};
pub use progress::{LogStream, Progress, ProgressEvent};
pub use services::Services;

#[cfg(test)]
mod tests;
