//! Running builds by their client-chosen ref: where Status finds progress,
//! LLBBridge finds its build, and Control.Solve waits for the gateway's
//! Return.

use kiln_engine::build::Solved;
use kiln_proto::control::StatusResponse;
use kiln_proto::gateway::ReturnRequest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch, Notify};
use tokio_util::sync::CancellationToken;

/// One result a frontend solve produced (an LLBBridge result ref).
pub struct GatewayResult {
    pub solved: Solved,
    /// The image config the frontend computed, if any.
    pub config: Option<kiln_solver::ImageConfig>,
}

/// One build.
pub struct Job {
    pub id: String,
    history: Mutex<Vec<StatusResponse>>,
    updates: broadcast::Sender<StatusResponse>,
    done: watch::Sender<bool>,
    /// Set when Control.Solve registers the build.
    started: watch::Sender<bool>,
    pub cancel: CancellationToken,
    /// The session that holds this build's local sources and outputs.
    pub session: Mutex<String>,
    /// Results of LLBBridge solves, by ref id.
    pub results: tokio::sync::Mutex<Results>,
    returned: watch::Sender<Option<ReturnRequest>>,
    /// Engine solves of this job still running (their own tasks).
    solving: watch::Sender<usize>,
}

/// The results a job holds. Once released (the build ended), a result that
/// arrives late is released at once instead of being kept by nobody.
#[derive(Default)]
pub struct Results {
    map: HashMap<String, GatewayResult>,
    closed: bool,
}

impl Results {
    /// Keeps `r` as `id`, or releases it if the job already ended.
    pub fn insert(&mut self, id: String, r: GatewayResult) {
        if self.closed {
            tokio::spawn(async move { r.solved.release(true).await });
        } else {
            self.map.insert(id, r);
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<GatewayResult> {
        self.map.remove(id)
    }
}

impl Job {
    fn new(id: &str, parent: &CancellationToken) -> Job {
        Job {
            id: id.to_string(),
            history: Mutex::new(Vec::new()),
            updates: broadcast::channel(1024).0,
            done: watch::channel(false).0,
            started: watch::channel(false).0,
            cancel: parent.child_token(),
            session: Mutex::new(String::new()),
            results: tokio::sync::Mutex::new(Results::default()),
            returned: watch::channel(None).0,
            solving: watch::channel(0).0,
        }
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
            .push(s.clone());
        let _ = self.updates.send(s);
    }

    /// Everything published so far and a receiver for what follows.
    pub fn subscribe(
        &self,
    ) -> (
        Vec<StatusResponse>,
        broadcast::Receiver<StatusResponse>,
        watch::Receiver<bool>,
    ) {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        (h.clone(), self.updates.subscribe(), self.done.subscribe())
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

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Registers the build `id` for Control.Solve: a placeholder left by an
    /// early Status is taken over and a finished job of the same ref is
    /// replaced, but a ref that is still running (from any connection) is
    /// refused rather than merged into.
    pub fn start(
        &self,
        id: &str,
        session: &str,
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
        let mut a = self.0.active.lock().unwrap_or_else(|p| p.into_inner());
        *a = a.saturating_sub(1);
        if *a == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_ref_is_refused_a_placeholder_taken_over_a_finished_one_replaced() {
        let jobs = Jobs::default();
        let parent = CancellationToken::new();
        // Status came first and left a placeholder: Solve takes it over.
        let early = jobs.get_or_create("r1", &parent);
        let job = jobs.start("r1", "s1", &parent).expect("started");
        assert!(Arc::ptr_eq(&early, &job));
        let Err(dup) = jobs.start("r1", "s2", &parent) else {
            panic!("a running ref was started twice");
        };
        assert_eq!(dup.code(), tonic::Code::AlreadyExists);
        assert_eq!(*job.session.lock().expect("lock"), "s1", "not merged");
        job.mark_done();
        let again = jobs
            .start("r1", "s3", &parent)
            .expect("a finished ref is reusable");
        assert!(!Arc::ptr_eq(&job, &again));
    }

    #[test]
    fn a_session_that_ends_cancels_its_running_builds_only() {
        let jobs = Jobs::default();
        let parent = CancellationToken::new();
        let a = jobs.start("a", "gone", &parent).expect("a");
        let b = jobs.start("b", "alive", &parent).expect("b");
        jobs.cancel_session("gone");
        assert!(a.cancel.is_cancelled());
        assert!(!b.cancel.is_cancelled());
    }
}
