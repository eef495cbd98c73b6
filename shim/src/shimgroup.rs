//! The runc shim that one executor's steps share, and the rule that keeps
//! a step's task off a shim that is exiting.
//!
//! Starting a shim per step is most of a short step's cost, so steps name
//! a shim group (`io.containerd.runc.v2.group`) and one shim serves them
//! all. containerd asks that shim to shut down after every task delete,
//! and it exits once it serves no container; it keeps listening for a
//! moment while it goes. A create that reaches it then fails with
//! "ttrpc: closed" and may leave runc state under the step's id, so a
//! second try with that id fails too ("container with given ID already
//! exists").
//!
//! So creates run under a shared lock and deletes under the exclusive
//! one, and the delete that leaves the group empty renames the group for
//! every later create: those start a fresh shim instead of finding the
//! one that is going away.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedRwLockReadGuard, RwLock};

/// The annotation the runc v2 shim groups containers by.
pub(crate) const GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";

/// Tells executors of one process apart: each has shims of its own.
static EXECUTORS: AtomicU64 = AtomicU64::new(0);

/// The shim group of one executor.
#[derive(Clone, Debug)]
pub(crate) struct ShimGroup {
    prefix: Arc<str>,
    state: Arc<RwLock<Generation>>,
}

/// The group's current name (by number) and its tasks created and not yet
/// deleted. Every live task is in the current generation: the number only
/// moves on when none is left.
#[derive(Default, Debug)]
struct Generation {
    number: u64,
    live: AtomicUsize,
}

/// A task on its way into the group: while this is held, no delete of the
/// group's tasks runs, so its shim does not exit under the create.
pub(crate) struct Joining(OwnedRwLockReadGuard<Generation>, Arc<str>);

impl Joining {
    /// The group name to put in the step's spec.
    pub(crate) fn name(&self) -> String {
        format!("{}-{}", self.1, self.0.number)
    }

    /// The task was created: it counts until its delete.
    pub(crate) fn created(self) {
        self.0.live.fetch_add(1, Ordering::SeqCst);
    }
}

impl ShimGroup {
    pub(crate) fn new() -> Self {
        let n = EXECUTORS.fetch_add(1, Ordering::Relaxed);
        ShimGroup {
            prefix: format!("kiln-{}-{n}", std::process::id()).into(),
            state: Arc::default(),
        }
    }

    /// Waits for deletes under way, then lets a create in.
    pub(crate) async fn join(&self) -> Joining {
        Joining(self.state.clone().read_owned().await, self.prefix.clone())
    }

    /// Runs `delete` of a task created through [`Joining::created`], with
    /// no create under way; the group moves on to a new shim when it was
    /// the last task, whatever `delete` returned.
    pub(crate) async fn leave<T>(&self, delete: impl Future<Output = T>) -> T {
        let mut state = self.state.write().await;
        let out = delete.await;
        let left = state.live.load(Ordering::SeqCst).saturating_sub(1);
        state.live.store(left, Ordering::SeqCst);
        if left == 0 {
            state.number += 1;
        }
        out
    }

    /// After a create that failed: containerd may have shut the shim down
    /// with it, so a group with no live task moves on to a new shim.
    pub(crate) async fn abandon(&self, joining: Joining) {
        drop(joining);
        let mut state = self.state.write().await;
        if state.live.load(Ordering::SeqCst) == 0 {
            state.number += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_delete_of_the_last_task_moves_later_creates_to_a_new_shim() {
        let g = ShimGroup::new();
        let a = g.join().await;
        let first = a.name();
        a.created();
        let b = g.join().await;
        assert_eq!(b.name(), first, "a second task shares the shim");
        b.created();
        g.leave(async {}).await;
        assert_eq!(g.join().await.name(), first, "one task is still in it");
        g.leave(async {}).await;
        let next = g.join().await.name();
        assert_ne!(next, first, "the emptied shim is exiting");
        assert!(next.starts_with(&format!("kiln-{}-", std::process::id())));
    }

    #[tokio::test]
    async fn a_delete_waits_for_the_create_under_way() {
        let g = ShimGroup::new();
        let a = g.join().await;
        a.created();
        let creating = g.join().await;
        let g2 = g.clone();
        let deleted = tokio::spawn(async move { g2.leave(async {}).await });
        tokio::task::yield_now().await;
        assert!(!deleted.is_finished(), "the delete ran during a create");
        let name = creating.name();
        creating.created();
        deleted.await.expect("the delete");
        assert_eq!(g.join().await.name(), name, "the new task keeps the shim");
    }

    #[tokio::test]
    async fn a_failed_create_in_an_empty_group_moves_on() {
        let g = ShimGroup::new();
        let j = g.join().await;
        let first = j.name();
        g.abandon(j).await;
        assert_ne!(g.join().await.name(), first);
        let other = ShimGroup::new();
        assert_ne!(other.join().await.name(), g.join().await.name());
    }
}
