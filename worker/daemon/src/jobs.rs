//! Running builds by their client-chosen ref: where Status finds progress,
//! LLBBridge finds its build, and Control.Solve waits for the gateway's
//! Return.

use kiln_engine::build::Solved;
use kiln_proto::control::{StatusResponse, Vertex, VertexLog, VertexStatus, VertexWarning};
use kiln_proto::gateway::ReturnRequest;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch, Notify};
use tokio_util::sync::CancellationToken;

/// One result a frontend solve produced (an LLBBridge result ref).
pub struct GatewayResult {
    pub solved: Solved,
    /// The image config the frontend computed, if any.
    pub config: Option<kiln_solver::ImageConfig>,
    /// A multi-platform result's ref id per platform, in the order of
    /// `solved.platform_results()`: each reads that platform's files, and
    /// all of them together export the index. Empty for one platform.
    pub platform_refs: Vec<String>,
}

/// A ref id of a job's results: a held result, or one platform of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found<'a> {
    /// The result held under this id.
    Whole(&'a str),
    /// Platform `.1` of the result held under `.0`.
    Platform(&'a str, usize),
}

/// Log bytes a job keeps for late Status subscribers (the newest; older
/// chunks are dropped). Twice a step's clipped log (2 MiB per stream), so
/// the end of a flooding step and what followed it stay visible.
pub const HISTORY_LOG_BYTES: usize = 8 << 20;
/// Progress items (`VertexStatus`, by id) and warnings a job keeps; the
/// oldest go first.
pub const HISTORY_ITEMS: usize = 4096;
/// Live updates a slow Status reader may fall behind before it skips to
/// the newest vertex states.
pub const UPDATES_QUEUE: usize = 256;
/// The size a replayed batch of logs aims at: well under gRPC's default
/// 4 MiB message limit of every client.
const REPLAY_BATCH_BYTES: usize = 1 << 20;

/// What a job keeps of its progress for Status subscribers that arrive
/// late (or fall behind): the newest state of every vertex and progress
/// item, the newest [`HISTORY_ITEMS`] warnings and the newest
/// [`HISTORY_LOG_BYTES`] of logs. Dropped: older states of a vertex (its
/// newest carries its start, end and error), the oldest progress items and
/// warnings beyond the cap, and the oldest logs beyond the cap (counted in
/// `dropped_log_bytes`). So a job's memory is bounded whatever its steps
/// print.
#[derive(Debug, Default)]
pub struct History {
    vertexes: Vec<Vertex>,
    vertex_index: HashMap<String, usize>,
    statuses: VecDeque<VertexStatus>,
    warnings: VecDeque<VertexWarning>,
    logs: VecDeque<VertexLog>,
    log_bytes: usize,
    pub dropped_log_bytes: u64,
}

impl History {
    /// Records `s`.
    pub fn record(&mut self, s: &StatusResponse) {
        for v in &s.vertexes {
            match self.vertex_index.get(&v.digest) {
                Some(&i) => self.vertexes[i] = v.clone(),
                None => {
                    self.vertex_index
                        .insert(v.digest.clone(), self.vertexes.len());
                    self.vertexes.push(v.clone());
                }
            }
        }
        for st in &s.statuses {
            match self.statuses.iter_mut().find(|x| x.id == st.id) {
                Some(x) => *x = st.clone(),
                None => {
                    if self.statuses.len() >= HISTORY_ITEMS {
                        self.statuses.pop_front();
                    }
                    self.statuses.push_back(st.clone());
                }
            }
        }
        for w in &s.warnings {
            if self.warnings.len() >= HISTORY_ITEMS {
                self.warnings.pop_front();
            }
            self.warnings.push_back(w.clone());
        }
        for l in &s.logs {
            self.log_bytes += l.msg.len();
            self.logs.push_back(l.clone());
        }
        while self.log_bytes > HISTORY_LOG_BYTES {
            let Some(old) = self.logs.pop_front() else {
                break;
            };
            self.log_bytes -= old.msg.len();
            self.dropped_log_bytes += old.msg.len() as u64;
        }
    }

    /// The newest state of every vertex, progress item and warning.
    pub fn state(&self) -> StatusResponse {
        StatusResponse {
            vertexes: self.vertexes.clone(),
            statuses: self.statuses.iter().cloned().collect(),
            warnings: self.warnings.iter().cloned().collect(),
            ..Default::default()
        }
    }

    /// What a new subscriber is sent (and what a build record keeps):
    /// the vertices in the order they started (by their `started` time),
    /// each vertex's logs between
    /// its start and its newest state, as the build sent them (`buildx
    /// history logs` and a late `buildctl` print each step's output under
    /// it, not after the whole build); the progress items with their
    /// vertex, the warnings first. Vertices without logs share a message,
    /// logs are batched, and nothing is sent for a job where nothing
    /// happened yet (BuildKit never sends an empty update, and buildx's
    /// rawjson would print it as `{}`).
    pub fn replay(&self) -> Vec<StatusResponse> {
        let mut logs_of: HashMap<&str, Vec<&VertexLog>> = HashMap::new();
        for l in &self.logs {
            logs_of.entry(l.vertex.as_str()).or_default().push(l);
        }
        let mut out = Vec::new();
        let mut cur = StatusResponse {
            warnings: self.warnings.iter().cloned().collect(),
            ..Default::default()
        };
        let mut statuses_by: HashMap<&str, Vec<VertexStatus>> = HashMap::new();
        for st in &self.statuses {
            statuses_by
                .entry(st.vertex.as_str())
                .or_default()
                .push(st.clone());
        }
        let mut statuses_of =
            |digest: &str| -> Vec<VertexStatus> { statuses_by.remove(digest).unwrap_or_default() };
        // In the order they started (announced vertices that never
        // started last, in their order).
        let mut order: Vec<&Vertex> = self.vertexes.iter().collect();
        order.sort_by_key(|v| {
            v.started
                .as_ref()
                .map_or((1, 0, 0), |t| (0, t.seconds, t.nanos))
        });
        for v in order {
            let Some(logs) = logs_of.remove(v.digest.as_str()) else {
                cur.vertexes.push(v.clone());
                cur.statuses.extend(statuses_of(&v.digest));
                continue;
            };
            let done = v.completed.is_some();
            let mut started = v.clone();
            if done {
                started.completed = None;
                started.error.clear();
            }
            cur.vertexes.push(started);
            out.push(std::mem::take(&mut cur));
            push_log_batches(&mut out, logs);
            cur.vertexes.push(v.clone());
            cur.statuses.extend(statuses_of(&v.digest));
            if !done {
                // Still running: its state was sent before its logs.
                cur.vertexes.pop();
            }
        }
        // Progress items of a vertex no update named.
        cur.statuses.extend(
            self.statuses
                .iter()
                .filter(|s| !self.vertex_index.contains_key(&s.vertex))
                .cloned(),
        );
        if cur != StatusResponse::default() {
            out.push(cur);
        }
        // Logs of a vertex no update named, last.
        let rest: Vec<&VertexLog> = self
            .logs
            .iter()
            .filter(|l| logs_of.contains_key(l.vertex.as_str()))
            .collect();
        push_log_batches(&mut out, rest);
        out.retain(|r| *r != StatusResponse::default());
        out
    }

    /// Log bytes kept.
    #[cfg(test)]
    fn log_bytes(&self) -> usize {
        self.log_bytes
    }
}

/// `logs` as messages of at most [`REPLAY_BATCH_BYTES`] of output each.
fn push_log_batches(out: &mut Vec<StatusResponse>, logs: Vec<&VertexLog>) {
    let mut batch = StatusResponse::default();
    let mut size = 0;
    for l in logs {
        if size + l.msg.len() > REPLAY_BATCH_BYTES && !batch.logs.is_empty() {
            out.push(std::mem::take(&mut batch));
            size = 0;
        }
        size += l.msg.len();
        batch.logs.push(l.clone());
    }
    if !batch.logs.is_empty() {
        out.push(batch);
    }
}

/// One build.
pub struct Job {
    pub id: String,
    history: Mutex<History>,
    updates: broadcast::Sender<StatusResponse>,
    done: watch::Sender<bool>,
    /// Set when Control.Solve registers the build.
    started: watch::Sender<bool>,
    pub cancel: CancellationToken,
    /// The session that holds this build's local sources and outputs.
    pub session: Mutex<String>,
    /// The tenant the build belongs to (`None`: the default tenant): the
    /// other sessions its sources may name are this tenant's only.
    pub tenant: Mutex<Option<String>>,
    /// Results of LLBBridge solves, by ref id.
    pub results: tokio::sync::Mutex<Results>,
    returned: watch::Sender<Option<ReturnRequest>>,
    /// What the client asked for and the daemon allows; set by
    /// Control.Solve before the job is marked started.
    pub entitlements: Mutex<kiln_engine::entitlements::Entitlements>,
    /// The request's cache exports and imports (`crate::cache`); set by
    /// Control.Solve before the job is marked started.
    pub cache: Mutex<crate::cache::CacheOptions>,
    /// The compression the request's image exporter will read the
    /// result's layers in, unchanged (`crate::export::export_blobs`): the
    /// solves make those blobs as their steps commit. Set by Control.Solve
    /// before the job is marked started.
    pub export_blobs: Mutex<Option<kiln_snapshot::diff::Compression>>,
    /// The bounds of this build's remote fetches: kilnd's `[fetch]` as it
    /// was when Control.Solve started the build (a SIGHUP later changes
    /// them for later builds only). `None` until then.
    fetch: Mutex<Option<kiln_engine::sources::limits::FetchLimits>>,
    /// The session serving the build's policy (`SourcePolicySession`,
    /// scoped to the tenant), asked about every source (`crate::policy`).
    policy_session: Mutex<Option<String>>,
    /// Engine solves of this job still running (their own tasks).
    solving: watch::Sender<usize>,
}

/// What Control.Solve sets on a job before it is marked started.
#[derive(Debug, Default)]
pub struct JobOptions {
    /// What the client asked for and the daemon allows.
    pub entitlements: kiln_engine::entitlements::Entitlements,
    /// The request's cache exports and imports.
    pub cache: crate::cache::CacheOptions,
    /// See [`Job::export_blobs`].
    pub export_blobs: Option<kiln_snapshot::diff::Compression>,
    /// See [`Job::engine`].
    pub fetch: Option<kiln_engine::sources::limits::FetchLimits>,
    /// See [`Job::tenant`].
    pub tenant: Option<String>,
    /// See [`Job::policy_session`].
    pub policy_session: Option<String>,
}

/// The results a job holds. Once released (the build ended), a result that
/// arrives late is released at once instead of being kept by nobody.
#[derive(Default)]
pub struct Results {
    map: HashMap<String, GatewayResult>,
    /// Each platform ref id: the result's id and the platform's index.
    platforms: HashMap<String, (String, usize)>,
    closed: bool,
}

impl Results {
    /// Keeps `r` as `id` (and its platform refs), or releases it if the
    /// job already ended.
    pub fn insert(&mut self, id: String, r: GatewayResult) {
        if self.closed {
            tokio::spawn(async move { r.solved.release(true).await });
        } else {
            for (i, p) in r.platform_refs.iter().enumerate() {
                self.platforms.insert(p.clone(), (id.clone(), i));
            }
            self.map.insert(id, r);
        }
    }

    pub fn get(&self, id: &str) -> Option<&GatewayResult> {
        self.map.get(id)
    }

    /// What the ref `id` names, with the result that holds it.
    pub fn find(&self, id: &str) -> Option<(Found<'_>, &GatewayResult)> {
        if let Some((k, r)) = self.map.get_key_value(id) {
            return Some((Found::Whole(k), r));
        }
        let (main, i) = self.platforms.get(id)?;
        let r = self.map.get(main)?;
        Some((Found::Platform(main, *i), r))
    }

    /// Takes the result held as `id` (with its platform refs) out.
    pub fn remove(&mut self, id: &str) -> Option<GatewayResult> {
        let r = self.map.remove(id)?;
        for p in &r.platform_refs {
            self.platforms.remove(p);
        }
        Some(r)
    }
}

impl Job {
    fn new(id: &str, parent: &CancellationToken) -> Job {
        Job {
            id: id.to_string(),
            history: Mutex::new(History::default()),
            updates: broadcast::channel(UPDATES_QUEUE).0,
            done: watch::channel(false).0,
            started: watch::channel(false).0,
            cancel: parent.child_token(),
            session: Mutex::new(String::new()),
            tenant: Mutex::new(None),
            results: tokio::sync::Mutex::new(Results::default()),
            returned: watch::channel(None).0,
            entitlements: Mutex::new(Default::default()),
            cache: Mutex::new(Default::default()),
            export_blobs: Mutex::new(None),
            fetch: Mutex::new(None),
            policy_session: Mutex::new(None),
            solving: watch::channel(0).0,
        }
    }

    /// The tenant's `engine` as this build uses it: with the fetch bounds
    /// the build started with, whatever a reload set since.
    pub fn engine(&self, engine: &kiln_engine::Engine) -> kiln_engine::Engine {
        match *self.fetch.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(limits) => engine.clone().with_fetch_limits(limits),
            None => engine.clone(),
        }
    }

    /// The session serving the build's policy, as sessions are keyed.
    pub fn policy_session(&self) -> Option<String> {
        self.policy_session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The tenant the build belongs to (`None`: the default tenant).
    pub fn tenant(&self) -> Option<String> {
        self.tenant
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts an engine solve of this job until the guard drops.
    pub fn solving(self: &Arc<Self>) -> SolvingGuard {
        self.solving.send_modify(|n| *n += 1);
        SolvingGuard(self.clone())
    }

    /// Waits until no engine solve of this job runs.
    pub async fn wait_solves(&self) {
        let mut rx = self.solving.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Whether Control.Solve registered this job and it has not ended.
    pub fn is_running(&self) -> bool {
        *self.started.borrow() && !*self.done.borrow()
    }

    /// Records and broadcasts a status update.
    pub fn publish(&self, s: StatusResponse) {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(&s);
        let _ = self.updates.send(s);
    }

    /// The newest state of every vertex: what a Status reader that fell
    /// behind the live updates is sent instead of what it missed.
    pub fn state(&self) -> StatusResponse {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .state()
    }

    /// Log bytes kept for late subscribers.
    #[cfg(test)]
    fn history_log_bytes(&self) -> usize {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .log_bytes()
    }

    /// What was kept so far (see [`History`]) and a receiver for what
    /// follows.
    pub fn subscribe(
        &self,
    ) -> (
        Vec<StatusResponse>,
        broadcast::Receiver<StatusResponse>,
        watch::Receiver<bool>,
    ) {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        (h.replay(), self.updates.subscribe(), self.done.subscribe())
    }

    pub fn mark_started(&self) {
        self.started.send_replace(true);
    }

    pub fn mark_done(&self) {
        self.done.send_replace(true);
    }

    pub fn set_returned(&self, r: ReturnRequest) {
        self.returned.send_replace(Some(r));
    }

    /// Waits for the gateway's Return (or cancellation).
    pub async fn wait_returned(&self) -> Option<ReturnRequest> {
        let mut rx = self.returned.subscribe();
        loop {
            if let Some(r) = rx.borrow().clone() {
                return Some(r);
            }
            tokio::select! {
                c = rx.changed() => if c.is_err() { return None },
                _ = self.cancel.cancelled() => return None,
            }
        }
    }

    /// Releases every result still held (after export or on failure); a
    /// result that arrives later is released as it arrives.
    pub async fn release_results(&self, sync: bool) {
        let results: Vec<GatewayResult> = {
            let mut r = self.results.lock().await;
            r.closed = true;
            r.platforms.clear();
            r.map.drain().map(|(_, r)| r).collect()
        };
        for r in results {
            r.solved.release(sync).await;
        }
    }
}

/// The registry of jobs.
#[derive(Default)]
pub struct Jobs {
    map: Mutex<HashMap<String, Arc<Job>>>,
    changed: Notify,
    active: Mutex<usize>,
    idle: Notify,
    /// Builds answered whose lease is still being let go ([`Jobs::after`]).
    releasing: Mutex<usize>,
    released: Notify,
}

impl Jobs {
    /// The job `id`, created if it does not exist yet.
    pub fn get_or_create(&self, id: &str, parent: &CancellationToken) -> Arc<Job> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let j = m
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(Job::new(id, parent)))
            .clone();
        self.changed.notify_waiters();
        j
    }

    /// The job `id` once Control.Solve registered it, waiting up to `wait`.
    pub async fn wait_started(
        &self,
        id: &str,
        wait: Duration,
        parent: &CancellationToken,
    ) -> Option<Arc<Job>> {
        let job = self.get_or_create(id, parent);
        let mut rx = job.started.subscribe();
        let ok = tokio::time::timeout(wait, async {
            loop {
                if *rx.borrow() {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false);
        if !ok {
            // Nobody started it: do not keep the placeholder around.
            let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if m.get(id)
                .is_some_and(|j| Arc::ptr_eq(j, &job) && !*j.started.borrow())
            {
                m.remove(id);
            }
        }
        ok.then_some(job)
    }

    /// A build `id` that Control.Solve refused before it started: the job
    /// a Status call left waiting for it (or makes now) is started and
    /// done, so that Status ends at once with nothing. `None` when a build
    /// of that ref started (it answers for itself).
    pub fn refused(&self, id: &str, parent: &CancellationToken) -> Option<Arc<Job>> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let job = match m.get(id) {
            Some(j) if *j.started.borrow() => return None,
            Some(j) => j.clone(),
            None => {
                let j = Arc::new(Job::new(id, parent));
                m.insert(id.to_string(), j.clone());
                j
            }
        };
        job.mark_started();
        job.mark_done();
        drop(m);
        self.changed.notify_waiters();
        Some(job)
    }

    /// Forgets the finished `job` after `grace` (a Status that comes late
    /// still finds it), unless a new build of its ref has replaced it.
    pub fn forget_after(self: &Arc<Self>, job: &Arc<Job>, grace: Duration) {
        let (jobs, job) = (self.clone(), job.clone());
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            jobs.remove_job(&job);
        });
    }

    /// Removes `job` if it is still the one registered under its id.
    pub fn remove_job(&self, job: &Arc<Job>) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(&job.id).is_some_and(|j| Arc::ptr_eq(j, job)) {
            m.remove(&job.id);
        }
    }

    /// Registers the build `id` for Control.Solve: a placeholder left by an
    /// early Status is taken over and a finished job of the same ref is
    /// replaced, but a ref that is still running (from any connection) is
    /// refused rather than merged into.
    pub fn start(
        &self,
        id: &str,
        session: &str,
        opts: JobOptions,
        parent: &CancellationToken,
    ) -> Result<Arc<Job>, tonic::Status> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let job = match m.get(id) {
            Some(j) if *j.started.borrow() && !*j.done.borrow() => {
                return Err(tonic::Status::already_exists(format!(
                    "build ref {id:?} is already running; a ref names one build"
                )));
            }
            Some(j) if !*j.started.borrow() => j.clone(),
            _ => {
                let j = Arc::new(Job::new(id, parent));
                m.insert(id.to_string(), j.clone());
                j
            }
        };
        *job.session.lock().unwrap_or_else(|p| p.into_inner()) = session.to_string();
        *job.tenant.lock().unwrap_or_else(|p| p.into_inner()) = opts.tenant;
        *job.entitlements.lock().unwrap_or_else(|p| p.into_inner()) = opts.entitlements;
        *job.cache.lock().unwrap_or_else(|p| p.into_inner()) = opts.cache;
        *job.export_blobs.lock().unwrap_or_else(|p| p.into_inner()) = opts.export_blobs;
        *job.fetch.lock().unwrap_or_else(|p| p.into_inner()) = opts.fetch;
        *job.policy_session.lock().unwrap_or_else(|p| p.into_inner()) = opts.policy_session;
        job.mark_started();
        drop(m);
        self.changed.notify_waiters();
        Ok(job)
    }

    /// Cancels every running build whose session is `session` (the session
    /// ended: its client is gone).
    pub fn cancel_session(&self, session: &str) {
        let m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for j in m.values() {
            let mine = *j.session.lock().unwrap_or_else(|p| p.into_inner()) == session;
            if mine && j.is_running() {
                tracing::info!(job = %j.id, session, "session ended: cancelling its build");
                j.cancel.cancel();
            }
        }
    }

    /// Counts a running build; the guard uncounts it.
    pub fn enter(self: &Arc<Self>) -> ActiveGuard {
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        ActiveGuard(self.clone())
    }

    /// Runs `work`, what is left of a build once its client has the
    /// answer (letting go of its lease, writing its cache records' use),
    /// in the background; counted as a running build, so a shutdown waits
    /// for it, and [`Jobs::settled`] waits for it too.
    pub fn after<F>(self: &Arc<Self>, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let active = self.enter();
        *self.releasing.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        let releasing = ReleasingGuard(self.clone());
        tokio::spawn(async move {
            // Both guards count down however the work ends (a panic too).
            let _guards = (releasing, active);
            work.await;
        });
    }

    /// Waits until the work of every answered build is done
    /// ([`Jobs::after`]): what `du` and `prune` see is then what the
    /// builds left, not a lease they are still letting go.
    pub async fn settled(&self) {
        loop {
            let notified = self.released.notified();
            if *self.releasing.lock().unwrap_or_else(|p| p.into_inner()) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Waits until no build runs.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if *self.active.lock().unwrap_or_else(|p| p.into_inner()) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts one [`Jobs::after`] work while alive.
struct ReleasingGuard(Arc<Jobs>);

impl Drop for ReleasingGuard {
    fn drop(&mut self) {
        {
            let mut n = self.0.releasing.lock().unwrap_or_else(|p| p.into_inner());
            *n = n.saturating_sub(1);
        }
        self.0.released.notify_waiters();
    }
}

/// Marks an engine solve of a job as running while alive.
pub struct SolvingGuard(Arc<Job>);

impl Drop for SolvingGuard {
    fn drop(&mut self) {
        self.0.solving.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Marks a build as running while alive.
pub struct ActiveGuard(Arc<Jobs>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let idle = {
            let mut a = self.0.active.lock().unwrap_or_else(|p| p.into_inner());
            *a = a.saturating_sub(1);
            *a == 0
        };
        if idle {
            self.0.idle.notify_waiters();
            crate::release_free_memory();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `settled` and `wait_idle` wait for the work after a build, however
    /// it ends: a panicking one counts down too.
    #[tokio::test]
    async fn the_work_after_a_build_is_waited_for_even_when_it_panics() {
        let jobs = Arc::new(Jobs::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        jobs.after(async move {
            let _ = rx.await;
            panic!("release failed");
        });
        let short = Duration::from_millis(50);
        assert!(tokio::time::timeout(short, jobs.settled()).await.is_err());
        assert!(tokio::time::timeout(short, jobs.wait_idle()).await.is_err());
        let _ = tx.send(());
        let long = Duration::from_secs(5);
        tokio::time::timeout(long, jobs.settled())
            .await
            .expect("settled");
        tokio::time::timeout(long, jobs.wait_idle())
            .await
            .expect("idle");
    }

    fn log(vertex: &str, n: usize) -> StatusResponse {
        StatusResponse {
            logs: vec![VertexLog {
                vertex: vertex.into(),
                stream: 1,
                msg: vec![b'y'; n],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn vertex(digest: &str, completed: bool) -> StatusResponse {
        StatusResponse {
            vertexes: vec![Vertex {
                digest: digest.into(),
                name: digest.into(),
                started: Some(prost_types::Timestamp::default()),
                completed: completed.then(prost_types::Timestamp::default),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn history_keeps_the_newest_state_and_a_bounded_log() {
        let job = Job::new("j", &CancellationToken::new());
        job.publish(vertex("a", false));
        job.publish(vertex("b", false));
        // 64 MiB of output in 32 KiB chunks, as a flooding step would send
        // without clipping.
        for _ in 0..2048 {
            job.publish(log("a", 32 << 10));
        }
        job.publish(vertex("a", true));
        assert!(job.history_log_bytes() <= HISTORY_LOG_BYTES);
        assert!(job.history_log_bytes() > HISTORY_LOG_BYTES - (32 << 10));
        let (replay, _, _) = job.subscribe();
        // `a` started, its logs, then its newest state beside `b`'s.
        let (first, last) = (&replay[0], &replay[replay.len() - 1]);
        assert_eq!(first.vertexes.len(), 1);
        assert_eq!(first.vertexes[0].digest, "a");
        assert!(first.vertexes[0].completed.is_none(), "a's start");
        assert!(replay[1..replay.len() - 1]
            .iter()
            .all(|r| r.vertexes.is_empty() && !r.logs.is_empty()));
        let names: Vec<&str> = last.vertexes.iter().map(|v| v.digest.as_str()).collect();
        assert_eq!(names, ["a", "b"], "one entry per vertex");
        assert!(last.vertexes[0].completed.is_some(), "the newest state");
        assert!(last.vertexes[1].completed.is_none());
        let logs: usize = replay
            .iter()
            .flat_map(|r| &r.logs)
            .map(|l| l.msg.len())
            .sum();
        assert_eq!(logs, job.history_log_bytes());
        for r in &replay[1..] {
            let size: usize = r.logs.iter().map(|l| l.msg.len()).sum();
            assert!(size <= REPLAY_BATCH_BYTES, "batch of {size} bytes");
        }
        let h = job.history.lock().expect("not poisoned");
        assert_eq!(
            h.dropped_log_bytes as usize + h.log_bytes(),
            2048 * (32 << 10)
        );
    }

    #[test]
    fn a_running_ref_is_refused_a_placeholder_taken_over_a_finished_one_replaced() {
        let jobs = Jobs::default();
        let parent = CancellationToken::new();
        // Status came first and left a placeholder: Solve takes it over.
        let early = jobs.get_or_create("r1", &parent);
        let job = jobs
            .start("r1", "s1", Default::default(), &parent)
            .expect("started");
        assert!(Arc::ptr_eq(&early, &job));
        let Err(dup) = jobs.start("r1", "s2", Default::default(), &parent) else {
            panic!("a running ref was started twice");
        };
        assert_eq!(dup.code(), tonic::Code::AlreadyExists);
        assert_eq!(*job.session.lock().expect("lock"), "s1", "not merged");
        job.mark_done();
        let again = jobs
            .start("r1", "s3", Default::default(), &parent)
            .expect("a finished ref is reusable");
        assert!(!Arc::ptr_eq(&job, &again));
    }

    /// A refused build ends the Status waiting for it (or asked later),
    /// leaves a started build of the ref alone, and frees the ref again.
    #[tokio::test]
    async fn a_refused_ref_ends_the_status_that_waits_for_it() {
        let jobs = Arc::new(Jobs::default());
        let parent = CancellationToken::new();
        let waiting = {
            let (jobs, parent) = (jobs.clone(), parent.clone());
            tokio::spawn(async move {
                jobs.wait_started("r1", Duration::from_secs(600), &parent)
                    .await
            })
        };
        tokio::task::yield_now().await;
        let refused = jobs.refused("r1", &parent).expect("not started");
        let seen = waiting.await.expect("task").expect("ended by the refusal");
        assert!(Arc::ptr_eq(&seen, &refused), "the job it waited on");
        assert!(*refused.done.borrow());
        let later = jobs
            .wait_started("r1", Duration::ZERO, &parent)
            .await
            .expect("kept for a Status asked after the answer");
        assert!(*later.done.borrow());
        jobs.remove_job(&refused);
        let running = jobs
            .start("r1", "s", Default::default(), &parent)
            .expect("the ref is free again");
        assert!(
            jobs.refused("r1", &parent).is_none(),
            "a started build answers for itself"
        );
        jobs.remove_job(&refused);
        assert!(
            Arc::ptr_eq(&jobs.get_or_create("r1", &parent), &running),
            "removing the old job leaves the new one"
        );
    }

    #[test]
    fn a_session_that_ends_cancels_its_running_builds_only() {
        let jobs = Jobs::default();
        let parent = CancellationToken::new();
        let a = jobs
            .start("a", "gone", Default::default(), &parent)
            .expect("a");
        let b = jobs
            .start("b", "alive", Default::default(), &parent)
            .expect("b");
        jobs.cancel_session("gone");
        assert!(a.cancel.is_cancelled());
        assert!(!b.cancel.is_cancelled());
    }
}
