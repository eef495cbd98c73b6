//! The frontend's internal steps of an embedded build, as kilnd shows them
//! for the same build: `[internal] load build definition from NAME` with
//! `transferring dockerfile:`, `[internal] load .dockerignore` with
//! `transferring context:` (unless the Dockerfile has its own ignore file),
//! `[context NAME] load .dockerignore` for each named local context,
//! and a `transferring NAME:` item on each `local://NAME` source vertex
//! (`[internal] load build context`) when it completes.
//!
//! Embedded, nothing is transferred: the engine reads the directories in
//! place. Each count is what kilnd's fetch of the same files from this
//! client takes on the wire, as its receiver counts it
//! ([`kiln_session::fsutil::wire_size`] over the options the CLI's FileSync
//! sender would get), so both paths show the same bytes for a first build.

use super::model::{Embedded, SolveStatus};
use kiln_session::filesync::transfer_id;
use kiln_session::fsutil::{wire_size, FsutilError, SendOptions};
use kiln_solver::{Graph, Op};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;
use tokio::task::JoinHandle;

/// What the CLI's FileSync sender gets for a fetch with these patterns
/// (it sends every entry as owned by root).
fn send_options(
    includes: Vec<String>,
    excludes: Vec<String>,
    follow_paths: Vec<String>,
) -> SendOptions {
    SendOptions {
        include_patterns: includes,
        exclude_patterns: excludes,
        follow_paths,
        reset_owner: true,
        ..Default::default()
    }
}

/// The wire size of `dir` with `opts`, or `None` (logged) when it cannot
/// be walked: the engine's own read of the directory reports that.
fn counted(dir: &Path, opts: &SendOptions) -> Option<u64> {
    match wire_size(dir, opts) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot count a transfer");
            None
        }
    }
}

/// The step kilnd's frontend shows before it plans, for a Dockerfile
/// `filename` in `dockerfile_dir`: the definition with its own ignore
/// file.
pub fn definition_step(
    e: &mut Embedded,
    opts: &kiln_frontend::FrontendOptions,
    dockerfile_dir: &Path,
) -> Vec<SolveStatus> {
    let name = format!("[internal] load build definition from {}", opts.filename);
    let follow_paths = vec![
        opts.filename.clone(),
        kiln_frontend::dockerfile_ignore_name(&opts.filename),
    ];
    let started = SystemTime::now();
    let mut out = vec![e.begin(&name, started)];
    let bytes = counted(
        dockerfile_dir,
        &send_options(Vec::new(), Vec::new(), follow_paths),
    );
    let done = SystemTime::now();
    if let Some(n) = bytes {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        out.push(e.item(&transfer_id(&opts.dockerfile_key), n, started, done));
    }
    out.push(e.close(done, None));
    out
}

/// The progress vertex id of [`ignore_step`], apart from the graph's
/// (counted up from 0) and the base image lookups' (counted down from
/// [`kiln_engine::build::METADATA_VERTICES`]).
const IGNORE_VERTEX: usize = usize::MAX / 2;

/// The step kilnd's frontend shows once the base images are resolved
/// (as BuildKit reads the ignore file then): the context's
/// `[internal] load .dockerignore`, unless the Dockerfile has its own
/// ignore file (which came with the definition). Events for the engine's
/// progress channel, so they follow the lookups' in the display.
pub fn ignore_step(
    opts: &kiln_frontend::FrontendOptions,
    dockerfile_dir: &Path,
    context: &Path,
) -> Vec<kiln_engine::ProgressEvent> {
    if dockerfile_dir
        .join(kiln_frontend::dockerfile_ignore_name(&opts.filename))
        .exists()
    {
        return Vec::new();
    }
    load_ignore(
        IGNORE_VERTEX,
        "[internal] load .dockerignore",
        &opts.context_key,
        context,
    )
}

/// The steps of each named local context's own ignore file, read before
/// its files (`[context NAME] load .dockerignore`, `transferring NAME:`),
/// as kilnd shows them: `named` holds each local's name and directory.
pub fn named_ignore_steps(named: &[(String, PathBuf)]) -> Vec<kiln_engine::ProgressEvent> {
    named
        .iter()
        .enumerate()
        .flat_map(|(i, (local, dir))| {
            load_ignore(
                IGNORE_VERTEX + 1 + i,
                &format!("[context {local}] load .dockerignore"),
                local,
                dir,
            )
        })
        .collect()
}

/// Step `name` (progress vertex `vertex`) reading the ignore file of
/// `dir`, the client directory `key`.
fn load_ignore(
    vertex: usize,
    name: &str,
    key: &str,
    dir: &Path,
) -> Vec<kiln_engine::ProgressEvent> {
    use kiln_engine::ProgressEvent;
    let started = SystemTime::now();
    let mut out = vec![ProgressEvent::Started {
        vertex,
        name: name.to_string(),
        at: started,
    }];
    let follow_paths = vec![kiln_frontend::CONTEXT_IGNORE_FILE.to_string()];
    let bytes = counted(dir, &send_options(Vec::new(), Vec::new(), follow_paths));
    let done = SystemTime::now();
    if let Some(n) = bytes {
        out.push(ProgressEvent::Status {
            vertex,
            id: transfer_id(key),
            current: n,
            total: 0,
            started,
            completed: Some(done),
        });
    }
    out.push(ProgressEvent::Completed {
        vertex,
        name: name.to_string(),
        cached: false,
        error: None,
        at: done,
    });
    out
}

/// The transfers of a graph's local sources, counted on blocking threads
/// while the build runs, each shown on its vertex when that completes.
/// Shared: the display's forwarder asks for them as vertexes complete,
/// and the graph they belong to is known only after planning.
#[derive(Debug, Default)]
pub struct Transfers {
    /// By vertex: the item's id and its count under way.
    pending: Mutex<HashMap<usize, (String, Count)>>,
}

/// A count on a blocking thread.
type Count = JoinHandle<Result<u64, FsutilError>>;

impl Transfers {
    /// Starts counting each `local://NAME` source of `graph` whose
    /// directory `locals` names, with the patterns of its op (as kilnd
    /// fetches it).
    pub fn start(&self, graph: &Graph, locals: &HashMap<String, PathBuf>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (i, v) in graph.vertices.iter().enumerate() {
            let Op::Source(s) = &v.op else { continue };
            let Some(name) = s.identifier.strip_prefix("local://") else {
                continue;
            };
            let Some(dir) = locals.get(name).cloned() else {
                continue;
            };
            let filter = s.local_filter();
            let opts = send_options(filter.includes, filter.excludes, filter.follow_paths);
            let count = tokio::task::spawn_blocking(move || wire_size(&dir, &opts));
            pending.insert(i, (transfer_id(name), count));
        }
    }

    /// The transfer item of `vertex` (its id and bytes), once counted;
    /// `None` for a vertex without one, or whose count failed (logged).
    pub async fn done(&self, vertex: usize) -> Option<(String, u64)> {
        let (id, count) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&vertex)?;
        match count.await {
            Ok(Ok(n)) => Some((id, n)),
            Ok(Err(e)) => {
                tracing::warn!(%id, error = %e, "cannot count a transfer");
                None
            }
            Err(e) => {
                tracing::warn!(%id, error = %e, "the count of a transfer did not finish");
                None
            }
        }
    }
}
