//! `SOURCE_DATE_EPOCH` naming a source (`context`, a named context, a
//! source-only stage), resolved before the build as BuildKit's frontend
//! resolves it: the source is fetched by the engine alone (a solve of its
//! one vertex, which the build's own fetch of it then finds in the cache)
//! and its time read from what was fetched
//! ([`kiln_engine::sources::epoch`]). The Dockerfile converter then uses
//! that time as if it had been the value given
//! ([`kiln_dockerfile::ResolvedEpoch`]).
//!
//! A local directory, an image or a frontend input has no time, as in
//! BuildKit (its source metadata carries none): the variable is then unset.

use crate::remote::{self, Fetch};
use crate::{build_options, DockerfileSource, FrontendError, FrontendOptions, Result};
use kiln_dockerfile::{EpochSource, NamedContext, ResolvedEpoch};
use kiln_solver::graph::{Op, SourceOp, Vertex};
use kiln_solver::source::{GitSource, HttpSource, ATTR_GIT_MTIME};
use kiln_solver::Graph;

/// The source `SOURCE_DATE_EPOCH` names in the build of `source` and
/// `opts`, if it names one; the Dockerfile's errors for a name that is
/// neither a context nor a source-only stage.
pub fn source(source: &DockerfileSource, opts: &FrontendOptions) -> Result<Option<EpochSource>> {
    let df = source.parse(opts)?;
    Ok(kiln_dockerfile::epoch_source(
        &df,
        &build_options(source, opts),
    )?)
}

/// Resolves the source `SOURCE_DATE_EPOCH` names, if any, into
/// `opts.resolved_epoch` (every platform's build reads it).
pub async fn resolve(
    fetch: &Fetch<'_>,
    src: &DockerfileSource,
    opts: &mut FrontendOptions,
) -> Result<()> {
    let Some(named) = source(src, opts)? else {
        return Ok(());
    };
    let op = source_op(&named, opts)?;
    let secs = match op {
        Some(op) => source_time(fetch, op, named.log_name(), opts.no_cache).await?,
        None => None,
    };
    opts.resolved_epoch = Some(ResolvedEpoch(secs));
    Ok(())
}

/// The source op whose time `named` is; `None` for a source without one.
pub fn source_op(named: &EpochSource, opts: &FrontendOptions) -> Result<Option<SourceOp>> {
    Ok(match named {
        EpochSource::Context => opts.remote_context.as_ref().map(|r| r.source_op()),
        EpochSource::Named {
            name,
            context: NamedContext::Remote { op, .. },
        } => {
            if op.identifier.starts_with(kiln_dockerfile::INPUT_SCHEME) {
                return Err(FrontendError::Unsupported {
                    what: format!("SOURCE_DATE_EPOCH={name} (the time of a frontend input)"),
                });
            }
            Some(op.clone())
        }
        EpochSource::Named { .. } => None,
        EpochSource::Stage { op, .. } => Some(op.clone()),
    })
}

/// Fetches `op` alone and reads its time: a git checkout's commit time
/// (fetched with `git.mtime=commit`, which dates every entry with it),
/// an HTTP file's `Last-Modified` or its archive's latest file.
async fn source_time(
    fetch: &Fetch<'_>,
    mut op: SourceOp,
    name: String,
    no_cache: bool,
) -> Result<Option<i64>> {
    let invalid = |e: kiln_solver::source::SourceError| FrontendError::Unsupported {
        what: format!("SOURCE_DATE_EPOCH from {}: {e}", op.identifier),
    };
    let git = GitSource::from_op(&op).map_err(invalid)?.is_some();
    let file = match HttpSource::from_op(&op).map_err(invalid)? {
        Some(h) => Some(h.filename),
        None if git => {
            op.attrs.insert(ATTR_GIT_MTIME.into(), "commit".into());
            None
        }
        None => {
            return Err(FrontendError::Unsupported {
                what: format!("SOURCE_DATE_EPOCH from the source {}", op.identifier),
            })
        }
    };
    let mut graph = Graph::default();
    let result = graph
        .add(Vertex {
            op: Op::Source(op),
            inputs: Vec::new(),
            name: name.clone(),
            location: None,
            ignore_cache: no_cache,
        })
        .map_err(|e| FrontendError::Dockerfile(kiln_dockerfile::ParseError::Graph(e)))?;
    let fetched = remote::solve_graph(fetch, graph, result).await?;
    let root = fetched.0.path().to_path_buf();
    let read = match &file {
        Some(f) => kiln_engine::sources::epoch::download_time(&root.join(f)),
        None => kiln_engine::sources::epoch::checkout_time(&root).map(Some),
    };
    remote::close(fetched).await;
    read.map_err(|e| FrontendError::SourceEpoch { name, reason: e.0 })
}
