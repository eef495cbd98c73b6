//! The one model every display reads: BuildKit's `client.SolveStatus`
//! (vertexes, statuses, logs, warnings), fed by kilnd's Status stream
//! ([`SolveStatus::from`] a `StatusResponse`) or by the embedded engine's
//! events ([`Embedded`]), and the [`Trace`] that folds the updates into
//! per-vertex state (numbers, intervals, log lines with their times).

use kiln_engine::{LogStream, ProgressEvent};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

/// A vertex as `client.Vertex`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vertex {
    pub digest: String,
    pub inputs: Vec<String>,
    pub name: String,
    pub started: Option<SystemTime>,
    pub completed: Option<SystemTime>,
    pub cached: bool,
    /// Empty when the vertex did not fail.
    pub error: String,
}

/// One item of a vertex's progress, as `client.VertexStatus`.
#[derive(Clone, Debug, PartialEq)]
pub struct VertexStatus {
    pub id: String,
    pub vertex: String,
    pub name: String,
    pub total: i64,
    pub current: i64,
    pub timestamp: SystemTime,
    pub started: Option<SystemTime>,
    pub completed: Option<SystemTime>,
}

/// Output of a vertex, as `client.VertexLog` (`stream` 1 is stdout).
#[derive(Clone, Debug, PartialEq)]
pub struct VertexLog {
    pub vertex: String,
    pub stream: i64,
    pub data: Vec<u8>,
    pub timestamp: SystemTime,
}

/// Lines of a source file, as `pb.Range` (1-based lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub start: (i32, i32),
    pub end: (i32, i32),
}

/// A source file and the lines a message is about (`errdefs.Source`,
/// and a warning's source info).
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub filename: String,
    pub data: Vec<u8>,
    pub language: String,
    pub ranges: Vec<Range>,
}

/// A build-check warning, as `client.VertexWarning`.
#[derive(Clone, Debug, PartialEq)]
pub struct VertexWarning {
    pub vertex: String,
    pub level: i64,
    pub short: Vec<u8>,
    pub detail: Vec<Vec<u8>>,
    pub url: String,
    pub source: Option<Source>,
}

/// One update of a build's progress, as `client.SolveStatus`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SolveStatus {
    pub vertexes: Vec<Vertex>,
    pub statuses: Vec<VertexStatus>,
    pub logs: Vec<VertexLog>,
    pub warnings: Vec<VertexWarning>,
}

fn time(t: &Option<prost_types::Timestamp>) -> Option<SystemTime> {
    t.as_ref().map(|t| {
        SystemTime::UNIX_EPOCH
            + Duration::new(
                u64::try_from(t.seconds).unwrap_or(0),
                u32::try_from(t.nanos).unwrap_or(0),
            )
    })
}

pub(crate) fn range(r: &kiln_proto::llb::Range) -> Range {
    let pos = |p: &Option<kiln_proto::llb::Position>| {
        p.as_ref().map(|p| (p.line, p.character)).unwrap_or((0, 0))
    };
    Range {
        start: pos(&r.start),
        end: pos(&r.end),
    }
}

impl From<kiln_proto::control::StatusResponse> for SolveStatus {
    fn from(s: kiln_proto::control::StatusResponse) -> SolveStatus {
        let now = SystemTime::now();
        SolveStatus {
            vertexes: s
                .vertexes
                .into_iter()
                .map(|v| Vertex {
                    started: time(&v.started),
                    completed: time(&v.completed),
                    digest: v.digest,
                    inputs: v.inputs,
                    name: v.name,
                    cached: v.cached,
                    error: v.error,
                })
                .collect(),
            statuses: s
                .statuses
                .into_iter()
                .map(|st| VertexStatus {
                    timestamp: time(&st.timestamp).unwrap_or(now),
                    started: time(&st.started),
                    completed: time(&st.completed),
                    id: st.id,
                    vertex: st.vertex,
                    name: st.name,
                    total: st.total,
                    current: st.current,
                })
                .collect(),
            logs: s
                .logs
                .into_iter()
                .map(|l| VertexLog {
                    timestamp: time(&l.timestamp).unwrap_or(now),
                    vertex: l.vertex,
                    stream: l.stream,
                    data: l.msg,
                })
                .collect(),
            warnings: s
                .warnings
                .into_iter()
                .map(|w| VertexWarning {
                    source: w.info.map(|i| Source {
                        filename: i.filename,
                        data: i.data,
                        language: i.language,
                        ranges: w.ranges.iter().map(range).collect(),
                    }),
                    vertex: w.vertex,
                    level: w.level,
                    short: w.short,
                    detail: w.detail,
                    url: w.url,
                })
                .collect(),
        }
    }
}

/// Turns the embedded engine's events into [`SolveStatus`] updates, as
/// kilnd turns them into Status messages: vertex `i` is `digests[i]`
/// (the graph's definition digests), and the engine's free-standing
/// messages (`exporting to image`, cache imports) become vertexes of their
/// own that finish when the next one starts or the build ends.
#[derive(Debug, Default)]
pub struct Embedded {
    digests: Vec<String>,
    inputs: Vec<Vec<String>>,
    started: HashMap<usize, SystemTime>,
    /// The open free-standing vertex, if any.
    open: Option<Vertex>,
    infos: usize,
}

impl Embedded {
    /// Names the graph's vertexes once the frontend made it.
    pub fn set_graph(&mut self, digests: Vec<String>, inputs: Vec<Vec<String>>) {
        self.digests = digests;
        self.inputs = inputs;
    }

    /// The free-standing vertex still running, if any.
    pub fn open(&self) -> Option<&Vertex> {
        self.open.as_ref()
    }

    fn digest(&self, i: usize) -> String {
        self.digests.get(i).cloned().unwrap_or_else(|| {
            kiln_solver::Digest::of(format!("kiln-vertex:{i}").as_bytes()).to_string()
        })
    }

    /// A vertex that is not in the graph (loading the definition,
    /// exporting): started now, finished by [`Embedded::finish`].
    pub fn begin(&mut self, name: &str, at: SystemTime) -> SolveStatus {
        let mut s = self.close(at, None);
        self.infos += 1;
        let v = Vertex {
            digest: kiln_solver::Digest::of(format!("kiln-step:{}:{name}", self.infos).as_bytes())
                .to_string(),
            name: name.to_string(),
            started: Some(at),
            ..Default::default()
        };
        s.vertexes.push(v.clone());
        self.open = Some(v);
        s
    }

    /// A status line (`exporting layers`, `naming to …`) of the open
    /// free-standing vertex, done at `at`.
    pub fn item(&self, id: &str, current: i64, started: SystemTime, at: SystemTime) -> SolveStatus {
        let Some(v) = &self.open else {
            return SolveStatus::default();
        };
        SolveStatus {
            statuses: vec![VertexStatus {
                id: id.to_string(),
                vertex: v.digest.clone(),
                name: id.to_string(),
                total: 0,
                current,
                timestamp: at,
                started: Some(started),
                completed: Some(at),
            }],
            ..Default::default()
        }
    }

    /// Finishes the open free-standing vertex (with `error` if it failed).
    pub fn close(&mut self, at: SystemTime, error: Option<String>) -> SolveStatus {
        let mut s = SolveStatus::default();
        if let Some(mut v) = self.open.take() {
            v.completed = Some(at);
            v.error = error.unwrap_or_default();
            s.vertexes.push(v);
        }
        s
    }

    /// The done item `id` (a local source's `transferring NAME:`) of graph
    /// vertex `vertex` with `bytes`, from the vertex's start to `at`.
    pub fn transferred(&self, vertex: usize, id: &str, bytes: u64, at: SystemTime) -> VertexStatus {
        VertexStatus {
            id: id.to_string(),
            vertex: self.digest(vertex),
            name: id.to_string(),
            total: 0,
            current: i64::try_from(bytes).unwrap_or(i64::MAX),
            timestamp: at,
            started: Some(self.started.get(&vertex).copied().unwrap_or(at)),
            completed: Some(at),
        }
    }

    /// The update one engine event makes.
    pub fn event(&mut self, e: ProgressEvent) -> SolveStatus {
        let now = SystemTime::now();
        let mut s = SolveStatus::default();
        match e {
            ProgressEvent::Started { vertex, name, at } => {
                self.started.insert(vertex, at);
                s.vertexes.push(Vertex {
                    digest: self.digest(vertex),
                    inputs: self.inputs.get(vertex).cloned().unwrap_or_default(),
                    name,
                    started: Some(at),
                    ..Default::default()
                });
            }
            ProgressEvent::Completed {
                vertex,
                name,
                cached,
                error,
                at,
            } => s.vertexes.push(Vertex {
                digest: self.digest(vertex),
                inputs: self.inputs.get(vertex).cloned().unwrap_or_default(),
                name,
                started: Some(self.started.get(&vertex).copied().unwrap_or(at)),
                completed: Some(at),
                cached,
                error: error.unwrap_or_default(),
            }),
            ProgressEvent::Log {
                vertex,
                stream,
                data,
            } => s.logs.push(VertexLog {
                vertex: self.digest(vertex),
                stream: match stream {
                    LogStream::Stdout => 1,
                    LogStream::Stderr => 2,
                },
                data,
                timestamp: now,
            }),
            ProgressEvent::Status {
                vertex,
                id,
                current,
                total,
                started,
                completed,
            } => s.statuses.push(VertexStatus {
                vertex: self.digest(vertex),
                name: id.clone(),
                id,
                current: i64::try_from(current).unwrap_or(i64::MAX),
                total: i64::try_from(total).unwrap_or(i64::MAX),
                timestamp: now,
                started: Some(started),
                completed,
            }),
            ProgressEvent::Info { message } => return self.begin(&message, now),
        }
        s
    }
}

/// How many of a vertex's last output lines the failure recap shows, as
/// BuildKit's plain display keeps.
pub const RECAP_LINES: usize = 10;

/// One vertex as the displays track it.
#[derive(Debug, Default)]
pub struct VertexState {
    pub vertex: Vertex,
    /// `#N` once shown; 0 before.
    pub index: usize,
    /// Start/stop of each run (a vertex may be reported twice).
    pub intervals: Vec<(SystemTime, Option<SystemTime>)>,
    /// Statuses in the order they started, latest value of each.
    pub statuses: Vec<VertexStatus>,
    /// Statuses updated since the plain printer last looked.
    pub status_updates: Vec<String>,
    /// Whole output lines not printed yet, each `SECS text`.
    pub pending: Vec<String>,
    /// A line still being written (no newline yet).
    pub partial: Option<String>,
    /// The last [`RECAP_LINES`] whole lines, for the failure recap.
    pub recent: VecDeque<String>,
    /// The last lines of raw output, for the terminal's log window.
    pub window: VecDeque<String>,
    pub output_bytes: usize,
    pub warnings: Vec<VertexWarning>,
    pub warnings_shown: usize,
}

impl VertexState {
    pub fn is_started(&self) -> bool {
        !self.intervals.is_empty()
    }

    pub fn is_completed(&self) -> bool {
        self.intervals.last().is_some_and(|i| i.1.is_some())
    }

    pub fn is_canceled(&self) -> bool {
        self.vertex.error.ends_with("context canceled")
    }

    /// The start of the most recent run.
    fn last_start(&self) -> Option<SystemTime> {
        self.intervals.last().map(|i| i.0)
    }

    /// Time spent running: the union of its runs, each open one up to `now`.
    pub fn duration(&self, now: SystemTime) -> Duration {
        let mut ivals: Vec<(SystemTime, SystemTime)> = self
            .intervals
            .iter()
            .map(|(a, b)| (*a, b.unwrap_or(now).max(*a)))
            .collect();
        ivals.sort();
        let mut total = Duration::ZERO;
        let mut cur: Option<(SystemTime, SystemTime)> = None;
        for (a, b) in ivals {
            cur = match cur {
                Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
                Some((ca, cb)) => {
                    total += cb.duration_since(ca).unwrap_or_default();
                    Some((a, b))
                }
                None => Some((a, b)),
            };
        }
        if let Some((a, b)) = cur {
            total += b.duration_since(a).unwrap_or_default();
        }
        total
    }
}

/// A log line's time, BuildKit's way: seconds since the vertex started,
/// with 3 decimals under 10s, 2 under 100s, else 1.
pub fn log_time(since_start: Duration) -> String {
    let s = since_start.as_secs_f64();
    let prec = if s < 10.0 {
        3
    } else if s < 100.0 {
        2
    } else {
        1
    };
    format!("{s:.prec$}")
}

/// Lines the terminal's log window keeps per vertex.
pub const WINDOW_LINES: usize = 6;

/// The state of a whole build, folded from its updates.
#[derive(Debug, Default)]
pub struct Trace {
    pub vertexes: Vec<VertexState>,
    by_digest: HashMap<String, usize>,
    /// Vertexes in the order they first started.
    pub order: Vec<usize>,
    /// Vertexes changed by the last update, in the order they changed.
    pub updated: Vec<usize>,
    pub first_start: Option<SystemTime>,
}

impl Trace {
    fn touch(&mut self, i: usize) {
        if !self.updated.contains(&i) {
            self.updated.push(i);
        }
    }

    /// Folds one update in.
    pub fn update(&mut self, s: &SolveStatus) {
        for v in &s.vertexes {
            let i = match self.by_digest.get(&v.digest) {
                Some(&i) => i,
                None => {
                    self.vertexes.push(VertexState::default());
                    let i = self.vertexes.len() - 1;
                    self.by_digest.insert(v.digest.clone(), i);
                    i
                }
            };
            let st = &mut self.vertexes[i];
            let was_started = st.is_started();
            // A later copy without a start does not undo what is known.
            if !was_started || v.started.is_some() {
                st.vertex = v.clone();
            }
            if let Some(start) = v.started {
                self.first_start = Some(self.first_start.map_or(start, |f| f.min(start)));
                match st.intervals.iter_mut().find(|iv| iv.0 == start) {
                    Some(iv) => iv.1 = v.completed.or(iv.1),
                    None => st.intervals.push((start, v.completed)),
                }
                if !was_started {
                    self.order.push(i);
                }
                self.touch(i);
            }
        }
        for s in &s.statuses {
            let Some(&i) = self.by_digest.get(&s.vertex) else {
                continue;
            };
            let st = &mut self.vertexes[i];
            match st.statuses.iter_mut().find(|x| x.id == s.id) {
                Some(x) => *x = s.clone(),
                None => st.statuses.push(s.clone()),
            }
            if !st.status_updates.contains(&s.id) {
                st.status_updates.push(s.id.clone());
            }
            self.touch(i);
        }
        for w in &s.warnings {
            let Some(&i) = self.by_digest.get(&w.vertex) else {
                continue;
            };
            self.vertexes[i].warnings.push(w.clone());
            self.touch(i);
        }
        for l in &s.logs {
            let Some(&i) = self.by_digest.get(&l.vertex) else {
                continue;
            };
            let st = &mut self.vertexes[i];
            st.output_bytes += l.data.len();
            let since = st
                .last_start()
                .and_then(|s| l.timestamp.duration_since(s).ok())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&l.data);
            let mut parts = text.split('\n').peekable();
            while let Some(part) = parts.next() {
                let last = parts.peek().is_none();
                let line = match st.partial.take() {
                    Some(mut p) => {
                        p.push_str(part);
                        p
                    }
                    None if last && part.is_empty() => break,
                    None => format!("{} {part}", log_time(since)),
                };
                if last {
                    st.partial = Some(line);
                } else {
                    st.push_line(line);
                }
            }
            self.touch(i);
        }
    }

    /// Ends every vertex's unfinished output line (the vertex finished or
    /// the build did).
    pub fn flush_partial(&mut self, i: usize) {
        let st = &mut self.vertexes[i];
        if let Some(p) = st.partial.take() {
            st.push_line(p);
        }
    }

    /// The vertexes that failed (not cancelled), in the order they started.
    pub fn failed(&self) -> Vec<&VertexState> {
        self.order
            .iter()
            .map(|&i| &self.vertexes[i])
            .filter(|v| !v.vertex.error.is_empty() && !v.is_canceled())
            .collect()
    }
}

impl VertexState {
    fn push_line(&mut self, line: String) {
        // The window shows what a terminal would: the text after the last
        // carriage return, without the time.
        let shown = line
            .split_once(' ')
            .map(|(_, t)| t)
            .unwrap_or("")
            .rsplit('\r')
            .next()
            .unwrap_or("")
            .to_string();
        self.window.push_back(shown);
        while self.window.len() > WINDOW_LINES {
            self.window.pop_front();
        }
        self.recent.push_back(line.clone());
        while self.recent.len() > RECAP_LINES {
            self.recent.pop_front();
        }
        self.pending.push(line);
    }
}
