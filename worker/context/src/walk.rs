//! Expanding a `COPY` source wildcard: the one walk behind the copy, `rm`
//! with wildcards and the context hasher.

use crate::ignore::{clean_path, contains_wildcards, glob_match, PatternMatcher};
use crate::path::{io_err, is_hidden, rel_string, resolve, PathError, Resolved};
use std::ffi::OsString;
use std::path::Path;

/// Expands a source with wildcards (fsutil's `ResolveWildcards`): the part
/// before the first wildcard component is resolved in `root` (its last
/// component followed when `follow_final`), then the tree below it is
/// matched with Go's `filepath.Match` on the relative path; a matched
/// directory is not searched further. Matches come in name order and are
/// not themselves followed. `None` when `src` has no wildcard. Hidden
/// entries (`hide`, relative to `root`) are invisible.
pub fn resolve_wildcards(
    root: &Path,
    src: &str,
    follow_final: bool,
    hide: Option<&PatternMatcher>,
) -> Result<Option<Vec<Resolved>>, PathError> {
    let cleaned = clean_path(&format!("/{src}"));
    let comps: Vec<&str> = cleaned.split('/').filter(|c| !c.is_empty()).collect();
    let Some(k) = comps.iter().position(|c| contains_wildcards(c)) else {
        return Ok(None);
    };
    let base = resolve(root, Path::new(&comps[..k].join("/")), follow_final, hide)?;
    let mut out = Vec::new();
    let is_dir = std::fs::symlink_metadata(&base.host).is_ok_and(|m| m.is_dir());
    if base.hidden || !is_dir {
        return Ok(Some(out));
    }
    let walk = Walk {
        pattern: &comps[k..].join("/"),
        hide,
    };
    walk.matches(&base.host, &base.rel, "", comps.len() - k, &mut out)?;
    Ok(Some(out))
}

/// Reads a directory's entry names, sorted so results are deterministic.
pub fn sorted_names(dir: &Path) -> Result<Vec<OsString>, PathError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        names.push(entry.map_err(io_err("read directory", dir))?.file_name());
    }
    names.sort();
    Ok(names)
}

/// What one wildcard expansion matches against.
struct Walk<'a> {
    pattern: &'a str,
    hide: Option<&'a PatternMatcher>,
}

impl Walk<'_> {
    /// Matches the entries of `dir` (at `dir_rel` below the root, `rel`
    /// below the wildcard's base) and, up to `depth` levels, below them.
    fn matches(
        &self,
        dir: &Path,
        dir_rel: &[OsString],
        rel: &str,
        depth: usize,
        out: &mut Vec<Resolved>,
    ) -> Result<(), PathError> {
        for name in sorted_names(dir)? {
            let host = dir.join(&name);
            let md = std::fs::symlink_metadata(&host).map_err(io_err("stat", &host))?;
            let mut child_root_rel = dir_rel.to_vec();
            child_root_rel.push(name.clone());
            if let Some(h) = self.hide {
                if is_hidden(h, &rel_string(&child_root_rel), md.is_dir()) {
                    continue;
                }
            }
            let lossy = name.to_string_lossy();
            let child_rel = if rel.is_empty() {
                lossy.into_owned()
            } else {
                format!("{rel}/{lossy}")
            };
            if glob_match(self.pattern, &child_rel) {
                out.push(Resolved {
                    host,
                    rel: child_root_rel,
                    hidden: false,
                });
                continue;
            }
            if md.is_dir() && depth > 1 {
                self.matches(&host, &child_root_rel, &child_rel, depth - 1, out)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(root: &Path, src: &str, hide: Option<&PatternMatcher>) -> Option<Vec<String>> {
        resolve_wildcards(root, src, true, hide)
            .expect("walk")
            .map(|v| v.iter().map(Resolved::rel_str).collect())
    }

    #[test]
    fn matches_are_sorted_bounded_by_depth_and_skip_hidden_entries() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path();
        for f in [
            "b.txt", "a.txt", "c.go", "dir/p/x", "dir/q/x", "dir/q/y", "dir/x",
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, f).expect("write");
        }
        assert_eq!(names(root, "plain/path", None), None);
        assert_eq!(
            names(root, "*.txt", None),
            Some(vec!["a.txt".into(), "b.txt".into()])
        );
        assert_eq!(
            names(root, "/dir/*/x", None),
            Some(vec!["dir/p/x".into(), "dir/q/x".into()])
        );
        // A matched directory is not searched further.
        assert_eq!(names(root, "d*", None), Some(vec!["dir".into()]));
        let hide = PatternMatcher::new(&["a.txt".to_owned(), "dir/q".to_owned()]).expect("p");
        assert_eq!(
            names(root, "*.txt", Some(&hide)),
            Some(vec!["b.txt".into()])
        );
        assert_eq!(
            names(root, "dir/*/x", Some(&hide)),
            Some(vec!["dir/p/x".into()])
        );
        // A base that is missing or not a directory matches nothing.
        assert_eq!(names(root, "nope/*", None), Some(vec![]));
        assert_eq!(names(root, "c.go/*", None), Some(vec![]));
    }
}
