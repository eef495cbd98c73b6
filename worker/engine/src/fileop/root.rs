//! Resolving paths inside a root directory without ever leaving it, and
//! creating missing directories there.

use super::{io_err, meta, FileOpError, Result};
use crate::ignore::PatternMatcher;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Linux's limit, which BuildKit's `fs.RootPath` also uses.
const MAX_SYMLINKS: usize = 255;

/// A path resolved inside a root.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    /// The host path: the root joined with `rel`.
    pub host: PathBuf,
    /// Components below the root; empty for the root itself.
    pub rel: Vec<OsString>,
    /// Some existing component on the way is hidden by the ignore matcher.
    pub hidden: bool,
}

impl Resolved {
    /// The root-relative path with `/` separators (`""` for the root).
    pub fn rel_str(&self) -> String {
        rel_string(&self.rel)
    }
}

pub(crate) fn rel_string(rel: &[OsString]) -> String {
    let mut out = String::new();
    for (i, c) in rel.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&c.to_string_lossy());
    }
    out
}

/// How a host path under `root` reads inside it (`/a/b`), for messages.
pub(crate) fn display(root: &Path, host: &Path) -> String {
    match host.strip_prefix(root) {
        Ok(rel) => format!("/{}", rel.to_string_lossy()),
        Err(_) => host.to_string_lossy().into_owned(),
    }
}

/// One component of a path to resolve inside a root.
pub(crate) enum Seg {
    Parent,
    Name(OsString),
}

/// The components of `path` that matter inside a root (`..` and names).
pub(crate) fn segments(path: &Path) -> impl Iterator<Item = Seg> + '_ {
    path.components().filter_map(|c| match c {
        Component::ParentDir => Some(Seg::Parent),
        Component::Normal(n) => Some(Seg::Name(n.to_os_string())),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// Whether an existing entry at `rel` is invisible through `hide` (a
/// `.dockerignore` matcher): matched, and not a directory that an exception
/// could re-open.
pub(crate) fn is_hidden(hide: &PatternMatcher, rel: &str, is_dir: bool) -> bool {
    hide.matches(rel) && !(is_dir && hide.might_include_children(rel))
}

/// Resolves `path` (absolute or relative, it makes no difference) inside
/// `root`, following symlinks in every component but the last, and in the
/// last too when `follow_final`. `..` and absolute link targets are clamped
/// to the root. Missing components are taken literally.
pub(crate) fn resolve(
    root: &Path,
    path: &Path,
    follow_final: bool,
    hide: Option<&PatternMatcher>,
) -> Result<Resolved> {
    let mut queue: VecDeque<Seg> = segments(path).collect();
    let mut rel: Vec<OsString> = Vec::new();
    let mut links = 0;
    let mut hidden = false;
    while let Some(seg) = queue.pop_front() {
        let name = match seg {
            Seg::Parent => {
                rel.pop();
                continue;
            }
            Seg::Name(n) => n,
        };
        let mut host = root.to_path_buf();
        host.extend(&rel);
        host.push(&name);
        let is_last = queue.is_empty();
        let Ok(md) = std::fs::symlink_metadata(&host) else {
            rel.push(name);
            continue;
        };
        if let Some(h) = hide {
            let mut r = rel.clone();
            r.push(name.clone());
            if is_hidden(h, &rel_string(&r), md.is_dir()) {
                hidden = true;
            }
        }
        if md.file_type().is_symlink() && (!is_last || follow_final) {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(FileOpError::SymlinkLoop {
                    path: path.to_string_lossy().into_owned(),
                });
            }
            let target = std::fs::read_link(&host).map_err(io_err("read link", root, &host))?;
            if target.has_root() {
                rel.clear();
            }
            let segs: Vec<Seg> = segments(&target).collect();
            for s in segs.into_iter().rev() {
                queue.push_front(s);
            }
            continue;
        }
        rel.push(name);
    }
    let mut host = root.to_path_buf();
    host.extend(&rel);
    Ok(Resolved { host, rel, hidden })
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
                return Err(FileOpError::NotADirectory {
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

/// The last component of a slash-separated path, ignoring trailing slashes
/// and `.` (Go's `filepath.Base` of the cleaned path).
pub(crate) fn base_name(p: &str) -> Option<OsString> {
    segments(Path::new(p))
        .fold(Vec::new(), |mut acc: Vec<OsString>, s| {
            match s {
                Seg::Parent => {
                    acc.pop();
                }
                Seg::Name(n) => acc.push(n),
            }
            acc
        })
        .pop()
}

/// Whether the path as written ends in `/` or `/.` (a directory).
pub(crate) fn has_dir_suffix(p: &str) -> bool {
    let b = Path::new(p).as_os_str().as_bytes();
    b.ends_with(b"/") || b.ends_with(b"/.") || p == "." || p.is_empty()
}
