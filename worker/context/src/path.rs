//! Resolving paths inside a root directory without ever leaving it.
//!
//! This is the one resolver behind every `COPY` source, every FileOp path
//! and the context hasher: symlinks are followed component by component,
//! and `..` or an absolute link target is clamped to the root, so a hostile
//! build context or image cannot make an action read outside the tree it
//! was given.

use crate::ignore::PatternMatcher;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Linux's limit, which BuildKit's `fs.RootPath` also uses.
pub const MAX_SYMLINKS: usize = 255;

/// Errors of resolving or walking inside a root. Paths in `Io` are host
/// paths; callers show them relative to their root.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// Resolution exceeded [`MAX_SYMLINKS`] links.
    #[error("too many levels of symbolic links resolving {path}")]
    SymlinkLoop { path: String },
    /// A filesystem call failed.
    #[error("failed to {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Builds a [`PathError::Io`] for a host path.
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> PathError + 'a {
    move |source| PathError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A path resolved inside a root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
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

    /// The resolved parent (the root's parent is the root).
    pub fn parent(&self, root: &Path) -> Resolved {
        let mut rel = self.rel.clone();
        rel.pop();
        let mut host = root.to_path_buf();
        host.extend(&rel);
        Resolved {
            host,
            rel,
            hidden: self.hidden,
        }
    }
}

/// Root-relative components joined with `/` (`""` for the root).
pub fn rel_string(rel: &[OsString]) -> String {
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
pub fn display(root: &Path, host: &Path) -> String {
    match host.strip_prefix(root) {
        Ok(rel) => format!("/{}", rel.to_string_lossy()),
        Err(_) => host.to_string_lossy().into_owned(),
    }
}

/// One component of a path to resolve inside a root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Parent,
    Name(OsString),
}

/// The components of `path` that matter inside a root (`..` and names).
pub fn segments(path: &Path) -> impl Iterator<Item = Seg> + '_ {
    path.components().filter_map(|c| match c {
        Component::ParentDir => Some(Seg::Parent),
        Component::Normal(n) => Some(Seg::Name(n.to_os_string())),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// Whether an existing entry at `rel` is invisible through `hide` (a
/// `.dockerignore` matcher): matched, and not a directory that an exception
/// could re-open.
pub fn is_hidden(hide: &PatternMatcher, rel: &str, is_dir: bool) -> bool {
    hide.matches(rel) && !(is_dir && hide.might_include_children(rel))
}

/// Resolves `path` (absolute or relative, it makes no difference) inside
/// `root`, following symlinks in every component but the last, and in the
/// last too when `follow_final`. `..` and absolute link targets are clamped
/// to the root. Missing components are taken literally. With `hide`, the
/// result records whether an existing component on the way is hidden.
pub fn resolve(
    root: &Path,
    path: &Path,
    follow_final: bool,
    hide: Option<&PatternMatcher>,
) -> Result<Resolved, PathError> {
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
                return Err(PathError::SymlinkLoop {
                    path: path.to_string_lossy().into_owned(),
                });
            }
            let target = std::fs::read_link(&host).map_err(io_err("read link", &host))?;
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

/// The last component of a slash-separated path, ignoring trailing slashes
/// and `.` (Go's `filepath.Base` of the cleaned path).
pub fn base_name(p: &str) -> Option<OsString> {
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
pub fn has_dir_suffix(p: &str) -> bool {
    let b = Path::new(p).as_os_str().as_bytes();
    b.ends_with(b"/") || b.ends_with(b"/.") || p == "." || p.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn rel(r: &Resolved) -> String {
        r.rel_str()
    }

    #[test]
    fn links_are_followed_per_component_and_clamped_to_the_root() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path();
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        symlink("/a", root.join("abs")).expect("symlink");
        symlink("../../../..", root.join("a/up")).expect("symlink");
        symlink("b", root.join("a/rel")).expect("symlink");

        let r = resolve(root, Path::new("abs/b"), false, None).expect("resolve");
        assert_eq!(rel(&r), "a/b");
        assert_eq!(r.host, root.join("a/b"));
        assert_eq!(
            rel(&resolve(root, Path::new("a/up/etc"), false, None).expect("up")),
            "etc"
        );
        assert_eq!(
            rel(&resolve(root, Path::new("/../../x"), false, None).expect("dots")),
            "x"
        );
        // The final link is kept unless asked to follow it.
        assert_eq!(
            rel(&resolve(root, Path::new("a/rel"), false, None).expect("keep")),
            "a/rel"
        );
        assert_eq!(
            rel(&resolve(root, Path::new("a/rel"), true, None).expect("follow")),
            "a/b"
        );
        // Missing components are taken literally.
        assert_eq!(
            rel(&resolve(root, Path::new("abs/missing/x"), true, None).expect("missing")),
            "a/missing/x"
        );
    }

    #[test]
    fn loops_are_an_error_and_hidden_components_are_reported() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path();
        symlink("y", root.join("x")).expect("symlink");
        symlink("x", root.join("y")).expect("symlink");
        let err = resolve(root, Path::new("x"), true, None).expect_err("loop");
        assert_eq!(
            err.to_string(),
            "too many levels of symbolic links resolving x"
        );
        // Not following the final link is no loop.
        assert_eq!(
            rel(&resolve(root, Path::new("x"), false, None).expect("x")),
            "x"
        );

        std::fs::create_dir_all(root.join("secret/keep")).expect("mkdir");
        let hide = PatternMatcher::new(&["secret".to_owned()]).expect("patterns");
        assert!(
            resolve(root, Path::new("secret/keep"), true, Some(&hide))
                .expect("hidden")
                .hidden
        );
        let reopen =
            PatternMatcher::new(&["secret".to_owned(), "!secret/keep".to_owned()]).expect("p");
        assert!(
            !resolve(root, Path::new("secret/keep"), true, Some(&reopen))
                .expect("r")
                .hidden
        );
    }

    #[test]
    fn names_and_suffixes() {
        assert_eq!(base_name("a/b/"), Some(OsString::from("b")));
        assert_eq!(base_name("a/b/.."), Some(OsString::from("a")));
        assert_eq!(base_name("/"), None);
        assert!(has_dir_suffix("a/") && has_dir_suffix("a/.") && has_dir_suffix("."));
        assert!(!has_dir_suffix("a"));
        assert_eq!(display(Path::new("/r"), Path::new("/r/a/b")), "/a/b");
    }
}
