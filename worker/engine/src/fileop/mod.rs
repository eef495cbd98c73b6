//! The FileOp backend: LLB file actions (copy, mkdir, mkfile, rm, symlink)
//! run in-process on mounted snapshot directories, like BuildKit's
//! `solver/llbsolver/file` backend over fsutil's copy.
//!
//! Every path an action names is resolved *inside* its root: symlinks are
//! followed component by component and `..` or an absolute link target is
//! clamped to the root (BuildKit's `fs.RootPath`), so a hostile build
//! context or image cannot make an action read or write outside the trees
//! it was given. Symlinks found while walking a copied tree are recreated as
//! symlinks, never followed.
//!
//! Architecture invariant: this module knows host directories only. It does
//! not mount, does not know snapshot keys and never talks to containerd;
//! the caller mounts the inputs and commits the result.

mod copy;
mod meta;
mod ops;
mod owner;
pub mod reuse;
pub(crate) mod root;
pub(crate) mod unpack;

#[cfg(test)]
mod tests;

use kiln_context::ignore::IgnoreError;
use kiln_types::ErrorKind;
use std::path::Path;

pub use copy::{copy, copy_keep_owner, copy_linking, copy_reusing, selection};
pub use ops::{mkdir, mkfile, rm, symlink};

/// Errors of file actions. Paths are shown as seen inside their root
/// (`/app/x`), never as host paths.
#[derive(Debug, thiserror::Error)]
pub enum FileOpError {
    /// A copy source (or a path an action needs) does not exist, is hidden
    /// by `.dockerignore`, or a source wildcard matched nothing.
    #[error("\"{path}\": not found")]
    NotFound { path: String },
    /// A symbolic `--chmod` (LLB `modeStr`) that does not parse.
    #[error("invalid chmod parameter: {mode:?}")]
    InvalidMode { mode: String },
    /// The destination's parent is missing and the copy may not create it.
    #[error("destination parent of {path} does not exist")]
    DestParentMissing { path: String },
    /// A directory was to be copied or created where a non-directory is.
    #[error("cannot copy to non-directory: {path}")]
    NotADirectory { path: String },
    /// A directory to create (a destination's parent, a WORKDIR) is a
    /// non-directory: Go's `MkdirAll` error, as BuildKit prints it.
    #[error("mkdir {path}: not a directory")]
    MkdirNotADirectory { path: String },
    /// A file was to replace an existing directory.
    #[error("cannot replace to directory {path} with file")]
    IsADirectory { path: String },
    /// The path already exists (symlink creation).
    #[error("{path} already exists")]
    AlreadyExists { path: String },
    /// Symlink resolution exceeded 255 links.
    #[error("too many levels of symbolic links resolving {path}")]
    SymlinkLoop { path: String },
    /// An archive entry whose parent path exists but leads to no
    /// directory (a symlink to a missing one, or a file): ADD's untar
    /// creates only parents that are absent, so opening the entry fails
    /// (`op` and `reason` as Go's `*PathError` says them).
    #[error("{op} {path}: {reason}")]
    EntryParent {
        op: &'static str,
        path: String,
        reason: &'static str,
    },
    /// A path that names no file, like the root given to `rm`.
    #[error("invalid path {path:?}")]
    InvalidPath { path: String },
    /// An include/exclude pattern of the copy is malformed.
    #[error("invalid copy pattern")]
    Pattern {
        #[source]
        source: IgnoreError,
    },
    /// A filesystem call failed.
    #[error("failed to {op} {path}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// An archive being extracted by ADD is corrupt.
    #[error("failed to extract archive {path}")]
    Archive {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl FileOpError {
    /// The errdefs kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FileOpError::NotFound { .. } | FileOpError::DestParentMissing { .. } => {
                ErrorKind::NotFound
            }
            FileOpError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            FileOpError::NotADirectory { .. }
            | FileOpError::EntryParent { .. }
            | FileOpError::MkdirNotADirectory { .. }
            | FileOpError::IsADirectory { .. }
            | FileOpError::SymlinkLoop { .. } => ErrorKind::FailedPrecondition,
            FileOpError::InvalidPath { .. }
            | FileOpError::InvalidMode { .. }
            | FileOpError::Pattern { .. }
            | FileOpError::Archive { .. } => ErrorKind::InvalidArgument,
            FileOpError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
                _ => ErrorKind::Internal,
            },
        }
    }
}

pub type Result<T, E = FileOpError> = std::result::Result<T, E>;

/// Builds an [`FileOpError::Io`] for a host path, shown relative to `root`.
pub(crate) fn io_err<'a>(
    op: &'static str,
    root: &'a Path,
    host: &'a Path,
) -> impl FnOnce(std::io::Error) -> FileOpError + 'a {
    move |source| FileOpError::Io {
        op,
        path: root::display(root, host),
        source,
    }
}
