//! kiln's session transport and the fsutil file-transfer protocol, shared by
//! kilnd (the daemon) and the kiln client.
//!
//! A BuildKit session is a raw byte stream tunnelled through the
//! `Control.Session` RPC, inside which the *client* serves HTTP/2 + gRPC and
//! the *daemon* is the gRPC client (buildkit-protocol.md §4). This crate owns
//! both ends of that arrangement and the services carried over it:
//!
//! - [`hijack`]: the byte stream over `BytesMessage` chunks, the daemon's
//!   gRPC channel over it and the client's HTTP/2 server on it;
//! - [`fsutil`]: the DiffCopy packet protocol (§5), sender and receiver,
//!   independent of any transport;
//! - [`filesync`]: the build-context pull (`FileSync.DiffCopy`, §4.1);
//! - [`filesend`]: exporter output pushed to the client (`FileSend.DiffCopy`,
//!   §6), as raw bytes (tar, oci, docker) or as fsutil packets (local);
//! - [`content`]: the content stores a client attaches (an OCI layout for
//!   an `oci-layout://` named context), read with containerd's content
//!   service as BuildKit carries it;
//! - [`auth`]: registry credentials the client lends per request
//!   (`Auth.Credentials`), served from whatever store the client has;
//! - [`ssh`]: the client's SSH agents (`SSH.CheckAgent`/`ForwardAgent`),
//!   forwarded read-only for ssh mounts;
//! - [`upload`]: bytes the client serves once for an
//!   `http://buildkit-session/<id>` URL (a tar context on stdin);
//! - [`policy`]: the client's build policy (`PolicyVerifier.CheckPolicy`),
//!   asked about each source before a build runs.
//!
//! The crate is shaped around the two roles rather than the two binaries:
//! each module offers the daemon half and the client half side by side so
//! that one in-crate test can run both against each other.
//!
//! Architecture invariant: this crate moves bytes and files; it must not know
//! about builds, the solver, snapshots or containerd (it carries containerd's
//! content *protocol* for a client's stores, never a containerd of its own). It takes the
//! `.dockerignore` matcher from `kiln-context` (`kiln_context::ignore`), the
//! crate the engine's copies use too, so that the context a client sends is
//! filtered exactly as the engine filters copies.

pub mod auth;
pub mod content;
pub mod filesend;
pub mod filesync;
pub mod fsutil;
pub mod hijack;
pub mod policy;
pub mod secrets;
pub mod ssh;
pub mod upload;

mod codec;
mod error;
mod metadata;
mod respond;

pub use error::{Result, SessionError};
pub use fsutil::FsutilError;

#[cfg(test)]
mod tests;
