//! containerd storage as kiln sees it: the content store, snapshotters,
//! leases and the image store, plus host mounting and layer diffs.
//!
//! The services kiln uses are small traits in [`services`] (`Snapshots`,
//! `Content`, `Leases`, `Images`, `Applier`), so the engine holds
//! `Arc<dyn …>` and can run on the in-memory fakes of [`testing`].
//! containerd's implementation is [`containerd::Containerd`], which adds
//! the namespace and lease headers and maps `tonic::Status` to
//! [`SnapshotError`]. Layer tars are written only here ([`diff`]).
//!
//! Architecture invariant: this crate knows nothing about build steps, the
//! solver's graph or cache keys. It never deletes content or snapshots that
//! a lease may still need; it deletes leases and lets containerd's GC work.

pub mod containerd;
pub mod diff;
pub mod error;
pub mod layer;
pub mod mount;
pub mod origin;
pub mod services;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
/// RFC 3339 formatting lives in `kiln_types`, shared with the frontend.
pub use kiln_types::time;

pub use containerd::Containerd;
pub use error::{Result, SnapshotError};
pub use kiln_types::Digest;
pub use kiln_types::ErrorKind;
