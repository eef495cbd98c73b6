//! Build history: BuildKit's build records, which `docker buildx history`
//! (`ls`, `inspect`, `logs`, `rm`) and `buildctl debug histories` read
//! through `Control.ListenBuildHistory`, `UpdateBuildHistory` and `Status`.
//!
//! A running build is a record in memory (event `STARTED`); when it ends its
//! record (ref, frontend and attributes, exporters, times, error, exporter
//! response, step counts) is written to the tenant's state directory with
//! the build's progress (`<key>.record`, `<key>.status`, the key being the
//! sha256 of the ref: the ref is the client's), so records survive a
//! restart of kilnd. The progress is BuildKit's `status.v0` blob (each
//! `StatusResponse` after its little-endian u32 length) made of what the job
//! kept for late Status readers (`jobs::History`: every vertex's newest
//! state and the newest logs), and `Status` of a finished ref replays it.
//! A failed build's record holds its error's code and message, and its
//! whole error (the details: the step, the Dockerfile lines) is the blob
//! `<key>.error` that `externalError` names, as BuildKit keeps it; both
//! blobs are served by digest (`crate::historycontent`).
//!
//! Records are kept by BuildKit's rule (`[history]`: one goes once there are
//! more than `max-entries` and it is older than `max-age`; pinned ones stay)
//! and, beyond BuildKit, within `max-size` bytes, the oldest unpinned first.
//! What the rule reads of each record (completion time, pin, bytes on disk)
//! is kept in memory, read from the files once at open and updated by every
//! write and removal, so applying it after each build reads no file
//! however many records a busy node keeps.

use kiln_proto::control::{
    BuildHistoryEvent, BuildHistoryEventType, BuildHistoryRecord, BuildHistoryRequest,
    BuildResultInfo, Descriptor, Exporter, SolveRequest, StatusResponse,
};
use kiln_solver::Digest;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast;

/// The media type of a record's progress blob, BuildKit's.
pub const STATUS_MEDIA_TYPE: &str = "application/vnd.buildkit.status.v0";
/// The media type of a failed build's error blob (BuildKit's
/// `externalError`): the whole `google.rpc.Status`, its details (the
/// Dockerfile lines, the failed step) included.
pub const ERROR_MEDIA_TYPE: &str = "application/vnd.googeapis.google.rpc.status+proto";
/// The largest `StatusResponse` frame read back from a progress file: the
/// job's replay batches are about 1 MiB.
const MAX_FRAME: usize = 64 << 20;
/// Events a slow `ListenBuildHistory` reader may fall behind by.
const EVENTS_QUEUE: usize = 256;

/// The `[history]` limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// With more than `max_entries` records, an unpinned one completed this
    /// long ago is removed (`max-age`).
    pub max_age: Duration,
    /// See `max_age` (`max-entries`).
    pub max_entries: usize,
    /// The oldest unpinned records are removed until the rest take at most
    /// this many bytes (`max-size`).
    pub max_size: u64,
}

impl Default for HistoryConfig {
    /// BuildKit's defaults (48 hours, 50 entries); 512 MiB of records.
    fn default() -> Self {
        HistoryConfig {
            max_age: Duration::from_secs(48 * 3600),
            max_entries: 50,
            max_size: 512 << 20,
        }
    }
}

/// What went wrong with a history request.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// No record of this ref.
    #[error("no build record for ref {ref:?}")]
    NotFound { r#ref: String },
    /// A filter kilnd does not evaluate.
    #[error("unsupported build history filter {filter:?} (ref, status, repository, startedAt, completedAt, duration)")]
    Filter { filter: String },
    /// Reading or writing the records.
    #[error("build history {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record or progress file that does not decode.
    #[error("build history {path}: corrupt")]
    Corrupt { path: PathBuf },
}

impl HistoryError {
    /// The gRPC status a client sees.
    pub fn status(&self) -> tonic::Status {
        match self {
            HistoryError::NotFound { .. } => tonic::Status::not_found(self.to_string()),
            HistoryError::Filter { .. } => tonic::Status::invalid_argument(self.to_string()),
            _ => tonic::Status::internal(self.to_string()),
        }
    }
}

type Result<T, E = HistoryError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HistoryError + '_ {
    move |source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One tenant's build records.
pub struct BuildHistory {
    dir: PathBuf,
    limits: HistoryConfig,
    /// Records of running builds, by ref; also serializes the writers.
    active: Mutex<HashMap<String, BuildHistoryRecord>>,
    /// What the limits read of each kept record, by ref; changed only by
    /// writers, under `active`'s lock.
    kept: Mutex<HashMap<String, Kept>>,
    events: broadcast::Sender<BuildHistoryEvent>,
}

/// What the `[history]` limits read of a kept record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Kept {
    completed: SystemTime,
    pinned: bool,
    /// Bytes of its files (record, progress, error).
    size: u64,
}

impl Kept {
    fn of(r: &BuildHistoryRecord, size: u64) -> Kept {
        Kept {
            completed: time_of(r.completed_at.as_ref()),
            pinned: r.pinned,
            size,
        }
    }
}

/// How a finished build ended, for its record.
pub struct Outcome {
    pub exporter_response: Option<HashMap<String, String>>,
    pub error: Option<tonic::Status>,
    /// The job's kept progress (`Job::subscribe`'s replay).
    pub progress: Vec<StatusResponse>,
    /// The images the exporters made, by exporter index
    /// (`crate::historyresults`).
    pub results: HashMap<i64, Descriptor>,
}

/// What a digest the content service is asked for is to the records.
pub enum Named {
    /// A blob kilnd keeps beside a record (its progress or its error).
    Blob(Vec<u8>),
    /// Not a record's own blob: these are the kept records' results, in
    /// the content store.
    Results(Vec<Descriptor>),
}

impl BuildHistory {
    /// The records kept in `dir`; files a crash left half-written go.
    pub fn open(dir: PathBuf, limits: HistoryConfig) -> BuildHistory {
        let h = BuildHistory {
            dir,
            limits,
            active: Mutex::new(HashMap::new()),
            kept: Mutex::new(HashMap::new()),
            events: broadcast::channel(EVENTS_QUEUE).0,
        };
        h.clear_orphans();
        match h.records() {
            Ok(records) => {
                let kept = records
                    .iter()
                    .map(|r| (r.r#ref.clone(), Kept::of(r, h.size_on_disk(&r.r#ref))))
                    .collect();
                *h.kept() = kept;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the build records: the limits start from none")
            }
        }
        h
    }

    /// Bytes of the files of the record of `ref`.
    fn size_on_disk(&self, r#ref: &str) -> u64 {
        ["record", "status", "error"]
            .map(|ext| self.path(r#ref, ext))
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<String, Kept>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of the record of `ref`: its files' names, its results'
    /// lease.
    pub fn key(r#ref: &str) -> String {
        Digest::of(r#ref.as_bytes()).hex().to_string()
    }

    fn path(&self, r#ref: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", Self::key(r#ref)))
    }

    /// The keys of the kept records and of the running builds' (taken
    /// together under the writers' lock, so a record being completed is in
    /// one or the other).
    pub fn keys(&self) -> Result<HashSet<String>> {
        let active = self.lock();
        let mut keys: HashSet<String> = active.keys().map(|r| Self::key(r)).collect();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) == Some("record") {
                if let Some(stem) = p.file_stem().and_then(|x| x.to_str()) {
                    keys.insert(stem.to_string());
                }
            }
        }
        Ok(keys)
    }

    /// Removes temporary files and progress files without a record.
    fn clear_orphans(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let orphan = match p.extension().and_then(|x| x.to_str()) {
                Some("tmp") => true,
                Some("status" | "error") => !p.with_extension("record").exists(),
                _ => false,
            };
            if orphan {
                if let Err(e) = std::fs::remove_file(&p) {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove a stale build history file");
                }
            }
        }
    }

    /// Records that the build of `r` started (not for internal builds).
    pub fn started(&self, r: &SolveRequest, exporters: &[Exporter]) {
        if r.internal {
            return;
        }
        let rec = BuildHistoryRecord {
            r#ref: r.r#ref.clone(),
            frontend: r.frontend.clone(),
            frontend_attrs: r.frontend_attrs.clone(),
            exporters: exporters.to_vec(),
            created_at: Some(crate::status::ts(SystemTime::now())),
            ..Default::default()
        };
        self.lock().insert(rec.r#ref.clone(), rec.clone());
        let _ = self.events.send(BuildHistoryEvent {
            r#type: BuildHistoryEventType::Started as i32,
            record: Some(rec),
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BuildHistoryRecord>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Completes the record of `ref` and writes it (a failure to write is
    /// logged: the build's own result stands), then applies the limits.
    /// Returns the refs whose records are gone now (removed by the limits,
    /// or this one if it could not be written): their results are no
    /// longer held for anyone.
    pub fn completed(&self, r#ref: &str, outcome: Outcome) -> Vec<String> {
        let mut active = self.lock();
        // Not started here (or completed already): its results, if any,
        // are another completion's to keep or release.
        let Some(mut rec) = active.remove(r#ref) else {
            return Vec::new();
        };
        rec.completed_at = Some(crate::status::ts(SystemTime::now()));
        if let Some(resp) = outcome.exporter_response.filter(|r| !r.is_empty()) {
            rec.exporter_response = resp;
        }
        if !outcome.results.is_empty() {
            // As BuildKit: the first exporter's also in the deprecated
            // field, for older clients.
            let first = outcome
                .results
                .iter()
                .min_by_key(|(i, _)| **i)
                .map(|(_, d)| d.clone());
            rec.result = Some(BuildResultInfo {
                result_deprecated: first,
                attestations: Vec::new(),
                results: outcome.results,
            });
        }
        // As BuildKit: the record's error is the code and message; the
        // whole error, details and all, is a blob beside it.
        let error_blob = outcome.error.as_ref().map(|e| {
            let details = kiln_proto::rpc::Status::decode(e.details())
                .map(|s| s.details)
                .unwrap_or_default();
            rec.error = Some(kiln_proto::rpc::Status {
                code: e.code() as i32,
                message: e.message().to_string(),
                details: Vec::new(),
            });
            kiln_proto::rpc::Status {
                code: e.code() as i32,
                message: e.message().to_string(),
                details,
            }
            .encode_to_vec()
        });
        let counts = StepCounts::of(&outcome.progress);
        rec.num_total_steps = counts.total;
        rec.num_completed_steps = counts.completed;
        rec.num_cached_steps = counts.cached;
        rec.num_warnings = counts.warnings;
        let mut gone = Vec::new();
        match self.write(&mut rec, &outcome.progress, error_blob.as_deref()) {
            Ok(()) => {
                let _ = self.events.send(BuildHistoryEvent {
                    r#type: BuildHistoryEventType::Complete as i32,
                    record: Some(rec),
                });
            }
            Err(e) => {
                tracing::warn!("ref" = r#ref, error = %e, "cannot save the build record");
                gone.push(r#ref.to_string());
            }
        }
        drop(active);
        match self.gc(SystemTime::now()) {
            Ok(removed) => gone.extend(removed),
            Err(e) => tracing::warn!(error = %e, "cannot remove old build records"),
        }
        gone
    }

    /// Writes the progress (and a failed build's error), then the record
    /// naming them (each by rename, so a reader never sees half of one).
    fn write(
        &self,
        rec: &mut BuildHistoryRecord,
        progress: &[StatusResponse],
        error: Option<&[u8]>,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let mut size = 0;
        if let Some(blob) = error {
            write_file(&self.path(&rec.r#ref, "error"), blob)?;
            size += blob.len() as u64;
            rec.external_error = Some(Descriptor {
                media_type: ERROR_MEDIA_TYPE.to_string(),
                digest: Digest::of(blob).to_string(),
                size: blob.len() as i64,
                annotations: HashMap::new(),
            });
        }
        let mut blob = Vec::new();
        for s in progress {
            let frame = s.encode_to_vec();
            let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
            blob.extend_from_slice(&len.to_le_bytes());
            blob.extend_from_slice(&frame);
        }
        let status = self.path(&rec.r#ref, "status");
        write_file(&status, &blob)?;
        size += blob.len() as u64;
        rec.logs = Some(Descriptor {
            media_type: STATUS_MEDIA_TYPE.to_string(),
            digest: Digest::of(&blob).to_string(),
            size: blob.len() as i64,
            annotations: HashMap::new(),
        });
        let record = rec.encode_to_vec();
        write_file(&self.path(&rec.r#ref, "record"), &record)?;
        size += record.len() as u64;
        self.kept().insert(rec.r#ref.clone(), Kept::of(rec, size));
        Ok(())
    }

    /// Every kept (completed) record.
    fn records(&self) -> Result<Vec<BuildHistoryRecord>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("record") {
                continue;
            }
            match std::fs::read(&p) {
                Ok(b) => match BuildHistoryRecord::decode(b.as_slice()) {
                    Ok(r) => out.push(r),
                    Err(_) => {
                        tracing::warn!(path = %p.display(), "skipping a corrupt build record")
                    }
                },
                // Removed meanwhile (gc, delete).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&p)(e)),
            }
        }
        Ok(out)
    }

    /// The blob `digest` a kept record names (its progress, or its
    /// error), for the content service; else every kept record's results,
    /// among which the content service looks for it.
    pub fn blob(&self, digest: &str) -> Result<Named> {
        let records = self.records()?;
        for r in &records {
            let named = |d: &Option<Descriptor>| d.as_ref().is_some_and(|d| d.digest == digest);
            let ext = if named(&r.logs) {
                "status"
            } else if named(&r.external_error) {
                "error"
            } else {
                continue;
            };
            let p = self.path(&r.r#ref, ext);
            return match std::fs::read(&p) {
                Ok(b) => Ok(Named::Blob(b)),
                // Removed meanwhile (gc, delete).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Ok(Named::Results(Vec::new()))
                }
                Err(e) => Err(io(&p)(e)),
            };
        }
        Ok(Named::Results(
            records
                .into_iter()
                .filter_map(|r| r.result)
                .flat_map(|r| r.results.into_values())
                .collect(),
        ))
    }

    fn record(&self, r#ref: &str) -> Result<BuildHistoryRecord> {
        let p = self.path(r#ref, "record");
        let b = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HistoryError::NotFound {
                    r#ref: r#ref.to_string(),
                })
            }
            Err(e) => return Err(io(&p)(e)),
        };
        BuildHistoryRecord::decode(b.as_slice()).map_err(|_| HistoryError::Corrupt { path: p })
    }

    /// What `ListenBuildHistory` sends first: the running builds
    /// (`STARTED`) and, unless `active_only`, the kept records
    /// (`COMPLETE`) its filters select, newest first within `limit`.
    pub fn list(&self, req: &BuildHistoryRequest) -> Result<Vec<BuildHistoryEvent>> {
        let filters = Filters::parse(&req.filter, SystemTime::now())?;
        let mut out: Vec<BuildHistoryEvent> = self
            .lock()
            .values()
            .filter(|r| req.r#ref.is_empty() || r.r#ref == req.r#ref)
            .map(|r| BuildHistoryEvent {
                r#type: BuildHistoryEventType::Started as i32,
                record: Some(r.clone()),
            })
            .collect();
        if req.active_only {
            return Ok(out);
        }
        let mut done: Vec<BuildHistoryRecord> = self
            .records()?
            .into_iter()
            .filter(|r| req.r#ref.is_empty() || r.r#ref == req.r#ref)
            .filter(|r| filters.matches(r))
            .collect();
        if req.limit < 0 {
            return Err(HistoryError::Filter {
                filter: format!("limit {}", req.limit),
            });
        }
        if req.limit > 0 {
            done.sort_by_key(|r| std::cmp::Reverse(time_of(r.created_at.as_ref())));
            done.truncate(req.limit as usize);
        }
        out.extend(done.into_iter().map(|r| BuildHistoryEvent {
            r#type: BuildHistoryEventType::Complete as i32,
            record: Some(r),
        }));
        Ok(out)
    }

    /// Events after `list`: builds starting and completing, records
    /// updated and deleted.
    pub fn subscribe(&self) -> broadcast::Receiver<BuildHistoryEvent> {
        self.events.subscribe()
    }

    /// The kept progress of the finished build `ref`, as `Status` replays
    /// it; `None` if no record of it is kept.
    pub fn progress(&self, r#ref: &str) -> Result<Option<Vec<StatusResponse>>> {
        if self.lock().contains_key(r#ref) {
            return Ok(None);
        }
        let p = self.path(r#ref, "status");
        if !self.path(r#ref, "record").exists() {
            return Ok(None);
        }
        let b = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&p)(e)),
        };
        decode_frames(&b)
            .map(Some)
            .ok_or(HistoryError::Corrupt { path: p })
    }

    /// Pins or unpins the record of `ref` (a pinned one is never removed
    /// by the limits); its generation counts the change.
    pub fn set_pinned(&self, r#ref: &str, pinned: bool) -> Result<()> {
        let _writers = self.lock();
        let mut rec = self.record(r#ref)?;
        if rec.pinned == pinned {
            return Ok(());
        }
        rec.pinned = pinned;
        rec.generation += 1;
        write_file(&self.path(r#ref, "record"), &rec.encode_to_vec())?;
        let size = self.size_on_disk(r#ref);
        self.kept().insert(r#ref.to_string(), Kept::of(&rec, size));
        let _ = self.events.send(BuildHistoryEvent {
            r#type: BuildHistoryEventType::Complete as i32,
            record: Some(rec),
        });
        Ok(())
    }

    /// Removes the record of `ref` (`buildx history rm`).
    pub fn delete(&self, r#ref: &str) -> Result<()> {
        let _writers = self.lock();
        self.remove(r#ref)
    }

    fn remove(&self, r#ref: &str) -> Result<()> {
        let record = self.path(r#ref, "record");
        let removed = std::fs::remove_file(&record);
        if !matches!(&removed, Err(e) if e.kind() != std::io::ErrorKind::NotFound) {
            self.kept().remove(r#ref);
        }
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HistoryError::NotFound {
                    r#ref: r#ref.to_string(),
                })
            }
            Err(e) => return Err(io(&record)(e)),
        }
        for ext in ["status", "error"] {
            let p = self.path(r#ref, ext);
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(io(&p)(e));
                }
            }
        }
        let _ = self.events.send(BuildHistoryEvent {
            r#type: BuildHistoryEventType::Deleted as i32,
            record: Some(BuildHistoryRecord {
                r#ref: r#ref.to_string(),
                ..Default::default()
            }),
        });
        Ok(())
    }

    /// Applies the limits as of `now` (from the kept summaries: no file is
    /// read); returns the refs it removed.
    fn gc(&self, now: SystemTime) -> Result<Vec<String>> {
        let _writers = self.lock();
        let mut recs: Vec<(String, Kept)> = self
            .kept()
            .iter()
            .filter(|(_, k)| !k.pinned)
            .map(|(r, k)| (r.clone(), *k))
            .collect();
        // Newest first.
        recs.sort_by_key(|(_, k)| std::cmp::Reverse(k.completed));
        let mut total = 0u64;
        let mut removed = Vec::new();
        for (i, (r, k)) in recs.iter().enumerate() {
            total += k.size;
            let old = now
                .duration_since(k.completed)
                .is_ok_and(|age| age > self.limits.max_age);
            let by_entries = i >= self.limits.max_entries && old;
            let by_size = total > self.limits.max_size;
            if by_entries || by_size {
                match self.remove(r) {
                    Ok(()) | Err(HistoryError::NotFound { .. }) => {
                        total -= k.size;
                        tracing::debug!("ref" = %r, "build record removed by the [history] limits");
                        removed.push(r.clone());
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }
}

/// Writes `data` to `path` through a temporary file and a rename.
fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension()
            .and_then(|x| x.to_str())
            .unwrap_or_default()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The frames of a `status.v0` blob; `None` if it is cut or a frame does
/// not decode.
fn decode_frames(mut b: &[u8]) -> Option<Vec<StatusResponse>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
        if len > MAX_FRAME {
            return None;
        }
        let frame = b.get(4..4 + len)?;
        out.push(StatusResponse::decode(frame).ok()?);
        b = &b[4 + len..];
    }
    Some(out)
}

fn time_of(t: Option<&prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| {
        let secs = u64::try_from(t.seconds).ok()?;
        let nanos = u32::try_from(t.nanos).ok()?;
        SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
    })
    .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A record's step counts, BuildKit's: every vertex of the progress, those
/// that completed, those that were cached; and the warnings.
#[derive(Debug, Default, PartialEq, Eq)]
struct StepCounts {
    total: i32,
    completed: i32,
    cached: i32,
    warnings: i32,
}

impl StepCounts {
    fn of(progress: &[StatusResponse]) -> StepCounts {
        let mut seen: HashMap<&str, (bool, bool)> = HashMap::new();
        let mut warnings = 0usize;
        for s in progress {
            warnings += s.warnings.len();
            for v in &s.vertexes {
                let e = seen.entry(v.digest.as_str()).or_default();
                e.0 |= v.completed.is_some();
                e.1 |= v.cached;
            }
        }
        let n = |x: usize| i32::try_from(x).unwrap_or(i32::MAX);
        StepCounts {
            total: n(seen.len()),
            completed: n(seen.values().filter(|v| v.0).count()),
            cached: n(seen.values().filter(|v| v.1).count()),
            warnings: n(warnings),
        }
    }
}

/// The status BuildKit's filters and buildx's `status=` see.
fn status_of(r: &BuildHistoryRecord) -> &'static str {
    match (&r.completed_at, &r.error) {
        (None, _) => "running",
        (Some(_), None) => "completed",
        (Some(_), Some(e)) if e.message.contains("context canceled") || e.code == 1 => "canceled",
        (Some(_), Some(_)) => "error",
    }
}

/// A git context's remote, for the `repository` filter.
fn repository_of(r: &BuildHistoryRecord) -> Option<String> {
    if let Some(v) = r.frontend_attrs.get("vcs:source") {
        return Some(v.clone());
    }
    let ctx = r.frontend_attrs.get("context")?;
    kiln_solver::source::GitRef::parse(ctx)
        .ok()
        .flatten()
        .map(|g| g.remote)
}

/// One condition of a filter.
#[derive(Debug)]
enum Cond {
    /// `ref`, `status` or `repository` against a value: `==`/`=` equal,
    /// `!=` differ, `~=` contain (containerd's filter operators).
    Field {
        field: String,
        op: String,
        value: String,
    },
    /// `startedAt`, `completedAt` (unix seconds) or `duration`
    /// (nanoseconds) compared with `>=`, `<=`, `>` or `<`.
    Time {
        field: String,
        op: String,
        value: i64,
    },
}

/// `BuildHistoryRequest.Filter`: a record passes if any entry matches,
/// and an entry (comma separated conditions) matches if all its
/// conditions do, as in BuildKit.
#[derive(Debug, Default)]
struct Filters(Vec<Vec<Cond>>);

impl Filters {
    fn parse(entries: &[String], now: SystemTime) -> Result<Filters> {
        let mut out = Vec::new();
        for entry in entries {
            let mut conds = Vec::new();
            for f in entry.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                let f = f.trim_matches('"');
                conds.push(Cond::parse(f, now)?);
            }
            out.push(conds);
        }
        Ok(Filters(out))
    }

    fn matches(&self, r: &BuildHistoryRecord) -> bool {
        self.0.is_empty() || self.0.iter().any(|e| e.iter().all(|c| c.matches(r)))
    }
}

impl Cond {
    fn parse(f: &str, now: SystemTime) -> Result<Cond> {
        let bad = || HistoryError::Filter {
            filter: f.to_string(),
        };
        for op in [">=", "<=", ">", "<"] {
            if let Some((field, value)) = f.split_once(op) {
                let value = match field {
                    "startedAt" | "completedAt" => match parse_go_duration(value) {
                        Some(d) => unix(now.checked_sub(d).ok_or_else(bad)?),
                        None => rfc3339_seconds(value).ok_or_else(bad)?,
                    },
                    "duration" => parse_go_duration(value)
                        .and_then(|d| i64::try_from(d.as_nanos()).ok())
                        .ok_or_else(bad)?,
                    _ => return Err(bad()),
                };
                return Ok(Cond::Time {
                    field: field.to_string(),
                    op: op.to_string(),
                    value,
                });
            }
        }
        for op in ["==", "!=", "~=", "="] {
            if let Some((field, value)) = f.split_once(op) {
                if !matches!(field, "ref" | "status" | "repository") {
                    return Err(bad());
                }
                return Ok(Cond::Field {
                    field: field.to_string(),
                    op: if op == "=" { "==" } else { op }.to_string(),
                    value: value.to_string(),
                });
            }
        }
        Err(bad())
    }

    fn matches(&self, r: &BuildHistoryRecord) -> bool {
        match self {
            Cond::Field { field, op, value } => {
                let have = match field.as_str() {
                    "ref" => Some(r.r#ref.clone()),
                    "status" => Some(status_of(r).to_string()),
                    _ => repository_of(r),
                };
                match (op.as_str(), have) {
                    ("!=", h) => h.as_deref() != Some(value.as_str()),
                    ("~=", Some(h)) => h.contains(value.as_str()),
                    ("==", Some(h)) => h == *value,
                    _ => false,
                }
            }
            Cond::Time { field, op, value } => {
                let created = time_of(r.created_at.as_ref());
                let have = match field.as_str() {
                    "startedAt" => unix(created),
                    "completedAt" => r
                        .completed_at
                        .as_ref()
                        .map_or(0, |t| unix(time_of(Some(t)))),
                    _ => r.completed_at.as_ref().map_or(0, |t| {
                        time_of(Some(t))
                            .duration_since(created)
                            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                    }),
                };
                match op.as_str() {
                    ">=" => have >= *value,
                    "<=" => have <= *value,
                    ">" => have > *value,
                    _ => have < *value,
                }
            }
        }
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `t` as Go's `time.RFC3339Nano` in UTC (trailing zeros of the fraction
/// dropped).
pub fn rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // The civil date of a day count (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut s = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if d.subsec_nanos() > 0 {
        let frac = format!("{:09}", d.subsec_nanos());
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// A Go duration (`90s`, `1h30m`, `1.5h`, `500ms`); `None` if it is not one.
fn parse_go_duration(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Unix seconds of an RFC 3339 UTC time (`2006-01-02T15:04:05Z`, an
/// offset or fractional seconds allowed).
fn rfc3339_seconds(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut tail = &s[19..];
    if let Some(frac) = tail.strip_prefix('.') {
        let end = frac.find(|c: char| !c.is_ascii_digit())?;
        tail = &frac[end..];
    }
    let offset = match tail {
        "Z" => 0,
        t if t.len() == 6 && (t.starts_with('+') || t.starts_with('-')) => {
            let m = num(s.len() - 5..s.len() - 3)? * 3600 + num(s.len() - 2..s.len())? * 60;
            if t.starts_with('-') {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::control::Vertex;

    fn history(limits: HistoryConfig) -> (tempfile::TempDir, BuildHistory) {
        let dir = tempfile::tempdir().expect("dir");
        let h = BuildHistory::open(dir.path().join("history"), limits);
        (dir, h)
    }

    fn request(r: &str) -> SolveRequest {
        SolveRequest {
            r#ref: r.into(),
            frontend: "dockerfile.v0".into(),
            frontend_attrs: [("target".to_string(), "t".to_string())].into(),
            ..Default::default()
        }
    }

    fn vertex(d: &str, cached: bool, completed: bool) -> Vertex {
        Vertex {
            digest: d.into(),
            cached,
            completed: completed.then(|| crate::status::ts(SystemTime::now())),
            ..Default::default()
        }
    }

    /// A build of `r`; returns the refs whose records went
    /// ([`BuildHistory::completed`]).
    fn build(h: &BuildHistory, r: &str, error: Option<tonic::Status>) -> Vec<String> {
        h.started(&request(r), &[]);
        let progress = vec![
            StatusResponse {
                vertexes: vec![vertex("a", false, false), vertex("b", false, false)],
                ..Default::default()
            },
            StatusResponse {
                vertexes: vec![vertex("a", true, true), vertex("b", false, true)],
                logs: vec![kiln_proto::control::VertexLog {
                    vertex: "b".into(),
                    msg: b"hello\n".to_vec(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ];
        let resp: HashMap<String, String> =
            [("containerimage.digest".to_string(), "sha256:x".to_string())].into();
        h.completed(
            r,
            Outcome {
                exporter_response: Some(resp),
                results: if error.is_none() {
                    [(0, manifest("sha256:x"))].into()
                } else {
                    HashMap::new()
                },
                error,
                progress,
            },
        )
    }

    fn manifest(digest: &str) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: digest.into(),
            size: 10,
            annotations: HashMap::new(),
        }
    }

    fn served(n: Named) -> Option<Vec<u8>> {
        match n {
            Named::Blob(b) => Some(b),
            Named::Results(_) => None,
        }
    }

    fn refs(h: &BuildHistory, req: &BuildHistoryRequest) -> Vec<(i32, String)> {
        let mut v: Vec<_> = h
            .list(req)
            .expect("list")
            .into_iter()
            .map(|e| (e.r#type, e.record.expect("record").r#ref))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_finished_build_is_kept_with_its_counts_and_progress() {
        let (dir, h) = history(HistoryConfig::default());
        h.started(&request("running"), &[]);
        build(&h, "r1", None);
        build(&h, "r2", Some(tonic::Status::internal("boom")));
        let all = refs(&h, &BuildHistoryRequest::default());
        assert_eq!(
            all,
            [
                (BuildHistoryEventType::Started as i32, "running".to_string()),
                (BuildHistoryEventType::Complete as i32, "r1".to_string()),
                (BuildHistoryEventType::Complete as i32, "r2".to_string()),
            ]
        );
        let rec = h.record("r1").expect("r1");
        assert_eq!(
            (
                rec.num_total_steps,
                rec.num_completed_steps,
                rec.num_cached_steps
            ),
            (2, 2, 1)
        );
        assert_eq!(rec.exporter_response["containerimage.digest"], "sha256:x");
        // The exported image is the record's result, as BuildKit's.
        let result = rec.result.as_ref().expect("result");
        assert_eq!(result.results[&0], manifest("sha256:x"));
        assert_eq!(result.result_deprecated, Some(manifest("sha256:x")));
        assert_eq!(rec.frontend_attrs["target"], "t");
        assert!(rec.error.is_none());
        let r2 = h.record("r2").expect("r2");
        let e = r2.error.as_ref().expect("error");
        assert_eq!((e.message.as_str(), e.details.len()), ("boom", 0));
        // The whole error is the blob its descriptor names.
        let ext = r2.external_error.as_ref().expect("external error");
        assert_eq!(ext.media_type, ERROR_MEDIA_TYPE);
        let blob = served(h.blob(&ext.digest).expect("read")).expect("served");
        assert_eq!(Digest::of(&blob).to_string(), ext.digest);
        let full = kiln_proto::rpc::Status::decode(blob.as_slice()).expect("a status");
        assert_eq!(full.message, "boom");
        assert!(rec.external_error.is_none());
        let d = rec.logs.as_ref().expect("logs");
        assert!(served(h.blob(&d.digest).expect("read")).is_some());
        // Another digest is looked for among the kept records' results.
        match h.blob("sha256:00").expect("read") {
            Named::Results(r) => assert_eq!(r, [manifest("sha256:x")]),
            Named::Blob(_) => panic!("sha256:00 is no record's blob"),
        }
        let keys = h.keys().expect("keys");
        assert!(
            keys.contains(&BuildHistory::key("r1")) && keys.contains(&BuildHistory::key("running"))
        );
        let logs = h.progress("r1").expect("read").expect("kept");
        assert_eq!(logs.len(), 2);
        assert_eq!(logs[1].logs[0].msg, b"hello\n");
        let d = rec.logs.expect("logs");
        assert_eq!(d.media_type, STATUS_MEDIA_TYPE);
        assert_eq!(
            d.digest,
            Digest::of(&std::fs::read(h.path("r1", "status")).expect("blob")).to_string()
        );
        assert!(h.progress("running").expect("read").is_none());

        // Kept across a restart; what a crash left half-written goes.
        std::fs::write(dir.path().join("history/x.record.tmp"), b"half").expect("tmp");
        let again = BuildHistory::open(dir.path().join("history"), HistoryConfig::default());
        assert_eq!(refs(&again, &BuildHistoryRequest::default()).len(), 2);
        assert!(!dir.path().join("history/x.record.tmp").exists());

        // Filters and limit, as buildx sends them.
        let only = |f: &str| BuildHistoryRequest {
            filter: vec![f.to_string()],
            ..Default::default()
        };
        assert_eq!(
            refs(&again, &only("status==error")),
            [(1, "r2".to_string())]
        );
        assert_eq!(refs(&again, &only("ref~=1")), [(1, "r1".to_string())]);
        assert_eq!(refs(&again, &only("startedAt>1h")).len(), 2);
        assert_eq!(refs(&again, &only("startedAt<1h")).len(), 0);
        assert_eq!(
            refs(&again, &only("status!=error,ref!=r1")),
            Vec::<(i32, String)>::new()
        );
        assert!(matches!(
            again.list(&only("platform==x")),
            Err(HistoryError::Filter { .. })
        ));
        let limited = BuildHistoryRequest {
            limit: 1,
            ..Default::default()
        };
        assert_eq!(refs(&again, &limited).len(), 1);
    }

    #[test]
    fn pins_deletes_and_limits() {
        let limits = HistoryConfig {
            max_age: Duration::ZERO,
            max_entries: 2,
            max_size: u64::MAX,
        };
        let (_dir, h) = history(limits);
        build(&h, "a", None);
        h.set_pinned("a", true).expect("pin");
        assert_eq!(h.record("a").expect("a").generation, 1);
        // Each build says which records the limits removed, so their
        // results can be released.
        let gone: Vec<Vec<String>> = ["b", "c", "d"].iter().map(|r| build(&h, r, None)).collect();
        assert_eq!(gone, [vec![], vec![], vec!["b".to_string()]]);
        // Two unpinned are kept, and the pinned one.
        let kept: Vec<String> = refs(&h, &BuildHistoryRequest::default())
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        assert_eq!(kept.len(), 3, "{kept:?}");
        assert!(kept.contains(&"a".to_string()) && kept.contains(&"d".to_string()));
        let mut events = h.subscribe();
        h.delete("d").expect("delete");
        let e = events.try_recv().expect("event");
        assert_eq!(e.r#type, BuildHistoryEventType::Deleted as i32);
        assert!(matches!(h.delete("d"), Err(HistoryError::NotFound { .. })));
        assert!(matches!(
            h.set_pinned("nope", true),
            Err(HistoryError::NotFound { .. })
        ));
        assert!(h.progress("d").expect("read").is_none());
    }

    /// The limits' summaries are read back at open: records of an earlier
    /// kilnd count, pins and sizes included.
    #[test]
    fn limits_count_the_records_kept_before_a_restart() {
        let limits = HistoryConfig {
            max_age: Duration::ZERO,
            max_entries: 2,
            max_size: u64::MAX,
        };
        let (dir, h) = history(limits);
        build(&h, "p", None);
        h.set_pinned("p", true).expect("pin");
        build(&h, "b", None);
        drop(h);
        let h = BuildHistory::open(dir.path().join("history"), limits);
        assert_eq!(build(&h, "c", None), Vec::<String>::new());
        assert_eq!(build(&h, "d", None), vec!["b".to_string()]);
        let sized = HistoryConfig {
            max_size: 1,
            ..limits
        };
        drop(h);
        let h = BuildHistory::open(dir.path().join("history"), sized);
        let mut gone = build(&h, "e", None);
        gone.sort();
        assert_eq!(
            gone,
            ["c", "d", "e"],
            "every unpinned record is over one byte"
        );
        let kept: Vec<String> = refs(&h, &BuildHistoryRequest::default())
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        assert_eq!(kept, ["p"]);
    }

    #[test]
    fn the_size_limit_removes_the_oldest() {
        let limits = HistoryConfig {
            max_size: 1,
            ..Default::default()
        };
        let (_dir, h) = history(limits);
        build(&h, "a", None);
        assert!(refs(&h, &BuildHistoryRequest::default()).is_empty());
    }

    #[test]
    fn times_and_durations_parse_as_go_does() {
        assert_eq!(parse_go_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_seconds("2026-12-03T08:00:00Z"), Some(1_796_284_800));
        assert_eq!(
            rfc3339_seconds("2026-12-03T09:00:00+01:00"),
            Some(1_796_284_800)
        );
        assert_eq!(rfc3339_seconds("yesterday"), None);
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_796_284_800, 120_000_000);
        assert_eq!(rfc3339_nanos(t), "2026-12-03T08:00:00.12Z");
        assert_eq!(
            rfc3339_nanos(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00Z"
        );
    }
}
