//! Paths inside a root for file actions: the one clamping resolver
//! (`kiln_context::path`) with this module's errors, and creating missing
//! directories.

use super::{io_err, meta, FileOpError, Result};
use kiln_context::ignore::PatternMatcher;
use kiln_context::path::{segments, PathError, Seg};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub(crate) use kiln_context::path::{display, has_dir_suffix, Resolved};

/// A resolver or walk error as a [`FileOpError`], paths shown inside `root`.
pub(crate) fn path_err(root: &Path) -> impl FnOnce(PathError) -> FileOpError + '_ {
    move |e| match e {
        PathError::SymlinkLoop { path } => FileOpError::SymlinkLoop { path },
        PathError::Io { op, path, source } => FileOpError::Io {
            op,
            path: display(root, &path),
            source,
        },
    }
}

/// [`kiln_context::path::resolve`], the one clamping resolver, with this
/// module's errors.
pub(crate) fn resolve(
    root: &Path,
    path: &Path,
    follow_final: bool,
    hide: Option<&PatternMatcher>,
) -> Result<Resolved> {
    kiln_context::path::resolve(root, path, follow_final, hide).map_err(path_err(root))
}

/// Resolves `path` inside `root` with the parent followed and the last
/// component kept as is (for actions on the entry itself: rm, symlink).
pub(crate) fn resolve_parent(root: &Path, path: &Path) -> Result<(Resolved, OsString)> {
    let mut segs: Vec<Seg> = segments(path).collect();
    // A trailing ".." or a path of only ".." resolves the whole thing.
    let last = match segs.pop() {
        Some(Seg::Name(n)) => n,
        Some(Seg::Parent) | None => {
            return Err(FileOpError::InvalidPath {
                path: path.to_string_lossy().into_owned(),
            })
        }
    };
    let mut parent = PathBuf::from("/");
    for s in segs {
        match s {
            Seg::Parent => parent.push(".."),
            Seg::Name(n) => parent.push(n),
        }
    }
    Ok((resolve(root, &parent, true, None)?, last))
}

/// Who owns and how to stamp directories created by [`mkdir_all`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct DirAttrs {
    pub mode: u32,
    pub owner: Option<(u32, u32)>,
    pub timestamp: Option<i64>,
}

/// Creates the missing directories of a resolved path (fsutil's
/// `MkdirAll`): each gets `attrs`; existing ones are left alone. Returns the
/// created directories, outermost first.
pub(crate) fn mkdir_all(root: &Path, target: &Resolved, attrs: DirAttrs) -> Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    let mut host = root.to_path_buf();
    for c in &target.rel {
        host.push(c);
        match std::fs::symlink_metadata(&host) {
            Ok(md) if md.is_dir() => continue,
            Ok(_) => {
                return Err(FileOpError::MkdirNotADirectory {
                    path: display(root, &host),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("stat", root, &host)(e)),
        }
        match std::fs::create_dir(&host) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && host.is_dir() => continue,
            Err(e) => return Err(io_err("mkdir", root, &host)(e)),
        }
        meta::chmod(root, &host, attrs.mode)?;
        if let Some((uid, gid)) = attrs.owner {
            meta::lchown(root, &host, uid, gid)?;
        }
        if let Some(ts) = attrs.timestamp {
            meta::set_times(root, &host, ts, ts)?;
        }
        created.push(host.clone());
    }
    Ok(created)
}

/// Puts the timestamp back on directories that [`mkdir_all`] created, after
/// their contents were written (which moved their mtime).
pub(crate) fn restamp(root: &Path, dirs: &[PathBuf], timestamp: Option<i64>) -> Result<()> {
    if let Some(ts) = timestamp {
        for d in dirs.iter().rev() {
            meta::set_times(root, d, ts, ts)?;
        }
    }
    Ok(())
}
