//! Engine progress events as BuildKit Status messages.

use crate::jobs::Job;
use kiln_engine::{LogStream, ProgressEvent};
use kiln_proto::control::{StatusResponse, Vertex, VertexLog, VertexStatus};
use kiln_solver::Digest;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::mpsc::Receiver;

pub(crate) fn ts(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A local source's transfer, shown as BuildKit shows it: an item
/// `transferring NAME:` with the bytes on the wire and the time the
/// receive took; the vertex that reads it starts when the receive did
/// (kilnd receives before the solve), so its duration includes it.
#[derive(Clone, Debug)]
pub struct Transfer {
    pub vertex: usize,
    pub id: String,
    pub bytes: u64,
    /// The size the item was to have (0: not known in advance).
    pub total: u64,
    /// When the receive started and ended.
    pub span: Option<(SystemTime, SystemTime)>,
}

impl Transfer {
    /// The item of local source `name` read by `vertex`.
    pub fn new(
        vertex: usize,
        name: &str,
        bytes: u64,
        span: Option<(SystemTime, SystemTime)>,
    ) -> Transfer {
        Transfer {
            vertex,
            id: kiln_session::filesync::transfer_id(name),
            bytes,
            total: 0,
            span,
        }
    }

    /// When `vertex` started: its receive's start if it has one that began
    /// earlier than `at`.
    fn started(transfers: &[Transfer], vertex: usize, at: SystemTime) -> SystemTime {
        transfers
            .iter()
            .filter(|t| t.vertex == vertex)
            .filter_map(|t| t.span.map(|(from, _)| from))
            .fold(at, SystemTime::min)
    }
}

/// Forwards one solve's events to its job; `digests[i]` is vertex i's
/// digest and `inputs[i]` its input digests; `transfers` are the local
/// sources' transfers, shown on their vertices. Counts the steps in the
/// metrics and logs each at debug. Returns the first vertex that failed.
pub async fn forward(
    mut rx: Receiver<ProgressEvent>,
    digests: Vec<Digest>,
    inputs: Vec<Vec<String>>,
    transfers: Vec<Transfer>,
    job: Arc<Job>,
) -> Option<usize> {
    let mut failed = None;
    let mut started: std::collections::HashMap<usize, SystemTime> = Default::default();
    let digest = |i: usize| digests.get(i).map(|d| d.to_string()).unwrap_or_default();
    while let Some(e) = rx.recv().await {
        let mut s = StatusResponse::default();
        match e {
            ProgressEvent::Started { vertex, name, at } => {
                tracing::debug!(build = %job.id, step = %name, digest = %digest(vertex), "step started");
                let at = Transfer::started(&transfers, vertex, at);
                started.insert(vertex, at);
                s.vertexes.push(Vertex {
                    digest: digest(vertex),
                    inputs: inputs.get(vertex).cloned().unwrap_or_default(),
                    name,
                    started: Some(ts(at)),
                    ..Default::default()
                });
            }
            ProgressEvent::Completed {
                vertex,
                name,
                cached,
                error,
                at,
            } => {
                let from = started.get(&vertex).copied().unwrap_or(at);
                let took = at.duration_since(from).unwrap_or_default();
                if cached {
                    crate::metrics::METRICS
                        .cache_hits
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    crate::metrics::METRICS.step_ran(took);
                }
                if error.is_some() && failed.is_none() {
                    failed = Some(vertex);
                }
                tracing::debug!(
                    build = %job.id,
                    step = %name,
                    digest = %digest(vertex),
                    cached,
                    duration_ms = took.as_millis() as u64,
                    error = error.as_deref().unwrap_or(""),
                    "step done"
                );
                if error.is_none() {
                    let since = ts(from);
                    s.statuses
                        .extend(transfers.iter().filter(|t| t.vertex == vertex).map(|t| {
                            let (from, to) =
                                t.span.map_or((since, ts(at)), |(a, b)| (ts(a), ts(b)));
                            VertexStatus {
                                id: t.id.clone(),
                                vertex: digest(vertex),
                                name: t.id.clone(),
                                current: i64::try_from(t.bytes).unwrap_or(i64::MAX),
                                total: i64::try_from(t.total).unwrap_or(i64::MAX),
                                timestamp: Some(to),
                                started: Some(from),
                                completed: Some(to),
                            }
                        }));
                }
                s.vertexes.push(Vertex {
                    digest: digest(vertex),
                    inputs: inputs.get(vertex).cloned().unwrap_or_default(),
                    name,
                    cached,
                    started: Some(ts(started.get(&vertex).copied().unwrap_or(at))),
                    completed: Some(ts(at)),
                    error: error.unwrap_or_default(),
                    ..Default::default()
                });
            }
            ProgressEvent::Log {
                vertex,
                stream,
                data,
            } => {
                s.logs.push(VertexLog {
                    vertex: digest(vertex),
                    timestamp: Some(ts(SystemTime::now())),
                    stream: match stream {
                        LogStream::Stdout => 1,
                        LogStream::Stderr => 2,
                    },
                    msg: data,
                });
            }
            ProgressEvent::Status {
                vertex,
                id,
                current,
                total,
                started,
                completed,
            } => {
                // BuildKit names a status by its ID (a layer digest, or
                // `resolve <ref>`), with bytes as current/total.
                s.statuses.push(VertexStatus {
                    id: id.clone(),
                    vertex: digest(vertex),
                    name: id,
                    current: i64::try_from(current).unwrap_or(i64::MAX),
                    total: i64::try_from(total).unwrap_or(i64::MAX),
                    timestamp: Some(ts(SystemTime::now())),
                    started: Some(ts(started)),
                    completed: completed.map(ts),
                });
            }
            // The engine's free-standing messages (what a cache import
            // read, or why it was skipped) become steps of their own, as
            // the embedded CLI shows them: never dropped.
            ProgressEvent::Info { message } => {
                let now = SystemTime::now();
                step(&job, &message, now, Some(now), None);
                continue;
            }
        }
        job.publish(s);
    }
    failed
}

/// The vertex digest of daemon-side step `name` of `job`.
fn step_digest(job: &Job, name: &str) -> String {
    Digest::of(format!("kiln-step:{}:{name}", job.id).as_bytes()).to_string()
}

/// Status items of daemon-side step `name`, each done, as BuildKit's
/// image exporter reports its work (`exporting layers`, `exporting
/// manifest sha256:…`, `naming to …`): (id, started, completed).
pub fn step_items(job: &Job, name: &str, items: &[(String, SystemTime, SystemTime)]) {
    let vertex = step_digest(job, name);
    job.publish(StatusResponse {
        statuses: items
            .iter()
            .map(|(id, started, completed)| VertexStatus {
                id: id.clone(),
                vertex: vertex.clone(),
                name: id.clone(),
                timestamp: Some(ts(*completed)),
                started: Some(ts(*started)),
                completed: Some(ts(*completed)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
}

/// One status item `id` of daemon-side step `name`: running until it has
/// a `completed` time (a push's `pushing layers` while it uploads).
pub fn step_item(
    job: &Job,
    name: &str,
    id: &str,
    started: SystemTime,
    completed: Option<SystemTime>,
) {
    job.publish(StatusResponse {
        statuses: vec![VertexStatus {
            id: id.to_string(),
            vertex: step_digest(job, name),
            name: id.to_string(),
            timestamp: Some(ts(completed.unwrap_or(started))),
            started: Some(ts(started)),
            completed: completed.map(ts),
            ..Default::default()
        }],
        ..Default::default()
    });
}

/// The transfer item of local source `local` (`transferring
/// dockerfile:` and its bytes) on daemon-side step `name`, done.
pub fn step_transfer(
    job: &Job,
    name: &str,
    local: &str,
    bytes: u64,
    started: SystemTime,
    completed: SystemTime,
) {
    let id = kiln_session::filesync::transfer_id(local);
    job.publish(StatusResponse {
        statuses: vec![VertexStatus {
            id: id.clone(),
            vertex: step_digest(job, name),
            name: id,
            current: i64::try_from(bytes).unwrap_or(i64::MAX),
            timestamp: Some(ts(completed)),
            started: Some(ts(started)),
            completed: Some(ts(completed)),
            ..Default::default()
        }],
        ..Default::default()
    });
}

/// Reports a daemon-side step (loading the definition, exporting) as a
/// vertex of its own: once when it starts, once when it ends.
pub fn step(
    job: &Job,
    name: &str,
    started: SystemTime,
    completed: Option<SystemTime>,
    error: Option<String>,
) {
    step_as(
        job,
        &step_digest(job, name),
        &[],
        name,
        started,
        completed,
        error,
    )
}

/// [`step`] for a step that is also a vertex of the build's own graph (a
/// remote context fetched before planning): published under that
/// vertex's digest and inputs, so clients show it once, as BuildKit's
/// frontend and build share one vertex.
pub fn step_as(
    job: &Job,
    digest: &str,
    inputs: &[String],
    name: &str,
    started: SystemTime,
    completed: Option<SystemTime>,
    error: Option<String>,
) {
    job.publish(StatusResponse {
        vertexes: vec![Vertex {
            digest: digest.to_string(),
            inputs: inputs.to_vec(),
            name: name.to_string(),
            started: Some(ts(started)),
            completed: completed.map(ts),
            error: error.unwrap_or_default(),
            ..Default::default()
        }],
        ..Default::default()
    });
}

/// A build-check warning's short text, as BuildKit's `LintFormatShort`:
/// `Rule: message`, then ` (line N)` when it is about a line.
fn short(rule: &str, message: &str, line: usize) -> String {
    if line > 0 {
        format!("{rule}: {message} (line {line})")
    } else {
        format!("{rule}: {message}")
    }
}

/// The Dockerfile's build-check warnings, on the step named `name`, as
/// BuildKit's frontend sends them (`VertexWarning`: level 1, `Rule:
/// message (line N)` as the short text, as BuildKit's `LintFormatShort`,
/// the rule's page, the Dockerfile as source info with the line as
/// range), so buildctl and buildx print them, and buildx's metadata file
/// (`buildx.build.warnings`) holds them, alike.
pub fn warnings(
    job: &Job,
    name: &str,
    filename: &str,
    source: &str,
    warnings: &[kiln_dockerfile::parser::Warning],
) {
    use kiln_proto::control::VertexWarning;
    use kiln_proto::llb::{Position, Range, SourceInfo};
    if warnings.is_empty() {
        return;
    }
    let vertex = Digest::of(format!("kiln-step:{}:{name}", job.id).as_bytes()).to_string();
    let info = SourceInfo {
        filename: filename.to_string(),
        data: source.as_bytes().to_vec(),
        definition: None,
        language: "Dockerfile".into(),
    };
    job.publish(StatusResponse {
        warnings: warnings
            .iter()
            .map(|w| {
                let line = i32::try_from(w.line).unwrap_or(i32::MAX);
                VertexWarning {
                    vertex: vertex.clone(),
                    level: 1,
                    short: short(&w.rule, &w.message, w.line).into_bytes(),
                    detail: Vec::new(),
                    url: kiln_dockerfile::lint::rule_url(&w.rule),
                    info: Some(info.clone()),
                    ranges: (line > 0)
                        .then_some(Range {
                            start: Some(Position { line, character: 0 }),
                            end: Some(Position { line, character: 0 }),
                        })
                        .into_iter()
                        .collect(),
                }
            })
            .collect(),
        ..Default::default()
    });
}
