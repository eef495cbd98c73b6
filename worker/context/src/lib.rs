//! The build context on disk: the rules that decide which files of a
//! directory a `COPY` sees, and the content digest of that selection.
//!
//! Both the engine (which copies from mounted snapshots and hashes the
//! local context for cache keys) and the session (which sends the context
//! from the client) need these rules, and each rule decides what a user
//! sees, so each has exactly one implementation, here:
//! - [`ignore`]: `.dockerignore` patterns ([`parse_dockerignore`],
//!   [`PatternMatcher`]) and Go's `filepath.Match` for source wildcards;
//! - [`path`]: resolving a path inside a root with symlinks followed per
//!   component and clamped to the root (BuildKit's `fs.RootPath`);
//! - [`walk`]: expanding a source wildcard (fsutil's `ResolveWildcards`);
//! - [`select`]: the typed copy-source selection ([`CopySelection`]) that
//!   both the copy and the hasher resolve through [`select::select`], and the
//!   include/exclude/ignore filter ([`EntryFilter`]) below a source;
//! - [`contenthash`]: digests of what a copy selects, with a stat cache.
//!
//! The crate is IO-light: it reads directories and files (and writes only
//! the stat cache's own state file); it never mounts, never talks to
//! containerd and knows nothing of the solver or of gRPC.
//!
//! Architecture invariant: nothing here follows a symlink out of the root
//! it was given or writes into that root.

pub mod contenthash;
pub mod ignore;
pub mod path;
pub mod select;
pub mod walk;

pub use contenthash::{HashCache, HashError, KnownFile};
pub use ignore::{parse_dockerignore, IgnoreError, PatternMatcher};
pub use path::{PathError, Resolved};
pub use select::{CopySelection, EntryFilter, Selection, Source};
