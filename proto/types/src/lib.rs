//! The few types every kiln layer shares: [`Digest`], the identity of ops,
//! blobs and cache keys, [`ErrorKind`], the errdefs kind every library
//! error exposes, and [`reference`](mod@reference), docker's image-name rule and the
//! parsed [`Reference`] (shared by the Dockerfile frontend, the exporters
//! and the registry client), and [`process`]: the extra hosts and
//! resource limits of a step's process.
//!
//! This is a leaf crate so that `snapshot` and `shim` can name a digest or
//! an error kind without depending on the solver or on the generated
//! protobuf code of `kiln-proto`. The gRPC code mapping of [`ErrorKind`]
//! lives here too, behind the `tonic` feature, so there is one mapping for
//! the containerd proxies and the daemon alike.
//!
//! Architecture invariant: this crate knows no kiln crate, does no IO and
//! holds no policy; it only names things. The one exception is
//! `testing` (behind the `testing` feature, for dev-dependencies): the
//! single rule for tests that need root, which every crate's tests share.

pub mod digest;
mod kind;
pub mod process;
pub mod reference;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod time;

pub use digest::Digest;
pub use kind::ErrorKind;
pub use reference::Reference;
