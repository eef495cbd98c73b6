//! The paths of the main context a build reads (BuildKit's `ctxPaths`),
//! so the context's transfer can be limited to them: the source op gets
//! them as `local.followpaths`, as BuildKit's frontend gives its local
//! source, and a client sends only those paths (with the directories
//! leading to them and the targets of symlinks on the way).
//!
//! The rule is BuildKit's, to the letter: every source path of a `COPY`
//! or `ADD` from the context and the source of every `RUN --mount` that
//! reads the context (a bind mount, and, as BuildKit counts it, a tmpfs
//! mount, whose empty source is the whole context), of the stages the
//! target needs. A path that is the context's root (`COPY . /app`, a
//! bind mount without `source`) means the whole context: no follow paths.
//!
//! A named local context (`--build-context NAME=DIR`) is limited by what
//! the graph reads of its source ([`read_by_graph`]), BuildKit's rule over
//! the graph: the sources of the copies and bind mounts that take it, or a
//! stage built on it (`FROM NAME`), as their source; the whole of it when a
//! step runs on it or on such a stage, or it is the result.

use kiln_solver::{FileActionKind, FileInput, Graph, Op, VertexId};
use std::collections::BTreeSet;

/// The context paths read so far, each cleaned and absolute (`/src/a.go`).
#[derive(Clone, Debug, Default)]
pub(super) struct ContextPaths(BTreeSet<String>);

/// The source attribute that limits a local source to some paths.
pub(super) const FOLLOW_PATHS_ATTR: &str = "local.followpaths";

impl ContextPaths {
    /// `path` (as written, expanded; relative to the context's root) is
    /// read from the context.
    pub(super) fn read(&mut self, path: &str) {
        self.0.insert(super::gocompat::clean(&format!("/{path}")));
    }

    /// The follow paths for the context's source: relative, sorted; `None`
    /// when the whole context is read (or nothing is).
    pub(super) fn follow_paths(&self) -> Option<Vec<String>> {
        if self.0.is_empty() || self.0.contains("/") {
            return None;
        }
        Some(
            self.0
                .iter()
                .map(|p| p.trim_start_matches('/').to_string())
                .collect(),
        )
    }
}

/// What the graph reads of the source vertex `source`: the paths of the
/// copies and bind mounts that take it, or a stage built on it, as their
/// source; `None` when it is read whole: a step runs on it (or on a stage
/// built on it), something else mounts it, or it is the result.
///
/// A stage built on the source (`FROM NAME` and the stages built on that
/// one, through their file ops and merges) reads what later stages take
/// from it, as BuildKit's stages share one set of paths with their base:
/// a path it adds itself is harmless to follow.
pub(super) fn read_by_graph(
    graph: &Graph,
    result: VertexId,
    source: VertexId,
) -> Option<Vec<String>> {
    // The source and the vertices built on it. Inputs come before the
    // vertices that read them, so one pass in order finds them all.
    let mut built_on = vec![false; graph.vertices.len()];
    let mut paths = ContextPaths::default();
    for (id, v) in graph.vertices.iter().enumerate() {
        if id == source.0 {
            built_on[id] = true;
            continue;
        }
        let on = |i: usize| {
            v.inputs
                .get(i)
                .is_some_and(|e| built_on.get(e.vertex.0).copied().unwrap_or(false))
        };
        if !(0..v.inputs.len()).any(on) {
            continue;
        }
        let mut derived = false;
        match &v.op {
            Op::File(f) => {
                for a in &f.actions {
                    derived |= matches!(a.input, FileInput::Input(i) if on(i));
                    match (&a.action, a.secondary_input) {
                        (FileActionKind::Copy(c), Some(FileInput::Input(i))) if on(i) => {
                            paths.read(&c.src);
                        }
                        _ => {}
                    }
                }
            }
            Op::Exec(e) => {
                for m in &e.mounts {
                    if !m.input.is_some_and(on) {
                        continue;
                    }
                    let bind = matches!(m.mount_type, kiln_solver::MountType::Bind);
                    if !bind || m.dest == "/" {
                        return None;
                    }
                    paths.read(&m.selector);
                }
            }
            Op::Merge(_) => derived = true,
            Op::Source(_) => return None,
        }
        built_on[id] = derived;
    }
    if built_on.get(result.0).copied().unwrap_or(true) {
        return None;
    }
    paths.follow_paths()
}

#[cfg(test)]
mod tests {
    use super::ContextPaths;

    fn paths(read: &[&str]) -> Option<Vec<String>> {
        let mut c = ContextPaths::default();
        for p in read {
            c.read(p);
        }
        c.follow_paths()
    }

    #[test]
    fn paths_are_cleaned_relative_and_sorted_once() {
        assert_eq!(
            paths(&["src/./main.rs", "./a.txt", "/a.txt", "b/../c", "*.go"]),
            Some(vec![
                "*.go".to_string(),
                "a.txt".to_string(),
                "c".to_string(),
                "src/main.rs".to_string(),
            ])
        );
    }

    #[test]
    fn the_root_or_nothing_means_the_whole_context() {
        assert_eq!(paths(&["a.txt", "."]), None);
        assert_eq!(paths(&["a.txt", ""]), None);
        assert_eq!(paths(&["sub/.."]), None);
        assert_eq!(paths(&[]), None);
    }
}

/// The rule over whole Dockerfiles: which instructions count, which stages.
#[cfg(test)]
mod convert_tests {
    use super::super::*;
    use crate::parse;

    /// The `local.followpaths` of the main context's source after
    /// converting `src` (every base image with an empty config);
    /// `Some(None)`: read whole, `None`: not read at all.
    fn follow(src: &str, opts: &BuildOptions) -> Option<Option<Vec<String>>> {
        let df = parse(src, &opts.filename).expect("parses");
        let bases = df
            .base_images(opts)
            .expect("bases")
            .into_iter()
            .map(|r| (r, ImageConfig::default()))
            .collect();
        let b = to_graph(&df, opts, &bases).expect("converts");
        b.graph.vertices.iter().find_map(|v| match &v.op {
            Op::Source(s) if s.identifier == "local://context" => Some(
                s.attrs
                    .get(super::FOLLOW_PATHS_ATTR)
                    .map(|j| serde_json::from_str(j).expect("a JSON list")),
            ),
            _ => None,
        })
    }

    fn check(src: &str, want: Option<Option<&[&str]>>) {
        let want = want.map(|w| w.map(|p| p.iter().map(|s| s.to_string()).collect()));
        assert_eq!(follow(src, &BuildOptions::default()), want, "{src}");
    }

    #[test]
    fn copy_add_and_bind_mount_sources_of_the_needed_stages() {
        check(
            "FROM scratch AS unused\nCOPY big.bin /\n\
             FROM scratch AS other\nCOPY other.txt /\n\
             FROM busybox AS build\nARG F=src\nCOPY --from=other /other.txt /x\n\
             ADD https://example.com/a.tgz $F/*.go /app/\n\
             RUN --mount=type=bind,source=go.mod,target=/m \
                 --mount=type=cache,target=/c --mount=type=secret,id=s \
                 --mount=type=bind,from=other,target=/u true\n\
             FROM build\nCOPY --parents ./cmd/./x/ /\n",
            Some(Some(&["cmd/x", "go.mod", "other.txt", "src/*.go"])),
        );
    }

    #[test]
    fn the_root_a_bind_mount_without_source_or_a_tmpfs_mount_read_everything() {
        check("FROM busybox\nCOPY a b/ ./ /\n", Some(None));
        check(
            "FROM busybox\nCOPY a /\nRUN --mount=target=/ctx true\n",
            Some(None),
        );
        check(
            "FROM busybox\nCOPY a /\nRUN --mount=type=tmpfs,target=/t true\n",
            Some(None),
        );
    }

    /// The follow paths of the named local context `dir` (used as `ctx`).
    fn named(src: &str) -> Option<Vec<String>> {
        let mut opts = BuildOptions::default();
        let key = crate::context_key("ctx").expect("a valid name");
        opts.named_contexts.insert(
            key,
            NamedContext::Local {
                local: "dir".into(),
                excludes: Vec::new(),
            },
        );
        let df = parse(src, &opts.filename).expect("parses");
        let bases = df
            .base_images(&opts)
            .expect("bases")
            .into_iter()
            .map(|r| (r, ImageConfig::default()))
            .collect();
        let b = to_graph(&df, &opts, &bases).expect("converts");
        let s = b
            .graph
            .vertices
            .iter()
            .find_map(|v| match &v.op {
                Op::Source(s) if s.identifier == "local://dir" => Some(s),
                _ => None,
            })
            .expect("the named context's source");
        s.attrs
            .get(super::FOLLOW_PATHS_ATTR)
            .map(|j| serde_json::from_str(j).expect("a JSON list"))
    }

    #[test]
    fn a_named_context_is_limited_to_what_copies_and_binds_take_from_it() {
        assert_eq!(
            named(
                "FROM busybox\nCOPY --from=ctx a.txt /\n\
                 RUN --mount=from=ctx,source=conf,target=/c true\n\
                 COPY --from=ctx --link lib/*.so /lib/\n"
            ),
            Some(vec![
                "a.txt".to_string(),
                "conf".to_string(),
                "lib/*.so".to_string()
            ])
        );
        // A stage named like the context is the context: what is copied
        // from it is what is read.
        assert_eq!(
            named("FROM scratch AS ctx\nFROM busybox\nCOPY --from=ctx x /\n"),
            Some(vec!["x".to_string()])
        );
    }

    #[test]
    fn a_stage_built_on_a_named_context_reads_what_is_taken_from_it() {
        // BuildKit's stages share their base's paths: what later stages
        // copy or mount from a stage built on the context is read from it.
        assert_eq!(
            named(
                "FROM ctx AS base\nCOPY x.txt /x.txt\n\
                 FROM busybox\nCOPY --from=base a.txt /\n"
            ),
            Some(vec!["a.txt".to_string()])
        );
        assert_eq!(
            named(
                "FROM ctx AS base\nWORKDIR /w\nCOPY x.txt .\n\
                 FROM base AS two\nCOPY --link y /y\n\
                 FROM busybox\nRUN --mount=from=two,source=conf,target=/c true\n\
                 COPY --from=base lib /lib\n"
            ),
            Some(vec!["conf".to_string(), "lib".to_string()])
        );
    }

    #[test]
    fn a_named_context_built_on_or_mounted_whole_is_read_whole() {
        assert_eq!(named("FROM ctx\nRUN true\n"), None);
        assert_eq!(named("FROM ctx\n"), None);
        assert_eq!(
            named("FROM busybox\nCOPY --from=ctx a /\nRUN --mount=from=ctx,target=/c true\n"),
            None
        );
        assert_eq!(named("FROM busybox\nCOPY --from=ctx . /\n"), None);
        // A step on a stage built on it, or such a stage as the result.
        assert_eq!(
            named("FROM ctx AS base\nCOPY x.txt /\nFROM base\nRUN true\n"),
            None
        );
        assert_eq!(named("FROM ctx\nCOPY x.txt /\n"), None);
        assert_eq!(
            named("FROM ctx AS base\nCOPY x /\nFROM busybox\nCOPY --from=base / /all\n"),
            None
        );
    }

    #[test]
    fn no_context_read_no_context_source() {
        check("FROM busybox\nRUN true\nCOPY <<EOF /x\nhi\nEOF\n", None);
        check("FROM busybox\nADD https://example.com/a /a\n", None);
    }
}
