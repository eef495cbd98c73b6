//! What a `COPY` selects from its source root: the typed request
//! ([`CopySelection`]), the sources it resolves to ([`select`]) and the
//! filter applied below each source ([`EntryFilter`]).
//!
//! The copy (in the engine's fileop) and the context hasher both go
//! through these, so the cache key of a copy from the local context covers
//! exactly the entries the copy reads.

use crate::ignore::{IgnoreError, PatternMatcher};
use crate::path::{base_name, resolve, PathError, Resolved};
use crate::walk::resolve_wildcards;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The part of a copy action that decides which entries it reads from its
/// source root (LLB's `FileActionCopy` without destination and metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopySelection {
    /// The source as written in the graph (`/app.txt`, `src/`, `*.go`).
    pub src: String,
    /// Follow a symlink named by the source (or matched by its wildcard).
    pub follow_symlink: bool,
    /// Expand wildcards in `src`; without it `src` is taken literally.
    pub allow_wildcard: bool,
    /// A wildcard that matches nothing copies nothing instead of failing.
    pub allow_empty_wildcard: bool,
    /// Patterns (relative to the source) an entry must match to be copied.
    pub include_patterns: Vec<String>,
    /// Patterns (relative to the source) whose matches are not copied.
    pub exclude_patterns: Vec<String>,
}

impl CopySelection {
    /// The whole root, as read by an op that names no source path.
    pub fn all() -> Self {
        CopySelection {
            src: ".".into(),
            follow_symlink: true,
            allow_wildcard: false,
            allow_empty_wildcard: false,
            include_patterns: Vec::new(),
            exclude_patterns: Vec::new(),
        }
    }
}

/// One selected source: where it resolved and the name it takes under a
/// directory destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub resolved: Resolved,
    pub name: Option<OsString>,
}

/// The outcome of [`select`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The sources to copy, in order. `from_wildcard` when they are the
    /// matches of a wildcard (each is copied to the destination in turn,
    /// as fsutil does: several files onto one path leave the last).
    Found {
        sources: Vec<Source>,
        from_wildcard: bool,
    },
    /// The source, or one of its wildcard matches, does not exist or is
    /// hidden by `.dockerignore`.
    NotFound,
    /// The wildcard matched nothing (fine with `allow_empty_wildcard`).
    NoMatches,
}

/// Resolves the sources of `sel` inside `root`, as the copy will read
/// them. `hide` is the `.dockerignore` matcher (relative to `root`), whose
/// matches are invisible.
pub fn select(
    root: &Path,
    sel: &CopySelection,
    hide: Option<&PatternMatcher>,
) -> Result<Selection, PathError> {
    let hide = hide.filter(|m| !m.is_empty());
    let exists = |r: &Resolved| !r.hidden && std::fs::symlink_metadata(&r.host).is_ok();
    let wildcard = if sel.allow_wildcard {
        resolve_wildcards(root, &sel.src, sel.follow_symlink, hide)?
    } else {
        None
    };
    let Some(matches) = wildcard else {
        let resolved = resolve(root, Path::new(&sel.src), sel.follow_symlink, hide)?;
        if !exists(&resolved) {
            return Ok(Selection::NotFound);
        }
        return Ok(Selection::Found {
            sources: vec![Source {
                resolved,
                name: base_name(&sel.src),
            }],
            from_wildcard: false,
        });
    };
    if matches.is_empty() {
        return Ok(Selection::NoMatches);
    }
    let mut sources = Vec::with_capacity(matches.len());
    for m in matches {
        let name = m.rel.last().cloned();
        let resolved = if sel.follow_symlink {
            let rel: PathBuf = m.rel.iter().collect();
            resolve(root, &rel, true, hide)?
        } else {
            m
        };
        if !exists(&resolved) {
            return Ok(Selection::NotFound);
        }
        sources.push(Source { resolved, name });
    }
    Ok(Selection::Found {
        sources,
        from_wildcard: true,
    })
}

/// Decides, for each entry below a copied source, whether it is copied
/// and whether its children must be looked at: `.dockerignore` (`hide`,
/// matched against root-relative paths) and the copy's include/exclude
/// patterns (matched against source-relative paths).
#[derive(Debug)]
pub struct EntryFilter<'a> {
    hide: Option<&'a PatternMatcher>,
    include: Option<PatternMatcher>,
    exclude: Option<PatternMatcher>,
}

/// Which pattern list of a copy failed to compile.
#[derive(Debug, thiserror::Error)]
#[error("invalid {which} pattern")]
pub struct PatternError {
    pub which: &'static str,
    #[source]
    pub source: IgnoreError,
}

impl<'a> EntryFilter<'a> {
    /// Compiles the include/exclude patterns of `sel`.
    pub fn new(
        sel: &CopySelection,
        hide: Option<&'a PatternMatcher>,
    ) -> Result<Self, PatternError> {
        let compile = |which, patterns: &[String]| {
            if patterns.is_empty() {
                return Ok(None);
            }
            PatternMatcher::new(patterns)
                .map(Some)
                .map_err(|source| PatternError { which, source })
        };
        Ok(EntryFilter {
            hide: hide.filter(|m| !m.is_empty()),
            include: compile("include", &sel.include_patterns)?,
            exclude: compile("exclude", &sel.exclude_patterns)?,
        })
    }

    /// `(include, descend)` for the entry at `root_rel` below the root and
    /// `src_rel` below the source. The source itself (`src_rel` empty) is
    /// always included: patterns filter what is below it.
    pub fn decide(&self, root_rel: &str, src_rel: &str, is_dir: bool) -> (bool, bool) {
        if src_rel.is_empty() {
            return (true, true);
        }
        let (mut include, mut descend) = (true, true);
        if let Some(h) = self.hide {
            if h.matches(root_rel) {
                include = false;
                descend &= is_dir && h.might_include_children(root_rel);
            }
        }
        if let Some(inc) = &self.include {
            if !inc.matches(src_rel) {
                include = false;
            }
        }
        if let Some(exc) = &self.exclude {
            if exc.matches(src_rel) {
                include = false;
                descend &= is_dir && exc.might_include_children(src_rel);
            }
        }
        (include, descend)
    }

    /// Whether an entry must be skipped entirely (not copied, and for a
    /// directory nothing below it either).
    pub fn skips(&self, root_rel: &str, src_rel: &str, is_dir: bool) -> bool {
        let (include, descend) = self.decide(root_rel, src_rel, is_dir);
        !include && (!is_dir || !descend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn sel(src: &str) -> CopySelection {
        CopySelection {
            src: src.into(),
            allow_wildcard: true,
            ..CopySelection::all()
        }
    }

    /// `(name, rel)` of each source, or the outcome's name.
    fn check(root: &Path, s: &CopySelection, hide: Option<&PatternMatcher>) -> String {
        match select(root, s, hide).expect("select") {
            Selection::Found {
                sources,
                from_wildcard,
            } => {
                let items: Vec<String> = sources
                    .iter()
                    .map(|s| {
                        let name = s.name.as_ref().map(|n| n.to_string_lossy().into_owned());
                        format!("{}={}", name.unwrap_or_default(), s.resolved.rel_str())
                    })
                    .collect();
                format!(
                    "{}{}",
                    if from_wildcard { "W " } else { "" },
                    items.join(" ")
                )
            }
            Selection::NotFound => "not found".into(),
            Selection::NoMatches => "no matches".into(),
        }
    }

    #[test]
    fn follow_symlink_and_allow_wildcard_change_the_selection() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path();
        std::fs::create_dir_all(root.join("real")).expect("mkdir");
        std::fs::write(root.join("real/f"), "f").expect("write");
        std::fs::write(root.join("*.txt"), "literal").expect("write");
        std::fs::write(root.join("a.txt"), "a").expect("write");
        symlink("real", root.join("link")).expect("symlink");
        symlink("missing", root.join("dangling")).expect("symlink");

        assert_eq!(check(root, &sel("link"), None), "link=real");
        let no_follow = CopySelection {
            follow_symlink: false,
            ..sel("link")
        };
        assert_eq!(check(root, &no_follow, None), "link=link");
        assert_eq!(check(root, &sel("dangling"), None), "not found");
        let dangling = CopySelection {
            follow_symlink: false,
            ..sel("dangling")
        };
        assert_eq!(check(root, &dangling, None), "dangling=dangling");

        assert_eq!(
            check(root, &sel("*.txt"), None),
            "W *.txt=*.txt a.txt=a.txt"
        );
        let literal = CopySelection {
            allow_wildcard: false,
            ..sel("*.txt")
        };
        assert_eq!(check(root, &literal, None), "*.txt=*.txt");
        assert_eq!(check(root, &sel("l*"), None), "W link=real");
        assert_eq!(check(root, &sel("d*"), None), "not found");
        assert_eq!(check(root, &sel("*.rs"), None), "no matches");
        assert_eq!(check(root, &sel("/real/../a.txt"), None), "a.txt=a.txt");

        let hide = PatternMatcher::new(&["real".to_owned()]).expect("patterns");
        assert_eq!(check(root, &sel("link"), Some(&hide)), "not found");
        assert_eq!(check(root, &sel("r*"), Some(&hide)), "no matches");
    }

    #[test]
    fn filter_applies_ignore_to_root_paths_and_patterns_to_source_paths() {
        let hide = PatternMatcher::new(&["src/tmp".to_owned()]).expect("patterns");
        let s = CopySelection {
            include_patterns: vec!["*.go".into(), "x".into()],
            exclude_patterns: vec!["x/skip".into()],
            ..sel("src")
        };
        let f = EntryFilter::new(&s, Some(&hide)).expect("filter");
        assert_eq!(f.decide("src", "", true), (true, true));
        assert_eq!(f.decide("src/a.go", "a.go", false), (true, true));
        assert_eq!(f.decide("src/b.md", "b.md", false), (false, true));
        assert!(f.skips("src/b.md", "b.md", false));
        assert!(f.skips("src/tmp", "tmp", true));
        assert_eq!(f.decide("src/x", "x", true), (true, true));
        assert!(f.skips("src/x/skip", "x/skip", true));
        // Not included, but an include below it may still match.
        assert!(!f.skips("src/y", "y", true));

        let bad = CopySelection {
            exclude_patterns: vec!["[".into()],
            ..sel("src")
        };
        let err = EntryFilter::new(&bad, None).expect_err("bad pattern");
        assert_eq!(err.to_string(), "invalid exclude pattern");
    }
}
