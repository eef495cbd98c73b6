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
    pub results: tokio::sync::Mutex<HashMap<String, GatewayResult>>,
    returned: watch::Sender<Option<ReturnRequest>>,
    /// What the client asked for and the daemon allows; set by
    /// Control.Solve before the job is marked started.
    pub entitlements: Mutex<kiln_engine::entitlements::Entitlements>,
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
            results: tokio::sync::Mutex::new(HashMap::new()),
            returned: watch::channel(None).0,
            entitlements: Mutex::new(Default::default()),
        }
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

    /// Releases every result still held (after export or on failure).
    pub async fn release_results(&self, sync: bool) {
        let results: Vec<GatewayResult> =
            self.results.lock().await.drain().map(|(_, r)| r).collect();
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
